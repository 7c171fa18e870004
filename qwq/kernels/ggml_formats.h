// GGUF block formats for ggml.cpp: how one row's chunk of blocks, read straight from the file's
// bytes, unpacks into registers, how activations are rounded to int8 records that line up with
// it, and the chunk's dot product. Formats and roundings are llama.cpp's (ggml-common.h,
// ggml-quants.c, the x86 quantize_row_q8_0); see ggml.py for the same in torch.
//
// Each format F has: kBlock/kBlockBytes (a ggml block), kChunk/kChunkBytes (the inputs and bytes
// one decode covers), kRecBytes (a token's activation record per chunk, a multiple of 64),
// decode(p, n) (a chunk of n bytes at p; a short last chunk reads only its n bytes), quantize(x,
// rec) (kChunk floats -> a record) and dot(w, rec, acc) (acc += the chunk's row . token, in
// float lanes that are summed at the end of the row). A family's formats take all but their
// name, layout and decode from one base (Blocks32 here, Super256 in ggml_kquants.h).
//
// Integer sums are exact in any order, so the only roundings are the float ones in dot, always
// the same sequence for a given row and token.
#pragma once

#include "isa.h"

#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace qwq::ggml {

// Up to 64 bytes from p + off in a chunk of n bytes; the rest read as zero, and nothing past n
// is touched (the last row of a tensor may end its mapping).
QWQ_INLINE __m512i load_part(const uint8_t* p, int off, int n) {
  const int k = n - off;
  if (k >= 64) return _mm512_loadu_si512(p + off);
  return _mm512_maskz_loadu_epi8(k <= 0 ? 0 : ~0ULL >> (64 - k), p + off);
}

QWQ_INLINE float fp16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// Word-index vectors for vpermw / vpermt2w, built from i -> index.
using Words = std::array<int16_t, 32>;
template <typename Fn>
constexpr Words words(Fn f) {
  Words w{};
  for (int i = 0; i < 32; ++i) w[i] = static_cast<int16_t>(f(i));
  return w;
}
QWQ_INLINE __m512i vec(const Words& w) { return _mm512_loadu_si512(w.data()); }

// ---- 32-input blocks: Q4_0, Q5_0, Q8_0 (symmetric) and Q4_1, Q5_1 (with a min) ----
//
// Four blocks make a chunk of 128 inputs, block b in 128-bit lane b of two vectors: w[0] holds
// its inputs 0-15, w[1] inputs 16-31 (4 to a 32-bit lane, as vpdpbusd adds them). Every field
// of these blocks sits at an even offset, so word permutes (AVX-512BW) gather them; the AVX2
// build, which has no word permute across its 128-bit halves, loads each block's fields.

struct Sym32 {
  __m512i w[2];  // unsigned values q (Q8_0: its int8 + 128)
  __m512 d;      // block b's scale in lanes 4b..4b+3
};

struct Affine32 {
  __m512i w[2];  // unsigned values q
  __m512 d;      // block b's scale in lanes 4b..4b+3
  __m512 m;      // block b's min in lane 4b, 0 elsewhere
};

// The AVX-512 build gathers the file layouts' fields with word permutes (AVX-512BW):
#if defined(__AVX512F__)
// The chunk's four block scales as floats, block b's in lanes 4b..4b+3 (idx: scale_words).
QWQ_INLINE __m512 block_scales(__m512i v0, __m512i v1, const Words& idx) {
  return _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutex2var_epi16(v0, vec(idx), v1)));
}

// The blocks' mins (idx: scale_words at the min) in lane 4b, the block's other lanes zero, so
// each counts once.
QWQ_INLINE __m512 block_mins(__m512i v0, __m512i v1, const Words& idx) {
  const __m512i words = _mm512_maskz_permutex2var_epi16(0x11111111, v0, vec(idx), v1);
  return _mm512_cvtph_ps(_mm512_castsi512_si256(words));
}

// Inputs 0-15 (lo) and 16-31 (hi) of each block: the low and high nibbles of its 16 packed bytes
// (idx: qs_words).
QWQ_INLINE void nibbles(__m512i v0, __m512i v1, const Words& idx, __m512i& lo,
                        __m512i& hi) {
  const __m512i qs = _mm512_permutex2var_epi16(v0, vec(idx), v1);
  const __m512i low4 = _mm512_set1_epi8(15);
  lo = _mm512_and_si512(qs, low4);
  hi = _mm512_and_si512(_mm512_srli_epi16(qs, 4), low4);
}

// Q5_0/Q5_1: 16 more where a block's fifth bit is set. The words [qh_b's low half for b = 0..3,
// then the high halves] (idx: qh_words) make bit 16b + i of the first (second) 64 bits input i
// (16 + i) of block b, lane-aligned with lo (hi).
QWQ_INLINE void add_fifth_bits(__m512i v0, __m512i v1, const Words& idx, __m512i& lo,
                               __m512i& hi) {
  const __m128i h = _mm512_castsi512_si128(_mm512_permutex2var_epi16(v0, vec(idx), v1));
  const __m512i sixteen = _mm512_set1_epi8(16);
  lo = _mm512_mask_add_epi8(lo, static_cast<__mmask64>(_mm_cvtsi128_si64(h)), lo, sixteen);
  hi = _mm512_mask_add_epi8(hi, static_cast<__mmask64>(_mm_extract_epi64(h, 1)), hi, sixteen);
}
#endif

// Four fp16 values (value b in bits 16b..16b + 15) as floats.
QWQ_INLINE __m128 halves_ps(uint64_t halves) {
  return _mm_cvtph_ps(_mm_cvtsi64_si128(static_cast<long long>(halves)));
}

// Four fp16 scales (as halves_ps) as floats, block b's in lanes 4b..4b+3.
QWQ_INLINE __m512 scales4(uint64_t halves) {
  const __m128 d4 = halves_ps(halves);
  const __m512i lanes = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  return _mm512_permutexvar_ps(lanes, _mm512_castps128_ps512(d4));
}

// The four fp16 scales at p, as scales4.
QWQ_INLINE __m512 four_scales(const uint8_t* p) {
  uint64_t halves;
  std::memcpy(&halves, p, 8);
  return scales4(halves);
}

#if !defined(__AVX512F__)
// AVX2 has no word permute across its 128-bit halves, so there the file layouts' fields come
// from plain loads: block b's 16 bytes at p + B b + at into 128-bit lane b. A short chunk (n
// bytes, whole blocks) reads its missing blocks as zeros, as load_part does.
template <int B>
QWQ_INLINE __m512i gather16(const uint8_t* p, int at, int n) {
  __m128i l[4];
  for (int b = 0; b < 4; ++b)
    l[b] = B * (b + 1) <= n ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + B * b + at))
                            : _mm_setzero_si128();
  return __m512i{_mm256_set_m128i(l[1], l[0]), _mm256_set_m128i(l[3], l[2])};
}

// Block b's field of W bytes (2 or 4) at p + B b + at, for the four blocks (missing ones 0).
template <int B, typename W>
QWQ_INLINE void fields(const uint8_t* p, int at, int n, W (&out)[4]) {
  for (int b = 0; b < 4; ++b) {
    out[b] = 0;
    if (B * (b + 1) <= n) std::memcpy(&out[b], p + B * b + at, sizeof(W));
  }
}

// The four blocks' fp16 fields at `at`, packed for scales4.
template <int B>
QWQ_INLINE uint64_t halves4(const uint8_t* p, int at, int n) {
  uint16_t h[4];
  fields<B>(p, at, n, h);
  return h[0] | uint64_t{h[1]} << 16 | uint64_t{h[2]} << 32 | uint64_t{h[3]} << 48;
}
#endif

// Words of a chunk of blocks of B bytes: the 16 packed bytes at byte `at` of block i / 8 (word
// i % 8), the scale at byte `at` of block i / 4, and the Q5 high-bit words.
constexpr Words qs_words(int B, int at) {
  return words([=](int i) { return (B * (i / 8) + at) / 2 + i % 8; });
}
constexpr Words scale_words(int B, int at) {
  return words([=](int i) { return (B * (i / 4 % 4) + at) / 2; });
}
constexpr Words qh_words(int B, int at) {
  return words([=](int i) { return (B * (i % 4) + at) / 2 + i / 4 % 2; });
}

// The activations of a chunk of four 32-blocks (x86 quantize_row_q8_0 per block: q =
// round-half-even(x * 127 / amax), d = amax / 127 rounded to fp16). Record (256 bytes): two
// vectors of int8 values lined up with w[0] and w[1], the block scales by lane, then for
// weights stored as q with q - kOffset meant (kOffset > 0), -kOffset * each lane's sum of values
// as int32, the dot products' start (vpdpbusd multiplies unsigned weights by signed values, so
// the offset comes off in integers, once per token); for affine weights (kOffset 0) d * the
// block's sum of values in lane 4b.
// One block of 32 activations as Q8_0: its values 0-15 (q0) and 16-31 (q1) as int32, its scale.
QWQ_INLINE float q8_0_block(const float* x, __m512i& q0, __m512i& q1) {
  const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
  const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
  const __m512 inv = _mm512_set1_ps(amax != 0.f ? 127.f / amax : 0.f);
  q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, inv));
  q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, inv));
  return _cvtsh_ss(_cvtss_sh(amax / 127.f, _MM_FROUND_TO_NEAREST_INT));
}

template <int kOffset>
inline void quantize_q8_0(const float* x, uint8_t* rec) {
  alignas(64) float d16[16], sums[16] = {};
  for (int b = 0; b < 4; ++b) {
    __m512i q0, q1;
    const float d = q8_0_block(x + 32 * b, q0, q1);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(rec + 16 * b), _mm512_cvtsepi32_epi8(q0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(rec + 64 + 16 * b), _mm512_cvtsepi32_epi8(q1));
    for (int j = 0; j < 4; ++j) d16[4 * b + j] = d;
    if constexpr (kOffset == 0)
      sums[4 * b] = d * static_cast<float>(_mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1)));
  }
  std::memcpy(rec + 128, d16, 64);
  if constexpr (kOffset > 0) {
    const __m512i ones = _mm512_set1_epi8(1);
    const __m512i lane_sums = _mm512_dpbusd_epi32(
        _mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, _mm512_loadu_si512(rec)), ones,
        _mm512_loadu_si512(rec + 64));
    const __m512i start = _mm512_mullo_epi32(lane_sums, _mm512_set1_epi32(-kOffset));
    _mm512_storeu_si512(rec + 192, start);
  } else {
    std::memcpy(rec + 192, sums, 64);
  }
}

// What every 32-input format shares: four blocks of kBytes to a chunk, activations as Q8_0
// records, and the chunk's dot product. Weights stored as q with q - kOffset meant decode to
// Sym32; those with a min (kOffset 0) to Affine32.
template <int kBytes, int kOffset>
struct Blocks32 {
  static constexpr int kBlock = 32, kBlockBytes = kBytes;
  static constexpr int kChunk = 128, kChunkBytes = 4 * kBytes, kRecBytes = 256;
  using Weights = std::conditional_t<kOffset == 0, Affine32, Sym32>;

  static void quantize(const float* x, uint8_t* rec) { quantize_q8_0<kOffset>(x, rec); }

  static QWQ_INLINE __m512 dot(const Weights& w, const uint8_t* rec, __m512 acc) {
    const float* f = reinterpret_cast<const float*>(rec + 128);
    __m512i s;
#if !defined(__AVX512F__)
    if constexpr (kOffset == 128) {  // the same integers, as signed products (isa.h)
      s = qwq::avx2::dot_offset128(_mm512_setzero_si512(), w.w[0], _mm512_loadu_si512(rec));
      s = qwq::avx2::dot_offset128(s, w.w[1], _mm512_loadu_si512(rec + 64));
    } else
#endif
    {
      s = kOffset ? _mm512_loadu_si512(rec + 192) : _mm512_setzero_si512();
      if constexpr (kOffset < 128) {  // 4-5 bit values: below 32
        s = qwq::dpbusd_u7(s, w.w[0], _mm512_loadu_si512(rec));
        s = qwq::dpbusd_u7(s, w.w[1], _mm512_loadu_si512(rec + 64));
      } else {
        s = _mm512_dpbusd_epi32(s, w.w[0], _mm512_loadu_si512(rec));
        s = _mm512_dpbusd_epi32(s, w.w[1], _mm512_loadu_si512(rec + 64));
      }
    }
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(w.d, _mm512_loadu_ps(f)), acc);
    if constexpr (kOffset == 0) acc = _mm512_fmadd_ps(w.m, _mm512_loadu_ps(f + 16), acc);
    return acc;
  }
};

// Where a block of 4-bit values keeps its fields: the fp16 scale at byte 0, then at these byte
// offsets the fp16 min and the 32 fifth bits (-1 where the format has none) and the 16 bytes of
// nibbles, the block's last.
struct NibbleLayout {
  int min = -1, qh = -1, qs;
};

// Q4_0, Q5_0 (values q - 8, q - 16) and Q4_1, Q5_1 (d * q + m) from their layout alone.
template <NibbleLayout L>
struct Nibbles32 : Blocks32<L.qs + 16, L.min >= 0 ? 0 : L.qh >= 0 ? 16 : 8> {
  static constexpr int kBytes = L.qs + 16;
  static constexpr Words kQs = qs_words(kBytes, L.qs), kD = scale_words(kBytes, 0);

  static QWQ_INLINE typename Nibbles32::Weights decode(const uint8_t* p, int n) {
    typename Nibbles32::Weights w;
#if defined(__AVX512F__)
    const __m512i v0 = load_part(p, 0, n), v1 = load_part(p, 64, n);
    nibbles(v0, v1, kQs, w.w[0], w.w[1]);
    if constexpr (L.qh >= 0) {
      static constexpr Words kQh = qh_words(kBytes, L.qh);
      add_fifth_bits(v0, v1, kQh, w.w[0], w.w[1]);
    }
    w.d = block_scales(v0, v1, kD);
    if constexpr (L.min >= 0) {
      static constexpr Words kM = scale_words(kBytes, L.min);
      w.m = block_mins(v0, v1, kM);
    }
#else  // the same lanes by loads (gather16)
    const __m512i qs = gather16<kBytes>(p, L.qs, n);
    const __m512i low4 = _mm512_set1_epi8(15);
    w.w[0] = _mm512_and_si512(qs, low4);
    w.w[1] = _mm512_and_si512(_mm512_srli_epi16(qs, 4), low4);
    if constexpr (L.qh >= 0) {  // as add_fifth_bits: bit 16b + i of lo (hi): qh_b's bit i (16 + i)
      uint32_t qh[4];
      fields<kBytes>(p, L.qh, n, qh);
      uint64_t lo = 0, hi = 0;
      for (int b = 0; b < 4; ++b) {
        lo |= uint64_t{qh[b] & 0xFFFFu} << 16 * b;
        hi |= uint64_t{qh[b] >> 16} << 16 * b;
      }
      const __m512i sixteen = _mm512_set1_epi8(16);
      w.w[0] = _mm512_mask_add_epi8(w.w[0], lo, w.w[0], sixteen);
      w.w[1] = _mm512_mask_add_epi8(w.w[1], hi, w.w[1], sixteen);
    }
    w.d = scales4(halves4<kBytes>(p, 0, n));
    if constexpr (L.min >= 0) {  // as block_mins: block b's in lane 4b
      alignas(16) float m[4];
      _mm_store_ps(m, halves_ps(halves4<kBytes>(p, L.min, n)));
      w.m = __m512{_mm256_setr_ps(m[0], 0, 0, 0, m[1], 0, 0, 0),
                   _mm256_setr_ps(m[2], 0, 0, 0, m[3], 0, 0, 0)};
    }
#endif
    return w;
  }
};

struct Q4_0 : Nibbles32<NibbleLayout{.qs = 2}> {
  static constexpr const char* kName = "Q4_0";
};

struct Q5_0 : Nibbles32<NibbleLayout{.qh = 2, .qs = 6}> {
  static constexpr const char* kName = "Q5_0";
};

// Q5_0 as qwq repacks it once at load (ggml.py: computed): the same 88 bytes of each four
// blocks, rearranged so a decode needs no word permutes. Q5_0 decoded from the file's layout
// runs at ~11 GB/s on one core, too slow to overlap with reading the weights; this layout at
// ~18 GB/s. Bytes 0-63: block b's 16 bytes of nibbles at 16b; 64-71: bits 0-15 of each block's
// fifth bits (block b's at bit 16b: the mask of w[0]); 72-79: bits 16-31 (w[1]'s); 80-87: the
// four fp16 scales. Rows must hold whole chunks of four blocks.
struct Q5_0x4 : Blocks32<22, 16> {
  static constexpr const char* kName = "Q5_0x4";
  static constexpr int kBlock = 128, kBlockBytes = 88;

  static QWQ_INLINE Sym32 decode(const uint8_t* p, int) {
    const __m512i qs = _mm512_loadu_si512(p);
    const __m512i low4 = _mm512_set1_epi8(15), sixteen = _mm512_set1_epi8(16);
    uint64_t lo_bits, hi_bits;
    std::memcpy(&lo_bits, p + 64, 8);
    std::memcpy(&hi_bits, p + 72, 8);
    Sym32 w;
    w.w[0] = _mm512_and_si512(qs, low4);
    w.w[1] = _mm512_and_si512(_mm512_srli_epi16(qs, 4), low4);
    w.w[0] = _mm512_mask_add_epi8(w.w[0], lo_bits, w.w[0], sixteen);
    w.w[1] = _mm512_mask_add_epi8(w.w[1], hi_bits, w.w[1], sixteen);
    w.d = four_scales(p + 80);
    return w;
  }
};

struct Q4_1 : Nibbles32<NibbleLayout{.min = 2, .qs = 4}> {
  static constexpr const char* kName = "Q4_1";
};

struct Q5_1 : Nibbles32<NibbleLayout{.min = 2, .qh = 4, .qs = 8}> {
  static constexpr const char* kName = "Q5_1";
};

// Q8_0: the fp16 scale, then 32 int8 values (decoded as unsigned int8 + 128, the offset the
// record takes off).
struct Q8_0 : Blocks32<34, 128> {
  static constexpr const char* kName = "Q8_0";
  // w[0] from bytes 0-127, w[1] from bytes 8-135 (a word permute reaches 128 bytes)
  static constexpr Words kLo = qs_words(34, 2), kHi = qs_words(34, 18 - 8);
  static constexpr Words kD = scale_words(34, 0);
  static QWQ_INLINE Sym32 decode(const uint8_t* p, int n) {
    const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));  // int8 w -> unsigned w + 128
    Sym32 w;
#if defined(__AVX512F__)
    const __m512i v0 = load_part(p, 0, n), v1 = load_part(p, 64, n);
    const __m512i v2 = load_part(p, 8, n), v3 = load_part(p, 72, n);
    w.w[0] = _mm512_xor_si512(_mm512_permutex2var_epi16(v0, vec(kLo), v1), flip);
    w.w[1] = _mm512_xor_si512(_mm512_permutex2var_epi16(v2, vec(kHi), v3), flip);
    w.d = block_scales(v0, v1, kD);
#else  // the same lanes by loads (gather16)
    w.w[0] = _mm512_xor_si512(gather16<34>(p, 2, n), flip);
    w.w[1] = _mm512_xor_si512(gather16<34>(p, 18, n), flip);
    w.d = scales4(halves4<34>(p, 0, n));
#endif
    return w;
  }
};

// Q8_0 as qwq repacks it once at load (ggml.py: computed): the same 136 bytes of each four
// blocks, values 0-15 of block b at 16b, values 16-31 at 64 + 16b, the four fp16 scales at 128.
// As filed, the 2-byte scales put every block's values at an even offset only, so a decode
// takes three word permutes; this one two plain loads (a cold stream ~15% faster).
struct Q8_0x4 : Blocks32<34, 128> {
  static constexpr const char* kName = "Q8_0x4";
  static constexpr int kBlock = 128, kBlockBytes = 136;

  static QWQ_INLINE Sym32 decode(const uint8_t* p, int) {
    const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));  // int8 w -> w + 128
    Sym32 w;
    w.w[0] = _mm512_xor_si512(_mm512_loadu_si512(p), flip);
    w.w[1] = _mm512_xor_si512(_mm512_loadu_si512(p + 64), flip);
    w.d = four_scales(p + 128);
    return w;
  }
};

}  // namespace qwq::ggml

#include "ggml_kquants.h"
