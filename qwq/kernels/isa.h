// The instruction set qwq's kernels are written in: AVX-512 (F, BW, VL, DQ, VNNI) intrinsics.
// Built with those flags they are the instructions themselves. Built for AVX2 with FMA and F16C
// (no __AVX512F__), each 512-bit type below is a pair of AVX2 registers and each intrinsic the
// kernels use is written here on the two halves, with the same results: integer sums exact,
// float operations lane by lane as AVX-512 rounds them, and the horizontal float reductions in
// GCC's own order, so both builds round every sum alike. One kernel source, two builds; where
// a 512-bit permute would be most of a format's work on AVX2 (the K-quants' decodes, the
// 32-input file layouts), ggml_kquants.h and ggml_formats.h gather the same lanes with AVX2's
// own permutes or loads; dpbusd_u7 skips the top-bit test for weights known to be below 128,
// and dot_offset128 multiplies Q8_0's int8 weights as signed values.
#pragma once

#include <immintrin.h>

// the formats' decode and dot, inlined into each kernel's loop (as the compiler chooses to for
// AVX-512; the AVX2 bodies are longer and would otherwise stay calls)
#define QWQ_INLINE inline __attribute__((always_inline))

#if defined(__AVX512F__)
// keeps one register's load from being folded into each instruction that reads it
#define QWQ_ONE_LOAD(x) __asm__("" : "+v"(x))
namespace qwq {
// vpdpbusd where every unsigned byte is below 128 (2-7 bit weights): the same instruction here
QWQ_INLINE __m512i dpbusd_u7(__m512i acc, __m512i u, __m512i s) {
  return _mm512_dpbusd_epi32(acc, u, s);
}
}  // namespace qwq
#else
#if !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__)
#error "qwq's kernels need AVX-512 (F, BW, VL, DQ, VNNI) or AVX2 with FMA and F16C"
#endif

#include <cstdint>
#include <cstring>

namespace qwq::avx2 {

struct f32x16 {
  __m256 lo, hi;
};
struct i32x16 {
  __m256i lo, hi;
};
using F = f32x16;
using I = i32x16;

// ---- masks: bit i of a mask is lane (or byte) i ----
QWQ_INLINE __m256i lanes(uint32_t m) {  // lane i all ones where bit i of m (8 bits) is set
  const __m256i bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(static_cast<int>(m)), bits), bits);
}
QWQ_INLINE __m256 lanes_ps(uint32_t m) { return _mm256_castsi256_ps(lanes(m)); }
QWQ_INLINE __m256i byte_lanes(uint32_t m) {  // byte i all ones where bit i of m is set
  const __m256i pick = _mm256_setr_epi64x(0, 0x0101010101010101LL, 0x0202020202020202LL,
                                          0x0303030303030303LL);
  const __m256i bits = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ULL));
  const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(m)), pick);
  return _mm256_cmpeq_epi8(_mm256_and_si256(spread, bits), bits);
}

// ---- float ----
QWQ_INLINE F set1_ps(float x) { return {_mm256_set1_ps(x), _mm256_set1_ps(x)}; }
QWQ_INLINE F setzero_ps() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
QWQ_INLINE F loadu_ps(const void* p) {
  const float* f = static_cast<const float*>(p);
  return {_mm256_loadu_ps(f), _mm256_loadu_ps(f + 8)};
}
QWQ_INLINE void storeu_ps(void* p, F v) {
  float* f = static_cast<float*>(p);
  _mm256_storeu_ps(f, v.lo);
  _mm256_storeu_ps(f + 8, v.hi);
}
QWQ_INLINE F add_ps(F a, F b) { return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)}; }
QWQ_INLINE F sub_ps(F a, F b) { return {_mm256_sub_ps(a.lo, b.lo), _mm256_sub_ps(a.hi, b.hi)}; }
QWQ_INLINE F mul_ps(F a, F b) { return {_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)}; }
QWQ_INLINE F div_ps(F a, F b) { return {_mm256_div_ps(a.lo, b.lo), _mm256_div_ps(a.hi, b.hi)}; }
QWQ_INLINE F max_ps(F a, F b) { return {_mm256_max_ps(a.lo, b.lo), _mm256_max_ps(a.hi, b.hi)}; }
QWQ_INLINE F min_ps(F a, F b) { return {_mm256_min_ps(a.lo, b.lo), _mm256_min_ps(a.hi, b.hi)}; }
QWQ_INLINE F fmadd_ps(F a, F b, F c) {
  return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
}
QWQ_INLINE F fnmadd_ps(F a, F b, F c) {
  return {_mm256_fnmadd_ps(a.lo, b.lo, c.lo), _mm256_fnmadd_ps(a.hi, b.hi, c.hi)};
}
QWQ_INLINE F abs_ps(F a) {
  const __m256 m = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  return {_mm256_and_ps(a.lo, m), _mm256_and_ps(a.hi, m)};
}
template <int R>
QWQ_INLINE F roundscale_ps(F a) {  // scale 0 (R's top bits clear): round to an integer
  static_assert((R & 0xF0) == 0, "roundscale to a fraction of 2 is not provided");
  return {_mm256_round_ps(a.lo, R & 0x0F), _mm256_round_ps(a.hi, R & 0x0F)};
}
QWQ_INLINE __m256 scalef(__m256 a, __m256 n) {  // a * 2^n, n integral, 2^n a normal float
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n),
                                                       _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(a, _mm256_castsi256_ps(e));
}
QWQ_INLINE F scalef_ps(F a, F n) { return {scalef(a.lo, n.lo), scalef(a.hi, n.hi)}; }
template <int P>
QWQ_INLINE uint32_t cmp_ps_mask(F a, F b) {
  return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(a.lo, b.lo, P))) |
         static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(a.hi, b.hi, P))) << 8;
}
QWQ_INLINE F maskz_mov_ps(uint32_t k, F a) {
  return {_mm256_and_ps(a.lo, lanes_ps(k & 0xFF)), _mm256_and_ps(a.hi, lanes_ps(k >> 8 & 0xFF))};
}
QWQ_INLINE F mask_mul_ps(F src, uint32_t k, F a, F b) {
  const F m = mul_ps(a, b);
  return {_mm256_blendv_ps(src.lo, m.lo, lanes_ps(k & 0xFF)),
          _mm256_blendv_ps(src.hi, m.hi, lanes_ps(k >> 8 & 0xFF))};
}
// masked loads and stores touch only the selected lanes' memory, as AVX-512's do
QWQ_INLINE F maskz_loadu_ps(uint32_t k, const void* p) {
  const float* f = static_cast<const float*>(p);
  return {_mm256_maskload_ps(f, lanes(k & 0xFF)), _mm256_maskload_ps(f + 8, lanes(k >> 8 & 0xFF))};
}
QWQ_INLINE void mask_storeu_ps(void* p, uint32_t k, F v) {
  float* f = static_cast<float*>(p);
  _mm256_maskstore_ps(f, lanes(k & 0xFF), v.lo);
  _mm256_maskstore_ps(f + 8, lanes(k >> 8 & 0xFF), v.hi);
}
// GCC's __MM512_REDUCE_OP order: halves, then quarters, then (2,3,0,1), then lanes 0 and 1
QWQ_INLINE float reduce_add_ps(F v) {
  const __m256 a = _mm256_add_ps(v.hi, v.lo);
  const __m128 b = _mm_add_ps(_mm256_extractf128_ps(a, 1), _mm256_castps256_ps128(a));
  const __m128 c = _mm_add_ps(b, _mm_shuffle_ps(b, b, _MM_SHUFFLE(1, 0, 3, 2)));
  return _mm_cvtss_f32(c) + _mm_cvtss_f32(_mm_shuffle_ps(c, c, 1));
}
QWQ_INLINE float reduce_max_ps(F v) {
  const __m256 a = _mm256_max_ps(v.hi, v.lo);
  const __m128 b = _mm_max_ps(_mm256_extractf128_ps(a, 1), _mm256_castps256_ps128(a));
  const __m128 c = _mm_max_ps(b, _mm_shuffle_ps(b, b, _MM_SHUFFLE(1, 0, 3, 2)));
  const float x = _mm_cvtss_f32(c), y = _mm_cvtss_f32(_mm_shuffle_ps(c, c, 1));
  return x > y ? x : y;
}
QWQ_INLINE __m128 lane128(F v, int i) {  // 128-bit lane i of 4
  return i == 0 ? _mm256_castps256_ps128(v.lo) : i == 1 ? _mm256_extractf128_ps(v.lo, 1)
         : i == 2 ? _mm256_castps256_ps128(v.hi) : _mm256_extractf128_ps(v.hi, 1);
}
template <int M>
QWQ_INLINE F shuffle_f32x4(F a, F b) {
  return {_mm256_set_m128(lane128(a, M >> 2 & 3), lane128(a, M & 3)),
          _mm256_set_m128(lane128(b, M >> 6 & 3), lane128(b, M >> 4 & 3))};
}
template <int M>
QWQ_INLINE F shuffle_ps(F a, F b) {
  return {_mm256_shuffle_ps(a.lo, b.lo, M), _mm256_shuffle_ps(a.hi, b.hi, M)};
}
QWQ_INLINE F broadcast_f32x8(__m256 v) { return {v, v}; }
QWQ_INLINE F broadcast_f32x4(__m128 v) {
  const __m256 w = _mm256_set_m128(v, v);
  return {w, w};
}
QWQ_INLINE F castps128_ps512(__m128 v) {  // AVX-512 leaves the rest undefined; zero here
  return {_mm256_insertf128_ps(_mm256_setzero_ps(), v, 0), _mm256_setzero_ps()};
}
QWQ_INLINE F cvtph_ps(__m256i v) {
  return {_mm256_cvtph_ps(_mm256_castsi256_si128(v)),
          _mm256_cvtph_ps(_mm256_extracti128_si256(v, 1))};
}
template <int R>
QWQ_INLINE __m256i cvtps_ph(F v) {
  return _mm256_setr_m128i(_mm256_cvtps_ph(v.lo, R), _mm256_cvtps_ph(v.hi, R));
}
QWQ_INLINE F cvtepi32_ps(I v) { return {_mm256_cvtepi32_ps(v.lo), _mm256_cvtepi32_ps(v.hi)}; }
QWQ_INLINE I cvtps_epi32(F v) { return {_mm256_cvtps_epi32(v.lo), _mm256_cvtps_epi32(v.hi)}; }
QWQ_INLINE F castsi512_ps(I v) { return {_mm256_castsi256_ps(v.lo), _mm256_castsi256_ps(v.hi)}; }
QWQ_INLINE I castps_si512(F v) { return {_mm256_castps_si256(v.lo), _mm256_castps_si256(v.hi)}; }

// ---- integer ----
QWQ_INLINE I loadu_si512(const void* p) {
  const __m256i* v = static_cast<const __m256i*>(p);
  return {_mm256_loadu_si256(v), _mm256_loadu_si256(v + 1)};
}
QWQ_INLINE void storeu_si512(void* p, I a) {
  __m256i* v = static_cast<__m256i*>(p);
  _mm256_storeu_si256(v, a.lo);
  _mm256_storeu_si256(v + 1, a.hi);
}
QWQ_INLINE I setzero_si512() { return {_mm256_setzero_si256(), _mm256_setzero_si256()}; }
QWQ_INLINE I set1_epi8(char x) { return {_mm256_set1_epi8(x), _mm256_set1_epi8(x)}; }
QWQ_INLINE I set1_epi32(int x) { return {_mm256_set1_epi32(x), _mm256_set1_epi32(x)}; }
QWQ_INLINE I set_epi32(int e15, int e14, int e13, int e12, int e11, int e10, int e9, int e8,
                       int e7, int e6, int e5, int e4, int e3, int e2, int e1, int e0) {
  return {_mm256_set_epi32(e7, e6, e5, e4, e3, e2, e1, e0),
          _mm256_set_epi32(e15, e14, e13, e12, e11, e10, e9, e8)};
}
QWQ_INLINE I and_si512(I a, I b) {
  return {_mm256_and_si256(a.lo, b.lo), _mm256_and_si256(a.hi, b.hi)};
}
QWQ_INLINE I or_si512(I a, I b) {
  return {_mm256_or_si256(a.lo, b.lo), _mm256_or_si256(a.hi, b.hi)};
}
QWQ_INLINE I xor_si512(I a, I b) {
  return {_mm256_xor_si256(a.lo, b.lo), _mm256_xor_si256(a.hi, b.hi)};
}
QWQ_INLINE I add_epi32(I a, I b) {
  return {_mm256_add_epi32(a.lo, b.lo), _mm256_add_epi32(a.hi, b.hi)};
}
QWQ_INLINE I mullo_epi32(I a, I b) {
  return {_mm256_mullo_epi32(a.lo, b.lo), _mm256_mullo_epi32(a.hi, b.hi)};
}
QWQ_INLINE I min_epi32(I a, I b) {
  return {_mm256_min_epi32(a.lo, b.lo), _mm256_min_epi32(a.hi, b.hi)};
}
QWQ_INLINE I srli_epi16(I a, int n) {
  return {_mm256_srli_epi16(a.lo, n), _mm256_srli_epi16(a.hi, n)};
}
QWQ_INLINE I srli_epi32(I a, int n) {
  return {_mm256_srli_epi32(a.lo, n), _mm256_srli_epi32(a.hi, n)};
}
QWQ_INLINE I slli_epi32(I a, int n) {
  return {_mm256_slli_epi32(a.lo, n), _mm256_slli_epi32(a.hi, n)};
}
QWQ_INLINE I srlv_epi32(I a, I n) {
  return {_mm256_srlv_epi32(a.lo, n.lo), _mm256_srlv_epi32(a.hi, n.hi)};
}
QWQ_INLINE __m256i rolv(__m256i a, __m256i r) {
  r = _mm256_and_si256(r, _mm256_set1_epi32(31));
  return _mm256_or_si256(_mm256_sllv_epi32(a, r),
                         _mm256_srlv_epi32(a, _mm256_sub_epi32(_mm256_set1_epi32(32), r)));
}
QWQ_INLINE I rolv_epi32(I a, I r) { return {rolv(a.lo, r.lo), rolv(a.hi, r.hi)}; }
// the two truth tables the kernels use: (a & b) | c and a | (b & c)
template <int T, typename V>
QWQ_INLINE V ternary(V a, V b, V c) {
  static_assert(T == 0xEA || T == 0xF8, "only ternarylogic 0xEA and 0xF8 are provided");
  if constexpr (sizeof(V) == 16) {
    return T == 0xEA ? _mm_or_si128(_mm_and_si128(a, b), c) : _mm_or_si128(a, _mm_and_si128(b, c));
  } else {
    return T == 0xEA ? _mm256_or_si256(_mm256_and_si256(a, b), c)
                     : _mm256_or_si256(a, _mm256_and_si256(b, c));
  }
}
template <int T>
QWQ_INLINE I ternarylogic_epi32(I a, I b, I c) {
  return {ternary<T>(a.lo, b.lo, c.lo), ternary<T>(a.hi, b.hi, c.hi)};
}
QWQ_INLINE I cvtepi8_epi32(__m128i v) {
  return {_mm256_cvtepi8_epi32(v), _mm256_cvtepi8_epi32(_mm_srli_si128(v, 8))};
}
QWQ_INLINE I cvtepu8_epi32(__m128i v) {
  return {_mm256_cvtepu8_epi32(v), _mm256_cvtepu8_epi32(_mm_srli_si128(v, 8))};
}
QWQ_INLINE I cvtepu16_epi32(__m256i v) {
  return {_mm256_cvtepu16_epi32(_mm256_castsi256_si128(v)),
          _mm256_cvtepu16_epi32(_mm256_extracti128_si256(v, 1))};
}
QWQ_INLINE __m256i cvtepi32_epi16(I v) {  // truncating, as vpmovdw
  const __m256i low16 = _mm256_set1_epi32(0xFFFF);
  const __m256i packed = _mm256_packus_epi32(_mm256_and_si256(v.lo, low16),
                                             _mm256_and_si256(v.hi, low16));
  return _mm256_permute4x64_epi64(packed, 0xD8);
}
QWQ_INLINE __m128i cvtsepi32_epi8(I v) {  // saturating, as vpmovsdb (int16 then int8 agrees)
  const __m256i words = _mm256_permute4x64_epi64(_mm256_packs_epi32(v.lo, v.hi), 0xD8);
  return _mm_packs_epi16(_mm256_castsi256_si128(words), _mm256_extracti128_si256(words, 1));
}
QWQ_INLINE __m256i castsi512_si256(I v) { return v.lo; }
QWQ_INLINE __m128i castsi512_si128(I v) { return _mm256_castsi256_si128(v.lo); }
QWQ_INLINE I castsi256_si512(__m256i v) {  // AVX-512 leaves the top undefined; zero here
  return {v, _mm256_setzero_si256()};
}
QWQ_INLINE int reduce_add_epi32(I v) {
  const __m256i a = _mm256_add_epi32(v.lo, v.hi);
  __m128i b = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
  b = _mm_add_epi32(b, _mm_shuffle_epi32(b, _MM_SHUFFLE(1, 0, 3, 2)));
  b = _mm_add_epi32(b, _mm_shuffle_epi32(b, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(b);
}
// acc + each 32-bit lane's two int16 pair sums (vpmaddubsw's output), as vpdpbusd adds them
QWQ_INLINE __m256i add_pair_sums(__m256i acc, __m256i pairs) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}
// the caller knows every u < 128: vpmaddubsw alone, without dpbusd's test of the top bits
QWQ_INLINE __m256i dpbusd_u7(__m256i acc, __m256i u, __m256i s) {
  return add_pair_sums(acc, _mm256_maddubs_epi16(u, s));
}
QWQ_INLINE I dpbusd_u7(I acc, I u, I s) {
  return {dpbusd_u7(acc.lo, u.lo, s.lo), dpbusd_u7(acc.hi, u.hi, s.hi)};
}
// vpdpbusd: vpmaddubsw adds pairs of u * s in int16, saturating, so it is exact only while u <
// 128 (2-6 bit weights); a u's top bit then goes through a second vpmaddubsw, times 128.
QWQ_INLINE __m256i dpbusd(__m256i acc, __m256i u, __m256i s) {
  if (_mm256_movemask_epi8(u) == 0) return dpbusd_u7(acc, u, s);
  const __m256i low7 = _mm256_maddubs_epi16(_mm256_and_si256(u, _mm256_set1_epi8(0x7F)), s);
  const __m256i top = _mm256_maddubs_epi16(
      _mm256_and_si256(_mm256_srli_epi16(u, 7), _mm256_set1_epi8(1)), s);
  acc = add_pair_sums(acc, low7);
  return _mm256_add_epi32(acc, _mm256_madd_epi16(top, _mm256_set1_epi16(128)));
}
QWQ_INLINE I dpbusd_epi32(I acc, I u, I s) {
  return {dpbusd(acc.lo, u.lo, s.lo), dpbusd(acc.hi, u.hi, s.hi)};
}
// acc + (u - 128) . s per lane: int8 weights stored as u = w + 128 (Q8_0), whose vpdpbusd sum
// then takes 128 * sum(s) off again. AVX2 multiplies the signed w directly: vpsignb moves w's
// sign onto s, so vpmaddubsw's unsigned operand is |w| <= 128 and a pair's sum at most
// 2 * 128 * 127 (s within +-127): exact, without dpbusd's second pass for the top bits.
QWQ_INLINE __m256i dot_offset128(__m256i acc, __m256i u, __m256i s) {
  const __m256i w = _mm256_xor_si256(u, _mm256_set1_epi8(static_cast<char>(0x80)));
  return add_pair_sums(acc, _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(s, w)));
}
QWQ_INLINE I dot_offset128(I acc, I u, I s) {
  return {dot_offset128(acc.lo, u.lo, s.lo), dot_offset128(acc.hi, u.hi, s.hi)};
}
QWQ_INLINE I mask_add_epi8(I src, uint64_t k, I a, I b) {
  return {_mm256_blendv_epi8(src.lo, _mm256_add_epi8(a.lo, b.lo),
                             byte_lanes(static_cast<uint32_t>(k))),
          _mm256_blendv_epi8(src.hi, _mm256_add_epi8(a.hi, b.hi),
                             byte_lanes(static_cast<uint32_t>(k >> 32)))};
}
QWQ_INLINE I maskz_loadu_epi8(uint64_t k, const void* p) {
  alignas(32) uint8_t b[64] = {};
  const uint8_t* src = static_cast<const uint8_t*>(p);
  if ((k & (k + 1)) == 0) {  // a prefix of the bytes (the usual tail)
    std::memcpy(b, src, static_cast<size_t>(__builtin_popcountll(k)));
  } else {
    for (int i = 0; i < 64; ++i)
      if (k >> i & 1) b[i] = src[i];
  }
  return loadu_si512(b);
}
// lane j of (a0, a1) at idx's lane j, mod 16
QWQ_INLINE __m256i pick16(__m256i idx, __m256i a0, __m256i a1) {
  const __m256 lo = _mm256_castsi256_ps(_mm256_permutevar8x32_epi32(a0, idx));
  const __m256 hi = _mm256_castsi256_ps(_mm256_permutevar8x32_epi32(a1, idx));
  const __m256 second = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));  // bit 3: a1
  return _mm256_castps_si256(_mm256_blendv_ps(lo, hi, second));
}
QWQ_INLINE I permutexvar_epi32(I idx, I a) {
  return {pick16(idx.lo, a.lo, a.hi), pick16(idx.hi, a.lo, a.hi)};
}
QWQ_INLINE F permutexvar_ps(I idx, F a) {
  return castsi512_ps(permutexvar_epi32(idx, castps_si512(a)));
}
QWQ_INLINE __m256i pick32(__m256i idx, I a, I b) {
  const __m256 from_a = _mm256_castsi256_ps(pick16(idx, a.lo, a.hi));
  const __m256 from_b = _mm256_castsi256_ps(pick16(idx, b.lo, b.hi));
  const __m256 second = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 27));  // bit 4: b
  return _mm256_castps_si256(_mm256_blendv_ps(from_a, from_b, second));
}
QWQ_INLINE I permutex2var_epi32(I a, I idx, I b) {
  return {pick32(idx.lo, a, b), pick32(idx.hi, a, b)};
}
template <int Scale>
QWQ_INLINE I i32gather_epi32(I idx, const void* base) {
  const int* p = static_cast<const int*>(base);
  return {_mm256_i32gather_epi32(p, idx.lo, Scale), _mm256_i32gather_epi32(p, idx.hi, Scale)};
}

}  // namespace qwq::avx2

namespace qwq {
using avx2::dpbusd_u7;
}

#define __m512 qwq::avx2::f32x16
#define __m512i qwq::avx2::i32x16
#define QWQ_ONE_LOAD(x) ((void)0)  // x is two registers: nothing to pin

// each _mm512_X the kernels call, as qwq::avx2::X
#define _mm512_set1_ps qwq::avx2::set1_ps
#define _mm512_setzero_ps qwq::avx2::setzero_ps
#define _mm512_loadu_ps qwq::avx2::loadu_ps
#define _mm512_load_ps qwq::avx2::loadu_ps
#define _mm512_storeu_ps qwq::avx2::storeu_ps
#define _mm512_add_ps qwq::avx2::add_ps
#define _mm512_sub_ps qwq::avx2::sub_ps
#define _mm512_mul_ps qwq::avx2::mul_ps
#define _mm512_div_ps qwq::avx2::div_ps
#define _mm512_max_ps qwq::avx2::max_ps
#define _mm512_min_ps qwq::avx2::min_ps
#define _mm512_fmadd_ps qwq::avx2::fmadd_ps
#define _mm512_fnmadd_ps qwq::avx2::fnmadd_ps
#define _mm512_abs_ps qwq::avx2::abs_ps
#define _mm512_roundscale_ps(a, r) qwq::avx2::roundscale_ps<(r)>(a)
#define _mm512_scalef_ps qwq::avx2::scalef_ps
#define _mm512_cmp_ps_mask(a, b, p) qwq::avx2::cmp_ps_mask<(p)>(a, b)
#define _mm512_maskz_mov_ps qwq::avx2::maskz_mov_ps
#define _mm512_mask_mul_ps qwq::avx2::mask_mul_ps
#define _mm512_maskz_loadu_ps qwq::avx2::maskz_loadu_ps
#define _mm512_mask_storeu_ps qwq::avx2::mask_storeu_ps
#define _mm512_reduce_add_ps qwq::avx2::reduce_add_ps
#define _mm512_reduce_max_ps qwq::avx2::reduce_max_ps
#define _mm512_shuffle_f32x4(a, b, m) qwq::avx2::shuffle_f32x4<(m)>(a, b)
#define _mm512_shuffle_ps(a, b, m) qwq::avx2::shuffle_ps<(m)>(a, b)
#define _mm512_broadcast_f32x8 qwq::avx2::broadcast_f32x8
#define _mm512_broadcast_f32x4 qwq::avx2::broadcast_f32x4
#define _mm512_castps128_ps512 qwq::avx2::castps128_ps512
#define _mm512_cvtph_ps qwq::avx2::cvtph_ps
#define _mm512_cvtps_ph(v, r) qwq::avx2::cvtps_ph<(r)>(v)
#define _mm512_cvtepi32_ps qwq::avx2::cvtepi32_ps
#define _mm512_cvtps_epi32 qwq::avx2::cvtps_epi32
#define _mm512_castsi512_ps qwq::avx2::castsi512_ps
#define _mm512_castps_si512 qwq::avx2::castps_si512
#define _mm512_loadu_si512 qwq::avx2::loadu_si512
#define _mm512_load_si512 qwq::avx2::loadu_si512
#define _mm512_storeu_si512 qwq::avx2::storeu_si512
#define _mm512_setzero_si512 qwq::avx2::setzero_si512
#define _mm512_set1_epi8 qwq::avx2::set1_epi8
#define _mm512_set1_epi32 qwq::avx2::set1_epi32
#define _mm512_set_epi32 qwq::avx2::set_epi32
#define _mm512_and_si512 qwq::avx2::and_si512
#define _mm512_or_si512 qwq::avx2::or_si512
#define _mm512_xor_si512 qwq::avx2::xor_si512
#define _mm512_add_epi32 qwq::avx2::add_epi32
#define _mm512_mullo_epi32 qwq::avx2::mullo_epi32
#define _mm512_min_epi32 qwq::avx2::min_epi32
#define _mm512_srli_epi16 qwq::avx2::srli_epi16
#define _mm512_srli_epi32 qwq::avx2::srli_epi32
#define _mm512_slli_epi32 qwq::avx2::slli_epi32
#define _mm512_srlv_epi32 qwq::avx2::srlv_epi32
#define _mm512_rolv_epi32 qwq::avx2::rolv_epi32
#define _mm512_ternarylogic_epi32(a, b, c, t) qwq::avx2::ternarylogic_epi32<(t)>(a, b, c)
#define _mm_ternarylogic_epi32(a, b, c, t) qwq::avx2::ternary<(t), __m128i>(a, b, c)
#define _mm512_cvtepi8_epi32 qwq::avx2::cvtepi8_epi32
#define _mm512_cvtepu8_epi32 qwq::avx2::cvtepu8_epi32
#define _mm512_cvtepu16_epi32 qwq::avx2::cvtepu16_epi32
#define _mm512_cvtepi32_epi16 qwq::avx2::cvtepi32_epi16
#define _mm512_cvtsepi32_epi8 qwq::avx2::cvtsepi32_epi8
#define _mm512_castsi512_si256 qwq::avx2::castsi512_si256
#define _mm512_castsi512_si128 qwq::avx2::castsi512_si128
#define _mm512_castsi256_si512 qwq::avx2::castsi256_si512
#define _mm512_reduce_add_epi32 qwq::avx2::reduce_add_epi32
#define _mm512_dpbusd_epi32 qwq::avx2::dpbusd_epi32
#define _mm512_mask_add_epi8 qwq::avx2::mask_add_epi8
#define _mm512_maskz_loadu_epi8 qwq::avx2::maskz_loadu_epi8
#define _mm512_permutexvar_epi32 qwq::avx2::permutexvar_epi32
#define _mm512_permutexvar_ps qwq::avx2::permutexvar_ps
#define _mm512_permutex2var_epi32 qwq::avx2::permutex2var_epi32
#define _mm512_i32gather_epi32(idx, base, scale) qwq::avx2::i32gather_epi32<(scale)>(idx, base)
#endif
