// Every decoder layer of a decode step on a GGUF's own blocks, in one call: ggml_decode_layers.
//
// At batch 1 the 0.5B demo model's layer is ~0.5 ms of weight reads and, written as eager torch
// from Python, ~80 small calls (the projections' wrappers, the bias, rope's four ops, the cache
// writes, the attention and norm kernels, views and checks): ~0.3 ms a layer, a quarter of the
// step; even one call a layer from Python cost ~50 us of argument conversion. Here the same
// steps run from C++: the projections, the attention, the norms and silu
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

// q|k|v plus its bias, rounded to the activation dtype as the eager in-place add rounds it.
template <typename T>
void add_bias(at::Tensor& qkv, const at::Tensor& bias) {
  const int64_t B = qkv.size(0), W = qkv.size(1);
  T* y = qkv.mutable_data_ptr<T>();
  const T* b = bias.const_data_ptr<T>();
  for (int64_t r = 0; r < B; ++r, y += W) {
    int64_t d = 0;
    for (; d + 16 <= W; d += 16) store16(y + d, _mm512_add_ps(load16(y + d), load16(b + d)));
    for (; d < W; ++d) y[d] = static_cast<T>(static_cast<float>(y[d]) + static_cast<float>(b[d]));
  }
}

// What one layer holds: its projections' parts and types, q|k|v's bias, its norms' weights.
struct Layer {
  at::TensorList proj[4];
  at::IntArrayRef types[4];
  const at::Tensor* qkv_bias;
  const at::Tensor* post_norm;
  const at::Tensor* next_norm;  // null: the last layer, which returns x alone
  const at::Tensor* k_cache;
  const at::Tensor* v_cache;
};

// What a step gives every layer.
struct Step {
  const at::Tensor& cos;
  const at::Tensor& sin;
  const at::Tensor& slots;
  const at::Tensor& block_tables;
  const at::Tensor& context_lens;
  int64_t block_size;
  double scale, eps;
  int64_t heads, kv_heads, D;
  bool codes;
};

std::tuple<at::Tensor, at::Tensor> layer(const at::Tensor& x, const at::Tensor& h, const Layer& l,
                                         const Step& s) {
  const int64_t B = x.size(0);
  at::Tensor qkv = linear_parts(h, l.proj[0], l.types[0], rows_of(l.proj[0]));
  at::Tensor q = at::empty({B, s.heads, s.D}, x.options());
  QWQ_FLOATS(x.scalar_type(), "ggml_decode_layers", T, {
    add_bias<T>(qkv, *l.qkv_bias);
    if (s.codes) {
      rope_and_store<T, int8_t>(qkv, s.cos, s.sin, q, *l.k_cache, *l.v_cache, s.slots, s.heads,
                                s.kv_heads, s.D);
    } else {
      QWQ_FLOATS(l.k_cache->scalar_type(), "ggml_decode_layers caches", C,
        rope_and_store<T, C>(qkv, s.cos, s.sin, q, *l.k_cache, *l.v_cache, s.slots, s.heads,
                             s.kv_heads, s.D));
    }
  });
  at::Tensor attn = decode_attention(q, *l.k_cache, *l.v_cache, s.block_tables, s.context_lens,
                                     s.block_size, s.scale);
  at::Tensor o = linear_parts(attn.view({B, s.heads * s.D}), l.proj[1], l.types[1],
                              rows_of(l.proj[1]));
  auto [x1, h1] = add_rms_norm(x, o, *l.post_norm, s.eps);
  at::Tensor gate_up = linear_parts(h1, l.proj[2], l.types[2], rows_of(l.proj[2]));
  at::Tensor down = linear_parts(silu_mul(gate_up), l.proj[3], l.types[3], rows_of(l.proj[3]));
  if (l.next_norm) return add_rms_norm(x1, down, *l.next_norm, s.eps);
  return {x1.add(down), at::Tensor()};
}

// x: the residual stream (B, hidden); h: the first layer's input norm of it. For each of the L
// layers: `parts` (4 a layer) counts its q|k|v, o, gate|up and down parts among `weights`, in
// ggml `types`; qkv_biases and post_norms hold one tensor a layer; next_norms the next layer's
// input norm, L - 1 of them, or L with the final norm; k_caches and v_caches (L, slots,
// kv_heads, row). Returns (x after the last layer, next norm of it), or (x, None) without one.
// One call a step rather than one a layer: a call from Python of this many arguments cost
// ~50 us, a tenth of a layer of the 0.5B demo model.
std::tuple<at::Tensor, at::Tensor> ggml_decode_layers(
    const at::Tensor& x, const at::Tensor& h, at::TensorList weights, at::IntArrayRef types,
    at::IntArrayRef parts, at::TensorList qkv_biases, at::TensorList post_norms,
    at::TensorList next_norms, double eps, const at::Tensor& cos, const at::Tensor& sin,
    const at::Tensor& k_caches, const at::Tensor& v_caches, const at::Tensor& slots,
    const at::Tensor& block_tables, const at::Tensor& context_lens, int64_t block_size,
    double scale, int64_t heads, int64_t kv_heads) {
  const int64_t L = static_cast<int64_t>(qkv_biases.size());
  TORCH_CHECK(L > 0 && static_cast<int64_t>(parts.size()) == 4 * L &&
                  static_cast<int64_t>(post_norms.size()) == L &&
                  (static_cast<int64_t>(next_norms.size()) == L ||
                   static_cast<int64_t>(next_norms.size()) == L - 1) &&
                  weights.size() == types.size(),
              "ggml_decode_layers: per layer 4 parts counts, a q|k|v bias and a post norm; "
              "L - 1 or L next norms; one type a weight");
  const int64_t B = x.size(0), D = cos.size(-1);
  const bool codes = k_caches.scalar_type() == at::kChar;
  TORCH_CHECK(x.dim() == 2 && h.sizes() == x.sizes() && x.is_contiguous() && h.is_contiguous() &&
                  h.scalar_type() == x.scalar_type(),
              "ggml_decode_layers: x and h (tokens, hidden), contiguous, one dtype");
  TORCH_CHECK(D % 32 == 0 && D <= 256 && k_caches.dim() == 4 && k_caches.size(0) == L &&
                  k_caches.size(2) == kv_heads && k_caches.size(3) == D + (codes ? 2 : 0) &&
                  v_caches.sizes() == k_caches.sizes() && k_caches.is_contiguous() &&
                  v_caches.is_contiguous() && k_caches.scalar_type() == v_caches.scalar_type(),
              "ggml_decode_layers: caches (layers, slots, kv_heads, row) of head_dim float "
              "values or head_dim int8 codes and a float16 scale, head_dim a multiple of 32 up "
              "to 256");
  TORCH_CHECK(cos.sizes() == sin.sizes() && cos.numel() == B * D && cos.is_contiguous() &&
                  sin.is_contiguous() && cos.scalar_type() == x.scalar_type(),
              "ggml_decode_layers: cos and sin (tokens, 1, head_dim) in x's dtype");
  TORCH_CHECK(slots.scalar_type() == at::kLong && slots.numel() == B && slots.is_contiguous(),
              "ggml_decode_layers: one int64 slot per token");
  std::vector<at::Tensor> ks = k_caches.unbind(0), vs = v_caches.unbind(0);
  std::vector<Layer> layers(L);
  size_t at = 0;
  for (int64_t i = 0; i < L; ++i) {
    Layer& l = layers[i];
    for (int j = 0; j < 4; ++j) {
      const int64_t n = parts[4 * i + j];
      TORCH_CHECK(n > 0 && at + n <= weights.size(), "ggml_decode_layers: parts must add up");
      l.proj[j] = weights.slice(at, n);
      l.types[j] = types.slice(at, n);
      at += n;
    }
    const int64_t qkv_rows = rows_of(l.proj[0]);
    TORCH_CHECK(qkv_rows == (heads + 2 * kv_heads) * D && qkv_biases[i].numel() == qkv_rows &&
                    qkv_biases[i].is_contiguous() && qkv_biases[i].scalar_type() == x.scalar_type(),
                "ggml_decode_layers: q|k|v rows and bias must be (heads + 2 kv_heads) head_dim, "
                "the bias in x's dtype");
    l.qkv_bias = &qkv_biases[i];
    l.post_norm = &post_norms[i];
    l.next_norm = i < static_cast<int64_t>(next_norms.size()) ? &next_norms[i] : nullptr;
    l.k_cache = &ks[i];
    l.v_cache = &vs[i];
  }
  TORCH_CHECK(at == weights.size(), "ggml_decode_layers: parts must add up");
  const Step step{cos, sin, slots, block_tables, context_lens, block_size, scale, eps, heads,
                  kv_heads, D, codes};
  std::tuple<at::Tensor, at::Tensor> out{x, h};
  for (const Layer& l : layers) out = layer(std::get<0>(out), std::get<1>(out), l, step);
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(qwq, m) {
  m.def("ggml_decode_layers(Tensor x, Tensor h, Tensor[] weights, int[] types, int[] parts, "
        "Tensor[] qkv_biases, Tensor[] post_norms, Tensor[] next_norms, float eps, Tensor cos, "
        "Tensor sin, Tensor k_caches, Tensor v_caches, Tensor slots, Tensor block_tables, "
        "Tensor context_lens, int block_size, float scale, int heads, int kv_heads) "
        "-> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(qwq, CPU, m) { m.impl("ggml_decode_layers", &ggml_decode_layers); }
