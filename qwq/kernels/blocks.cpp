// Linear layers on GGUF-style weight blocks for x86 CPUs with AVX-512 VNNI. Weights come in
// blocks of 32 with one fp16 scale: q5_0 (GGUF's Q5_0 values, 5.5 bits a weight) or q8_0
// (GGUF's Q8_0, 8.5 bits). Activations are rounded to int8 in the same blocks of 32 with a float
// scale each (GGUF's Q8_0), and the products run on integer dot products (vpdpbusd).
//
// A decode step reads every weight once, so bits per weight are the speed. Per-block activation
// scales keep outliers (down_proj's input, attention sinks) to their own block.
//
// Weights are stored by tiles of 4 rows x 128 inputs (a group: four blocks of 32 per row), so
// one thread's share of a matrix is a single forward stream. A tile holds each of its 4 rows'
// group in turn, GB bytes each (K % 128 == 0, rows padded to a multiple of 4):
//   q5_0, GB = 88:  64 bytes of nibbles (byte i: value i low, value 64 + i high), the fifth bits
//                   (16 bytes, two little-endian uint64, bit p for value p), 4 fp16 scales;
//                   a stored u in [0, 31] means (u - 16) * scale
//   q8_0, GB = 136: 128 values u in [1, 255], meaning (u - 128) * scale; 4 fp16 scales
// Values within a group are interleaved: 32-bit word 4t + b of the group is word t of block b.
// Then lane j of a vpdpbusd over either half of the group sums block j % 4 only, and one 4-scale
// vector broadcast to all four 128-bit lanes scales both halves: two integer dot products, one
// conversion and one fma per 128 weights. vpdpbusd multiplies unsigned by signed bytes, so each
// block's accumulator starts at -offset * sum(activations), exact in integers.
//
// Every output is computed by the same instruction sequence whatever the number of tokens, the
// thread count or the tile: a sequence's numbers do not depend on what it is batched with.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>
#include <immintrin.h>

#include "simd.h"

#include <cstring>
#include <vector>

namespace {

using qwq::load16;

constexpr int64_t kTile = 64;  // tokens whose activations stay in L2 while rows stream past

inline __m512 broadcast4(__m128 x) { return _mm512_broadcast_f32x4(x); }

inline __m128 fp16x4(const uint8_t* p) {
  return _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}

// One token's activations, quantized: int8 values (interleaved), per group the accumulators'
// start (block b's -offset * sum(values) in lane b), and the four block scales broadcast to 16
// lanes.
struct Acts {
  int8_t* q;
  int32_t* start;
  float* d16;
};

template <typename T>
void quantize_token(const T* x, int64_t K, int32_t offset, Acts a) {
  alignas(64) int8_t blk[128];
  // output word 4t + b takes block b's word t
  const __m512i idx0 = _mm512_setr_epi32(0, 8, 16, 24, 1, 9, 17, 25, 2, 10, 18, 26, 3, 11, 19, 27);
  const __m512i idx1 = _mm512_setr_epi32(4, 12, 20, 28, 5, 13, 21, 29, 6, 14, 22, 30, 7, 15, 23, 31);
  for (int64_t g = 0; g < K / 128; ++g) {
    alignas(16) float d[4];
    alignas(64) int32_t start[16] = {0};
    for (int b = 0; b < 4; ++b) {
      const T* p = x + g * 128 + b * 32;
      __m512 v0 = load16(p), v1 = load16(p + 16);
      float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
      float inv = amax > 0.f ? 127.f / amax : 0.f;
      __m512 s = _mm512_set1_ps(inv);
      __m512i i0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, s));
      __m512i i1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, s));
      _mm_store_si128(reinterpret_cast<__m128i*>(blk + b * 32), _mm512_cvtsepi32_epi8(i0));
      _mm_store_si128(reinterpret_cast<__m128i*>(blk + b * 32 + 16), _mm512_cvtsepi32_epi8(i1));
      d[b] = amax / 127.f;
      start[b] = -offset * _mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
    }
    __m512i lo = _mm512_load_si512(blk), hi = _mm512_load_si512(blk + 64);
    _mm512_storeu_si512(a.q + g * 128, _mm512_permutex2var_epi32(lo, idx0, hi));
    _mm512_storeu_si512(a.q + g * 128 + 64, _mm512_permutex2var_epi32(lo, idx1, hi));
    _mm512_storeu_si512(a.start + g * 16, _mm512_load_si512(start));
    _mm512_storeu_ps(a.d16 + g * 16, broadcast4(_mm_load_ps(d)));
  }
}

// A q5_0 group: its two 64-byte halves of unsigned values, and its four scales.
struct Q5 {
  static constexpr int32_t kOffset = 16;
  static constexpr int64_t kGroupBytes = 88;
  static inline void weights(const uint8_t* p, __m512i& w0, __m512i& w1) {
    const __m512i low4 = _mm512_set1_epi8(0x0F), sixteen = _mm512_set1_epi8(16);
    __m512i v = _mm512_loadu_si512(p);
    uint64_t hi[2];
    std::memcpy(hi, p + 64, 16);
    w0 = _mm512_and_si512(v, low4);
    w1 = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
    w0 = _mm512_mask_add_epi8(w0, hi[0], w0, sixteen);
    w1 = _mm512_mask_add_epi8(w1, hi[1], w1, sixteen);
  }
  static inline __m128 scale4(const uint8_t* p) { return fp16x4(p + 80); }
};

// A q8_0 group.
struct Q8 {
  static constexpr int32_t kOffset = 128;
  static constexpr int64_t kGroupBytes = 136;
  static inline void weights(const uint8_t* p, __m512i& w0, __m512i& w1) {
    w0 = _mm512_loadu_si512(p);
    w1 = _mm512_loadu_si512(p + 64);
  }
  static inline __m128 scale4(const uint8_t* p) { return fp16x4(p + 128); }
};

// Sums of 16 vectors in one: lane 4r + t holds the sum of v[4t + r]. Every sum adds lane i to
// lane i + 8, then i + 4, i + 2, i + 1, whatever else is reduced alongside, so an output's
// rounding does not depend on which rows and tokens share its tile.
inline __m512 reduce16(const __m512 v[16]) {
  __m512 t[8], u[4], w[2];
  for (int i = 0; i < 8; ++i)
    t[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
  for (int j = 0; j < 4; ++j)
    u[j] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * j], t[2 * j + 1], 0x88),
                         _mm512_shuffle_f32x4(t[2 * j], t[2 * j + 1], 0xDD));
  for (int k = 0; k < 2; ++k)
    w[k] = _mm512_add_ps(_mm512_shuffle_ps(u[2 * k], u[2 * k + 1], 0x44),
                         _mm512_shuffle_ps(u[2 * k], u[2 * k + 1], 0xEE));
  return _mm512_add_ps(_mm512_shuffle_ps(w[0], w[1], 0x88), _mm512_shuffle_ps(w[0], w[1], 0xDD));
}

// One tile row of 4 weight rows against NT tokens (1-4), all groups: out[4r + t] = row r .
// token t. Each group is unpacked once for all NT tokens; activations come from L1/L2.
template <typename F, int NT>
inline void tile(const uint8_t* quad, int64_t K, const Acts* acts, float out[16]) {
  __m512 acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t g = 0; g < K / 128; ++g) {
    const uint8_t* base = quad + g * 4 * F::kGroupBytes;
    for (int r = 0; r < 4; ++r) {
      __m512i w0, w1;
      F::weights(base + r * F::kGroupBytes, w0, w1);
      const __m512 dw = broadcast4(F::scale4(base + r * F::kGroupBytes));
      for (int t = 0; t < NT; ++t) {
        const Acts& a = acts[t];
        __m512i s = _mm512_loadu_si512(a.start + g * 16);
        s = _mm512_dpbusd_epi32(s, w0, _mm512_loadu_si512(a.q + g * 128));
        s = _mm512_dpbusd_epi32(s, w1, _mm512_loadu_si512(a.q + g * 128 + 64));
        const __m512 scale = _mm512_mul_ps(dw, _mm512_loadu_ps(a.d16 + g * 16));
        acc[4 * t + r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, acc[4 * t + r]);
      }
    }
  }
  _mm512_storeu_ps(out, reduce16(acc));
}

template <typename F, typename T>
void linear_impl(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias,
                 int64_t N, at::Tensor& out) {
  const int64_t M = x.size(0), K = x.size(1);
  const T* xp = x.data_ptr<T>();
  const uint8_t* wp = w.data_ptr<uint8_t>();
  T* op = out.data_ptr<T>();
  const T* bp = bias.has_value() ? bias->data_ptr<T>() : nullptr;
  const int64_t quad_bytes = w.size(1);

  std::vector<int8_t> aq(M * K);
  std::vector<int32_t> astart(M * K / 8);
  std::vector<float> ad16(M * K / 8);
  std::vector<Acts> acts(M);
  for (int64_t m = 0; m < M; ++m)
    acts[m] = Acts{aq.data() + m * K, astart.data() + m * K / 8, ad16.data() + m * K / 8};
  at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) quantize_token(xp + m * K, K, F::kOffset, acts[m]);
  });

  // Threads split the tile rows. Each walks its share once per kTile tokens, whose activations
  // stay in its L2 while the weights stream past.
  at::parallel_for(0, w.size(0), 8, [&](int64_t q0, int64_t q1) {
    float sums[16];
    for (int64_t t0 = 0; t0 < M; t0 += kTile) {
      const int64_t t1 = std::min(M, t0 + kTile);
      for (int64_t q = q0; q < q1; ++q) {
        const uint8_t* quad = wp + q * quad_bytes;
        for (int64_t m = t0; m < t1; m += 4) {
          const int nt = static_cast<int>(std::min<int64_t>(4, t1 - m));
          switch (nt) {
            case 1: tile<F, 1>(quad, K, &acts[m], sums); break;
            case 2: tile<F, 2>(quad, K, &acts[m], sums); break;
            case 3: tile<F, 3>(quad, K, &acts[m], sums); break;
            default: tile<F, 4>(quad, K, &acts[m], sums); break;
          }
          for (int r = 0; r < 4 && 4 * q + r < N; ++r) {
            const int64_t n = 4 * q + r;
            const float b = bp ? static_cast<float>(bp[n]) : 0.f;
            for (int t = 0; t < nt; ++t) op[(m + t) * N + n] = static_cast<T>(sums[4 * r + t] + b);
          }
        }
      }
    }
  });
}

template <typename F>
at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias,
                  int64_t N) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.device().is_cpu(),
              "x must be a contiguous 2-D CPU tensor");
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous() && w.scalar_type() == at::kByte,
              "w must be packed uint8 tiles");
  const int64_t K = x.size(1);
  TORCH_CHECK(K % 128 == 0 && w.size(1) == K / 128 * 4 * F::kGroupBytes, "in_features ", K,
              " must be a multiple of 128 and match the packed tiles (", w.size(1), " bytes)");
  TORCH_CHECK(N > 0 && (N + 3) / 4 == w.size(0), "out_features ", N, " does not match ",
              w.size(0), " tiles of 4 rows");
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N &&
                    bias->scalar_type() == x.scalar_type() && bias->is_contiguous(),
                "bias must be (out_features,) in x's dtype");
  }
  at::Tensor out = at::empty({x.size(0), N}, x.options());
  if (x.size(0) == 0) return out;
  switch (x.scalar_type()) {
    case at::kFloat: linear_impl<F, float>(x, w, bias, N, out); break;
    case at::kBFloat16: linear_impl<F, c10::BFloat16>(x, w, bias, N, out); break;
    case at::kHalf: linear_impl<F, c10::Half>(x, w, bias, N, out); break;
    default: TORCH_CHECK(false, "x must be float32, bfloat16 or float16");
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(qwq, m) {
  m.def("q5_0_linear(Tensor x, Tensor w, Tensor? bias, int n) -> Tensor");
  m.def("q8_0_linear(Tensor x, Tensor w, Tensor? bias, int n) -> Tensor");
}

TORCH_LIBRARY_IMPL(qwq, CPU, m) {
  m.impl("q5_0_linear", &linear<Q5>);
  m.impl("q8_0_linear", &linear<Q8>);
}
