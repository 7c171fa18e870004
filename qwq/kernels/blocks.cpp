// Linear layers on GGUF-style weight blocks for x86 CPUs with AVX-512 VNNI. Weights come in
// blocks of 32 with one fp16 scale: q5_0 (GGUF's Q5_0 values, 5.5 bits a weight) or q8_0
// (GGUF's Q8_0, 8.5 bits). Activations are rounded to int8 in the same blocks of 32 with a float
// scale each (GGUF's Q8_0), and the products run on integer dot products (vpdpbusd).
//
// A decode step reads every weight once, so bits per weight are the speed. Per-block activation
// scales keep outliers (down_proj's input, attention sinks) to their own block.
//
// Weights are stored by tiles of 4 rows, so one thread's share of a matrix is a single forward
// stream (K % 128 == 0, rows padded to a multiple of 4). A row's inputs run in spans of S groups
// of 128 (four blocks of 32 each): S = 4 while at least 4 groups remain, then S = 2 if 2 or 3
// do, then S = 1. A tile holds each span for its 4 rows in turn, S * GB bytes a row:
//   q5_0, GB = 88:  per 128 values, 64 bytes of nibbles (byte i: value i low, value 64 + i
//                   high) and the fifth bits (16 bytes, two little-endian uint64, bit p for
//                   value p); then the span's 4S fp16 scales. A stored u in [0, 31] means
//                   (u - 16) * scale.
//   q8_0, GB = 136: 128S values u in [1, 255], meaning (u - 128) * scale; 4S fp16 scales.
// Values are in lane order: the span is 2S vectors of 64 bytes, and 32-bit lane j of vector i
// holds block j % 4S's word i * 4/S + j / 4S. A vpdpbusd then adds block j % 4S's products in
// lane j only, and one vector of scales covers the whole span: 2S integer dot products, then
// one conversion, one multiply of weight by activation scales and one fma per 128S weights.
// (With S = 4 no lane repeats a block; a span of 512 inputs costs 8 dot products and 3 float
// operations, where 128-input groups cost 8 and 12.) vpdpbusd multiplies unsigned by signed
// bytes, so each block's accumulator starts at -offset * sum(activations), exact in integers.
//
// Activations are stored token-minor, so the tokens of a register tile sit 64 bytes apart. Up to
// 4 tokens run against a tile's 4 rows (tile_four: decode, reading the tile in order); 8 or 16
// tokens run two rows at a time, each activation vector loaded once for both rows (tile_pair).
//
// Every output is computed by the same instruction sequence whatever the number of tokens, the
// thread count or which rows and tokens share a register tile: a sequence's numbers do not
// depend on what it is batched with.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>
#include "isa.h"

#include "simd.h"

#include <cstring>
#include <vector>

namespace {

using qwq::load16;

constexpr int64_t kTile = 64;  // tokens whose activations stay in L2 while rows stream past

// A span of a row: S groups from input `in`; its 4 rows start `tile_off` bytes into a tile; its
// activation starts and scales are vector `index` of a token's.
struct Span {
  int S;
  int64_t in, tile_off, index;
};

std::vector<Span> spans_of(int64_t K, int64_t group_bytes) {
  std::vector<Span> spans;
  for (int64_t g = 0, off = 0, G = K / 128; g < G;) {
    const int S = G - g >= 4 ? 4 : G - g >= 2 ? 2 : 1;
    spans.push_back({S, g * 128, off, static_cast<int64_t>(spans.size())});
    off += 4 * S * group_bytes;
    g += S;
  }
  return spans;
}

inline __m128 fp16x4(const uint8_t* p) {
  return _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}

// A span's 4S fp16 scales, lane j taking block j % 4S's.
template <int S>
inline __m512 span_scales(const uint8_t* p) {
  if constexpr (S == 4) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  } else if constexpr (S == 2) {
    return _mm512_broadcast_f32x8(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  } else {
    return _mm512_broadcast_f32x4(fp16x4(p));
  }
}

// M tokens' activations, quantized: int8 values in lane order, and per span the accumulators'
// start (block b's -offset * sum(values) in lane b) and the block scales by lane. Tokens are
// the inner dimension, so a register tile's tokens sit side by side and one pointer (plus a
// constant per token) reaches them all: 64-byte vector v of token m is at q + (v * M + m) * 64,
// span s's start and scales at start / d16 + (s * M + m) * 16.
struct Acts {
  int8_t* q;
  int32_t* start;
  float* d16;
  int64_t M;
  // token m's first vector of span sp (its vector i is i * M * 64 bytes on), start and scales
  int8_t* q_at(const Span& sp, int64_t m) const { return q + ((sp.in / 64) * M + m) * 64; }
  int32_t* start_at(const Span& sp, int64_t m) const { return start + (sp.index * M + m) * 16; }
  float* d16_at(const Span& sp, int64_t m) const { return d16 + (sp.index * M + m) * 16; }
};

template <typename T>
void quantize_token(const T* x, const std::vector<Span>& spans, int32_t offset, const Acts& a,
                    int64_t m) {
  alignas(64) int8_t natural[512];
  alignas(64) int32_t start[16];
  alignas(64) float d16[16];
  float d[16];
  int32_t sum[16];
  for (const Span& sp : spans) {
    const int nb = 4 * sp.S;
    for (int b = 0; b < nb; ++b) {
      const T* p = x + sp.in + b * 32;
      __m512 v0 = load16(p), v1 = load16(p + 16);
      float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
      float inv = amax > 0.f ? 127.f / amax : 0.f;
      __m512 s = _mm512_set1_ps(inv);
      __m512i i0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, s));
      __m512i i1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, s));
      _mm_store_si128(reinterpret_cast<__m128i*>(natural + b * 32), _mm512_cvtsepi32_epi8(i0));
      _mm_store_si128(reinterpret_cast<__m128i*>(natural + b * 32 + 16), _mm512_cvtsepi32_epi8(i1));
      d[b] = amax / 127.f;
      sum[b] = _mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
    }
    // vector i, lane j: block j % nb's word i * 4/S + j / nb
    alignas(64) int32_t word0[16];
    for (int j = 0; j < 16; ++j) {
      word0[j] = 8 * (j % nb) + j / nb;
      start[j] = j < nb ? -offset * sum[j] : 0;
      d16[j] = d[j % nb];
    }
    __m512i idx = _mm512_load_si512(word0);
    const __m512i step = _mm512_set1_epi32(4 / sp.S);
    for (int i = 0; i < 2 * sp.S; ++i, idx = _mm512_add_epi32(idx, step))
      _mm512_storeu_si512(a.q_at(sp, m) + i * a.M * 64, _mm512_i32gather_epi32(idx, natural, 4));
    _mm512_storeu_si512(a.start_at(sp, m), _mm512_load_si512(start));
    _mm512_storeu_ps(a.d16_at(sp, m), _mm512_load_ps(d16));
  }
}

// q5_0: a span's 2S vectors of unsigned values, and its scales.
struct Q5 {
  static constexpr int32_t kOffset = 16;
  static constexpr int64_t kGroupBytes = 88;
  template <int S>
  static inline void weights(const uint8_t* p, __m512i* w) {
    const __m512i low4 = _mm512_set1_epi8(0x0F), sixteen = _mm512_set1_epi8(16);
#pragma GCC unroll 4
    for (int c = 0; c < S; ++c) {
      const uint8_t* g = p + 80 * c;
      __m512i v = _mm512_loadu_si512(g);
      uint64_t hi[2];
      std::memcpy(hi, g + 64, 16);
      w[2 * c] = _mm512_mask_add_epi8(_mm512_and_si512(v, low4), hi[0], _mm512_and_si512(v, low4), sixteen);
      __m512i h = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
      w[2 * c + 1] = _mm512_mask_add_epi8(h, hi[1], h, sixteen);
    }
  }
  template <int S>
  static inline __m512 scales(const uint8_t* p) { return span_scales<S>(p + 80 * S); }
};

// q8_0.
struct Q8 {
  static constexpr int32_t kOffset = 128;
  static constexpr int64_t kGroupBytes = 136;
  template <int S>
  static inline void weights(const uint8_t* p, __m512i* w) {
#pragma GCC unroll 8
    for (int i = 0; i < 2 * S; ++i) w[i] = _mm512_loadu_si512(p + 64 * i);
  }
  template <int S>
  static inline __m512 scales(const uint8_t* p) { return span_scales<S>(p + 128 * S); }
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

// Where reduce16 puts vector i's sum.
constexpr int lane_of(int i) { return 4 * (i % 4) + i / 4; }

// Tokens m + t0 .. m + t0 + NC - 1 of row r's unpacked span: NC dot products in flight at
// once, since each is a chain of 2S dependent vpdpbusd (integer sums: exact in any order).
// acc[4 * t + r] += row r . token m + t.
template <int S, int NC>
inline void span_tokens(const __m512i* w, __m512 dw, const Acts& a, const Span& sp, int r,
                        int64_t m, int t0, __m512* acc) {
  const int8_t* q = a.q_at(sp, m + t0);
  const int32_t* start = a.start_at(sp, m + t0);
  const float* d16 = a.d16_at(sp, m + t0);
  __m512i s[NC];
#pragma GCC unroll 4
  for (int t = 0; t < NC; ++t) s[t] = _mm512_loadu_si512(start + 16 * t);
#pragma GCC unroll 8
  for (int i = 0; i < 2 * S; ++i, q += a.M * 64)
#pragma GCC unroll 4
    for (int t = 0; t < NC; ++t) s[t] = _mm512_dpbusd_epi32(s[t], w[i], _mm512_loadu_si512(q + 64 * t));
#pragma GCC unroll 4
  for (int t = 0; t < NC; ++t) {
    const __m512 scale = _mm512_mul_ps(dw, _mm512_loadu_ps(d16 + 16 * t));
    __m512& x = acc[4 * (t0 + t) + r];
    x = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[t]), scale, x);
  }
}

// A tile's 4 rows (from p) x NT tokens (1-4) from m over one span, for decode and small
// batches: acc[4 * t + r] += row r . token m + t. Rows are read in order, each unpacked once
// into registers for all NT tokens.
template <typename F, int S, int NT>
inline void span_product(const uint8_t* p, const Acts& a, int64_t m, const Span& sp,
                         __m512* acc) {
  constexpr int64_t row_bytes = S * F::kGroupBytes;
#pragma GCC unroll 4
  for (int r = 0; r < 4; ++r) {
    __m512i w[2 * S];
    F::template weights<S>(p + r * row_bytes, w);
    const __m512 dw = F::template scales<S>(p + r * row_bytes);
    span_tokens<S, NT>(w, dw, a, sp, r, m, 0, acc);
  }
}

// Two rows (r0, r0 + 1) against NT tokens (a multiple of 4) over one span, for batches: both
// rows' span unpacked into registers, then 4 tokens at a time, each activation vector loaded
// once for both rows (8 dot-product chains in flight). acc[r][t] += row r0 + r . token m + t,
// the same operations, in the same order, as span_tokens.
template <typename F, int S, int NT>
inline void span_pair(const uint8_t* p, const Acts& a, int64_t m, const Span& sp,
                      __m512 (*acc)[16]) {
  constexpr int64_t row_bytes = S * F::kGroupBytes;
  __m512i w0[2 * S], w1[2 * S];
  F::template weights<S>(p, w0);
  F::template weights<S>(p + row_bytes, w1);
  const __m512 dw0 = F::template scales<S>(p), dw1 = F::template scales<S>(p + row_bytes);
#pragma GCC unroll 1
  for (int t0 = 0; t0 < NT; t0 += 4) {
    const int8_t* q = a.q_at(sp, m + t0);
    const int32_t* start = a.start_at(sp, m + t0);
    const float* d16 = a.d16_at(sp, m + t0);
    __m512i s0[4], s1[4];
#pragma GCC unroll 4
    for (int t = 0; t < 4; ++t) s0[t] = s1[t] = _mm512_loadu_si512(start + 16 * t);
#pragma GCC unroll 8
    for (int i = 0; i < 2 * S; ++i, q += a.M * 64) {
#pragma GCC unroll 4
      for (int t = 0; t < 4; ++t) {
        __m512i x = _mm512_loadu_si512(q + 64 * t);
        QWQ_ONE_LOAD(x);  // one load for both rows, not one folded into each
        s0[t] = _mm512_dpbusd_epi32(s0[t], w0[i], x);
        s1[t] = _mm512_dpbusd_epi32(s1[t], w1[i], x);
      }
    }
#pragma GCC unroll 4
    for (int t = 0; t < 4; ++t) {
      const __m512 d = _mm512_loadu_ps(d16 + 16 * t);
      acc[0][t0 + t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0[t]), _mm512_mul_ps(dw0, d),
                                       acc[0][t0 + t]);
      acc[1][t0 + t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1[t]), _mm512_mul_ps(dw1, d),
                                       acc[1][t0 + t]);
    }
  }
}

// Rows r0 and r0 + 1 of the tile at quad against NT tokens (8 or 16), all spans:
// sums[r][lane_of(t)] = row r0 + r . token m + t.
template <typename F, int NT>
void tile_pair(const uint8_t* quad, int r0, const std::vector<Span>& spans, const Acts& a,
               int64_t m, float sums[2][16]) {
  static_assert(NT % 4 == 0 && NT <= 16, "4 to 16 tokens, by fours");
  __m512 acc[2][16];
  for (int r = 0; r < 2; ++r)
    for (int i = 0; i < 16; ++i) acc[r][i] = _mm512_setzero_ps();
  for (const Span& sp : spans) {
    const uint8_t* p = quad + sp.tile_off + r0 * sp.S * F::kGroupBytes;
    switch (sp.S) {
      case 4: span_pair<F, 4, NT>(p, a, m, sp, acc); break;
      case 2: span_pair<F, 2, NT>(p, a, m, sp, acc); break;
      default: span_pair<F, 1, NT>(p, a, m, sp, acc); break;
    }
  }
  _mm512_storeu_ps(sums[0], reduce16(acc[0]));
  _mm512_storeu_ps(sums[1], reduce16(acc[1]));
}

// The tile at quad's 4 rows against NT tokens (1-4), all spans: sums[lane_of(4 * t + r)] =
// row r . token m + t.
template <typename F, int NT>
void tile_four(const uint8_t* quad, const std::vector<Span>& spans, const Acts& a, int64_t m,
               float sums[16]) {
  static_assert(NT >= 1 && NT <= 4, "1 to 4 tokens");
  __m512 acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
  for (const Span& sp : spans) {
    const uint8_t* p = quad + sp.tile_off;
    switch (sp.S) {
      case 4: span_product<F, 4, NT>(p, a, m, sp, acc); break;
      case 2: span_product<F, 2, NT>(p, a, m, sp, acc); break;
      default: span_product<F, 1, NT>(p, a, m, sp, acc); break;
    }
  }
  _mm512_storeu_ps(sums, reduce16(acc));
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
  const std::vector<Span> spans = spans_of(K, F::kGroupBytes);
  const int64_t ns = static_cast<int64_t>(spans.size());

  // torch's allocator aligns to 64 bytes: every activation vector sits in one cache line
  // (a load across two costs two)
  at::Tensor aq = at::empty({M * K}, at::kChar);
  at::Tensor astart = at::empty({M * ns * 16}, at::kInt);
  at::Tensor ad16 = at::empty({M * ns * 16}, at::kFloat);
  const Acts acts{aq.data_ptr<int8_t>(), astart.data_ptr<int32_t>(), ad16.data_ptr<float>(), M};
  at::parallel_for(0, M, 4, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) quantize_token(xp + m * K, spans, F::kOffset, acts, m);
  });

  // Threads split the tiles. Each walks its share once per kTile tokens, whose activations stay
  // in its L2 while the weights stream past. Within a tile, 8 or 16 tokens at a time go
  // through two rows at a time (tile_pair), fewer through all four rows (tile_four).
  at::parallel_for(0, w.size(0), 8, [&](int64_t q0, int64_t q1) {
    alignas(64) float sums[2][16];
    for (int64_t t0 = 0; t0 < M; t0 += kTile) {
      const int64_t t1 = std::min(M, t0 + kTile);
      for (int64_t q = q0; q < q1; ++q) {
        const uint8_t* quad = wp + q * quad_bytes;
        // From 8 tokens the register tiles read a tile two rows at a time, which the hardware
        // prefetcher does not follow from memory: fetch the tile after next into L2 (which
        // takes more misses in flight than L1) while this one computes. At 16 tokens that
        // took the demo model's linears from 66 to 46 ms a step. Below 8 tokens tiles are read
        // in order: q5_0 streams faster without the extra requests (down_proj 1.5x), q8_0's
        // larger tiles faster with them (the head 6.9 -> 5.0 ms).
        if ((t1 - t0 >= 8 || F::kGroupBytes == Q8::kGroupBytes) && q + 2 < q1)
          for (int64_t b = 0; b < quad_bytes; b += 64)
            _mm_prefetch(reinterpret_cast<const char*>(quad + 2 * quad_bytes + b), _MM_HINT_T1);
        // rows r0 .. r0 + nr - 1 of this tile for tokens m .. m + nt - 1, whose sums are at
        // s[lane_of(nr * t + r)]
        auto emit = [&](const float* s, int r0, int nr, int64_t m, int nt) {
          for (int r = 0; r < nr && 4 * q + r0 + r < N; ++r) {
            const int64_t n = 4 * q + r0 + r;
            const float b = bp ? static_cast<float>(bp[n]) : 0.f;
            for (int t = 0; t < nt; ++t)
              op[(m + t) * N + n] = static_cast<T>(s[lane_of(nr * t + r)] + b);
          }
        };
        for (int64_t m = t0; m < t1;) {
          const int64_t rem = t1 - m;
          if (rem >= 8) {
            const int nt = rem >= 16 ? 16 : 8;
            for (int r0 = 0; r0 < 4; r0 += 2) {
              if (nt == 16) tile_pair<F, 16>(quad, r0, spans, acts, m, sums);
              else tile_pair<F, 8>(quad, r0, spans, acts, m, sums);
              emit(sums[0], r0, 1, m, nt);
              emit(sums[1], r0 + 1, 1, m, nt);
            }
            m += nt;
          } else {
            const int nt = static_cast<int>(std::min<int64_t>(4, rem));
            switch (nt) {
              case 1: tile_four<F, 1>(quad, spans, acts, m, sums[0]); break;
              case 2: tile_four<F, 2>(quad, spans, acts, m, sums[0]); break;
              case 3: tile_four<F, 3>(quad, spans, acts, m, sums[0]); break;
              default: tile_four<F, 4>(quad, spans, acts, m, sums[0]); break;
            }
            emit(sums[0], 0, 4, m, nt);
            m += nt;
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
