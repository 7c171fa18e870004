// One decoder layer of a decode step on a GGUF's own blocks, in one call: ggml_decode_layer.
//
// At batch 1 the 0.5B demo model's layer is ~2 ms of weight reads and, written as eager torch
// from Python, ~80 small calls (the projections' wrappers, the bias, rope's four ops, the cache
// writes, the attention and norm kernels, views and checks): ~0.3 ms a layer, a quarter of the
// step. Here the same steps run from C++: the projections, the attention, the norms and silu
// are the very kernels the eager path calls (through the dispatcher, so there is one copy of
// each), and the few steps that were torch ops (the bias, rope, the cache writes) are written
// to round exactly where those ops round. A layer's outputs are bit for bit the eager path's
// (tests/test_decode_layer.py).
//
// The caller (Qwen2Model.forward) takes this path only for a step of one new token per sequence,
// on CPU, with every projection in a type ggml.cpp computes and a cache of float or int8 rows.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "simd.h"

// rope's products and sum are each a torch op's rounding in the eager path: never one fma
#pragma GCC optimize("fp-contract=off")

namespace {

using qwq::load16;
using qwq::store16;

// The other kernels of this library, by their registered names.
at::Tensor linear_parts(const at::Tensor& x, at::TensorList ws, at::IntArrayRef types,
                        int64_t out_features) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("qwq::ggml_linear_parts", "")
                       .typed<at::Tensor(const at::Tensor&, at::TensorList, at::IntArrayRef,
                                         const c10::optional<at::Tensor>&, int64_t)>();
  return op.call(x, ws, types, c10::nullopt, out_features);
}

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc,
                            const at::Tensor& tables, const at::Tensor& lens, int64_t bs,
                            double scale) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("qwq::decode_attention", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, const at::Tensor&, int64_t, double)>();
  return op.call(q, kc, vc, tables, lens, bs, scale);
}

std::tuple<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& delta,
                                                const at::Tensor& w, double eps) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("qwq::add_rms_norm", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, double)>();
  return op.call(x, delta, w, eps);
}

at::Tensor silu_mul(const at::Tensor& gate_up) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("qwq::silu_mul", "")
                       .typed<at::Tensor(const at::Tensor&)>();
  return op.call(gate_up);
}

// 16 numbers of T rounded to T as a torch op's result would be, then read back as floats.
template <typename T>
inline __m512 rounded(__m512 v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    alignas(64) T tmp[16];
    store16(tmp, v);
    return load16(tmp);
  }
}

// Rope on one head of D numbers, as apply_rope_prepared: x * cos + roll(x, D / 2) * signed_sin,
// each product and the sum rounded to T. src and dst may be the same row.
template <typename T>
void rope_row(const T* src, const T* cos, const T* sin, T* dst, int64_t D) {
  const int64_t half = D / 2;
  alignas(64) T out[256];
  for (int64_t d = 0; d < D; d += 16) {
    const int64_t r = d < half ? d + half : d - half;  // roll by half: element d reads d - half
    const __m512 a = rounded<T>(_mm512_mul_ps(load16(src + d), load16(cos + d)));
    const __m512 b = rounded<T>(_mm512_mul_ps(load16(src + r), load16(sin + d)));
    store16(out + d, _mm512_add_ps(a, b));
  }
  std::memcpy(dst, out, D * sizeof(T));
}

// A row of D numbers of T into a float cache row of C (x.to(cache.dtype)).
template <typename T, typename C>
void store_row(const T* src, C* dst, int64_t D) {
  if constexpr (std::is_same_v<T, C>) {
    std::memcpy(dst, src, D * sizeof(T));
  } else {
    for (int64_t d = 0; d < D; d += 16) store16(dst + d, load16(src + d));
  }
}

// ... or into an int8 row: D codes, then the float16 scale, as kv_quant.quantize makes them
// (scale = max|x| / 127, at least 2^-14, rounded to float16; codes = x / that scale, rounded
// half to even, within +-127).
template <typename T>
void store_row(const T* src, int8_t* dst, int64_t D) {
  __m512 peak = _mm512_setzero_ps();
  for (int64_t d = 0; d < D; d += 16) peak = _mm512_max_ps(peak, _mm512_abs_ps(load16(src + d)));
  const float s = std::max(_mm512_reduce_max_ps(peak) / 127.f, 0x1p-14f);
  const uint16_t half = _cvtss_sh(s, _MM_FROUND_TO_NEAREST_INT);
  const __m512 scale = _mm512_set1_ps(_cvtsh_ss(half));
  for (int64_t d = 0; d < D; d += 16) {
    __m512 c = _mm512_roundscale_ps(_mm512_div_ps(load16(src + d), scale),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    c = _mm512_min_ps(_mm512_max_ps(c, _mm512_set1_ps(-127.f)), _mm512_set1_ps(127.f));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + d), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(c)));
  }
  std::memcpy(dst + D, &half, 2);
}

// qkv (B, (H + 2 KVH) D) after the bias: q's heads roped into q (B, H, D); k's roped and v's
// copied into the caches' rows at each token's slot.
template <typename T, typename C>
void rope_and_store(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin,
                    at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc,
                    const at::Tensor& slots, int64_t H, int64_t KVH, int64_t D) {
  const int64_t B = qkv.size(0), width = qkv.size(1), row_width = kc.size(2);
  const T* src = qkv.const_data_ptr<T>();
  const T* cp = cos.const_data_ptr<T>();
  const T* sp = sin.const_data_ptr<T>();
  const int64_t* sl = slots.const_data_ptr<int64_t>();
  T* qp = q.mutable_data_ptr<T>();
  C* kp = static_cast<C*>(kc.data_ptr());
  C* vp = static_cast<C*>(vc.data_ptr());
  alignas(64) T row[256];
  for (int64_t b = 0; b < B; ++b) {
    const T* t = src + b * width;
    const T* c = cp + b * D;
    const T* s = sp + b * D;
    for (int64_t h = 0; h < H; ++h) rope_row<T>(t + h * D, c, s, qp + (b * H + h) * D, D);
    C* krow = kp + sl[b] * KVH * row_width;
    C* vrow = vp + sl[b] * KVH * row_width;
    for (int64_t h = 0; h < KVH; ++h) {
      rope_row<T>(t + (H + h) * D, c, s, row, D);
      store_row<T>(row, krow + h * row_width, D);
      store_row<T>(t + (H + KVH + h) * D, vrow + h * row_width, D);
    }
  }
}

#define QWQ_FLOATS(dtype, NAME, TYPE, ...)                                \
  switch (dtype) {                                                        \
    case at::kFloat: { using TYPE = float; __VA_ARGS__; break; }          \
    case at::kBFloat16: { using TYPE = c10::BFloat16; __VA_ARGS__; break; } \
    case at::kHalf: { using TYPE = c10::Half; __VA_ARGS__; break; }       \
    default: TORCH_CHECK(false, NAME ": float32, bfloat16 or float16");   \
  }

int64_t rows_of(at::TensorList ws) {
  int64_t n = 0;
  for (const auto& w : ws) n += w.size(0);
  return n;
}

// x: the residual stream (B, hidden); h: this layer's input norm of it. weights: the parts of
// q|k|v, o, gate|up and down in order, `parts` of them each, in ggml `types`. Returns (x after
// the layer, next_norm of it), or (x after the layer, None) without a next norm.
std::tuple<at::Tensor, at::Tensor> ggml_decode_layer(
    const at::Tensor& x, const at::Tensor& h, at::TensorList weights, at::IntArrayRef types,
    at::IntArrayRef parts, const at::Tensor& qkv_bias, const at::Tensor& post_norm,
    const c10::optional<at::Tensor>& next_norm, double eps, const at::Tensor& cos,
    const at::Tensor& sin, const at::Tensor& k_cache, const at::Tensor& v_cache,
    const at::Tensor& slots, const at::Tensor& block_tables, const at::Tensor& context_lens,
    int64_t block_size, double scale, int64_t heads, int64_t kv_heads) {
  TORCH_CHECK(parts.size() == 4 && weights.size() == types.size(),
              "ggml_decode_layer: weights of q|k|v, o, gate|up and down, one type each");
  const int64_t B = x.size(0), D = cos.size(-1);
  const bool codes = k_cache.scalar_type() == at::kChar;
  TORCH_CHECK(x.dim() == 2 && h.sizes() == x.sizes() && x.is_contiguous() && h.is_contiguous() &&
                  h.scalar_type() == x.scalar_type(),
              "ggml_decode_layer: x and h (tokens, hidden), contiguous, one dtype");
  TORCH_CHECK(D % 32 == 0 && D <= 256 && k_cache.dim() == 3 && k_cache.size(1) == kv_heads &&
                  k_cache.size(2) == D + (codes ? 2 : 0) && v_cache.sizes() == k_cache.sizes() &&
                  k_cache.is_contiguous() && v_cache.is_contiguous() &&
                  k_cache.scalar_type() == v_cache.scalar_type(),
              "ggml_decode_layer: caches (slots, kv_heads, row) of head_dim float values or "
              "head_dim int8 codes and a float16 scale, head_dim a multiple of 32 up to 256");
  TORCH_CHECK(cos.sizes() == sin.sizes() && cos.numel() == B * D && cos.is_contiguous() &&
                  sin.is_contiguous() && cos.scalar_type() == x.scalar_type(),
              "ggml_decode_layer: cos and sin (tokens, 1, head_dim) in x's dtype");
  TORCH_CHECK(slots.scalar_type() == at::kLong && slots.numel() == B && slots.is_contiguous(),
              "ggml_decode_layer: one int64 slot per token");
  std::vector<at::TensorList> proj;
  size_t at = 0;
  for (int64_t n : parts) {
    TORCH_CHECK(n > 0 && at + n <= weights.size(), "ggml_decode_layer: parts must add up");
    proj.push_back(weights.slice(at, n));
    at += n;
  }
  TORCH_CHECK(at == weights.size(), "ggml_decode_layer: parts must add up");
  auto types_of = [&](size_t i) {
    size_t first = 0;
    for (size_t j = 0; j < i; ++j) first += parts[j];
    return types.slice(first, parts[i]);
  };
  const int64_t qkv_rows = rows_of(proj[0]);
  TORCH_CHECK(qkv_rows == (heads + 2 * kv_heads) * D && qkv_bias.numel() == qkv_rows,
              "ggml_decode_layer: q|k|v rows and bias must be (heads + 2 kv_heads) head_dim");

  at::Tensor qkv = linear_parts(h, proj[0], types_of(0), qkv_rows);
  qkv.add_(qkv_bias);  // as GGMLLinear adds it: to the rounded product, in the activation dtype
  at::Tensor q = at::empty({B, heads, D}, x.options());
  QWQ_FLOATS(x.scalar_type(), "ggml_decode_layer", T, {
    if (codes) {
      rope_and_store<T, int8_t>(qkv, cos, sin, q, k_cache, v_cache, slots, heads, kv_heads, D);
    } else {
      QWQ_FLOATS(k_cache.scalar_type(), "ggml_decode_layer caches", C,
        rope_and_store<T, C>(qkv, cos, sin, q, k_cache, v_cache, slots, heads, kv_heads, D));
    }
  });
  at::Tensor attn = decode_attention(q, k_cache, v_cache, block_tables, context_lens, block_size,
                                     scale);
  at::Tensor o = linear_parts(attn.view({B, heads * D}), proj[1], types_of(1), rows_of(proj[1]));
  auto [x1, h1] = add_rms_norm(x, o, post_norm, eps);
  at::Tensor gate_up = linear_parts(h1, proj[2], types_of(2), rows_of(proj[2]));
  at::Tensor down = linear_parts(silu_mul(gate_up), proj[3], types_of(3), rows_of(proj[3]));
  if (next_norm.has_value()) return add_rms_norm(x1, down, *next_norm, eps);
  return {x1.add(down), at::Tensor()};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(qwq, m) {
  m.def("ggml_decode_layer(Tensor x, Tensor h, Tensor[] weights, int[] types, int[] parts, "
        "Tensor qkv_bias, Tensor post_norm, Tensor? next_norm, float eps, Tensor cos, "
        "Tensor sin, Tensor k_cache, Tensor v_cache, Tensor slots, Tensor block_tables, "
        "Tensor context_lens, int block_size, float scale, int heads, int kv_heads) "
        "-> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(qwq, CPU, m) { m.impl("ggml_decode_layer", &ggml_decode_layer); }
