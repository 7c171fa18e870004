// K-quants for ggml.cpp (see ggml_formats.h): Q4_K, Q5_K and Q6_K superblocks of 256 inputs
// against Q8_K activations (blocks of 256 with a float scale, llama.cpp's quantize_row_q8_K_ref).
//
// A superblock decodes into four vectors of unsigned values in lane order: 32-bit lane j of
// vector i holds inputs 16 g(j) + 4i .. + 3 of one group g(j) of 16 inputs, so lane j sees a
// whole group across the four, all under one scale (Q6_K: group j, its scale j; Q4_K/Q5_K: half
// j / 8 of sub-block j % 8). The word permutes that gather them run once per row and chunk; per
// token a superblock then costs four chained vpdpbusd, one conversion and one fma by the lane
// scales (d * scale) times the token's d, and for Q4_K/Q5_K one fnmadd for the mins.
#pragma once

namespace qwq::ggml {

struct KQuant {
  __m512i w[4];
  __m512 scale;  // d * the scale of each lane's group
  __m512 mins;   // Q4_K/Q5_K: dmin * the min of each lane's sub-block
};

// The natural group of 16 inputs that lane j holds.
template <bool kMins>
constexpr int group(int j) { return kMins ? 2 * (j % 8) + j / 8 : j; }

// Record (384 bytes): the 256 values in the weights' lane order (vector i, lane j: inputs
// 16 group(j) + 4i ..), then per lane kMins (Q4_K, Q5_K): d * the sum of its group's values as
// a float; else (Q6_K): -32 * that sum as an int32 (the start of the dot products, as its
// weights are q - 32); then d as the float at byte 320.
template <bool kMins>
inline void quantize_q8_k(const float* x, uint8_t* rec) {
  __m512 v[16];
  __m512 amax = _mm512_setzero_ps();
  for (int i = 0; i < 16; ++i) {
    v[i] = _mm512_loadu_ps(x + 16 * i);
    amax = _mm512_max_ps(amax, _mm512_abs_ps(v[i]));
  }
  const float peak = _mm512_reduce_max_ps(amax);
  alignas(64) int32_t q[64] = {};  // 256 int8 values, natural order
  float d = 0.f;
  if (peak != 0.f) {
    // llama.cpp scales by the first value of largest magnitude, with its sign
    const __m512 p = _mm512_set1_ps(peak);
    int first = 0;
    while (!_mm512_cmp_ps_mask(_mm512_abs_ps(v[first]), p, _CMP_EQ_OQ)) ++first;
    const int lane = __builtin_ctz(_mm512_cmp_ps_mask(_mm512_abs_ps(v[first]), p, _CMP_EQ_OQ));
    const float iscale = -127.f / x[16 * first + lane];
    d = 1.f / iscale;
    for (int i = 0; i < 16; ++i) {
      const __m512 scaled = _mm512_mul_ps(_mm512_set1_ps(iscale), v[i]);
      const __m512i qi = _mm512_min_epi32(_mm512_cvtps_epi32(scaled), _mm512_set1_epi32(127));
      _mm_store_si128(reinterpret_cast<__m128i*>(q + 4 * i), _mm512_cvtsepi32_epi8(qi));
    }
  }
  // vector i, lane j: the word of inputs 16 group(j) + 4i ..; each lane's four vectors hold its
  // whole group, so one vpdpbusd by ones a vector sums the group in lane order
  __m512i sums = _mm512_setzero_si512();
  const __m512i ones = _mm512_set1_epi8(1);
  for (int i = 0; i < 4; ++i) {
    alignas(64) int32_t word[16];
    for (int j = 0; j < 16; ++j) word[j] = 4 * group<kMins>(j) + i;
    const __m512i w = _mm512_i32gather_epi32(_mm512_load_si512(word), q, 4);
    _mm512_storeu_si512(rec + 64 * i, w);
    sums = _mm512_dpbusd_epi32(sums, ones, w);
  }
  if constexpr (kMins)
    _mm512_storeu_ps(rec + 256, _mm512_mul_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sums)));
  else
    _mm512_storeu_si512(rec + 256, _mm512_mullo_epi32(sums, _mm512_set1_epi32(-32)));
  std::memset(rec + 320, 0, 64);
  std::memcpy(rec + 320, &d, 4);
}

// acc += d_x * d_w * sum_j scale_j (w_j . x_j) [- dmin * sum_j min_j sum(x_j)] over a superblock.
template <bool kMins>
QWQ_INLINE __m512 dot_k(const KQuant& w, const uint8_t* rec, __m512 acc) {
  const float* f = reinterpret_cast<const float*>(rec + 256);
  __m512i s = kMins ? _mm512_setzero_si512() : _mm512_loadu_si512(f);
  // K-quant values are below 64
  for (int i = 0; i < 4; ++i) s = qwq::dpbusd_u7(s, w.w[i], _mm512_loadu_si512(rec + 64 * i));
  const __m512 scale = _mm512_mul_ps(w.scale, _mm512_set1_ps(f[16]));
  acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, acc);
  if constexpr (kMins) acc = _mm512_fnmadd_ps(w.mins, _mm512_loadu_ps(f), acc);
  return acc;
}

// What every K-quant shares: a superblock of kBytes is a chunk, against Q8_K records; kMins:
// Q4_K, Q5_K (a min per sub-block), else Q6_K.
template <int kBytes, bool kMins>
struct Super256 {
  static constexpr int kBlock = 256, kBlockBytes = kBytes;
  static constexpr int kChunk = 256, kChunkBytes = kBytes, kRecBytes = 384;
  static void quantize(const float* x, uint8_t* rec) { quantize_q8_k<kMins>(x, rec); }
  static QWQ_INLINE __m512 dot(const KQuant& w, const uint8_t* rec, __m512 acc) {
    return dot_k<kMins>(w, rec, acc);
  }
};

// Index vectors for vpermd / vpermt2d, lane j -> f(j).
using Lanes = std::array<int32_t, 16>;
template <typename Fn>
constexpr Lanes lanes(Fn f) {
  Lanes l{};
  for (int j = 0; j < 16; ++j) l[j] = f(j);
  return l;
}
QWQ_INLINE __m512i vec(const Lanes& l) { return _mm512_loadu_si512(l.data()); }

QWQ_INLINE __m128i load128(const uint8_t* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}
QWQ_INLINE __m256i load256(const uint8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

// Q4_K/Q5_K's 12 bytes of 6-bit scales and mins at p -> bytes 0-7 the scales, 8-15 the mins.
// Bytes 0-3 hold scales 0-3 and bytes 4-7 mins 0-3 in their low 6 bits; bytes 8-11 hold the low
// 4 bits of scales 4-7 (low nibble) and mins 4-7 (high nibble), whose top 2 bits are the top
// bits of bytes 0-3 and 4-7. In 128-bit vector steps, no scalar work: `low` lines up each
// output's 6-bit field or nibble, `top` its top bits, and `keep` masks 6 or 4 bits.
QWQ_INLINE __m128i scales_mins_k4(const uint8_t* p) {
  const __m128i a = load128(p);  // 12 bytes used
  const __m128i low = _mm_srlv_epi32(
      _mm_shuffle_epi8(a, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11)),
      _mm_setr_epi32(0, 0, 0, 4));
  const __m128i top =
      _mm_shuffle_epi8(a, _mm_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 4, 5, 6, 7));
  const __m128i keep = _mm_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f);
  const __m128i top2 = _mm_and_si128(_mm_srli_epi32(top, 2), _mm_set1_epi8(0x30));
  return _mm_ternarylogic_epi32(low, keep, top2, 0xEA);  // (low & keep) | top2
}

// Q4_K/Q5_K: the 128 qs bytes hold sub-blocks 2c (low nibbles) and 2c + 1 (high) in bytes
// 32c .. 32c + 31. Lane j (sub-block k = j % 8 = 2c + s, inputs 16 (j / 8) + 4i ..) of vector i
// takes qs word 8c + 4 (j / 8) + i, shifted down 4s bits for the high nibbles.
template <int i>
inline constexpr Lanes kQsK4 = lanes([](int j) { return 8 * (j % 8 / 2) + 4 * (j / 8) + i; });
inline constexpr Lanes kNibbleK4 = lanes([](int j) { return 4 * (j % 2); });
inline constexpr Lanes kHalves = lanes([](int j) { return j / 8; });

template <int i>
QWQ_INLINE __m512i k4_lanes(__m512i q0, __m512i q1) {
  const __m512i words = _mm512_permutex2var_epi32(q0, vec(kQsK4<i>), q1);
  return _mm512_and_si512(_mm512_srlv_epi32(words, vec(kNibbleK4)), _mm512_set1_epi8(15));
}

#if defined(__AVX512F__)
QWQ_INLINE void k4_nibbles(const uint8_t* qs, __m512i (&w)[4]) {
  const __m512i q0 = _mm512_loadu_si512(qs), q1 = _mm512_loadu_si512(qs + 64);
  w[0] = k4_lanes<0>(q0, q1);
  w[1] = k4_lanes<1>(q0, q1);
  w[2] = k4_lanes<2>(q0, q1);
  w[3] = k4_lanes<3>(q0, q1);
}
#else
// AVX2 permutes words only within a register (isa.h writes the 512-bit permutes as eight of
// them and blends, the most of a superblock's work there). The same lanes, cheaper: the four
// 32-byte qs chunks c as registers, their words transposed 4x4 within each 128-bit half, give
// per i one register of (chunk c's word i | chunk c's word 4 + i); vector i's low half takes
// its first four words, each twice, and its high half the last four.
QWQ_INLINE void transpose_words(const uint8_t* p, __m256i (&col)[4]) {
  const __m256i r0 = load256(p), r1 = load256(p + 32), r2 = load256(p + 64), r3 = load256(p + 96);
  const __m256i t0 = _mm256_unpacklo_epi32(r0, r1), t1 = _mm256_unpackhi_epi32(r0, r1);
  const __m256i t2 = _mm256_unpacklo_epi32(r2, r3), t3 = _mm256_unpackhi_epi32(r2, r3);
  col[0] = _mm256_unpacklo_epi64(t0, t2);
  col[1] = _mm256_unpackhi_epi64(t0, t2);
  col[2] = _mm256_unpacklo_epi64(t1, t3);
  col[3] = _mm256_unpackhi_epi64(t1, t3);
}

QWQ_INLINE void k4_nibbles(const uint8_t* qs, __m512i (&w)[4]) {
  __m256i col[4];
  transpose_words(qs, col);
  const __m256i lo = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
  const __m256i hi = _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7);
  const __m256i shift = _mm256_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4);  // kNibbleK4
  const __m256i m = _mm256_set1_epi8(15);
  for (int i = 0; i < 4; ++i)
    w[i] = __m512i{
        _mm256_and_si256(_mm256_srlv_epi32(_mm256_permutevar8x32_epi32(col[i], lo), shift), m),
        _mm256_and_si256(_mm256_srlv_epi32(_mm256_permutevar8x32_epi32(col[i], hi), shift), m)};
}
#endif

QWQ_INLINE KQuant decode_k4(const uint8_t* p, const uint8_t* qs) {
  KQuant k;
  k4_nibbles(qs, k.w);
  // [scale 0-7, min 0-7] * [d x8, dmin x8], then each half for both halves of the lanes
  uint32_t d_dmin;
  std::memcpy(&d_dmin, p, 4);
  const __m128 dd = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(d_dmin)));
  const __m512 dm = _mm512_permutexvar_ps(vec(kHalves), _mm512_castps128_ps512(dd));
  const __m512i sm = _mm512_cvtepu8_epi32(scales_mins_k4(p + 4));
  const __m512 scaled = _mm512_mul_ps(_mm512_cvtepi32_ps(sm), dm);
  k.scale = _mm512_shuffle_f32x4(scaled, scaled, 0x44);
  k.mins = _mm512_shuffle_f32x4(scaled, scaled, 0xEE);
  return k;
}

struct Q4_K : Super256<144, true> {
  static constexpr const char* kName = "Q4_K";
  static QWQ_INLINE KQuant decode(const uint8_t* p, int) { return decode_k4(p, p + 16); }
};

// Q5_K's fifth bits: bit k of qh byte l is input l of sub-block k. Lane j (sub-block k = j % 8,
// inputs 16 (j / 8) + 4i ..) takes qh word 4 (j / 8) + i and rotates bit k of each byte to bit 4.
template <int i>
inline constexpr Lanes kQhK5 = lanes([](int j) { return 4 * (j / 8) + i; });
inline constexpr Lanes kRotK5 = lanes([](int j) { return (4 - j % 8) & 31; });

template <int i>
QWQ_INLINE __m512i k5_bits(__m512i w, __m512i qh) {
#if defined(__AVX512F__)
  const __m512i words = _mm512_permutexvar_epi32(vec(kQhK5<i>), qh);
#else  // qh's 32 bytes are one AVX2 register: kQhK5 broadcasts its word i, then 4 + i
  const __m512i words{_mm256_permutevar8x32_epi32(qh.lo, _mm256_set1_epi32(i)),
                      _mm256_permutevar8x32_epi32(qh.lo, _mm256_set1_epi32(4 + i))};
#endif
  const __m512i bits = _mm512_rolv_epi32(words, vec(kRotK5));
  return _mm512_ternarylogic_epi32(w, bits, _mm512_set1_epi8(16), 0xF8);  // w | (bits & 16)
}

struct Q5_K : Super256<176, true> {
  static constexpr const char* kName = "Q5_K";
  static QWQ_INLINE KQuant decode(const uint8_t* p, int) {
    KQuant k = decode_k4(p, p + 48);
    const __m512i qh = _mm512_castsi256_si512(load256(p + 16));
    k.w[0] = k5_bits<0>(k.w[0], qh);
    k.w[1] = k5_bits<1>(k.w[1], qh);
    k.w[2] = k5_bits<2>(k.w[2], qh);
    k.w[3] = k5_bits<3>(k.w[3], qh);
    return k;
  }
};

// Q6_K: input 128h + 32s + l (half h, quarter s, l < 32) is ql byte 64h + 32 (s % 2) + l's
// nibble s / 2, with bits 4-5 from qh byte 32h + l's bit pair s; scale j covers inputs 16j ..
// 16j + 15. Lane j = 8h + 2s + g (inputs l = 16g + 4i ..) of vector i takes ql word 16h +
// 8 (s % 2) + 4g + i and qh word 8h + 4g + i.
template <int i>
inline constexpr Lanes kQlQ6 =
    lanes([](int j) { return 16 * (j / 8) + 8 * (j / 2 % 2) + 4 * (j % 2) + i; });
template <int i>
inline constexpr Lanes kQhQ6 = lanes([](int j) { return 8 * (j / 8) + 4 * (j % 2) + i; });
inline constexpr Lanes kNibbleQ6 = lanes([](int j) { return 4 * (j / 4 % 2); });
inline constexpr Lanes kRotQ6 = lanes([](int j) { return (4 - 2 * (j / 2 % 4)) & 31; });

#if defined(__AVX512F__)
QWQ_INLINE __m512i q6_high(__m512i high) { return _mm512_rolv_epi32(high, vec(kRotQ6)); }
#else
// AVX2 has no rotate (isa.h: two shifts, a subtract and an or). Only bits 4-5 of each byte are
// kept, and no kept bit crosses a byte: kRotQ6's left rotations by 4 and 2 are left shifts,
// its rotation by 30 a right shift by 2.
QWQ_INLINE __m512i q6_high(__m512i high) {
  const __m256i left = _mm256_setr_epi32(4, 4, 2, 2, 0, 0, 0, 0);
  const __m256i right = _mm256_setr_epi32(0, 0, 0, 0, 0, 0, 2, 2);
  return __m512i{_mm256_srlv_epi32(_mm256_sllv_epi32(high.lo, left), right),
                 _mm256_srlv_epi32(_mm256_sllv_epi32(high.hi, left), right)};
}
#endif

QWQ_INLINE __m512i q6_join(__m512i low, __m512i high) {
  const __m512i high2 = _mm512_and_si512(q6_high(high), _mm512_set1_epi8(0x30));
  low = _mm512_srlv_epi32(low, vec(kNibbleQ6));
  return _mm512_ternarylogic_epi32(high2, low, _mm512_set1_epi8(0x0F), 0xF8);  // high2 | (low & 15)
}

#if defined(__AVX512F__)
QWQ_INLINE void q6_values(const uint8_t* p, __m512i (&w)[4]) {
  const __m512i ql0 = _mm512_loadu_si512(p), ql1 = _mm512_loadu_si512(p + 64);
  const __m512i qh = _mm512_loadu_si512(p + 128);
  w[0] = q6_join(_mm512_permutex2var_epi32(ql0, vec(kQlQ6<0>), ql1),
                 _mm512_permutexvar_epi32(vec(kQhQ6<0>), qh));
  w[1] = q6_join(_mm512_permutex2var_epi32(ql0, vec(kQlQ6<1>), ql1),
                 _mm512_permutexvar_epi32(vec(kQhQ6<1>), qh));
  w[2] = q6_join(_mm512_permutex2var_epi32(ql0, vec(kQlQ6<2>), ql1),
                 _mm512_permutexvar_epi32(vec(kQhQ6<2>), qh));
  w[3] = q6_join(_mm512_permutex2var_epi32(ql0, vec(kQlQ6<3>), ql1),
                 _mm512_permutexvar_epi32(vec(kQhQ6<3>), qh));
}
#else
// AVX2 (see k4_nibbles): the ql chunks transposed, vector i's low half takes chunks 0 and 1's
// words i and 4 + i in kQlQ6's order, its high half chunks 2 and 3's; kQhQ6's words lie in one
// 32-byte half of qh each.
QWQ_INLINE void q6_values(const uint8_t* p, __m512i (&w)[4]) {
  __m256i col[4];
  transpose_words(p, col);
  const __m256i lo = _mm256_setr_epi32(0, 4, 1, 5, 0, 4, 1, 5);
  const __m256i hi = _mm256_setr_epi32(2, 6, 3, 7, 2, 6, 3, 7);
  const __m256i qh0 = load256(p + 128), qh1 = load256(p + 160);
  for (int i = 0; i < 4; ++i) {
    const __m256i pick = _mm256_setr_epi32(i, 4 + i, i, 4 + i, i, 4 + i, i, 4 + i);
    w[i] = q6_join(__m512i{_mm256_permutevar8x32_epi32(col[i], lo),
                           _mm256_permutevar8x32_epi32(col[i], hi)},
                   __m512i{_mm256_permutevar8x32_epi32(qh0, pick),
                           _mm256_permutevar8x32_epi32(qh1, pick)});
  }
}
#endif

struct Q6_K : Super256<210, false> {
  static constexpr const char* kName = "Q6_K";
  static QWQ_INLINE KQuant decode(const uint8_t* p, int) {
    KQuant k;
    q6_values(p, k.w);
    const __m512 sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(load128(p + 192)));
    k.scale = _mm512_mul_ps(_mm512_set1_ps(fp16(p + 208)), sc);
    k.mins = _mm512_setzero_ps();
    return k;
  }
};

}  // namespace qwq::ggml
