// ggml_rows(raw, type, ids, dtype): the rows `ids` of a GGUF tensor in the file's block format
// (raw: (rows, row_bytes) uint8, as ggml.py holds it), dequantized. The embedding's lookup: a
// decode step reads one row of the token table, and ggml.rows' ~20 small torch ops took
// 0.1-0.3 ms of it. Each value is the float ggml.py's torch decode computes (the same products,
// in the same order, never one fma), then rounded to dtype as Tensor.to rounds.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>

#pragma GCC optimize("fp-contract=off")

namespace {

float f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return static_cast<float>(c10::Half(h, c10::Half::from_bits()));
}

// A block of 32: Q4_0, Q4_1 (d q + m), Q5_0, Q5_1, Q8_0.
void q4_0(const uint8_t* b, float* y) {
  const float d = f16(b);
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>((b[2 + j] & 15) - 8);
    y[j + 16] = d * static_cast<float>((b[2 + j] >> 4) - 8);
  }
}

void q4_1(const uint8_t* b, float* y) {
  const float d = f16(b), m = f16(b + 2);
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>(b[4 + j] & 15) + m;
    y[j + 16] = d * static_cast<float>(b[4 + j] >> 4) + m;
  }
}

// Q5_0 and Q5_1: input j's fifth bit is bit j of the little-endian word at `qh`.
int fifth(const uint8_t* qh, int j) { return (qh[j / 8] >> (j % 8) & 1) << 4; }

void q5_0(const uint8_t* b, float* y) {
  const float d = f16(b);
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>(((b[6 + j] & 15) | fifth(b + 2, j)) - 16);
    y[j + 16] = d * static_cast<float>(((b[6 + j] >> 4) | fifth(b + 2, j + 16)) - 16);
  }
}

void q5_1(const uint8_t* b, float* y) {
  const float d = f16(b), m = f16(b + 2);
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>((b[8 + j] & 15) | fifth(b + 4, j)) + m;
    y[j + 16] = d * static_cast<float>((b[8 + j] >> 4) | fifth(b + 4, j + 16)) + m;
  }
}

void q8_0(const uint8_t* b, float* y) {
  const float d = f16(b);
  for (int j = 0; j < 32; ++j) y[j] = d * static_cast<float>(static_cast<int8_t>(b[2 + j]));
}

// A superblock of 256. Q4_K, Q5_K: eight sub-blocks of 32, value (d scale_j) q - (dmin min_j)
// with 6-bit scales and mins packed in 12 bytes at 4; q's low nibbles 32 bytes a pair of
// sub-blocks (low nibbles then high), Q5_K's fifth bits bit j of 32 bytes at 16.
void k4(const uint8_t* b, const uint8_t* qs, const uint8_t* qh, float* y) {
  const float d = f16(b), dmin = f16(b + 2);
  const uint8_t* s = b + 4;
  for (int j = 0; j < 8; ++j) {
    const int sc = j < 4 ? s[j] & 63 : (s[j + 4] & 15) | ((s[j - 4] >> 2) & 48);
    const int mn = j < 4 ? s[j + 4] & 63 : (s[j + 4] >> 4) | ((s[j] >> 2) & 48);
    const float ds = d * static_cast<float>(sc), dm = dmin * static_cast<float>(mn);
    const uint8_t* q = qs + 32 * (j / 2);
    for (int l = 0; l < 32; ++l) {
      int v = j % 2 ? q[l] >> 4 : q[l] & 15;
      if (qh) v |= (qh[l] >> j & 1) << 4;
      y[32 * j + l] = ds * static_cast<float>(v) - dm;
    }
  }
}

void q4_k(const uint8_t* b, float* y) { k4(b, b + 16, nullptr, y); }
void q5_k(const uint8_t* b, float* y) { k4(b, b + 48, b + 16, y); }

// Q6_K: per half of 128 inputs, 64 bytes of low nibbles (inputs l and 64 + l) and 32 of bit
// pairs (inputs l, 32 + l, 64 + l, 96 + l); 16 int8 scales at 192, d at 208.
void q6_k(const uint8_t* b, float* y) {
  const float d = f16(b + 208);
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  for (int half = 0; half < 2; ++half) {
    const uint8_t* ql = b + 64 * half;
    const uint8_t* qh = b + 128 + 32 * half;
    float* out = y + 128 * half;
    for (int i = 0; i < 128; ++i) {
      const int low = i < 64 ? ql[i] & 15 : ql[i - 64] >> 4;
      const int high = qh[i % 32] >> (2 * (i / 32)) & 3;
      const float ds = d * static_cast<float>(sc[8 * half + i / 16]);
      out[i] = ds * static_cast<float>((low | high << 4) - 32);
    }
  }
}

struct Format {
  int64_t block, bytes;
  void (*decode)(const uint8_t*, float*);
};

Format format_of(int64_t type) {
  switch (type) {
    case 2: return {32, 18, q4_0};
    case 3: return {32, 20, q4_1};
    case 6: return {32, 22, q5_0};
    case 7: return {32, 24, q5_1};
    case 8: return {32, 34, q8_0};
    case 12: return {256, 144, q4_k};
    case 13: return {256, 176, q5_k};
    case 14: return {256, 210, q6_k};
    default:
      TORCH_CHECK(false, "ggml_rows: no decoder for GGML type ", type,
                  " (Q4_0 2, Q4_1 3, Q5_0 6, Q5_1 7, Q8_0 8, Q4_K 12, Q5_K 13, Q6_K 14)");
  }
}

template <typename T>
void rows_impl(const at::Tensor& raw, const Format& f, const at::Tensor& ids, at::Tensor& out) {
  const int64_t n = ids.numel(), row_bytes = raw.size(1), blocks = row_bytes / f.bytes;
  const int64_t cols = blocks * f.block, vocab = raw.size(0);
  const uint8_t* src = raw.const_data_ptr<uint8_t>();
  const int64_t* id = ids.const_data_ptr<int64_t>();
  T* dst = out.mutable_data_ptr<T>();
  for (int64_t r = 0; r < n; ++r)
    TORCH_CHECK(id[r] >= 0 && id[r] < vocab, "ggml_rows: id ", id[r], " outside the table's ",
                vocab, " rows");
  // a prefill looks up thousands of rows; a decode step one (inline, no fork)
  at::parallel_for(0, n, 16, [&](int64_t r0, int64_t r1) {
    float tmp[256];
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* row = src + id[r] * row_bytes;
      for (int64_t c = 0; c < blocks; ++c) {
        f.decode(row + c * f.bytes, tmp);
        T* y = dst + r * cols + c * f.block;
        for (int64_t j = 0; j < f.block; ++j) y[j] = static_cast<T>(tmp[j]);
      }
    }
  });
}

at::Tensor ggml_rows(const at::Tensor& raw, int64_t type, const at::Tensor& ids,
                     at::ScalarType dtype) {
  const Format f = format_of(type);
  TORCH_CHECK(raw.dim() == 2 && raw.scalar_type() == at::kByte && raw.is_contiguous() &&
                  raw.size(1) % f.bytes == 0,
              "ggml_rows: raw (rows, row_bytes) uint8, contiguous, whole blocks of ", f.bytes,
              " bytes");
  TORCH_CHECK(ids.scalar_type() == at::kLong, "ggml_rows: int64 ids");
  const at::Tensor flat = ids.contiguous();
  std::vector<int64_t> shape(ids.sizes().begin(), ids.sizes().end());
  shape.push_back(raw.size(1) / f.bytes * f.block);
  at::Tensor out = at::empty(shape, raw.options().dtype(dtype));
  switch (dtype) {
    case at::kFloat: rows_impl<float>(raw, f, flat, out); break;
    case at::kBFloat16: rows_impl<c10::BFloat16>(raw, f, flat, out); break;
    case at::kHalf: rows_impl<c10::Half>(raw, f, flat, out); break;
    default: TORCH_CHECK(false, "ggml_rows: dtype float32, bfloat16 or float16");
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(qwq, m) {
  m.def("ggml_rows(Tensor raw, int type, Tensor ids, ScalarType dtype) -> Tensor");
}

TORCH_LIBRARY_IMPL(qwq, CPU, m) { m.impl("ggml_rows", &ggml_rows); }
