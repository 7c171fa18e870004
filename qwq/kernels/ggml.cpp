// Linear layers on GGUF tensors as llama.cpp ships them, for x86 CPUs with AVX-512 VNNI:
// ggml_linear(x, w, type, bias, out_features) with w the (rows, row_bytes) block bytes of the
// file (a read-only view of an mmap will do). Types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 against Q8_0
// activation blocks, Q4_K, Q5_K, Q6_K against Q8_K (ggml_formats.h); and Q5_0x4, Q8_0x4, the
// bytes of Q5_0 and Q8_0 rearranged once at load (the only types that are: as filed, their
// blocks sit at odd offsets and decode through word permutes, slower than reading them).
//
// A decode step reads every weight once: each thread takes a contiguous range of rows and reads
// them front to back, one row at a time, a single forward stream (prefetched ahead into L1 and,
// further, into L2).
// Batches of tokens run in register tiles of up to 16 tokens per row, so each chunk of a row is
// unpacked once per 16 tokens, and in token tiles whose activation records stay in L2 while
// the rows stream past.
//
// Every output is computed by the same instruction sequence whatever the number of tokens, the
// thread count or which tokens share a tile: the activation rounding is per token, and a (row,
// token) pair accumulates its chunks in order in its own register, summed by one fixed
// horizontal reduction. A sequence's numbers do not depend on what it is batched with.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/util/SmallVector.h>
#include <torch/library.h>

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <vector>

#include "ggml_formats.h"
#include "kernels.h"
#include "simd.h"

namespace {

using namespace qwq::ggml;

constexpr int kTokens = 16;              // tokens in a register tile, at most
constexpr int64_t kTileBytes = 1 << 20;  // activation records a token tile keeps in L2
constexpr int kPrefetch = 1024;          // bytes ahead in a row that each chunk fetches to L1
constexpr int kPrefetchL2 = 8192;        // and to L2

// Whether a row is fetched ahead into L1 as well as into L2: on Intel, not on AMD. On a 260
// MB-L3 Xeon the fetch into L1 was worth ~10% of a thread's stream (see chunk_tokens); on AMD
// Zen 5 it cost 14-20% of the demo's decode shapes at one thread (bench/ggml_ab.py, builds
// alternated: the Q8_0x4 head and Q6_K 1.18-1.27x without it, Q5_0x4 1.02-1.10x), where the
// L2 fetch alone, 8 KB ahead (4 and 16 KB were slower), streams at 0.9-1.0 of a plain sum.
bool fetch_to_l1() {
  __builtin_cpu_init();
  return !__builtin_cpu_is("amd");
}
const bool kFetchToL1 = fetch_to_l1();

// A tensor's rows: `full` whole chunks, then `tail` bytes of a last, short chunk (32-input
// blocks only, when K is not a multiple of 128).
template <typename F>
struct Shape {
  int64_t K, full, chunks;
  int tail;
  explicit Shape(int64_t k)
      : K(k), full(k / F::kChunk), chunks((k + F::kChunk - 1) / F::kChunk),
        tail(static_cast<int>(k % F::kChunk / F::kBlock * F::kBlockBytes)) {}
};

// Chunk c of one token's records: its inputs converted to float, zero past K, quantized.
template <typename F, typename T>
void record_chunk(const T* x, const Shape<F>& s, int64_t c, uint8_t* rec) {
  alignas(64) float xf[F::kChunk];
  const int64_t k0 = c * F::kChunk, n = std::min<int64_t>(F::kChunk, s.K - k0);
  for (int64_t k = 0; k < n; k += 16) _mm512_storeu_ps(xf + k, qwq::load16(x + k0 + k));
  std::fill(xf + n, xf + F::kChunk, 0.f);
  F::quantize(xf, rec + c * F::kRecBytes);
}

// One chunk of a row (n bytes at p) against NT tokens: acc[t] += row . token t.
template <typename F, int NT>
__attribute__((always_inline)) inline void chunk_tokens(const uint8_t* p, int n,
                                                        const uint8_t* rec, int64_t token_bytes,
                                                        __m512 (&acc)[NT]) {
  // Fetch the row further ahead than the hardware prefetcher alone keeps in flight: at 1 token
  // a chunk's arithmetic is short. 1 KB ahead into L1 took one thread's Q4_K/Q6_K decode from
  // ~70% to ~78% of torch's sum bandwidth; adding 8 KB ahead into L2 (more lines in flight than
  // L1's fill buffers hold) took the demo GGUF's decode from a median 34.1 to 36.0 tok/s on a
  // 260 MB-L3 Xeon (settings alternated in one process), where 2 KB ahead into L1 alone had
  // been the best single distance.
  for (int b = 0; b < F::kChunkBytes; b += 64) {
    if (kFetchToL1) _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetch + b), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchL2 + b), _MM_HINT_T1);
  }
  const auto w = F::decode(p, n);
#pragma GCC unroll 16
  for (int t = 0; t < NT; ++t) acc[t] = F::dot(w, rec + t * token_bytes, acc[t]);
}

// Row `row` against NT tokens whose records start at recs, token_bytes apart: sums[t].
template <typename F, int NT>
void row_tokens(const uint8_t* row, const Shape<F>& s, const uint8_t* recs, int64_t token_bytes,
                float* sums) {
  __m512 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
  const uint8_t* p = row;
  const uint8_t* rec = recs;
  for (int64_t c = 0; c < s.full; ++c, p += F::kChunkBytes, rec += F::kRecBytes)
    chunk_tokens<F, NT>(p, F::kChunkBytes, rec, token_bytes, acc);
  if (s.tail) chunk_tokens<F, NT>(p, s.tail, rec, token_bytes, acc);
  for (int t = 0; t < NT; ++t) sums[t] = _mm512_reduce_add_ps(acc[t]);
}

template <typename F>
void row_tile(int nt, const uint8_t* row, const Shape<F>& s, const uint8_t* recs,
              int64_t token_bytes, float* sums) {
  switch (nt) {
    case 1: row_tokens<F, 1>(row, s, recs, token_bytes, sums); break;
    case 2: row_tokens<F, 2>(row, s, recs, token_bytes, sums); break;
    case 3: row_tokens<F, 3>(row, s, recs, token_bytes, sums); break;
    case 4: row_tokens<F, 4>(row, s, recs, token_bytes, sums); break;
    case 5: row_tokens<F, 5>(row, s, recs, token_bytes, sums); break;
    case 6: row_tokens<F, 6>(row, s, recs, token_bytes, sums); break;
    case 7: row_tokens<F, 7>(row, s, recs, token_bytes, sums); break;
    case 8: row_tokens<F, 8>(row, s, recs, token_bytes, sums); break;
    default: row_tokens<F, 16>(row, s, recs, token_bytes, sums); break;
  }
}

// Tokens in the next register tile, of `left`: 16 while they last, then 8, then the rest.
inline int tile_tokens(int64_t left) {
  return left >= 16 ? 16 : left > 8 ? 8 : static_cast<int>(left);
}

struct Job;

// One stored tensor of a fused weight (q|k|v, gate|up): its rows are out's columns
// [first, first + rows), computed in its own format against that format's records of x.
struct Slice {
  const uint8_t* w;
  int64_t row_stride, first, rows;
  const uint8_t* acts;  // its records of x (those of Plan::recs[rec], once bound)
  int rec;
  void (*run)(const Slice&, const Job&, int64_t n0, int64_t n1);
};

struct Job {
  int64_t M, N, K;
  const float* bias;  // (N,) or null
  void* out;          // (M, N) of the activation type
};

// Units [u0, u1) of x's records in F's format: unit u is chunk u % chunks of token u / chunks.
template <typename F, typename T>
void records(const void* x, int64_t K, uint8_t* recs, int64_t u0, int64_t u1) {
  const Shape<F> s(K);
  const T* xp = static_cast<const T*>(x);
  for (int64_t u = u0; u < u1; ++u) {
    const int64_t m = u / s.chunks;
    record_chunk<F, T>(xp + m * K, s, u % s.chunks, recs + m * s.chunks * F::kRecBytes);
  }
}

// The part's rows [n0, n1) against every token: token tiles whose records stay in L2, register
// tiles of up to 16 tokens within them.
template <typename F, typename T>
void part_rows(const Slice& p, const Job& j, int64_t n0, int64_t n1) {
  const Shape<F> s(j.K);
  const int64_t token_bytes = s.chunks * F::kRecBytes;
  const int64_t tile = std::max<int64_t>(kTokens, kTileBytes / token_bytes / kTokens * kTokens);
  T* op = static_cast<T*>(j.out) + p.first;
  float sums[kTokens];
  for (int64_t t0 = 0; t0 < j.M; t0 += tile) {
    const int64_t t1 = std::min(j.M, t0 + tile);
    for (int64_t n = n0; n < n1; ++n) {
      const float b = j.bias ? j.bias[p.first + n] : 0.f;
      for (int64_t m = t0, nt; m < t1; m += nt) {
        nt = tile_tokens(t1 - m);
        row_tile<F>(nt, p.w + n * p.row_stride, s, p.acts + m * token_bytes, token_bytes, sums);
        for (int t = 0; t < nt; ++t) op[(m + t) * j.N + n] = static_cast<T>(sums[t] + b);
      }
    }
  }
}

template <typename F>
void check_part(const at::Tensor& w, int64_t K) {
  TORCH_CHECK(K % F::kBlock == 0, "ggml_linear: ", F::kName, " takes inputs in whole blocks of ",
              F::kBlock, "; x has ", K);
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kByte && w.stride(1) == 1 &&
                  w.device().is_cpu(),
              "ggml_linear: ", F::kName, " weights must be (rows, row_bytes) uint8 CPU bytes");
  TORCH_CHECK(w.size(1) == K / F::kBlock * F::kBlockBytes, "ggml_linear: ", F::kName, " rows of ",
              K, " inputs are ", K / F::kBlock * F::kBlockBytes, " bytes, got ", w.size(1));
}

// How a part of format F computes: its records (units, bytes a token, the fill) and its rows.
struct Kind {
  int64_t units;        // record units a token
  int64_t inputs;       // x's columns a unit (the last may have fewer)
  int64_t token_bytes;  // record bytes a token
  void (*fill)(const void* x, int64_t K, uint8_t* recs, int64_t u0, int64_t u1);
  void (*run)(const Slice&, const Job&, int64_t n0, int64_t n1);
};

// A part of format F: checked, its records and row function.
template <typename F, typename T>
Kind kind_of(const at::Tensor& w, int64_t K) {
  check_part<F>(w, K);
  const Shape<F> s(K);
  return {s.chunks, F::kChunk, s.chunks * F::kRecBytes, &records<F, T>, &part_rows<F, T>};
}

// Q5_0 rows interleaved sixteen at a time (ggml_interleave_q5_0, once at load): the same
// values and size, laid out so that one instruction multiplies four inputs of sixteen rows.
// Rows 16g..16g + 15 fill what were their 16 rows' bytes; within them block j (inputs 32j..32j
// + 31) takes 352 bytes: the 16 rows' fp16 scales (row r's at 2r), eight 64-bit masks of fifth
// bits, then four vectors of nibbles. Vector m's byte 4r + i is byte 4m + i of row r's nibbles
// (low nibble: input 4m + i, high: input 16 + 4m + i), so after the nibbles are split, each
// 32-bit lane r holds four consecutive inputs of row r: those from kBase[u] on, for the eight
// vectors u of a block (u = 2m: the low nibbles of vector m, 2m + 1: the high). Mask u's bit
// 4r + i is the fifth bit of input kBase[u] + i of row r. With the activations' four values
// kBase[u].. broadcast, vpdpbusd sums sixteen rows at once, and a block's sums need neither
// permutes nor a horizontal add: lane r is row r's whole block. As Q5_0x4 chunks of four blocks
// this format computed at 37-39 GB/s a core from cache (AMD Zen 5), below the core's 40 GB/s
// from memory; interleaved, a prototype ran at ~90.
constexpr int kGroupRows = 16, kGroupBlockBytes = 16 * 22;
constexpr int kGroupTokens = 8;  // tokens in a register tile: 8 vectors of weights + 8 sums
constexpr int kBase[8] = {0, 16, 4, 20, 8, 24, 12, 28};

// A token's activations for Q5_0x16: per block its 32 int8 values in order, then every block's
// scale (float), then every block's -16 * sum of values (int32, the dot products' start, as
// Blocks32's records hold it by lane).
inline int64_t x16_record_bytes(int64_t K) { return K / 32 * (32 + 4 + 4); }

// Units [u0, u1) of x's Q5_0x16 records: unit u is block u % (K / 32) of token u / (K / 32).
template <typename T>
void records_x16(const void* x, int64_t K, uint8_t* recs, int64_t u0, int64_t u1) {
  const int64_t nb = K / 32, token_bytes = x16_record_bytes(K);
  const T* xp = static_cast<const T*>(x);
  for (int64_t u = u0; u < u1; ++u) {
    const int64_t m = u / nb, j = u % nb;
    alignas(64) float xf[32];
    _mm512_storeu_ps(xf, qwq::load16(xp + m * K + 32 * j));
    _mm512_storeu_ps(xf + 16, qwq::load16(xp + m * K + 32 * j + 16));
    uint8_t* rec = recs + m * token_bytes;
    __m512i q0, q1;
    reinterpret_cast<float*>(rec + 32 * nb)[j] = q8_0_block(xf, q0, q1);
    reinterpret_cast<int32_t*>(rec + 36 * nb)[j] =
        -16 * _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(rec + 32 * j), _mm512_cvtsepi32_epi8(q0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(rec + 32 * j + 16), _mm512_cvtsepi32_epi8(q1));
  }
}

// Four activations at p broadcast to every lane (one load).
QWQ_INLINE __m512i broadcast4(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// Sixteen rows (a group, nb blocks at g) against NT tokens: sums[t] lane r = row r . token t.
template <int NT>
void group_tokens(const uint8_t* g, int64_t nb, const uint8_t* recs, int64_t token_bytes,
                  __m512 (&sums)[NT]) {
  const __m512i low4 = _mm512_set1_epi8(15), sixteen = _mm512_set1_epi8(16);
  __m512 acc[NT];  // in registers: sums, a reference, would be stored every block
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
  const uint8_t* xd = recs + 32 * nb;
  const uint8_t* start = recs + 36 * nb;
  for (int64_t j = 0; j < nb; ++j, g += kGroupBlockBytes) {
    for (int b = 0; b < kGroupBlockBytes; b += 64) {
      if (kFetchToL1) _mm_prefetch(reinterpret_cast<const char*>(g + kPrefetch + b), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(g + kPrefetchL2 + b), _MM_HINT_T1);
    }
    __m512i w[8];
    for (int m = 0; m < 4; ++m) {
      const __m512i q = _mm512_loadu_si512(g + 96 + 64 * m);
      __mmask64 lo_bits, hi_bits;
      std::memcpy(&lo_bits, g + 32 + 16 * m, 8);
      std::memcpy(&hi_bits, g + 40 + 16 * m, 8);
      const __m512i lo = _mm512_and_si512(q, low4);
      const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), low4);
      w[2 * m] = _mm512_mask_add_epi8(lo, lo_bits, lo, sixteen);
      w[2 * m + 1] = _mm512_mask_add_epi8(hi, hi_bits, hi, sixteen);
    }
    const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(g)));
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      const uint8_t* x = recs + t * token_bytes + 32 * j;
      // two chains of four: vpdpbusd's latency, not its rate, would bound one chain of eight
      __m512i s0 = broadcast4(start + t * token_bytes + 4 * j), s1 = _mm512_setzero_si512();
      for (int u = 0; u < 8; u += 2) {
        s0 = qwq::dpbusd_u7(s0, w[u], broadcast4(x + kBase[u]));
        s1 = qwq::dpbusd_u7(s1, w[u + 1], broadcast4(x + kBase[u + 1]));
      }
      float scale;
      std::memcpy(&scale, xd + t * token_bytes + 4 * j, 4);
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)),
                               _mm512_mul_ps(d, _mm512_set1_ps(scale)), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) sums[t] = acc[t];
}

template <int NT>
void group_tile(const uint8_t* g, int64_t nb, const uint8_t* recs, int64_t token_bytes,
                float* out) {
  __m512 sums[NT];
  group_tokens<NT>(g, nb, recs, token_bytes, sums);
  for (int t = 0; t < NT; ++t) _mm512_storeu_ps(out + 16 * t, sums[t]);
}

// The part's groups whose first row lies in [n0, n1) (so any split of a part's rows gives each
// group to exactly one range) against every token.
template <typename T>
void group_rows(const Slice& p, const Job& j, int64_t n0, int64_t n1) {
  const int64_t nb = j.K / 32, token_bytes = x16_record_bytes(j.K);
  const int64_t tile = std::max<int64_t>(kGroupTokens,
                                         kTileBytes / token_bytes / kGroupTokens * kGroupTokens);
  T* op = static_cast<T*>(j.out) + p.first;
  alignas(64) float sums[kGroupTokens * kGroupRows];
  const int64_t g0 = (n0 + kGroupRows - 1) / kGroupRows, g1 = (n1 + kGroupRows - 1) / kGroupRows;
  for (int64_t t0 = 0; t0 < j.M; t0 += tile) {
    const int64_t t1 = std::min(j.M, t0 + tile);
    for (int64_t g = g0; g < g1; ++g) {
      const uint8_t* w = p.w + g * kGroupRows * p.row_stride;
      for (int64_t m = t0, nt; m < t1; m += nt) {
        nt = std::min<int64_t>(kGroupTokens, t1 - m);
        const uint8_t* recs = p.acts + m * token_bytes;
        switch (nt) {
          case 1: group_tile<1>(w, nb, recs, token_bytes, sums); break;
          case 2: group_tile<2>(w, nb, recs, token_bytes, sums); break;
          case 3: group_tile<3>(w, nb, recs, token_bytes, sums); break;
          case 4: group_tile<4>(w, nb, recs, token_bytes, sums); break;
          case 5: group_tile<5>(w, nb, recs, token_bytes, sums); break;
          case 6: group_tile<6>(w, nb, recs, token_bytes, sums); break;
          case 7: group_tile<7>(w, nb, recs, token_bytes, sums); break;
          default: group_tile<8>(w, nb, recs, token_bytes, sums); break;
        }
        for (int t = 0; t < nt; ++t)
          for (int r = 0; r < kGroupRows; ++r) {
            const int64_t n = g * kGroupRows + r;
            op[(m + t) * j.N + n] =
                static_cast<T>(sums[kGroupRows * t + r] + (j.bias ? j.bias[p.first + n] : 0.f));
          }
      }
    }
  }
}

template <typename T>
Kind x16_kind(const at::Tensor& w, int64_t K) {
  TORCH_CHECK(K % 32 == 0, "ggml_linear: Q5_0x16 takes inputs in whole blocks of 32; x has ", K);
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kByte && w.is_contiguous() &&
                  w.device().is_cpu() && w.size(0) % kGroupRows == 0,
              "ggml_linear: Q5_0x16 weights must be contiguous (rows, row_bytes) uint8 CPU "
              "bytes, rows a multiple of 16");
  TORCH_CHECK(w.size(1) == K / 32 * 22, "ggml_linear: Q5_0x16 rows of ", K, " inputs are ",
              K / 32 * 22, " bytes, got ", w.size(1));
  return {K / 32, 32, x16_record_bytes(K), &records_x16<T>, &group_rows<T>};
}

// qwq's own ids for its load-time layouts, past ggml's enum (ggml.py: TYPES)
constexpr int64_t kQ5_0x4 = 1006, kQ8_0x4 = 1008, kQ5_0x16 = 1016;

// type: ggml's enum value (gguf.GGMLQuantizationType), or one of qwq's layouts
template <typename T>
Kind kind(const at::Tensor& w, int64_t type, int64_t K) {
  switch (type) {
    case 2: return kind_of<Q4_0, T>(w, K);
    case 3: return kind_of<Q4_1, T>(w, K);
    case 6: return kind_of<Q5_0, T>(w, K);
    case 7: return kind_of<Q5_1, T>(w, K);
    case 8: return kind_of<Q8_0, T>(w, K);
    case 12: return kind_of<Q4_K, T>(w, K);
    case 13: return kind_of<Q5_K, T>(w, K);
    case 14: return kind_of<Q6_K, T>(w, K);
    case kQ5_0x4: return kind_of<Q5_0x4, T>(w, K);
    case kQ8_0x4: return kind_of<Q8_0x4, T>(w, K);
    case kQ5_0x16: return x16_kind<T>(w, K);
    default:
      TORCH_CHECK(false, "ggml_linear: GGML type ", type, " has no kernel (Q4_0 2, Q4_1 3, ",
                  "Q5_0 6, Q5_1 7, Q8_0 8, Q4_K 12, Q5_K 13, Q6_K 14, Q5_0x4 ", kQ5_0x4,
                  ", Q8_0x4 ", kQ8_0x4, ", Q5_0x16 ", kQ5_0x16, ")");
  }
}

Kind kind_for(at::ScalarType dtype, const at::Tensor& w, int64_t type, int64_t K) {
  switch (dtype) {
    case at::kFloat: return kind<float>(w, type, K);
    case at::kBFloat16: return kind<c10::BFloat16>(w, type, K);
    case at::kHalf: return kind<c10::Half>(w, type, K);
    default: TORCH_CHECK(false, "ggml_linear: x must be float32, bfloat16 or float16");
  }
}

// Each thread's share of a tensor's rows, [lo, hi) packed in one atomic word so its owner
// (taking `step` rows from the front) and a thread stealing its back half never both get a row.
struct Shares {
  struct alignas(64) Range {
    std::atomic<uint64_t> v{0};
    static uint64_t pack(int64_t lo, int64_t hi) {
      return static_cast<uint64_t>(lo) << 32 | static_cast<uint64_t>(hi);
    }
    static int64_t lo(uint64_t r) { return static_cast<int64_t>(r >> 32); }
    static int64_t hi(uint64_t r) { return static_cast<int64_t>(r & 0xFFFFFFFFu); }
    void set(int64_t lo, int64_t hi) { v.store(pack(lo, hi), std::memory_order_relaxed); }
  };
  Range* ranges;
  int threads;
  int64_t step;

  // The next rows [n0, n1) for thread t: from its own share, else the back half of the share
  // with the most left (all of it when that is under two steps). False when none are left.
  bool take(int t, int64_t& n0, int64_t& n1) const {
    for (;;) {
      uint64_t cur = ranges[t].v.load(std::memory_order_relaxed);
      const int64_t lo = Range::lo(cur), hi = Range::hi(cur);
      if (lo < hi) {
        const int64_t end = std::min(hi, lo + step);
        if (ranges[t].v.compare_exchange_weak(cur, Range::pack(end, hi),
                                              std::memory_order_relaxed)) {
          n0 = lo, n1 = end;
          return true;
        }
        continue;
      }
      int victim = -1;
      int64_t most = 0;
      for (int u = 0; u < threads; ++u) {
        const uint64_t r = ranges[u].v.load(std::memory_order_relaxed);
        const int64_t left = Range::hi(r) - Range::lo(r);
        if (u != t && left > most) victim = u, most = left;
      }
      if (victim < 0) return false;
      uint64_t r = ranges[victim].v.load(std::memory_order_relaxed);
      const int64_t vlo = Range::lo(r), vhi = Range::hi(r);
      if (vlo >= vhi) continue;
      const int64_t mid = vhi - vlo < 2 * step ? vlo : vlo + (vhi - vlo) / 2 / 16 * 16;
      if (!ranges[victim].v.compare_exchange_weak(r, Range::pack(vlo, mid),
                                                  std::memory_order_relaxed))
        continue;
      // only this thread writes its own share once it is empty (no one steals from an empty one)
      ranges[t].set(mid, vhi);
    }
  }
};

}  // namespace

namespace qwq::kernels {

// What a GgmlLinear holds: its parts, each type's records of x, the job, the row shares.
struct GgmlLinear::Plan {
  struct Records {
    int64_t type, units, inputs, token_bytes;  // units a token, columns a unit, bytes a token
    void (*fill)(const void* x, int64_t K, uint8_t* recs, int64_t u0, int64_t u1);
    uint8_t* at = nullptr;
  };
  const void* x;
  c10::SmallVector<Records, 4> recs;  // one a type: q and k are often both Q5_0
  c10::SmallVector<Slice, 4> parts;
  Job job;
  at::Tensor bias;  // float32, or undefined
  int64_t row_bytes = 1, units = 0, column_unit = 1;
  // the row shares of the threads that last started (on the stack of up to 8: a decode step
  // made ~100 calls, each a new array)
  Shares::Range on_stack[8];
  std::unique_ptr<Shares::Range[]> on_heap;
  int heap_ranges = 0;
  Shares shares{on_stack, 1, 16};

  int64_t step(int threads) const;
};

GgmlLinear::GgmlLinear(const at::Tensor& x, at::TensorList ws, at::IntArrayRef types,
                       const c10::optional<at::Tensor>& bias, const at::Tensor& out)
    : plan_(std::make_unique<Plan>()) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.device().is_cpu(),
              "ggml_linear: x must be a contiguous 2-D CPU tensor");
  TORCH_CHECK(!ws.empty() && ws.size() == types.size(),
              "ggml_linear: one ggml type per weight tensor, and at least one");
  TORCH_CHECK(out.dim() == 2 && out.size(0) == x.size(0) && out.is_contiguous() &&
                  out.scalar_type() == x.scalar_type() && out.device().is_cpu() && !out.is_same(x),
              "ggml_linear: out must be a new contiguous (tokens, out_features) tensor of x's "
              "dtype");
  const int64_t out_features = out.size(1);
  int64_t rows = 0;
  for (const auto& w : ws) rows += w.dim() == 2 ? w.size(0) : 0;
  TORCH_CHECK(rows == out_features, "ggml_linear: the weights hold ", rows,
              " rows; out_features is ", out_features);
  TORCH_CHECK(out_features < (int64_t{1} << 32), "ggml_linear: at most 2^32 - 1 rows");
  Plan& p = *plan_;
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out_features,
                "ggml_linear: bias must be (out_features,)");
    p.bias = bias->to(at::kFloat).contiguous();
  }
  const int64_t M = x.size(0), K = x.size(1);
  p.x = x.const_data_ptr();
  p.job = {M, out_features, K, p.bias.defined() ? p.bias.const_data_ptr<float>() : nullptr,
           out.data_ptr()};
  int64_t first = 0;
  for (size_t i = 0; i < ws.size(); first += ws[i].size(0), ++i) {
    const Kind k = kind_for(x.scalar_type(), ws[i], types[i], K);
    int rec = 0;
    while (rec < static_cast<int>(p.recs.size()) && p.recs[rec].type != types[i]) ++rec;
    if (rec == static_cast<int>(p.recs.size())) {
      p.recs.push_back({types[i], k.units, k.inputs, k.token_bytes, k.fill});
      p.column_unit = std::lcm(p.column_unit, k.inputs);
      p.units += M * k.units;
    }
    p.parts.push_back({static_cast<const uint8_t*>(ws[i].const_data_ptr()), ws[i].stride(0), first,
                       ws[i].size(0), nullptr, rec, k.run});
    p.row_bytes = std::max<int64_t>(p.row_bytes, ws[i].size(1));
  }
}

GgmlLinear::~GgmlLinear() = default;
GgmlLinear::GgmlLinear(GgmlLinear&&) noexcept = default;
GgmlLinear& GgmlLinear::operator=(GgmlLinear&&) noexcept = default;

int GgmlLinear::record_slots() const { return static_cast<int>(plan_->recs.size()); }

int64_t GgmlLinear::record_bytes(int slot) const {
  return plan_->job.M * plan_->recs[slot].token_bytes;
}

void GgmlLinear::bind(uint8_t* const* slots) {
  for (size_t i = 0; i < plan_->recs.size(); ++i) plan_->recs[i].at = slots[i];
  for (Slice& part : plan_->parts) part.acts = plan_->recs[part.rec].at;
}

int64_t GgmlLinear::record_units() const { return plan_->units; }

int64_t GgmlLinear::column_unit() const { return plan_->column_unit; }

void GgmlLinear::records_of(int64_t m0, int64_t m1, int64_t c0, int64_t c1) const {
  const Plan& p = *plan_;
  TORCH_CHECK(c0 % p.column_unit == 0 && (c1 % p.column_unit == 0 || c1 == p.job.K),
              "ggml_linear: records of columns in whole units of ", p.column_unit);
  for (const auto& r : p.recs) {
    const int64_t lo = c0 / r.inputs, hi = c1 == p.job.K ? r.units : c1 / r.inputs;
    for (int64_t m = m0; lo < hi && m < m1; ++m)
      r.fill(p.x, p.job.K, r.at, m * r.units + lo, m * r.units + hi);
  }
}

void GgmlLinear::records(int64_t u0, int64_t u1) const {
  const Plan& p = *plan_;
  int64_t base = 0;
  for (const auto& r : p.recs) {
    const int64_t n = p.job.M * r.units;
    const int64_t a = std::max(u0, base), b = std::min(u1, base + n);
    if (a < b) r.fill(p.x, p.job.K, r.at, a - base, b - base);
    base += n;
  }
}

// The rows a thread takes at a time, of `threads` (whole groups of 16 rows: a share splits no
// Q5_0x16 group), and the first row of thread t's share.
int64_t GgmlLinear::Plan::step(int threads) const {
  return std::max<int64_t>(16, job.M <= kTokens ? (32 << 10) / row_bytes
                                                : job.N / (4 * threads)) / 16 * 16;
}

static int64_t share_start(int64_t N, int t, int threads, int64_t step) {
  return t == threads ? N : N * t / threads / step * step;
}

// One pass over all the parts' rows (one fork and join for q|k|v instead of three). Each
// thread reads its own contiguous share front to back, one forward stream; a thread that runs
// out takes the back half of what another has left (on a shared machine one core is often
// slower). Shares move in steps of ~32 KB of weights, so the threads end within one step of
// each other: fixed halves, or blocks of an eighth taken from one counter, left the first
// thread done ~10 us before the other in every call of the demo's decode step. Past one
// register tile of tokens the steps are an eighth of the rows, as many as each token tile's
// records are read for.
void GgmlLinear::start(int threads) {
  Plan& p = *plan_;
  const int64_t N = p.job.N, step = p.step(threads);
  Shares::Range* ranges = p.on_stack;
  if (threads > 8) {
    if (p.heap_ranges < threads) {
      p.on_heap = std::make_unique<Shares::Range[]>(threads);
      p.heap_ranges = threads;
    }
    ranges = p.on_heap.get();
  }
  for (int t = 0; t < threads; ++t)
    ranges[t].set(share_start(N, t, threads, step), share_start(N, t + 1, threads, step));
  p.shares = Shares{ranges, threads, step};
}

void GgmlLinear::rows(int t) const {
  const Plan& p = *plan_;
  for (int64_t n0, n1; p.shares.take(t, n0, n1);)
    for (const Slice& part : p.parts) {
      const int64_t a = std::max(n0, part.first), b = std::min(n1, part.first + part.rows);
      if (a < b) part.run(part, p.job, a - part.first, b - part.first);
    }
}

void GgmlLinear::run() {
  const Plan& p = *plan_;
  if (p.job.M == 0 || p.job.N == 0) return;
  // (tasks of about a token's records: units are independent, any split gives the same bytes)
  at::parallel_for(0, p.units, p.units / p.job.M, [&](int64_t u0, int64_t u1) { records(u0, u1); });
  // (no more threads than steps of rows: a small tensor is not forked for)
  const int64_t step = p.step(at::get_num_threads());
  const int threads = static_cast<int>(std::min<int64_t>(at::get_num_threads(),
                                                          (p.job.N + step - 1) / step));
  start(threads);
  if (threads == 1) return rows(0);
  at::parallel_for(0, threads, 1, [&](int64_t t, int64_t) { rows(static_cast<int>(t)); });
}

// x (M, K) times the rows of ws, concatenated: each a (rows, row_bytes) tensor of block bytes
// in the ggml type of the same index; bias (out_features,) or none; into out (M, out_features)
// of x's dtype. Records of up to 1 MB a type go into buffers the calling thread keeps (a decode
// step's are a few KB, and ~100 calls a step each made a new tensor for them); larger ones (a
// prefill's, up to hundreds of MB) into tensors freed with the call.
void ggml_linear_parts_into(const at::Tensor& x, at::TensorList ws, at::IntArrayRef types,
                            const c10::optional<at::Tensor>& bias, at::Tensor& out) {
  GgmlLinear linear(x, ws, types, bias, out);
  constexpr int64_t kKeptBytes = 1 << 20;
  constexpr int kKept = 4;
  struct Free { void operator()(uint8_t* p) const { std::free(p); } };
  thread_local std::unique_ptr<uint8_t, Free> kept[kKept];
  c10::SmallVector<at::Tensor, 1> big;
  c10::SmallVector<uint8_t*, kKept> slots(linear.record_slots());
  for (int i = 0; i < linear.record_slots(); ++i) {
    const int64_t bytes = linear.record_bytes(i);
    if (bytes <= kKeptBytes && i < kKept) {
      if (!kept[i]) {
        kept[i].reset(static_cast<uint8_t*>(std::aligned_alloc(64, kKeptBytes)));
        TORCH_CHECK(kept[i], "ggml_linear: out of memory for activation records");
      }
      slots[i] = kept[i].get();
    } else {
      // torch's allocator aligns to 64 bytes and records are whole vectors: no load splits a line
      big.push_back(at::empty({bytes}, at::kByte));
      slots[i] = big.back().mutable_data_ptr<uint8_t>();
    }
  }
  linear.bind(slots.data());
  linear.run();
}

}  // namespace qwq::kernels

namespace {

at::Tensor ggml_linear_parts(const at::Tensor& x, at::TensorList ws, at::IntArrayRef types,
                             const c10::optional<at::Tensor>& bias, int64_t out_features) {
  TORCH_CHECK(x.dim() == 2, "ggml_linear: x must be a contiguous 2-D CPU tensor");
  TORCH_CHECK(out_features >= 0, "ggml_linear: out_features must not be negative");
  at::Tensor out = at::empty({x.size(0), out_features}, x.options());
  qwq::kernels::ggml_linear_parts_into(x, ws, types, bias, out);
  return out;
}

at::Tensor ggml_linear(const at::Tensor& x, const at::Tensor& w, int64_t type,
                       const c10::optional<at::Tensor>& bias, int64_t out_features) {
  return ggml_linear_parts(x, {w}, {type}, bias, out_features);
}

// (rows, cols) bytes for weights that stream through every decode step, in 2 MB pages where
// the kernel gives them (transparent huge pages, asked for with MADV_HUGEPAGE: most kernels
// ship them as "madvise"). On 4 KB pages a row stream crosses a page every 4 KB, where the
// hardware prefetchers stop and each page costs a TLB walk: alternated calls on the same
// blocks streamed Q8_0x4 2-14% faster from 2 MB pages (AMD Zen 5, 2 threads). The whole 2 MB
// ranges of the mapping get them; its last partial one stays in 4 KB pages, so nothing is
// wasted. Small tensors, or a failed mapping, take torch's allocator.
at::Tensor streamed_bytes(int64_t rows, int64_t cols) {
  constexpr size_t kHuge = size_t{2} << 20;
  const size_t n = static_cast<size_t>(rows * cols);
  if (n < kHuge) return at::empty({rows, cols}, at::kByte);
  const size_t page = 4096, size = (n + page - 1) / page * page;
  void* map = mmap(nullptr, size + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
  if (map == MAP_FAILED) return at::empty({rows, cols}, at::kByte);
  // keep a 2 MB-aligned start: unmap what lies before it and past the end (start - base is
  // under 2 MB, so a tail of base + 2 MB - start bytes always remains)
  const uintptr_t base = reinterpret_cast<uintptr_t>(map);
  const uintptr_t start = (base + kHuge - 1) & ~(uintptr_t{kHuge} - 1);
  if (start > base) munmap(map, start - base);
  munmap(reinterpret_cast<void*>(start + size), base + kHuge - start);
  void* p = reinterpret_cast<void*>(start);
  madvise(p, size, MADV_HUGEPAGE);  // advice: without THP the pages are plain ones
  return at::from_blob(p, {rows, cols}, [size](void* q) { munmap(q, size); },
                       at::TensorOptions().dtype(at::kByte));
}

// (rows, row_bytes) blocks -> the same bytes rearranged within each chunk of order.size()
// bytes: out's chunk byte i is w's chunk byte order[i] (ggml.py: computed; run once at load).
// The order is copied as its runs of consecutive bytes.
at::Tensor ggml_shuffle_chunks(const at::Tensor& w, at::IntArrayRef order) {
  const int64_t n = static_cast<int64_t>(order.size());
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kByte && w.stride(1) == 1 &&
                  w.device().is_cpu() && n > 0 && w.size(1) % n == 0,
              "ggml_shuffle_chunks: weights must be (rows, row_bytes) uint8 CPU bytes, rows of "
              "whole chunks of ", n, " bytes");
  struct Run { int64_t to, from, len; };
  std::vector<Run> runs;
  std::vector<bool> seen(n, false);
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(order[i] >= 0 && order[i] < n && !seen[order[i]],
                "ggml_shuffle_chunks: the order must name each of the chunk's ", n,
                " bytes once; it holds ", order[i], " at ", i);
    seen[order[i]] = true;
    if (!runs.empty() && runs.back().from + runs.back().len == order[i]) ++runs.back().len;
    else runs.push_back({i, order[i], 1});
  }
  at::Tensor out = streamed_bytes(w.size(0), w.size(1));
  const int64_t chunks = w.size(1) / n, stride = w.stride(0);
  const uint8_t* src = w.const_data_ptr<uint8_t>();
  uint8_t* dst = out.mutable_data_ptr<uint8_t>();
  at::parallel_for(0, w.size(0), 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < chunks; ++c) {
        const uint8_t* s = src + r * stride + n * c;
        uint8_t* d = dst + (r * chunks + c) * n;
        for (const Run& run : runs) std::memcpy(d + run.to, s + run.from, run.len);
      }
  });
  return out;
}

// (rows, row_bytes) Q5_0 blocks as filed, rows a multiple of 16 -> Q5_0x16 (see group_tokens'
// layout; ggml.py: computed, once at load).
at::Tensor ggml_interleave_q5_0(const at::Tensor& w) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kByte && w.stride(1) == 1 &&
                  w.device().is_cpu() && w.size(0) % kGroupRows == 0 && w.size(1) % 22 == 0,
              "ggml_interleave_q5_0: weights must be (rows, row_bytes) uint8 CPU bytes of Q5_0 "
              "blocks, rows a multiple of 16");
  const int64_t rows = w.size(0), row_bytes = w.size(1), nb = row_bytes / 22,
                stride = w.stride(0);
  at::Tensor out = streamed_bytes(rows, row_bytes);
  const uint8_t* src = w.const_data_ptr<uint8_t>();
  uint8_t* dst = out.mutable_data_ptr<uint8_t>();
  at::parallel_for(0, rows / kGroupRows, 4, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g)
      for (int64_t j = 0; j < nb; ++j) {
        uint8_t* d = dst + g * kGroupRows * row_bytes + j * kGroupBlockBytes;
        uint64_t masks[8] = {};
        for (int r = 0; r < kGroupRows; ++r) {
          const uint8_t* b = src + (g * kGroupRows + r) * stride + 22 * j;
          uint32_t qh;
          std::memcpy(&qh, b + 2, 4);
          std::memcpy(d + 2 * r, b, 2);
          for (int u = 0; u < 8; ++u) masks[u] |= uint64_t{(qh >> kBase[u]) & 15u} << 4 * r;
          for (int m = 0; m < 4; ++m) std::memcpy(d + 96 + 64 * m + 4 * r, b + 6 + 4 * m, 4);
        }
        std::memcpy(d + 32, masks, 64);
      }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(qwq, m) {
  m.def("ggml_shuffle_chunks(Tensor w, int[] order) -> Tensor");
  m.def("ggml_interleave_q5_0(Tensor w) -> Tensor");
  m.def("ggml_linear(Tensor x, Tensor w, int type, Tensor? bias, int out_features) -> Tensor");
  m.def("ggml_linear_parts(Tensor x, Tensor[] ws, int[] types, Tensor? bias, int out_features) "
        "-> Tensor");
}

TORCH_LIBRARY_IMPL(qwq, CPU, m) {
  m.impl("ggml_linear", &ggml_linear);
  m.impl("ggml_linear_parts", &ggml_linear_parts);
  m.impl("ggml_shuffle_chunks", &ggml_shuffle_chunks);
  m.impl("ggml_interleave_q5_0", &ggml_interleave_q5_0);
}
