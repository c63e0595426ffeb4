// The GEMV dots of gemv.cpp in 16 lanes, for CPUs with AVX512 F/BW/VL/DQ and VNNI (e.g. Intel since Ice Lake, AMD
// Zen 4). Included by gemv.cpp inside its namespace, after the 8-lane versions (dot_int8_256, dot_q4_256,
// dot_float_256), which do the leftover blocks here. Without those ISA flags (build.py adds them when this CPU has
// all of them), dot_int8 / dot_q4 / dot_float are the 8-lane versions.
//
// What changes from 8 lanes, besides twice the width:
// - int8 x int8: VNNI's `_mm512_dpbusd_epi32(acc, u, s)` multiplies unsigned bytes u by signed bytes s and adds
//   each group of 4 products into an int32 lane: maddubs + madd + add in one instruction, with no int16 step. The
//   sign trick is as before (u = |qx|, s = qw * sign(qx)); AVX512 has no sign_epi8, so s = qw with the lanes where
//   qx < 0 negated (a masked subtract from zero). One 64-byte load holds two q8 blocks: int32 lanes 0-7 belong
//   to block b, lanes 8-15 to block b+1, each scaled by its own d.
// - Q4_1: one 64-byte load holds four blocks (two of gemv.cpp's pairs); the low and high nibbles are each an
//   unsigned operand of dpbusd against the regrouped x (lanes 4j..4j+3: block b+j).
// The integer sums are the same as the 8-lane ones; only the order of the float additions differs.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__) && \
    defined(__AVX512VNNI__)
#define LLM_GEMV_AVX512 1

// Prefetch: the dots ask for the NEXT tile's weights, one line per row per step, a whole tile ahead. A tile's R rows
// are contiguous, and so are consecutive tiles, but a row of SmolLM2 is short (576 int8 = 9 lines, 576 bf16 = 18),
// too short for the hardware's stream detector to get going before the tile ends. Measured on the 2-core Xeon VM,
// cold weights, one thread: bf16 GEMV 6-7 -> 10-11 GB/s; per token (2 threads), the 211 GEMVs: bf16 22-24 -> 17 ms,
// int8 13.7-19.5 -> 12.3, int4 13-16 -> 11-12, fp32 (36-line rows) about even.

// 16 weights as float32: a plain load, or bf16 widened (zero-extend to 32 bits, shift into the high half).
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const at::BFloat16* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

template <typename T, int R>
inline void dot_float(const T* w, int64_t n, const float* x, float* out) {
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  int64_t i = 0;
  constexpr int64_t STEP = 64 / sizeof(T);  // one cache line of weights per row per step
  for (; i + STEP <= n; i += STEP) {
    // the next tile's rows (contiguous after this tile's), one line per row per step: a tile ahead
    const char* next = reinterpret_cast<const char*>(w + R * n) + i * sizeof(T) * R;
    for (int r = 0; r < R; ++r) _mm_prefetch(next + 64 * r, _MM_HINT_T0);
    for (int64_t j = 0; j < STEP; j += 16) {
      const __m512 xv = _mm512_loadu_ps(x + i + j);
      for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(load16(w + r * n + i + j), xv, acc[r]);
    }
  }
  for (; i + 16 <= n; i += 16) {
    const __m512 xv = _mm512_loadu_ps(x + i);
    for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(load16(w + r * n + i), xv, acc[r]);
  }
  float tail[R];
  dot_float_256<T, R>(w, n, x, tail, i);
  for (int r = 0; r < R; ++r) out[r] = _mm512_reduce_add_ps(acc[r]) + tail[r];
}

template <int R>
inline void dot_int8(const int8_t* w, int64_t n, const int8_t* qx, const float* d, float* out) {
  const __m512i zero = _mm512_setzero_si512();
  const int64_t nb = n / QK;
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  int64_t b = 0;
  for (; b + 2 <= nb; b += 2) {
    const __m512i xv = _mm512_loadu_si512(qx + b * QK);
    const __m512i ax = _mm512_abs_epi8(xv);                                     // |qx| (as unsigned bytes)
    const __mmask64 neg = _mm512_movepi8_mask(xv);                              // lanes where qx < 0
    const __m512 db = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(d[b]), _mm512_set1_ps(d[b + 1]));
    const char* next = reinterpret_cast<const char*>(w + R * n) + b * QK * R;  // the next tile, a line per row
    for (int r = 0; r < R; ++r) _mm_prefetch(next + 64 * r, _MM_HINT_T0);
    for (int r = 0; r < R; ++r) {
      const __m512i wv = _mm512_loadu_si512(w + r * n + b * QK);
      const __m512i sw = _mm512_mask_sub_epi8(wv, neg, zero, wv);              // qw * sign(qx)
      const __m512i p32 = _mm512_dpbusd_epi32(zero, ax, sw);                  // 16 x int32: 4 products each
      acc[r] = _mm512_fmadd_ps(db, _mm512_cvtepi32_ps(p32), acc[r]);
    }
  }
  float tail[R];
  dot_int8_256<R>(w, n, qx, d, tail, b);  // (an odd last block)
  for (int r = 0; r < R; ++r) out[r] = _mm512_reduce_add_ps(acc[r]) + tail[r];
}

template <int R>
inline void dot_q4(const uint8_t* w, const float* dm, int64_t n, const int8_t* qx, const float* d, const float* s,
                   float* out) {
  const __m512i zero = _mm512_setzero_si512();
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __m512i x_lanes = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);  // d_b+j x4
  const __m512i w_lanes = _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6);  // (d, m) pairs -> d x4
  const int64_t nb = n / QK;
  __m512 acc[R];
  __m256 macc[R];  // odd lanes: the m terms
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps(), macc[r] = _mm256_setzero_ps();
  int64_t b = 0;
  for (; b + 4 <= nb; b += 4) {
    const __m256i* xp = reinterpret_cast<const __m256i*>(qx + b * QK);  // pair (b, b+1): lo, hi; pair (b+2, b+3)
    const __m512i xlo = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(xp)), _mm256_loadu_si256(xp + 2), 1);
    const __m512i xhi = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(xp + 1)), _mm256_loadu_si256(xp + 3), 1);
    const __m512 dx = _mm512_permutexvar_ps(x_lanes, _mm512_castps128_ps512(_mm_loadu_ps(d + b)));
    const __m256 sx = _mm256_setr_ps(0.f, s[b], 0.f, s[b + 1], 0.f, s[b + 2], 0.f, s[b + 3]);
    const char* next = reinterpret_cast<const char*>(w + R * (n / 2)) + b * (QK / 2) * R;  // the next tile
    for (int r = 0; r < R; ++r) _mm_prefetch(next + 64 * r, _MM_HINT_T0);
    for (int r = 0; r < R; ++r) {
      const __m512i bytes = _mm512_loadu_si512(w + r * (n / 2) + b * (QK / 2));  // four blocks of 16 bytes
      const __m512i lo = _mm512_and_si512(bytes, low4), hi = _mm512_and_si512(_mm512_srli_epi16(bytes, 4), low4);
      const __m512i p32 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, lo, xlo), hi, xhi);
      const __m256 pairs = _mm256_loadu_ps(dm + 2 * (r * nb + b));  // (d, m) of the four blocks
      const __m512 dw = _mm512_permutexvar_ps(w_lanes, _mm512_castps256_ps512(pairs));
      acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(dw, dx), _mm512_cvtepi32_ps(p32), acc[r]);
      macc[r] = _mm256_fmadd_ps(pairs, sx, macc[r]);
    }
  }
  float tail[R];
  dot_q4_256<R>(w, dm, n, qx, d, s, tail, b);  // (the last 1-3 blocks)
  for (int r = 0; r < R; ++r) {
    alignas(32) float m8[8];
    _mm256_store_ps(m8, macc[r]);
    out[r] = _mm512_reduce_add_ps(acc[r]) + (m8[1] + m8[3] + m8[5] + m8[7]) + tail[r];
  }
}

#else

template <typename T, int R>
inline void dot_float(const T* w, int64_t n, const float* x, float* out) { dot_float_256<T, R>(w, n, x, out); }

template <int R>
inline void dot_int8(const int8_t* w, int64_t n, const int8_t* qx, const float* d, float* out) {
  dot_int8_256<R>(w, n, qx, d, out);
}

template <int R>
inline void dot_q4(const uint8_t* w, const float* dm, int64_t n, const int8_t* qx, const float* d, const float* s,
                   float* out) {
  dot_q4_256<R>(w, dm, n, qx, d, s, out);
}

#endif
