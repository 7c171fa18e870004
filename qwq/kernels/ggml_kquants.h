// K-quants for ggml.cpp (see ggml_formats.h): Q4_K, Q5_K and Q6_K superblocks of 256 inputs
// against Q8_K activations (blocks of 256 with a float scale, llama.cpp's quantize_row_q8_K_ref).
//
// A superblock is one chunk: four vectors of unsigned values w[0..3], each 32-bit lane holding 4
// inputs of one sub-block. Per token, vpdpbusd gives each lane's partial dot product (|p| <=
// 4 * 63 * 127, within int16), vpackssdw packs two such vectors to 16 bits, and vpdpwssd
// multiplies them by their sub-block scales and sums into 32-bit lanes: 8 integer instructions
// per superblock for all 16 (Q6_K) or 8 (Q4_K, Q5_K) sub-block scales, then one conversion and
// one fma for the superblock scale.
#pragma once

namespace qwq::ggml {

struct KQuant {
  __m512i w[4];
  // 16-bit sub-block scales lined up with pack(p0, p1) and pack(p2, p3): vpackssdw interleaves
  // per 128-bit lane, 4 words from its first operand, then 4 from its second
  __m512i sc01, sc23;
  __m512i offset;  // Q6_K: -32 * its 16 scales as words 0-15 (its values are q - 32)
  __m512 d;        // the superblock scale in every lane
  __m512 mins;     // Q4_K/Q5_K: dmin * min_j in lane j < 8, 0 elsewhere
};

// Record: the 256 values in the weights' vector order, then 64 bytes of block data with the
// scale d as the float at byte 316:
//   kMins (Q4_K, Q5_K): d * (sum of sub-block j's values) as float lane j < 8, 0 in lanes 8-14;
//   otherwise (Q6_K): the sums of each 16 values as int16 words 0-15, zero up to d.
// `order[i]`: the natural 32-value piece that the record's piece i holds.
template <bool kMins>
inline void quantize_q8_k(const float* x, uint8_t* rec, const int (&order)[8]) {
  __m512 v[16];
  __m512 amax = _mm512_setzero_ps();
  for (int i = 0; i < 16; ++i) {
    v[i] = _mm512_loadu_ps(x + 16 * i);
    amax = _mm512_max_ps(amax, _mm512_abs_ps(v[i]));
  }
  const float peak = _mm512_reduce_max_ps(amax);
  alignas(64) int8_t q[256] = {};
  alignas(64) uint8_t tail[64] = {};
  float d = 0.f;
  int32_t sums[16] = {};
  if (peak != 0.f) {
    int first = 0;  // llama.cpp scales by the first value of largest magnitude, with its sign
    while (!_mm512_cmp_ps_mask(_mm512_abs_ps(v[first]), _mm512_set1_ps(peak), _CMP_EQ_OQ)) ++first;
    const int lane = __builtin_ctz(_mm512_cmp_ps_mask(_mm512_abs_ps(v[first]), _mm512_set1_ps(peak), _CMP_EQ_OQ));
    const float iscale = -127.f / x[16 * first + lane];
    d = 1.f / iscale;
    for (int i = 0; i < 16; ++i) {
      const __m512i qi = _mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_set1_ps(iscale), v[i])),
                                          _mm512_set1_epi32(127));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16 * i), _mm512_cvtsepi32_epi8(qi));
      sums[i] = _mm512_reduce_add_epi32(qi);
    }
  }
  for (int i = 0; i < 8; ++i) std::memcpy(rec + 32 * i, q + 32 * order[i], 32);
  if constexpr (kMins) {
    float f[16] = {};
    for (int j = 0; j < 8; ++j) f[j] = d * static_cast<float>(sums[2 * j] + sums[2 * j + 1]);
    std::memcpy(tail, f, 64);
  } else {
    int16_t s[16];
    for (int j = 0; j < 16; ++j) s[j] = static_cast<int16_t>(sums[j]);
    std::memcpy(tail, s, 32);
  }
  std::memcpy(tail + 60, &d, 4);
  std::memcpy(rec + 256, tail, 64);
}

// acc += d_w * d_x * sum_j scale_j (w_j . x_j) [- dmin * sum_j min_j sum(x_j)] over a superblock.
template <bool kMins>
inline __m512 dot_k(const KQuant& w, const uint8_t* rec, __m512 acc) {
  __m512i p[4];
  for (int i = 0; i < 4; ++i)
    p[i] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w.w[i], _mm512_loadu_si512(rec + 64 * i));
  __m512i s = _mm512_dpwssd_epi32(_mm512_setzero_si512(), _mm512_packs_epi32(p[0], p[1]), w.sc01);
  s = _mm512_dpwssd_epi32(s, _mm512_packs_epi32(p[2], p[3]), w.sc23);
  const float* tail = reinterpret_cast<const float*>(rec + 256);
  if constexpr (!kMins) s = _mm512_dpwssd_epi32(s, w.offset, _mm512_loadu_si512(tail));
  const __m512 scale = _mm512_mul_ps(w.d, _mm512_set1_ps(tail[15]));
  acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, acc);
  if constexpr (kMins) acc = _mm512_fnmadd_ps(w.mins, _mm512_loadu_ps(tail), acc);
  return acc;
}

// Q4_K/Q5_K's 12 bytes of 6-bit scales and mins -> bytes 0-7 the scales, 8-15 the mins. Bytes
// 0-3 hold scales 0-3 and bytes 4-7 mins 0-3 in their low 6 bits; bytes 8-11 hold the low 4
// bits of scales 4-7 (low nibble) and mins 4-7 (high nibble), whose top 2 bits are the top bits
// of bytes 0-3 and 4-7.
inline __m128i scales_mins_k4(const uint8_t* p) {
  uint32_t a[3];
  std::memcpy(a, p, 12);
  const uint32_t sc_hi = (a[2] & 0x0f0f0f0f) | ((a[0] >> 2) & 0x30303030);
  const uint32_t mn_hi = ((a[2] >> 4) & 0x0f0f0f0f) | ((a[1] >> 2) & 0x30303030);
  return _mm_setr_epi32(static_cast<int>(a[0] & 0x3f3f3f3f), static_cast<int>(sc_hi),
                        static_cast<int>(a[1] & 0x3f3f3f3f), static_cast<int>(mn_hi));
}

// Q4_K/Q5_K: w[0] holds sub-blocks 0 | 2 (the low nibbles of qs bytes 0-63), w[1] 1 | 3 (their
// high nibbles), w[2] 4 | 6 and w[3] 5 | 7 (bytes 64-127). pack(p0, p1)'s 128-bit lanes 0-1 are
// then sub-blocks [0 x4, 1 x4] and lanes 2-3 [2 x4, 3 x4]; pack(p2, p3) the same plus 4.
constexpr Words kScK4 = words([](int i) { return (i / 16) * 2 + (i % 8) / 4; });
constexpr Words kScK4Hi = words([](int i) { return 4 + (i / 16) * 2 + (i % 8) / 4; });
constexpr int kOrderK4[8] = {0, 2, 1, 3, 4, 6, 5, 7};

inline KQuant decode_k4(const uint8_t* p, const uint8_t* qs) {
  KQuant k;
  const __m512i low4 = _mm512_set1_epi8(15);
  for (int h = 0; h < 2; ++h) {
    const __m512i v = _mm512_loadu_si512(qs + 64 * h);
    k.w[2 * h] = _mm512_and_si512(v, low4);
    k.w[2 * h + 1] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
  }
  const __m128i sm = scales_mins_k4(p + 4);
  const __m512i words16 = _mm512_castsi256_si512(_mm256_cvtepu8_epi16(sm));
  k.sc01 = _mm512_permutexvar_epi16(vec(kScK4), words16);
  k.sc23 = _mm512_permutexvar_epi16(vec(kScK4Hi), words16);
  k.offset = _mm512_setzero_si512();
  k.d = _mm512_set1_ps(fp16(p));
  const __m512 mins = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_srli_si128(sm, 8)));
  k.mins = _mm512_mul_ps(_mm512_set1_ps(fp16(p + 2)), mins);
  return k;
}

struct Q4_K {
  static constexpr const char* kName = "Q4_K";
  static constexpr int kBlock = 256, kBlockBytes = 144, kChunk = 256, kChunkBytes = 144, kRecBytes = 320;
  static KQuant decode(const uint8_t* p, int) { return decode_k4(p, p + 16); }
  static void quantize(const float* x, uint8_t* rec) { quantize_q8_k<true>(x, rec, kOrderK4); }
  static __m512 dot(const KQuant& w, const uint8_t* rec, __m512 acc) { return dot_k<true>(w, rec, acc); }
};

struct Q5_K {
  static constexpr const char* kName = "Q5_K";
  static constexpr int kBlock = 256, kBlockBytes = 176, kChunk = 256, kChunkBytes = 176, kRecBytes = 320;
  static KQuant decode(const uint8_t* p, int) {
    KQuant k = decode_k4(p, p + 48);
    // sub-block j's fifth bits are bit j of the 32 qh bytes; both halves of a vector see them
    const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16)));
    const __m512i sixteen = _mm512_set1_epi8(16);
    constexpr int kLowSub[4] = {0, 1, 4, 5};  // w[i] holds sub-blocks kLowSub[i] | kLowSub[i] + 2
    for (int i = 0; i < 4; ++i) {
      const __m512i bit = _mm512_inserti64x4(_mm512_set1_epi8(static_cast<char>(1 << kLowSub[i])),
                                             _mm256_set1_epi8(static_cast<char>(4 << kLowSub[i])), 1);
      k.w[i] = _mm512_mask_add_epi8(k.w[i], _mm512_test_epi8_mask(qh, bit), k.w[i], sixteen);
    }
    return k;
  }
  static void quantize(const float* x, uint8_t* rec) { quantize_q8_k<true>(x, rec, kOrderK4); }
  static __m512 dot(const KQuant& w, const uint8_t* rec, __m512 acc) { return dot_k<true>(w, rec, acc); }
};

// Q6_K: per half of 128 inputs, ql's 64 bytes give inputs 0-63 (low nibbles) and 64-127 (high),
// and qh's 32 bytes their bits 4-5: byte l's bit pairs 0-1, 2-3, 4-5, 6-7 go to inputs l, l + 32,
// l + 64, l + 96. w[0..3] are inputs 0-63, 64-127, 128-191, 192-255; 128-bit lane k of p[i] is
// then the 16 inputs of scale 4i + k, and pack(p0, p1)'s lane k is [scale k x4, scale 4 + k x4].
constexpr Words kScQ6 = words([](int i) { return i / 8 % 4 + 4 * (i % 8 / 4); });
constexpr Words kScQ6Hi = words([](int i) { return 8 + i / 8 % 4 + 4 * (i % 8 / 4); });
constexpr int kOrderNatural[8] = {0, 1, 2, 3, 4, 5, 6, 7};

struct Q6_K {
  static constexpr const char* kName = "Q6_K";
  static constexpr int kBlock = 256, kBlockBytes = 210, kChunk = 256, kChunkBytes = 210, kRecBytes = 320;
  static KQuant decode(const uint8_t* p, int) {
    KQuant k;
    const __m512i low4 = _mm512_set1_epi8(15), bits45 = _mm512_set1_epi8(0x30);
    // 16-bit shifts that bring bit pair 0-1 (2-3) to bits 4-5 in the low (high) 32 bytes, and
    // pair 4-5 (6-7) for the high nibbles; the bits they carry across bytes are masked off
    const __m512i up = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
    const __m512i down = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
    for (int h = 0; h < 2; ++h) {
      const __m512i ql = _mm512_loadu_si512(p + 64 * h);
      const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 128 + 32 * h)));
      k.w[2 * h] = _mm512_or_si512(_mm512_and_si512(ql, low4),
                                   _mm512_and_si512(_mm512_sllv_epi16(qh, up), bits45));
      k.w[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), low4),
                                       _mm512_and_si512(_mm512_srlv_epi16(qh, down), bits45));
    }
    const __m256i s16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 192)));
    const __m512i scales = _mm512_castsi256_si512(s16);
    k.sc01 = _mm512_permutexvar_epi16(vec(kScQ6), scales);
    k.sc23 = _mm512_permutexvar_epi16(vec(kScQ6Hi), scales);
    k.offset = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_slli_epi16(_mm256_sub_epi16(_mm256_setzero_si256(), s16), 5), 0);
    k.d = _mm512_set1_ps(fp16(p + 208));
    k.mins = _mm512_setzero_ps();
    return k;
  }
  static void quantize(const float* x, uint8_t* rec) { quantize_q8_k<false>(x, rec, kOrderNatural); }
  static __m512 dot(const KQuant& w, const uint8_t* rec, __m512 acc) { return dot_k<false>(w, rec, acc); }
};

}  // namespace qwq::ggml
