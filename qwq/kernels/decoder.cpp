// Every decoder layer of a decode step on a GGUF's own blocks, in one call: DecodeLayers.step.
//
// At batch 1 the 0.5B demo model's layer is ~0.5 ms of weight reads and, written as eager torch
// from Python, ~80 small calls (the projections' wrappers, the bias, rope's four ops, the cache
// writes, the attention and norm kernels, views and checks): ~0.3 ms a layer, a quarter of the
// step; even one call a layer from Python cost ~50 us of argument conversion. Here the same
// steps run from C++: the projections, the attention, the norms and silu
// are the very kernels the eager path calls (their *_into forms, kernels.h, so there is one copy
// of each), and the few steps that were torch ops (the bias, rope, the cache writes) are written
// to round exactly where those ops round. A layer's outputs are bit for bit the eager path's
// (tests/test_decode_layer.py).
//
// The caller (Qwen2Model.forward) takes this path only for a step of one new token per sequence,
// on CPU, with every projection in a type ggml.cpp computes and a cache of float or int8 rows;
// rope's lookups, the first layer's input norm, the final norm and the head are in the call too.
//
// torch's threads step the layers as one team, in one parallel region a step: each phase (a
// projection's rows, rope and attention by kv group, a norm's or silu's columns, the activation
// records) is shared out among them, with a spin barrier where a phase needs another thread's
// results. A kernel call a phase, each its own fork and join of the threads, cost ~1.2 us a fork
// and the small phases ran on one core; in the fast-bandwidth state of the AMD Zen 5 host the
// team's step was 4.6% faster (steps alternated in one decode, same tokens).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <omp.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <numeric>
#include <thread>
#include <vector>

#include "kernels.h"
#include "simd.h"

// rope's products and sum are each a torch op's rounding in the eager path: never one fma
#pragma GCC optimize("fp-contract=off")

namespace {

using qwq::load16;
using qwq::store16;

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

// D numbers of qkv's row plus the bias, rounded to T as the eager in-place add rounds them.
template <typename T>
void add_bias(T* y, const T* b, int64_t D) {
  for (int64_t d = 0; d < D; d += 16) store16(y + d, _mm512_add_ps(load16(y + d), load16(b + d)));
}

// The heads of qkv (B, (H + 2 KVH) D) by kv group: task u is kv head u % KVH of token u / KVH,
// with the G = H / KVH query heads that read it (attention's tasks, so the thread that ropes a
// group attends with it). Each head's columns get their bias; q's heads are roped into q
// (B, H, D), k's roped and v's copied into the caches' rows at the token's slot.
template <typename T, typename C>
void rope_and_store(const at::Tensor& qkv, const at::Tensor& bias, const at::Tensor& cos,
                    const at::Tensor& sin, at::Tensor& q, const at::Tensor& kc,
                    const at::Tensor& vc, const at::Tensor& slots, int64_t H, int64_t KVH,
                    int64_t D, int64_t u0, int64_t u1) {
  const int64_t width = qkv.size(1), row_width = kc.size(2), G = H / KVH;
  T* src = qkv.mutable_data_ptr<T>();
  const T* bp = bias.const_data_ptr<T>();
  const T* cp = cos.const_data_ptr<T>();
  const T* sp = sin.const_data_ptr<T>();
  const int64_t* sl = slots.const_data_ptr<int64_t>();
  T* qp = q.mutable_data_ptr<T>();
  C* kp = static_cast<C*>(kc.data_ptr());
  C* vp = static_cast<C*>(vc.data_ptr());
  alignas(64) T row[256];
  for (int64_t u = u0; u < u1; ++u) {
    const int64_t b = u / KVH, kh = u % KVH;
    T* t = src + b * width;
    const T* c = cp + b * D;
    const T* s = sp + b * D;
    for (int64_t h = kh * G; h < (kh + 1) * G; ++h) {
      add_bias<T>(t + h * D, bp + h * D, D);
      rope_row<T>(t + h * D, c, s, qp + (b * H + h) * D, D);
    }
    const int64_t k = (H + kh) * D, v = (H + KVH + kh) * D;
    add_bias<T>(t + k, bp + k, D);
    add_bias<T>(t + v, bp + v, D);
    rope_row<T>(t + k, c, s, row, D);
    store_row<T>(row, kp + (sl[b] * KVH + kh) * row_width, D);
    store_row<T>(t + v, vp + (sl[b] * KVH + kh) * row_width, D);
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

// What one layer holds: its projections' parts and types, q|k|v's bias, its norms' weights.
struct Layer {
  at::TensorList proj[4];
  at::IntArrayRef types[4];
  const at::Tensor* qkv_bias;
  const at::Tensor* post_norm;
  const at::Tensor* next_norm;  // the next layer's input norm; the last layer's: the final norm
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

// A step's activations, kept from step to step (made again for another batch size or dtype):
// each layer writes its intermediates here, and the residual stream and its norm go back and
// forth between two pairs. Each layer's four projections are planned once over them
// (GgmlLinear), their activation records in one space they share (a layer's projections run
// one after another).
struct Scratch {
  at::Tensor qkv, q, attn, o, gate_up, act, down, x[2], h[2];
  std::vector<std::array<qwq::kernels::GgmlLinear, 4>> linears;  // a layer's q|k|v, o, gate|up, down
  std::vector<at::Tensor> records;  // the records' slots
};

// A barrier for the threads that step the layers together. They spin: a step's phases are
// microseconds apart, where a sleeping thread took tens to wake, and a fork and join of torch's
// threads took ~1.2 us (a spin barrier ~0.2). A thread that fails stops the others at their next
// wait.
class Barrier {
 public:
  struct Stopped {};
  explicit Barrier(int n) : n_(n) {}
  void resize(int n) { n_ = n; }  // before any thread waits
  void wait() {
    if (n_ == 1) return;
    const int gen = gen_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == n_) {
      arrived_.store(0, std::memory_order_relaxed);
      gen_.store(gen + 1, std::memory_order_release);
      return;
    }
    // (past ~100 us of spinning, the machine is oversubscribed: give the core away)
    for (int spins = 0; gen_.load(std::memory_order_acquire) == gen; ++spins) {
      if (failed_.load(std::memory_order_relaxed)) throw Stopped{};
      if (spins < 4096) _mm_pause(); else std::this_thread::yield();
    }
  }
  void fail() { failed_.store(true, std::memory_order_relaxed); }

 private:
  alignas(64) std::atomic<int> arrived_{0};
  alignas(64) std::atomic<int> gen_{0};
  std::atomic<bool> failed_{false};
  int n_;
};

// One thread's part of a team's step: its share of each phase. Each linear's activation records
// are made by the threads that wrote their columns, right after writing them (the norms and
// silu split their columns in the next linear's record units; attention's kv groups, when they
// hold whole units); so a layer has two barriers a linear: its records made, its rows computed.
struct Member {
  int t, n;
  Barrier& barrier;

  qwq::kernels::Share share(int64_t unit = 16) const { return {t, n, unit}; }
  // the linear's rows, once every thread's records are made
  void rows(qwq::kernels::GgmlLinear& l) const {
    if (t == 0) l.start(n);
    barrier.wait();
    l.rows(t);
    barrier.wait();
  }
  // an elementwise phase over D columns of B tokens, split in the next linear's record units,
  // then this thread's records of them (no next linear: the phase alone)
  template <typename Phase>
  void columns(int64_t B, int64_t D, const qwq::kernels::GgmlLinear* next, Phase phase) const {
    const qwq::kernels::Share sh = share(next ? std::lcm<int64_t>(16, next->column_unit()) : 16);
    phase(sh);
    const auto [c0, c1] = sh.of(D, sh.unit);
    if (next && c0 < c1) next->records_of(0, B, c0, c1);
  }
};

// One layer on x (the residual stream) and h (its input norm), which are sc.x[0] and sc.h[0]
// or, for the first layer, the caller's x and sc.h[0], whose q|k|v records are made: the new
// residual stream and its next norm land in sc.x[0] and sc.h[0] (through sc.x[1] and sc.h[1]),
// and the next layer's q|k|v records, when there is one.
void layer(const at::Tensor& x, const Layer& l, std::array<qwq::kernels::GgmlLinear, 4>& linears,
           const qwq::kernels::GgmlLinear* next, const at::Tensor& k_cache,
           const at::Tensor& v_cache, const Step& s, Scratch& sc, const Member& me) {
  using namespace qwq::kernels;
  const int64_t B = x.size(0), hidden = x.size(1), G = s.heads / s.kv_heads, I = sc.act.size(1);
  me.rows(linears[0]);
  // rope, attention and o's records by kv group
  const auto [u0, u1] = me.share().of(B * s.kv_heads);
  QWQ_FLOATS(x.scalar_type(), "DecodeLayers", T, {
    if (s.codes) {
      rope_and_store<T, int8_t>(sc.qkv, *l.qkv_bias, s.cos, s.sin, sc.q, k_cache, v_cache,
                                s.slots, s.heads, s.kv_heads, s.D, u0, u1);
    } else {
      QWQ_FLOATS(k_cache.scalar_type(), "DecodeLayers caches", C,
        rope_and_store<T, C>(sc.qkv, *l.qkv_bias, s.cos, s.sin, sc.q, k_cache, v_cache, s.slots,
                             s.heads, s.kv_heads, s.D, u0, u1));
    }
  });
  decode_attention_into(sc.q, k_cache, v_cache, s.block_tables, s.context_lens, s.block_size,
                        s.scale, sc.attn, me.share());
  const int64_t group = G * s.D;
  if (group % linears[1].column_unit() == 0) {
    for (int64_t u = u0; u < u1; ++u)
      linears[1].records_of(u / s.kv_heads, u / s.kv_heads + 1, u % s.kv_heads * group,
                            (u % s.kv_heads + 1) * group);
  } else {  // records that span two groups: every group attended first
    me.barrier.wait();
    const auto [r0, r1] = me.share().of(linears[1].record_units());
    if (r0 < r1) linears[1].records(r0, r1);
  }
  me.rows(linears[1]);
  me.columns(B, hidden, &linears[2], [&](Share sh) {
    add_rms_norm_into(x, sc.o, *l.post_norm, s.eps, sc.x[1], sc.h[1], sh);
  });
  me.rows(linears[2]);
  me.columns(B, I, &linears[3], [&](Share sh) { silu_mul_into(sc.gate_up, sc.act, sh); });
  me.rows(linears[3]);
  me.columns(B, hidden, next, [&](Share sh) {
    add_rms_norm_into(sc.x[1], sc.down, *l.next_norm, s.eps, sc.x[0], sc.h[0], sh);
  });
}

// A model's decoder layers on a GGUF's blocks, checked and arranged once
// (torch.classes.qwq.DecodeLayers; Qwen2Model keeps one): each decode step then converts and
// checks only its own few tensors. Passed from Python every step, the layers' ~170 tensors cost
// ~0.1 ms of argument conversion and ~0.08 ms of checks and cache views, 2-3% of the 0.5B demo
// model's step.
//
// A step writes into activations the object keeps (Scratch), over projections planned once
// (GgmlLinear): one engine steps it at a time (a second thread stepping it meanwhile is
// refused).
//
// For each of the L layers: `parts` (4 a layer) counts its q|k|v, o, gate|up and down parts
// among `weights`, in ggml `types`; input_norms, qkv_biases and post_norms hold one tensor a
// layer; final_norm is the norm after the last layer; `head` the output projection's parts in
// `head_types`, or none (the caller applies its head).
class DecodeLayers : public torch::CustomClassHolder {
 public:
  DecodeLayers(std::vector<at::Tensor> weights, std::vector<int64_t> types,
               std::vector<int64_t> parts, std::vector<at::Tensor> input_norms,
               std::vector<at::Tensor> qkv_biases, std::vector<at::Tensor> post_norms,
               at::Tensor final_norm, std::vector<at::Tensor> head,
               std::vector<int64_t> head_types, double eps, double scale, int64_t heads,
               int64_t kv_heads)
      : weights_(std::move(weights)), types_(std::move(types)),
        input_norms_(std::move(input_norms)), biases_(std::move(qkv_biases)),
        post_norms_(std::move(post_norms)), final_norm_(std::move(final_norm)),
        head_(std::move(head)), head_types_(std::move(head_types)), eps_(eps), scale_(scale),
        heads_(heads), kv_heads_(kv_heads) {
    TORCH_CHECK(head_.size() == head_types_.size(),
                "DecodeLayers: one type a part of the head");
    for (const auto& w : head_) vocab_ += w.dim() == 2 ? w.size(0) : 0;
    const int64_t L = static_cast<int64_t>(biases_.size());
    TORCH_CHECK(L > 0 && static_cast<int64_t>(parts.size()) == 4 * L &&
                    static_cast<int64_t>(post_norms_.size()) == L &&
                    static_cast<int64_t>(input_norms_.size()) == L &&
                    weights_.size() == types_.size(),
                "DecodeLayers: per layer 4 parts counts, an input norm, a q|k|v bias and a post "
                "norm; one type a weight");
    TORCH_CHECK(heads > 0 && kv_heads > 0 && heads % kv_heads == 0,
                "DecodeLayers: heads a multiple of kv_heads");
    for (const auto* group : {&weights_, &input_norms_, &biases_, &post_norms_, &head_})
      for (const at::Tensor& t : *group)
        TORCH_CHECK(t.device().is_cpu(), "DecodeLayers: CPU tensors");
    TORCH_CHECK(final_norm_.defined() && final_norm_.device().is_cpu(),
                "DecodeLayers: a final norm on the CPU");
    layers_.resize(L);
    const at::TensorList ws(weights_);
    const at::IntArrayRef ts(types_);
    size_t at = 0;
    for (int64_t i = 0; i < L; ++i) {
      Layer& l = layers_[i];
      for (int j = 0; j < 4; ++j) {
        const int64_t n = parts[4 * i + j];
        TORCH_CHECK(n > 0 && at + n <= ws.size(), "DecodeLayers: parts must add up");
        l.proj[j] = ws.slice(at, n);
        l.types[j] = ts.slice(at, n);
        at += n;
      }
      const int64_t qkv_rows = rows_of(l.proj[0]);
      TORCH_CHECK(qkv_rows % (heads + 2 * kv_heads) == 0 &&
                      (i == 0 || qkv_rows == (heads + 2 * kv_heads) * D_) &&
                      biases_[i].numel() == qkv_rows && biases_[i].is_contiguous() &&
                      biases_[i].scalar_type() == biases_[0].scalar_type(),
                  "DecodeLayers: q|k|v rows and bias must be (heads + 2 kv_heads) head_dim, "
                  "every layer's the same, the biases in one dtype");
      D_ = qkv_rows / (heads + 2 * kv_heads);
      TORCH_CHECK(rows_of(l.proj[1]) == rows_of(layers_[0].proj[1]) &&
                      rows_of(l.proj[3]) == rows_of(layers_[0].proj[1]) &&
                      rows_of(l.proj[2]) == rows_of(layers_[0].proj[2]) &&
                      rows_of(l.proj[2]) % 2 == 0,
                  "DecodeLayers: every layer's o and down give the hidden size and its gate|up "
                  "the same 2 x intermediate rows");
      l.qkv_bias = &biases_[i];
      l.post_norm = &post_norms_[i];
      l.next_norm = i + 1 < L ? &input_norms_[i + 1] : &final_norm_;
    }
    TORCH_CHECK(at == ws.size(), "DecodeLayers: parts must add up");
  }

  // x: the residual stream (B, hidden) of one new token per sequence at `positions`;
  // cos_table and sin_table (positions, 1, head_dim) in x's dtype, rope_factors of the whole
  // table (sin's first half negated); k_caches and v_caches (L, slots, kv_heads, row); the
  // rows of logits_indices are returned: their logits (float32) with a head, else the final
  // norm's rows.
  at::Tensor step(const at::Tensor& x, const at::Tensor& positions, const at::Tensor& cos_table,
                  const at::Tensor& sin_table, const at::Tensor& k_caches,
                  const at::Tensor& v_caches, const at::Tensor& slots,
                  const at::Tensor& block_tables, const at::Tensor& context_lens,
                  int64_t block_size, const at::Tensor& logits_indices) {
    const int64_t L = static_cast<int64_t>(layers_.size()), B = x.size(0), D = D_;
    const bool codes = k_caches.scalar_type() == at::kChar;
    TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && biases_[0].scalar_type() == x.scalar_type() &&
                    x.size(1) == rows_of(layers_[0].proj[1]),
                "DecodeLayers: x (tokens, hidden), contiguous, in the q|k|v biases' dtype");
    TORCH_CHECK(D % 32 == 0 && D <= 256 && k_caches.dim() == 4 && k_caches.size(0) == L &&
                    k_caches.size(2) == kv_heads_ && k_caches.size(3) == D + (codes ? 2 : 0) &&
                    v_caches.sizes() == k_caches.sizes() && k_caches.is_contiguous() &&
                    v_caches.is_contiguous() && k_caches.scalar_type() == v_caches.scalar_type(),
                "DecodeLayers: caches (layers, slots, kv_heads, row) of head_dim float values "
                "or head_dim int8 codes and a float16 scale, head_dim a multiple of 32 up to 256");
    TORCH_CHECK(cos_table.dim() == 3 && cos_table.size(1) == 1 && cos_table.size(2) == D &&
                    sin_table.sizes() == cos_table.sizes() &&
                    cos_table.scalar_type() == x.scalar_type() &&
                    sin_table.scalar_type() == x.scalar_type(),
                "DecodeLayers: cos and sin tables (positions, 1, head_dim) in x's dtype");
    TORCH_CHECK(positions.scalar_type() == at::kLong && positions.numel() == B &&
                    slots.scalar_type() == at::kLong && slots.numel() == B &&
                    slots.is_contiguous(),
                "DecodeLayers: one int64 position and slot per token");
    for (const at::Tensor* t : {&x, &positions, &cos_table, &sin_table, &k_caches, &v_caches,
                                &slots, &block_tables, &context_lens, &logits_indices})
      TORCH_CHECK(t->device().is_cpu(), "DecodeLayers: every tensor of a step on the CPU");
    const int64_t* sl = slots.const_data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b)
      TORCH_CHECK(sl[b] >= 0 && sl[b] < k_caches.size(1), "DecodeLayers: slot ", sl[b],
                  " is not one of the caches' ", k_caches.size(1));
    std::unique_lock<std::mutex> one(stepping_, std::try_to_lock);
    TORCH_CHECK(one.owns_lock(), "DecodeLayers: stepped from two threads at once (its "
                "activations are one step's)");
    const std::array<const at::Tensor*, 2> caches{&k_caches, &v_caches};
    for (int c = 0; c < 2; ++c) views(*caches[c], views_[c]);
    // (index_select checks each position against the tables)
    const at::Tensor cos = cos_table.index_select(0, positions).contiguous();
    const at::Tensor sin = sin_table.index_select(0, positions).contiguous();
    const Step s{cos, sin, slots, block_tables, context_lens, block_size, scale_, eps_,
                 heads_, kv_heads_, D, codes};
    Scratch& sc = scratch(x);
    // The layers stepped by a team of torch's threads that stays together through them (one
    // parallel region a step, not one a kernel), each phase shared out, a barrier between
    // phases; each share's numbers are the whole kernel's.
    auto member = [&](int t, int n, Barrier& barrier) {
      const Member me{t, n, barrier};
      me.columns(B, x.size(1), &sc.linears[0][0], [&](qwq::kernels::Share sh) {
        qwq::kernels::rms_norm_into(x, input_norms_[0], eps_, sc.h[0], sh);
      });
      for (int64_t i = 0; i < L; ++i)
        layer(i ? sc.x[0] : x, layers_[i], sc.linears[i],
              i + 1 < L ? &sc.linears[i + 1][0] : nullptr, views_[0].layers[i],
              views_[1].layers[i], s, sc, me);
    };
    const int threads = at::get_num_threads();
    if (threads == 1) {
      Barrier alone(1);
      member(0, 1, alone);
    } else {
      std::exception_ptr failure;
      std::mutex failing;
      Barrier barrier(threads);
#pragma omp parallel num_threads(threads)
      {
        // (the team OpenMP gives may be smaller: nested in another region, it is one thread)
#pragma omp single
        barrier.resize(omp_get_num_threads());
        try {
          member(omp_get_thread_num(), omp_get_num_threads(), barrier);
        } catch (const Barrier::Stopped&) {
        } catch (...) {
          std::lock_guard<std::mutex> first(failing);
          if (!failure) failure = std::current_exception();
          barrier.fail();
        }
      }
      if (failure) std::rethrow_exception(failure);
    }
    // (the norm is per row: normed rows, then picked, are the rows picked, then normed)
    const at::Tensor rows = sc.h[0].index_select(0, logits_indices);
    if (head_.empty()) return rows;
    at::Tensor logits = at::empty({rows.size(0), vocab_}, rows.options().dtype(at::kFloat));
    qwq::kernels::ggml_linear_parts_into(rows.to(at::kFloat), head_, head_types_, c10::nullopt,
                                         logits);
    return logits;
  }

  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }

 private:
  // the activations of a step of x's tokens and dtype
  Scratch& scratch(const at::Tensor& x) {
    const int64_t B = x.size(0);
    if (!sc_.q.defined() || sc_.q.size(0) != B || sc_.q.scalar_type() != x.scalar_type()) {
      // (undefined until the end: a rebuild that fails half way, out of memory, is made again
      // next step, never stepped with plans over freed activations)
      sc_.q = at::Tensor();
      const auto o = x.options();
      const int64_t hidden = x.size(1);
      sc_.qkv = at::empty({B, rows_of(layers_[0].proj[0])}, o);
      sc_.attn = at::empty({B, heads_, D_}, o);
      sc_.o = at::empty({B, hidden}, o);
      sc_.gate_up = at::empty({B, rows_of(layers_[0].proj[2])}, o);
      sc_.act = at::empty({B, rows_of(layers_[0].proj[2]) / 2}, o);
      sc_.down = at::empty({B, hidden}, o);
      for (int i = 0; i < 2; ++i) sc_.x[i] = at::empty({B, hidden}, o), sc_.h[i] = at::empty({B, hidden}, o);
      using qwq::kernels::GgmlLinear;
      sc_.linears.clear();
      const at::Tensor attn = sc_.attn.view({B, heads_ * D_});
      std::vector<int64_t> slot_bytes;
      for (const Layer& l : layers_) {
        sc_.linears.push_back({GgmlLinear(sc_.h[0], l.proj[0], l.types[0], c10::nullopt, sc_.qkv),
                               GgmlLinear(attn, l.proj[1], l.types[1], c10::nullopt, sc_.o),
                               GgmlLinear(sc_.h[1], l.proj[2], l.types[2], c10::nullopt, sc_.gate_up),
                               GgmlLinear(sc_.act, l.proj[3], l.types[3], c10::nullopt, sc_.down)});
        for (const GgmlLinear& g : sc_.linears.back())
          for (int i = 0; i < g.record_slots(); ++i) {
            if (static_cast<int>(slot_bytes.size()) <= i) slot_bytes.push_back(0);
            slot_bytes[i] = std::max(slot_bytes[i], g.record_bytes(i));
          }
      }
      sc_.records.clear();
      std::vector<uint8_t*> slots;
      for (int64_t bytes : slot_bytes) {
        // torch's allocator aligns to 64 bytes: no record vector splits a line
        sc_.records.push_back(at::empty({bytes}, at::kByte));
        slots.push_back(sc_.records.back().mutable_data_ptr<uint8_t>());
      }
      for (auto& four : sc_.linears)
        for (GgmlLinear& g : four) g.bind(slots.data());
      sc_.q = at::empty({B, heads_, D_}, o);  // last: its shape says the others are made
    }
    return sc_;
  }

  Scratch sc_;
  std::vector<at::Tensor> weights_;
  std::vector<int64_t> types_;
  std::vector<at::Tensor> input_norms_, biases_, post_norms_;
  at::Tensor final_norm_;
  std::vector<at::Tensor> head_;
  std::vector<int64_t> head_types_;
  double eps_, scale_;
  int64_t heads_, kv_heads_, D_ = 0, vocab_ = 0;
  std::vector<Layer> layers_;  // views of the members above, which never change
  // Each layer's rows of a cache, kept while the cache is the same memory: views that do not
  // own it (at::from_blob), so they never keep an engine's cache alive after the engine (making
  // 2 x 24 views took ~60 us a step); the same address, shape and dtype give the same views.
  struct Views {
    const void* data = nullptr;
    std::vector<int64_t> sizes;
    at::ScalarType dtype = at::kFloat;
    std::vector<at::Tensor> layers;
  };
  static void views(const at::Tensor& cache, Views& v) {
    if (v.data == cache.data_ptr() && v.sizes == cache.sizes().vec() &&
        v.dtype == cache.scalar_type())
      return;
    v.layers.clear();
    const int64_t layer_bytes = cache.stride(0) * cache.element_size();
    for (int64_t i = 0; i < cache.size(0); ++i)
      v.layers.push_back(at::from_blob(static_cast<char*>(cache.data_ptr()) + i * layer_bytes,
                                       cache.sizes().slice(1), cache.options()));
    v.data = cache.data_ptr(), v.sizes = cache.sizes().vec(), v.dtype = cache.scalar_type();
  }
  Views views_[2];  // K, V
  std::mutex stepping_;
};

}  // namespace

TORCH_LIBRARY_FRAGMENT(qwq, m) {
  m.class_<DecodeLayers>("DecodeLayers")
      .def(torch::init<std::vector<at::Tensor>, std::vector<int64_t>, std::vector<int64_t>,
                       std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>,
                       at::Tensor, std::vector<at::Tensor>, std::vector<int64_t>, double, double,
                       int64_t, int64_t>())
      .def("step", &DecodeLayers::step)
      .def("num_layers", &DecodeLayers::num_layers);
}
