// The kernels decoder.cpp calls directly, writing into tensors it keeps from step to step. Each
// op of the same name (torch.ops.qwq.*) is a new output tensor and one of these calls; inside a
// decode step the dispatcher's hop and the new tensors cost ~1.5 us a call, as much as a norm's
// arithmetic many times over, ~10 calls a layer. Every function checks its arguments, outputs
// included, as its op does.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace qwq::kernels {

// layers.cpp
void decode_attention_into(const at::Tensor& q, const at::Tensor& k_cache,
                           const at::Tensor& v_cache, const at::Tensor& block_tables,
                           const at::Tensor& context_lens, int64_t block_size, double scale,
                           at::Tensor& out);
void rms_norm_into(const at::Tensor& x, const at::Tensor& w, double eps, at::Tensor& y);
void add_rms_norm_into(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& w,
                       double eps, at::Tensor& sum, at::Tensor& y);
void silu_mul_into(const at::Tensor& gate_up, at::Tensor& y);

// ggml.cpp
void ggml_linear_parts_into(const at::Tensor& x, at::TensorList ws, at::IntArrayRef types,
                            const c10::optional<at::Tensor>& bias, at::Tensor& out);

}  // namespace qwq::kernels
