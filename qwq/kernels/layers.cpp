// The per-token layers of a decode step, fused: each was 4-12 eager torch ops, and at batch 1
// the ops' fixed costs, not their arithmetic, were a quarter of the step.
//   decode_attention: one query per sequence over its paged K/V (scores, softmax, weighted sum)
//   rms_norm, add_rms_norm: RMSNorm as the reference computes it (normalize in float32, round to
//     the activation dtype, then scale), the second after adding the residual branch
//   silu_mul: silu(gate) * up over the fused gate|up output
//   greedy_tokens: each row's argmax over float32 logits (torch's max over Qwen's 152K logits
//     took 0.2-0.3 ms a token, ~1% of the 0.5B demo model's decode step)
// Rows (tokens, or a sequence's kv head) are independent and computed the same way at any
// batch size.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels.h"
#include "simd.h"

namespace {

using qwq::exp_nonpositive;
using qwq::load16;
using qwq::store16;

// Cache rows as decode_attention reads them: `row` finds a (slot, kv head) row, `load` gives
// 16 of its numbers as floats and `scale` the factor they all take. Scores and weights take
// the scale once per row (q . (c k) = c (q . k)) instead of once per number.
template <typename T>
struct FloatRows {  // float32, bfloat16 or float16 values
  const T* p;
  int64_t width;
  const T* row(int64_t r) const { return p + r * width; }
  int64_t row_bytes() const { return width * static_cast<int64_t>(sizeof(T)); }
  float scale(const T*) const { return 1.f; }
  static __m512 load(const T* row, int64_t d) { return load16(row + d); }
};

struct Int8Codes {
  static __m512 load16(const uint8_t* c) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c))));
  }
};

struct Fp8Codes {  // float8 e4m3fn
  // The bits s.eeee.mmm placed at a float32's sign bit and at the low end of its exponent and
  // the top of its mantissa read as the code times 2^-120 (exponent bias 127 against 7), the
  // subnormal codes too; one multiply restores the scale. (With denormals flushed, codes under
  // 2^-6, 1/28000 of a row's largest, would read 0.)
  static __m512 load16(const uint8_t* c) {
    const __m512i x = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c)));
    const __m512i sign = _mm512_slli_epi32(_mm512_and_si512(x, _mm512_set1_epi32(0x80)), 24);
    const __m512i rest = _mm512_slli_epi32(_mm512_and_si512(x, _mm512_set1_epi32(0x7f)), 20);
    return _mm512_mul_ps(_mm512_castsi512_ps(_mm512_or_si512(sign, rest)), _mm512_set1_ps(0x1p120f));
  }
};

// Quantized rows (qwq/model/kv_quant.py): D one-byte codes, then the row's float16 scale.
template <typename Codes>
struct QuantRows {
  const uint8_t* p;
  int64_t width;  // D + 2
  const uint8_t* row(int64_t r) const { return p + r * width; }
  int64_t row_bytes() const { return width; }
  float scale(const uint8_t* row) const {
    uint16_t h;
    std::memcpy(&h, row + width - 2, 2);
    return _cvtsh_ss(h);
  }
  static __m512 load(const uint8_t* row, int64_t d) { return Codes::load16(row + d); }
};

// Sixteen vectors' sums, one a lane, each summed in _mm512_reduce_add_ps's order (lanes i and
// i + 8, then those 4 apart, 2 apart, 1 apart): a[4 (j % 4) + j / 4] in lane j. Two vectors'
// steps share each shuffle, so sixteen sums take 45 instructions where sixteen reductions took
// ~130 in a long dependent chain.
QWQ_INLINE __m512 sums16(const __m512 (&a)[16]) {
  __m512 p[8], q[4], r[2];
  for (int j = 0; j < 8; ++j)  // lanes i + i + 8: [a.L0 + a.L2, a.L1 + a.L3, b.L0 + b.L2, ...]
    p[j] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * j], a[2 * j + 1], 0x44),
                         _mm512_shuffle_f32x4(a[2 * j], a[2 * j + 1], 0xEE));
  for (int j = 0; j < 4; ++j)  // + those 4 apart: 128-bit lane k holds input 4j + k's four
    q[j] = _mm512_add_ps(_mm512_shuffle_f32x4(p[2 * j], p[2 * j + 1], 0x88),
                         _mm512_shuffle_f32x4(p[2 * j], p[2 * j + 1], 0xDD));
  for (int j = 0; j < 2; ++j)  // + 2 apart
    r[j] = _mm512_add_ps(_mm512_shuffle_ps(q[2 * j], q[2 * j + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(q[2 * j], q[2 * j + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  return _mm512_add_ps(_mm512_shuffle_ps(r[0], r[1], _MM_SHUFFLE(2, 0, 2, 0)),  // + 1 apart
                       _mm512_shuffle_ps(r[0], r[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

// Positions go in blocks of 16, each block's K and V rows converted to float once for all G
// query heads of the kv head. A block's scores come out of one sums16 a head; its weighted sum
// keeps each 16 outputs of a head in a register through the block. Each score and each output
// is the same sequence of roundings as one position at a time: q . k summed by a reduction, the
// weighted values added in position order.
template <typename T, typename Rows>
void decode_attention_impl(const at::Tensor& q, const Rows& kr, const Rows& vr, int64_t KVH,
                           int64_t slots, const at::Tensor& tables, const at::Tensor& lens,
                           int64_t bs, double scale, at::Tensor& out, qwq::kernels::Share share) {
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t G = H / KVH, maxb = tables.size(1);
  const T* qp = q.data_ptr<T>();
  const int64_t* tp = tables.data_ptr<int64_t>();
  const int64_t* lp = lens.data_ptr<int64_t>();
  T* op = out.data_ptr<T>();
  const float sc = static_cast<float>(scale);
  auto tasks = [&](int64_t i0, int64_t i1) {
    std::vector<float> qf(G * D), acc(G * D), rows(16 * D), s;
    std::vector<int64_t> slot_of;
    alignas(64) float row_scale[16] = {}, weight[2][16];
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / KVH, kh = i % KVH, L = lp[b];
      TORCH_CHECK(L > 0 && L <= maxb * bs, "decode_attention: context length ", L, " of sequence ",
                  b, " does not fit its block table");
      // each position's cache row, found once for K and V and without a division a row (two
      // integer divisions a row were a third of the time a row took to stage from L3)
      slot_of.resize(L);
      for (int64_t l = 0, blk = 0; l < L; ++blk) {
        const int64_t first = tp[b * maxb + blk] * bs;
        for (int64_t k = 0; k < bs && l < L; ++k, ++l) {
          const int64_t slot = first + k;
          TORCH_CHECK(slot >= 0 && slot < slots, "decode_attention: slot ", slot, " out of range");
          slot_of[l] = slot * KVH + kh;
        }
      }
      // The cache rows of positions l0 .. l0 + n - 1 as floats in `rows`, their scales. The
      // rows two blocks of 16 on are fetched meanwhile: a sequence's blocks lie anywhere in the
      // cache, where the hardware's prefetchers, which follow a stream within a 4 KB page, do not
      // find them, and the layer's weights have streamed through the caches since the rows were
      // written (the demo's shape at 2048 positions, cache rows in memory: 2.2x faster, 1.5x
      // at 512; fetching the first blocks ahead too made it slower).
      auto stage = [&](const Rows& r, int64_t l0, int64_t n) {
        for (int64_t j = l0 + 32; j < std::min(L, l0 + 48); ++j) {
          const char* row = reinterpret_cast<const char*>(r.row(slot_of[j]));
          for (int64_t o = 0; o < r.row_bytes(); o += 64) _mm_prefetch(row + o, _MM_HINT_T0);
        }
        for (int64_t j = 0; j < n; ++j) {
          const auto* row = r.row(slot_of[l0 + j]);
          row_scale[j] = r.scale(row);
          for (int64_t d = 0; d < D; d += 16) _mm512_storeu_ps(&rows[j * D + d], Rows::load(row, d));
        }
      };
      s.assign(G * L, 0.f);
      for (int64_t g = 0; g < G; ++g)
        for (int64_t d = 0; d < D; d += 16)
          _mm512_storeu_ps(&qf[g * D + d], _mm512_mul_ps(load16(qp + (b * H + kh * G + g) * D + d),
                                                         _mm512_set1_ps(sc)));
      // scores: q . k for every cached position
      for (int64_t l0 = 0; l0 < L; l0 += 16) {
        const int64_t n = std::min<int64_t>(16, L - l0);
        const __mmask16 first_n = static_cast<__mmask16>((1u << n) - 1);
        stage(kr, l0, n);
        for (int64_t g = 0; g < G; ++g) {
          // sums16's lane 4 (j % 4) + j / 4 is position j: dots[4 m + k] is position 4 k + m,
          // four positions' products at a time (four fma chains in flight)
          __m512 dots[16];
          for (int m = 0; m < 4; ++m) {
            __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                           _mm512_setzero_ps()};
            for (int64_t d = 0; d < D; d += 16) {
              const __m512 qv = _mm512_loadu_ps(&qf[g * D + d]);
              for (int k = 0; k < 4; ++k)  // rows past n are stale and their sums unused
                a[k] = _mm512_fmadd_ps(qv, _mm512_loadu_ps(&rows[(4 * k + m) * D + d]), a[k]);
            }
            for (int k = 0; k < 4; ++k) dots[4 * m + k] = a[k];
          }
          _mm512_mask_storeu_ps(&s[g * L + l0], first_n,
                                _mm512_mul_ps(_mm512_loadu_ps(row_scale), sums16(dots)));
        }
      }
      // softmax numerators (the division waits for the end)
      std::vector<float> total(G);
      for (int64_t g = 0; g < G; ++g) {
        float* row = &s[g * L];
        // the largest score, sixteen lanes at a time (a max rounds nothing: any order gives it;
        // one at a time it was a chain of L dependent steps a head)
        __m512 peak = _mm512_set1_ps(-INFINITY);
        int64_t l = 0;
        for (; l + 16 <= L; l += 16) peak = _mm512_max_ps(peak, _mm512_loadu_ps(row + l));
        float mx = _mm512_reduce_max_ps(peak);
        for (; l < L; ++l) mx = std::max(mx, row[l]);
        __m512 sum = _mm512_setzero_ps();
        l = 0;
        for (; l + 16 <= L; l += 16) {
          __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(row + l), _mm512_set1_ps(mx)));
          _mm512_storeu_ps(row + l, e);
          sum = _mm512_add_ps(sum, e);
        }
        if (l < L) {
          const __mmask16 m = static_cast<__mmask16>((1u << (L - l)) - 1);
          __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, row + l), _mm512_set1_ps(mx)));
          e = _mm512_maskz_mov_ps(m, e);
          _mm512_mask_storeu_ps(row + l, m, e);
          sum = _mm512_add_ps(sum, e);
        }
        total[g] = _mm512_reduce_add_ps(sum);
      }
      // weighted sum of values
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t l0 = 0; l0 < L; l0 += 16) {
        const int64_t n = std::min<int64_t>(16, L - l0);
        stage(vr, l0, n);
        const __mmask16 first_n = static_cast<__mmask16>((1u << n) - 1);
        const __m512 scales = _mm512_loadu_ps(row_scale);
        for (int64_t g = 0; g < G; g += 2) {
          const int heads = g + 1 < G ? 2 : 1;
          for (int h = 0; h < heads; ++h)
            _mm512_storeu_ps(weight[h], _mm512_mul_ps(
                _mm512_maskz_loadu_ps(first_n, &s[(g + h) * L + l0]), scales));
          // heads g and g + 1's outputs d .. d + 16 C - 1 += the block's weighted rows in
          // position order: 2 C fma chains in flight (C alone waited on each fma's latency)
          auto weigh = [&](auto chunks, auto pair, int64_t d) {
            constexpr int C = decltype(chunks)::value, P = decltype(pair)::value;
            __m512 o[P][C];
            for (int h = 0; h < P; ++h)
              for (int k = 0; k < C; ++k) o[h][k] = _mm512_loadu_ps(&acc[(g + h) * D + d + 16 * k]);
            for (int64_t j = 0; j < n; ++j)
              for (int h = 0; h < P; ++h) {
                const __m512 w = _mm512_set1_ps(weight[h][j]);
                for (int k = 0; k < C; ++k)
                  o[h][k] = _mm512_fmadd_ps(w, _mm512_loadu_ps(&rows[j * D + d + 16 * k]), o[h][k]);
              }
            for (int h = 0; h < P; ++h)
              for (int k = 0; k < C; ++k) _mm512_storeu_ps(&acc[(g + h) * D + d + 16 * k], o[h][k]);
          };
          auto weigh_all = [&](auto pair) {
            int64_t d = 0;
            for (; d + 64 <= D; d += 64) weigh(std::integral_constant<int, 4>{}, pair, d);
            for (; d < D; d += 16) weigh(std::integral_constant<int, 1>{}, pair, d);
          };
          if (heads == 2) weigh_all(std::integral_constant<int, 2>{});
          else weigh_all(std::integral_constant<int, 1>{});
        }
      }
      for (int64_t g = 0; g < G; ++g) {
        const __m512 inv = _mm512_set1_ps(1.f / total[g]);
        for (int64_t d = 0; d < D; d += 16)
          store16(op + (b * H + kh * G + g) * D + d, _mm512_mul_ps(_mm512_loadu_ps(&acc[g * D + d]), inv));
      }
    }
  };
  if (share.whole()) return at::parallel_for(0, B * KVH, 1, tasks);
  const auto [i0, i1] = share.of(B * KVH);
  if (i0 < i1) tasks(i0, i1);
}

#define QWQ_FLOAT_TYPES(dtype, NAME, ...)                                   \
  switch (dtype) {                                                          \
    case at::kFloat: { using scalar = float; __VA_ARGS__; break; }          \
    case at::kBFloat16: { using scalar = c10::BFloat16; __VA_ARGS__; break; } \
    case at::kHalf: { using scalar = c10::Half; __VA_ARGS__; break; }       \
    default: TORCH_CHECK(false, NAME ": float32, bfloat16 or float16");     \
  }

// q in T; the caches in their own storage: float values of any width, or int8 / fp8 codes
template <typename T>
void decode_attention_over(const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc,
                           const at::Tensor& tables, const at::Tensor& lens, int64_t bs,
                           double scale, at::Tensor& out, qwq::kernels::Share share) {
  const int64_t KVH = kc.size(1), slots = kc.size(0), width = kc.size(2);
  auto bytes = [](const at::Tensor& t) { return static_cast<const uint8_t*>(t.data_ptr()); };
  switch (kc.scalar_type()) {
    case at::kChar: {
      using Rows = QuantRows<Int8Codes>;
      decode_attention_impl<T>(q, Rows{bytes(kc), width}, Rows{bytes(vc), width}, KVH, slots,
                               tables, lens, bs, scale, out, share);
      break;
    }
    case at::kFloat8_e4m3fn: {
      using Rows = QuantRows<Fp8Codes>;
      decode_attention_impl<T>(q, Rows{bytes(kc), width}, Rows{bytes(vc), width}, KVH, slots,
                               tables, lens, bs, scale, out, share);
      break;
    }
    default:
      QWQ_FLOAT_TYPES(kc.scalar_type(), "decode_attention caches", {
        using Rows = FloatRows<scalar>;
        decode_attention_impl<T>(q, Rows{kc.data_ptr<scalar>(), width},
                                 Rows{vc.data_ptr<scalar>(), width}, KVH, slots, tables, lens,
                                 bs, scale, out, share);
      });
  }
}

}  // namespace

namespace qwq::kernels {

void decode_attention_into(const at::Tensor& q, const at::Tensor& k_cache,
                           const at::Tensor& v_cache, const at::Tensor& block_tables,
                           const at::Tensor& context_lens, int64_t block_size, double scale,
                           at::Tensor& out, Share share) {
  TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 3 && v_cache.sizes() == k_cache.sizes(),
              "decode_attention: q (B, H, D), caches (slots, kv_heads, row width)");
  TORCH_CHECK(q.size(2) % 16 == 0 && q.size(1) % k_cache.size(1) == 0,
              "decode_attention: head_dim must be a multiple of 16 and heads a multiple of kv_heads");
  const auto cache_type = k_cache.scalar_type();
  const bool quantized = cache_type == at::kChar || cache_type == at::kFloat8_e4m3fn;
  TORCH_CHECK(v_cache.scalar_type() == cache_type, "decode_attention: the caches must share a dtype");
  TORCH_CHECK(k_cache.size(2) == q.size(2) + (quantized ? 2 : 0),
              "decode_attention: cache rows of head_dim values, or of head_dim int8/fp8 codes and "
              "a float16 scale");
  TORCH_CHECK(q.is_contiguous() && k_cache.is_contiguous() && v_cache.is_contiguous(),
              "decode_attention: contiguous tensors");
  for (const at::Tensor* t : {&q, &k_cache, &v_cache, &block_tables, &context_lens,
                              static_cast<const at::Tensor*>(&out)})
    TORCH_CHECK(t->device().is_cpu(), "decode_attention: CPU tensors");
  TORCH_CHECK(block_tables.scalar_type() == at::kLong && context_lens.scalar_type() == at::kLong &&
                  block_tables.dim() == 2 && block_tables.size(0) == q.size(0) &&
                  context_lens.numel() == q.size(0) && block_tables.is_contiguous() && context_lens.is_contiguous(),
              "decode_attention: int64 block_tables (B, max_blocks) and context_lens (B,)");
  TORCH_CHECK(out.sizes() == q.sizes() && out.scalar_type() == q.scalar_type() &&
                  out.is_contiguous(),
              "decode_attention: out must be a contiguous tensor like q");
  QWQ_FLOAT_TYPES(q.scalar_type(), "decode_attention",
      decode_attention_over<scalar>(q, k_cache, v_cache, block_tables, context_lens, block_size,
                                    scale, out, share));
}

}  // namespace qwq::kernels

namespace {

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                            const at::Tensor& block_tables, const at::Tensor& context_lens,
                            int64_t block_size, double scale) {
  at::Tensor out = at::empty_like(q, at::MemoryFormat::Contiguous);
  qwq::kernels::decode_attention_into(q, k_cache, v_cache, block_tables, context_lens, block_size,
                                      scale, out);
  return out;
}

// y = w * round(x / rms(x)); with a residual: x += delta first (rounded, as the eager add), and
// the new x is returned too. Columns [c0, c1) of each row are written; the sum is the whole
// row's.
template <typename T>
void rms_norm_rows(const T* x, const T* delta, T* sum_out, const T* w, T* y, int64_t r0,
                   int64_t r1, int64_t D, double eps, int64_t c0, int64_t c1) {
  c10::SmallVector<T, 8192> sum(delta ? D : 0);
  alignas(64) T tmp[16];
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = x + r * D;
    if (delta) {  // the residual add, rounded to T as torch's add rounds it
      for (int64_t d = 0; d < D; d += 16)
        store16(sum.data() + d, _mm512_add_ps(load16(xr + d), load16(delta + r * D + d)));
      std::memcpy(sum_out + r * D + c0, sum.data() + c0, (c1 - c0) * sizeof(T));
      xr = sum.data();
    }
    __m512 ss = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; d += 16) {
      const __m512 v = load16(xr + d);
      ss = _mm512_fmadd_ps(v, v, ss);
    }
    const float inv = 1.f / std::sqrt(_mm512_reduce_add_ps(ss) / static_cast<float>(D) + static_cast<float>(eps));
    for (int64_t d = c0; d < c1; d += 16) {
      store16(tmp, _mm512_mul_ps(load16(xr + d), _mm512_set1_ps(inv)));
      store16(y + r * D + d, _mm512_mul_ps(load16(tmp), load16(w + d)));
    }
  }
}

template <typename T>
void rms_norm_impl(const T* x, const T* delta, T* sum_out, const T* w, T* y, int64_t rows,
                   int64_t D, double eps, qwq::kernels::Share share) {
  if (share.whole())
    return at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
      rms_norm_rows(x, delta, sum_out, w, y, r0, r1, D, eps, 0, D);
    });
  const auto [c0, c1] = share.of(D, share.unit);
  if (c0 < c1) rms_norm_rows(x, delta, sum_out, w, y, 0, rows, D, eps, c0, c1);
}

void check_norm(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && w.dim() == 1 && w.size(0) == x.size(1) &&
                  w.scalar_type() == x.scalar_type() && x.size(1) % 16 == 0 && w.is_contiguous(),
              "rms_norm: x (rows, D) contiguous, D a multiple of 16, weight (D,) in x's dtype");
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "rms_norm: CPU tensors");
}

void check_like(const at::Tensor& out, const at::Tensor& x, const char* what) {
  TORCH_CHECK(out.sizes() == x.sizes() && out.scalar_type() == x.scalar_type() &&
                  out.is_contiguous() && out.device().is_cpu() && !out.is_same(x),
              what, ": outputs must be contiguous tensors like x, not x itself");
}

}  // namespace

namespace qwq::kernels {

void rms_norm_into(const at::Tensor& x, const at::Tensor& w, double eps, at::Tensor& y,
                   Share share) {
  check_norm(x, w);
  check_like(y, x, "rms_norm");
  QWQ_FLOAT_TYPES(x.scalar_type(), "rms_norm",
      rms_norm_impl<scalar>(x.data_ptr<scalar>(), nullptr, nullptr, w.data_ptr<scalar>(),
                            y.data_ptr<scalar>(), x.size(0), x.size(1), eps, share));
}

void add_rms_norm_into(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& w,
                       double eps, at::Tensor& sum, at::Tensor& y, Share share) {
  check_norm(x, w);
  TORCH_CHECK(delta.sizes() == x.sizes() && delta.scalar_type() == x.scalar_type() &&
                  delta.is_contiguous() && delta.device().is_cpu(),
              "add_rms_norm: delta must match x");
  check_like(sum, x, "add_rms_norm");
  check_like(y, x, "add_rms_norm");
  TORCH_CHECK(!sum.is_same(delta) && !y.is_same(delta) && !sum.is_same(y),
              "add_rms_norm: the sum and the norm are two new tensors");
  QWQ_FLOAT_TYPES(x.scalar_type(), "add_rms_norm",
      rms_norm_impl<scalar>(x.data_ptr<scalar>(), delta.data_ptr<scalar>(), sum.data_ptr<scalar>(),
                            w.data_ptr<scalar>(), y.data_ptr<scalar>(), x.size(0), x.size(1), eps,
                            share));
}

}  // namespace qwq::kernels

namespace {

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  at::Tensor y = at::empty(x.sizes(), x.options());
  qwq::kernels::rms_norm_into(x, w, eps, y);
  return y;
}

std::tuple<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& delta,
                                                const at::Tensor& w, double eps) {
  at::Tensor sum = at::empty(x.sizes(), x.options()), y = at::empty(x.sizes(), x.options());
  qwq::kernels::add_rms_norm_into(x, delta, w, eps, sum, y);
  return {sum, y};
}

// silu(gate) * up, each product rounded once (x / (1 + e^-x) in float32)
template <typename T>
void silu_mul_impl(const T* gu, T* y, int64_t rows, int64_t I, qwq::kernels::Share share) {
  auto part = [&](int64_t r0, int64_t r1, int64_t i0, int64_t i1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* g = gu + r * 2 * I;
      const T* u = g + I;
      for (int64_t i = i0; i < i1; i += 16) {
        const __m512 x = load16(g + i);
        // e^-|x| keeps exp's argument non-positive; for x < 0, silu = x e^x / (1 + e^x)
        const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(x)));
        const __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
        const __m512 num = _mm512_mask_mul_ps(x, neg, x, e);
        const __m512 silu = _mm512_div_ps(num, _mm512_add_ps(_mm512_set1_ps(1.f), e));
        store16(y + r * I + i, _mm512_mul_ps(silu, load16(u + i)));
      }
    }
  };
  if (share.whole())
    return at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) { part(r0, r1, 0, I); });
  const auto [i0, i1] = share.of(I, share.unit);
  if (i0 < i1) part(0, rows, i0, i1);
}

}  // namespace

namespace qwq::kernels {

void silu_mul_into(const at::Tensor& gate_up, at::Tensor& y, Share share) {
  TORCH_CHECK(gate_up.dim() == 2 && gate_up.is_contiguous() && gate_up.size(1) % 32 == 0 &&
                  gate_up.device().is_cpu(),
              "silu_mul: gate_up (rows, 2I) contiguous on the CPU, I a multiple of 16");
  const int64_t I = gate_up.size(1) / 2;
  TORCH_CHECK(y.dim() == 2 && y.size(0) == gate_up.size(0) && y.size(1) == I &&
                  y.scalar_type() == gate_up.scalar_type() && y.is_contiguous() &&
                  y.device().is_cpu(),
              "silu_mul: out must be a contiguous (rows, I) tensor of gate_up's dtype");
  QWQ_FLOAT_TYPES(gate_up.scalar_type(), "silu_mul",
      silu_mul_impl<scalar>(gate_up.data_ptr<scalar>(), y.data_ptr<scalar>(), gate_up.size(0), I,
                            share));
}

}  // namespace qwq::kernels

namespace {

at::Tensor silu_mul(const at::Tensor& gate_up) {
  TORCH_CHECK(gate_up.dim() == 2, "silu_mul: gate_up (rows, 2I) contiguous, I a multiple of 16");
  at::Tensor y = at::empty({gate_up.size(0), gate_up.size(1) / 2}, gate_up.options());
  qwq::kernels::silu_mul_into(gate_up, y);
  return y;
}

// Each row's first index of its largest value, as torch.max(-1) picks it; -1 for a row holding a
// NaN (torch.max would return the NaN's index: the caller fails such a row either way).
at::Tensor greedy_tokens(const at::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 2 && logits.is_contiguous() && logits.scalar_type() == at::kFloat &&
                  logits.size(1) > 0,
              "greedy_tokens: logits (rows, vocab) float32, contiguous");
  const int64_t B = logits.size(0), V = logits.size(1);
  at::Tensor out = at::empty({B}, logits.options().dtype(at::kLong));
  const float* p = logits.const_data_ptr<float>();
  int64_t* o = out.mutable_data_ptr<int64_t>();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const float* row = p + b * V;
      __m512 top = _mm512_set1_ps(-INFINITY);
      __mmask16 nan = 0;
      int64_t v = 0;
      for (; v + 16 <= V; v += 16) {
        const __m512 x = _mm512_loadu_ps(row + v);
        nan |= _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
        top = _mm512_max_ps(top, x);
      }
      float best = _mm512_reduce_max_ps(top);
      bool has_nan = nan != 0;
      for (int64_t t = v; t < V; ++t) {
        has_nan |= std::isnan(row[t]);
        best = std::max(best, row[t]);
      }
      int64_t at = -1;
      if (!has_nan) {
        const __m512 target = _mm512_set1_ps(best);
        for (v = 0; at < 0 && v + 16 <= V; v += 16) {
          const __mmask16 hit = _mm512_cmp_ps_mask(_mm512_loadu_ps(row + v), target, _CMP_EQ_OQ);
          if (hit) at = v + __builtin_ctz(hit);
        }
        for (int64_t t = v; at < 0 && t < V; ++t)
          if (row[t] == best) at = t;
      }
      o[b] = at;
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(qwq, m) {
  m.def("decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, "
        "Tensor context_lens, int block_size, float scale) -> Tensor");
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("add_rms_norm(Tensor x, Tensor delta, Tensor weight, float eps) -> (Tensor, Tensor)");
  m.def("silu_mul(Tensor gate_up) -> Tensor");
  m.def("greedy_tokens(Tensor logits) -> Tensor");
}

TORCH_LIBRARY_IMPL(qwq, CPU, m) {
  m.impl("decode_attention", &decode_attention);
  m.impl("rms_norm", &rms_norm);
  m.impl("add_rms_norm", &add_rms_norm);
  m.impl("silu_mul", &silu_mul);
  m.impl("greedy_tokens", &greedy_tokens);
}
