// The kernels decoder.cpp calls directly, writing into tensors it keeps from step to step. Each
// op of the same name (torch.ops.qwq.*) is a new output tensor and one of these calls; inside a
// decode step the dispatcher's hop and the new tensors cost ~1.5 us a call, as much as a norm's
// arithmetic many times over, ~10 calls a layer. Every function checks its arguments, outputs
// included, as its op does.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <utility>

namespace qwq::kernels {

// Share `index` of `count` of a kernel's work, for a team of threads that split a decode step
// among themselves (decoder.cpp), each calling with its own index; {0, 1}, the default: the
// whole of it, on torch's threads. The shares' results are the whole call's, bit for bit.
struct Share {
  int64_t index = 0, count = 1;
  int64_t unit = 16;  // the norms' and silu's columns go in whole units of this (a multiple of 16)
  // this share's [lo, hi) of n items, in whole groups of `items` (the last share takes the rest)
  std::pair<int64_t, int64_t> of(int64_t n, int64_t items = 1) const {
    const int64_t groups = (n + items - 1) / items;
    return {std::min(n, groups * index / count * items),
            std::min(n, groups * (index + 1) / count * items)};
  }
  bool whole() const { return count == 1; }
};

// layers.cpp. Shares: attention's (sequence, kv head) tasks; the norms' and silu's columns (each
// share of a norm sums the whole row, in the one order).
void decode_attention_into(const at::Tensor& q, const at::Tensor& k_cache,
                           const at::Tensor& v_cache, const at::Tensor& block_tables,
                           const at::Tensor& context_lens, int64_t block_size, double scale,
                           at::Tensor& out, Share share = {});
void rms_norm_into(const at::Tensor& x, const at::Tensor& w, double eps, at::Tensor& y,
                   Share share = {});
void add_rms_norm_into(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& w,
                       double eps, at::Tensor& sum, at::Tensor& y, Share share = {});
void silu_mul_into(const at::Tensor& gate_up, at::Tensor& y, Share share = {});

// ggml.cpp
void ggml_linear_parts_into(const at::Tensor& x, at::TensorList ws, at::IntArrayRef types,
                            const c10::optional<at::Tensor>& bias, at::Tensor& out);

// That call over fixed tensors (x, the weights, the bias and out stay alive and in place),
// checked and planned once, then run whole (run: torch's threads) or by a team of threads that
// split it among themselves: each makes a share of x's activation records (records, units
// [u0, u1) of record_units()), one resets the row shares for the team (start), and once all
// records are made each takes rows (rows). The records live where bind puts them:
// record_bytes(i) bytes for each slot i < record_slots(), 64-byte aligned.
class GgmlLinear {
 public:
  GgmlLinear(const at::Tensor& x, at::TensorList ws, at::IntArrayRef types,
             const c10::optional<at::Tensor>& bias, const at::Tensor& out);
  ~GgmlLinear();
  GgmlLinear(GgmlLinear&&) noexcept;
  GgmlLinear& operator=(GgmlLinear&&) noexcept;

  int record_slots() const;
  int64_t record_bytes(int slot) const;
  void bind(uint8_t* const* slots);
  int64_t record_units() const;
  void records(int64_t u0, int64_t u1) const;
  // the records of tokens [m0, m1) from x's columns [c0, c1), each a multiple of column_unit()
  // (c1 may be x's last): made by the thread that wrote those columns, no barrier between
  int64_t column_unit() const;
  void records_of(int64_t m0, int64_t m1, int64_t c0, int64_t c1) const;
  void start(int threads);
  void rows(int t) const;
  void run();

  struct Plan;

 private:
  std::unique_ptr<Plan> plan_;
};

}  // namespace qwq::kernels
