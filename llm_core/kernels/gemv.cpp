// CPU decode kernels: y = x @ W.T (+ b) for a FEW rows x (M = 1 when decoding one token) and a big weight W.
//
// Why our own: decoding one token multiplies one activation row by every weight matrix of the model. Each weight
// is read once per token and used for one multiply-add, so the work is a matrix-vector product (GEMV) bound by
// how fast the cores can stream the weights and turn them into sums. PyTorch's general kernels are built for
// big matrix products (int8 weights with bf16 activations are slow on AVX2 CPUs); these are the GEMVs
// llama.cpp runs, in a few lines each.
//
// 1. int8 weights (per-row scale s_o, values -127..127) x an activation row quantized on the fly to int8 in
//    blocks of 32 (llama.cpp's q8_0 scheme): x_i ~= qx_i * d_b, d_b = max|x in block b| / 127. Then
//
//        y_o = s_o * sum_b d_b * sum_{i in b} qw_oi * qx_i        (the inner sum is exact, in integers)
//
//    AVX2 has no int8 x int8 multiply. `_mm256_maddubs_epi16(a, b)` multiplies UNSIGNED bytes a by SIGNED bytes
//    b and adds neighbouring pairs into int16. The sign trick makes the first operand unsigned without changing
//    the product: qx * qw = |qx| * (qw * sign(qx)). |qx| <= 127 and |qw| <= 127, so a pair sum is at most
//    2 * 127 * 127 = 32258 and never saturates int16 (a weight of -128 could: the caller checks for it).
//    `_mm256_madd_epi16(p, 1)` adds pairs again into eight int32 sums, converted to float and scaled by d_b.
//
// 2. bf16 or fp32 weights x a float32 row: bf16 is the top 16 bits of a float32, so widening a bf16 value is
//    a zero-extension and a 16-bit shift; then fused multiply-adds, 8 lanes at a time.
//
// 3. 4-bit weights in llama.cpp's Q4_1 scheme, per block b of 32 inputs: w_oi ~= qw_oi * dw_ob + mw_ob with qw in
//    0..15, times the same q8 activation row as in 1 (qx_i * d_b). Expanding the product of the two sums,
//
//        y_o = sum_b dw_ob * d_b * sum_{i in b} qw_oi * qx_i  +  sum_b mw_ob * (d_b * sum_{i in b} qx_i)
//
//    The first inner sum is an integer dot as in 1; the second bracket depends on x alone (s_b, computed once
//    per row when quantizing it). The 4-bit values are already unsigned, so `maddubs(qw, qx)` needs no sign
//    trick: a pair sum is at most 2 * 15 * 127 = 3810. Layout (ours): row o is in/32 blocks of 16 bytes, byte j
//    of a block holding q_j in its low nibble and q_{j+16} in its high one (a mask and a shift give the 32
//    values in order), and (d, m) float32 pairs (out, in/32, 2) beside it.
//
// All three compute TILE = 4 output rows together (3: on short rows; the x loads are shared, 4 accumulators hide the
// FMA latency) and split the output rows over torch.set_num_threads() threads: the calling thread and the workers
// of a small pool of our own (SpinPool below), not OpenMP's.
// Build flags: -O3 -mavx2 -mfma -fopenmp, plus AVX512 F/BW/VL/DQ/VNNI where this CPU has all of them (16-lane dots,
// gemv_avx512.h); the Python side runs these only where the CPU has AVX2 and FMA.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/csrc/utils/pybind.h>  // at::Tensor <-> torch.Tensor (lighter than torch/extension.h)
#include <immintrin.h>
#include <omp.h>

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cmath>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t QK = 32;   // activation quantization block (q8_0's)
constexpr int64_t TILE = 4;  // output rows per inner loop
// dot_q4 takes TILE rows together only up to this input width; longer rows go one at a time. TILE rows are TILE
// weight streams plus TILE scale streams, which this CPU's prefetchers followed badly on long rows (measured on the
// 2-core AVX2 EPYC, 30 matrices, one thread: in = 1152 or 1536 row by row 1.5-1.8x faster than 4 rows together;
// in = 576 the shared x loads win by ~10%).
constexpr int64_t Q4_TILE_MAX_IN = 768;
// Fewest weights per thread worth waking a thread for (waking one costs microseconds; a small matrix is done
// sooner on one core). Settable for measurements.
int64_t g_min_work = 16384;

// ---------------------------------------------------------------------------------------------------------------
// SpinPool: the threads that share a GEMV's output rows.
//
// Why not OpenMP (at::parallel_for): one decoded token runs ~200 small GEMVs of 20-100 us each, with a little
// Python between them. An OpenMP region wakes its sleeping workers every time, and on this 2-core VM waking one
// costs 40-60 us under OMP_WAIT_POLICY=PASSIVE (and whenever the spin time of the default policy has run out):
// SmolLM2 int8 spent 68-75 ms per token that way against 32-38 ms with this pool. llama.cpp keeps its threads
// spinning between the operations of a token for the same reason.
//
// A round: the calling thread publishes a task split into `total` chunks and takes chunks itself; each worker,
// spinning on the round word, takes chunks too, until none is left. Chunks are claimed, not assigned, so a worker
// that the OS has descheduled (a busy machine) or that is still waking up delays nothing but the chunk it holds:
// the caller does the rest. An idle worker spins for up to g_spin_us after a round, yielding the core every ~10 us
// to any other thread that wants it (a busy machine: spinning must not take a core from real work), then sleeps on
// a condition variable. One caller at a time: another Python thread calling in meanwhile gets at::parallel_for instead.
std::atomic<int64_t> g_spin_us{2000};  // how long an idle worker spins before it sleeps (settable for measurements)

class SpinPool {
 public:
  using Task = void (*)(const void* ctx, int64_t chunk, int64_t total);

  // Runs task(ctx, c, total) once for every c in 0 .. total-1 (total < 2^20), on this thread and workers 1 ..
  // threads-1 (threads < 256); false (nothing run) while another thread is using the pool.
  bool run(int threads, int64_t total, Task task, const void* ctx) {
    std::unique_lock<std::mutex> busy(run_mutex_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    while (n_workers_ < threads - 1) start_worker(++n_workers_);
    task_ = task, ctx_ = ctx;
    done_.store(0, std::memory_order_relaxed);
    round_ = (round_ + 1) & ROUND_MASK;  // (a worker that misses a round after a wrap only leaves its chunks to us)
    work_.store(pack(round_, threads, 0, total));  // publishes task_/ctx_ (seq_cst: pairs with sleeping_, sleep())
    if (sleeping_.load() > 0) {
      std::lock_guard<std::mutex> lk(sleep_mutex_);
      wake_.notify_all();
    }
    drain(round_);
    for (int spins = 1; done_.load(std::memory_order_acquire) < total; ++spins) {  // chunks others are finishing
      _mm_pause();
      if (spins % 256 == 0) std::this_thread::yield();  // (their thread may be waiting for this core)
    }
    return true;
  }

 private:
  // The round word: round (16 bits) | threads taking part (8) | next chunk to claim (20) | chunks in the round (20).
  static constexpr uint64_t ROUND_MASK = (1u << 16) - 1, FIELD = (1u << 20) - 1;
  static uint64_t pack(uint64_t round, uint64_t threads, uint64_t next, uint64_t total) {
    return round << 48 | threads << 40 | next << 20 | total;
  }
  static uint64_t round_of(uint64_t w) { return w >> 48; }
  static int threads_of(uint64_t w) { return static_cast<int>((w >> 40) & 0xFF); }

  // Claim and run chunks of `round` until none is left (or a newer round has begun: then this one is done).
  void drain(uint64_t round) {
    uint64_t w = work_.load(std::memory_order_acquire);
    for (;;) {
      const uint64_t next = (w >> 20) & FIELD, total = w & FIELD;
      if (round_of(w) != round || next >= total) return;
      if (!work_.compare_exchange_weak(w, w + (uint64_t{1} << 20), std::memory_order_acquire)) continue;  // next+1
      task_(ctx_, static_cast<int64_t>(next), static_cast<int64_t>(total));  // (the round cannot end before this)
      done_.fetch_add(1, std::memory_order_release);
      w = work_.load(std::memory_order_acquire);
    }
  }

  void start_worker(int id) {
    std::thread([this, id, seen = round_] { loop(id, seen); }).detach();  // lives as long as the process
  }

  // Worker `id` (1, 2, ...): takes part in every round run with more than `id` threads.
  void loop(int id, uint64_t seen) {
    for (;;) {
      const auto t0 = std::chrono::steady_clock::now();
      uint64_t w;
      for (int spins = 1; round_of(w = work_.load(std::memory_order_acquire)) == seen; ++spins) {
        _mm_pause();
        if (spins % 256 == 0) {  // every ~10 us: let any other runnable thread have this core, and maybe sleep
          std::this_thread::yield();
          if (std::chrono::steady_clock::now() - t0 > std::chrono::microseconds(g_spin_us.load(std::memory_order_relaxed))) sleep(seen);
        }
      }
      seen = round_of(w);
      if (id < threads_of(w)) drain(seen);
    }
  }

  // Sleep until a round other than `seen` is published. The seq_cst increment of sleeping_ and the predicate's
  // load of work_ cannot both miss run()'s store of work_ and its load of sleeping_, so no wake-up is lost.
  void sleep(uint64_t seen) {
    std::unique_lock<std::mutex> lk(sleep_mutex_);
    sleeping_.fetch_add(1);
    wake_.wait(lk, [&] { return round_of(work_.load()) != seen; });
    sleeping_.fetch_sub(1);
  }

  std::mutex run_mutex_, sleep_mutex_;
  std::condition_variable wake_;
  std::atomic<uint64_t> work_{0};
  std::atomic<int64_t> done_{0};
  std::atomic<int> sleeping_{0};
  int n_workers_ = 0;    // the caller's, as are the two below (run() holds run_mutex_)
  uint64_t round_ = 0;
  Task task_ = nullptr;
  const void* ctx_ = nullptr;
};

// The process's pool, created on first use and never destroyed (its detached threads outlive static destructors).
// A forked child has none of the parent's threads: it starts a new pool (the old one is left, unused). No lock here,
// so a fork can never leave one held in the child.
std::atomic<SpinPool*> g_pool{nullptr};

SpinPool& pool() {
  SpinPool* p = g_pool.load(std::memory_order_acquire);
  if (p != nullptr) return *p;
  static const int registered = pthread_atfork(nullptr, nullptr, [] { g_pool.store(nullptr); });
  (void)registered;
  auto* fresh = new SpinPool();  // (starts no thread until its first round)
  if (g_pool.compare_exchange_strong(p, fresh)) return *fresh;
  delete fresh;  // another thread made one first
  return *p;
}

// fn(t0, t1) over [0, n) in chunks of at least `grain`, on up to `threads` threads (the pool; at::parallel_for while
// another thread holds it). A few chunks per thread, so a late thread leaves its share to the others.
template <typename Fn>
void parallel_ranges(int64_t n, int64_t grain, int threads, const Fn& fn) {
  const int64_t chunks = std::min<int64_t>({(n + grain - 1) / grain, int64_t{4} * threads, int64_t{1} << 19});
  if (threads <= 1 || chunks <= 1) return fn(int64_t{0}, n);
  threads = std::min(threads, 255);
  struct Ctx {
    const Fn* fn;
    int64_t n;
  } ctx{&fn, n};
  auto task = [](const void* c, int64_t i, int64_t total) {
    const Ctx& x = *static_cast<const Ctx*>(c);
    (*x.fn)(x.n * i / total, x.n * (i + 1) / total);
  };
  if (!pool().run(threads, chunks, task, &ctx)) at::parallel_for(0, n, grain, fn);
}

// Sum of the 8 lanes of v.
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// One activation row x (n floats, n % 32 == 0) -> q (n int8) and d (n / 32 scales), x ~= q * d per block;
// s (n / 32, may be null) gets d_b * sum of the block's q (the Q4_1 minimum's term).
void quantize_row_q8(const float* x, int64_t n, int8_t* q, float* d, float* s = nullptr) {
  for (int64_t b = 0; b < n / QK; ++b) {
    const float* xb = x + b * QK;
    float amax = 0.f;
    for (int64_t i = 0; i < QK; ++i) amax = std::max(amax, std::fabs(xb[i]));
    const float db = amax / 127.f;
    const float inv = db > 0.f ? 1.f / db : 0.f;
    int sum = 0;
    for (int64_t i = 0; i < QK; ++i) {
      q[b * QK + i] = static_cast<int8_t>(std::nearbyint(xb[i] * inv));
      sum += q[b * QK + i];
    }
    d[b] = db;
    if (s) s[b] = db * static_cast<float>(sum);
  }
}

// out[r] = sum_b d[b] * <w row r, qx> over the blocks b0.. of R consecutive weight rows (row stride n).
template <int R>
inline void dot_int8_256(const int8_t* w, int64_t n, const int8_t* qx, const float* d, float* out, int64_t b0 = 0) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = b0; b < n / QK; ++b) {
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qx + b * QK));
    const __m256i ax = _mm256_sign_epi8(xv, xv);  // |qx| (as unsigned bytes)
    const __m256 db = _mm256_broadcast_ss(d + b);
    for (int r = 0; r < R; ++r) {
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + r * n + b * QK));
      const __m256i sw = _mm256_sign_epi8(wv, xv);           // qw * sign(qx)
      const __m256i p16 = _mm256_maddubs_epi16(ax, sw);      // 16 x int16: qx*qw, pairs summed
      const __m256i p32 = _mm256_madd_epi16(p16, ones);      // 8 x int32
      acc[r] = _mm256_fmadd_ps(db, _mm256_cvtepi32_ps(p32), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = hsum(acc[r]);
}

// out[r] = y of R consecutive Q4_1 rows: w = nibbles (row stride n / 2 bytes), dm = (d, m) pairs (row stride
// n / 32 pairs), qx / d / s = the quantized activation row, its block scales and d_b * sum(qx in block b).
// Two blocks per step: one 32-byte load holds blocks b and b+1; its low nibbles are q_0..15 of both, its high
// nibbles q_16..31 of both, so qx comes here regrouped the same way per pair of blocks (see pair_blocks), and
// lanes 0-3 of the int32 sums belong to block b, lanes 4-7 to block b+1. An odd last block goes alone. Blocks from
// b0 (even) on.
template <int R>
inline void dot_q4_256(const uint8_t* w, const float* dm, int64_t n, const int8_t* qx, const float* d, const float* s,
                       float* out, int64_t b0 = 0) {
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i dlanes = _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2);  // (d_b, m_b, d_b+1, m_b+1) -> d_b x4, d_b+1 x4
  const int64_t nb = n / QK;
  __m256 acc[R];
  __m128 macc[R];  // lanes 1 and 3: the m terms of even and odd blocks
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps(), macc[r] = _mm_setzero_ps();
  int64_t b = b0;
  for (; b + 2 <= nb; b += 2) {
    const __m256i xlo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qx + b * QK));       // x 0..15 of b, b+1
    const __m256i xhi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qx + b * QK + 32));  // x 16..31
    const __m256 dx = _mm256_set_m128(_mm_set1_ps(d[b + 1]), _mm_set1_ps(d[b]));
    const __m128 sx = _mm_setr_ps(0.f, s[b], 0.f, s[b + 1]);
    for (int r = 0; r < R; ++r) {
      const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + r * (n / 2) + b * (QK / 2)));
      const __m256i lo = _mm256_and_si256(bytes, low4), hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low4);
      // int16 pair sums of 15 * 127 * 2 each, two added: |.| <= 7620, no saturation
      const __m256i p16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xlo), _mm256_maddubs_epi16(hi, xhi));
      const __m256i p32 = _mm256_madd_epi16(p16, ones);  // 8 x int32
      const __m128 pair = _mm_loadu_ps(dm + 2 * (r * nb + b));
      const __m256 dw = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(pair), dlanes);
      acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(dw, dx), _mm256_cvtepi32_ps(p32), acc[r]);
      macc[r] = _mm_fmadd_ps(pair, sx, macc[r]);
    }
  }
  float tail[R] = {};
  for (; b < nb; ++b) {  // (an odd last block: 16 bytes, x in its plain order)
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qx + b * QK));
    for (int r = 0; r < R; ++r) {
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + r * (n / 2) + b * (QK / 2)));
      const __m128i l4 = _mm256_castsi256_si128(low4);
      const __m256i wv = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(bytes, 4), l4), _mm_and_si128(bytes, l4));
      const __m256i p32 = _mm256_madd_epi16(_mm256_maddubs_epi16(wv, xv), ones);
      const float* p = dm + 2 * (r * nb + b);
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(p[0] * d[b]), _mm256_cvtepi32_ps(p32), acc[r]);
      tail[r] += p[1] * s[b];
    }
  }
  for (int r = 0; r < R; ++r) {
    const __m128 m2 = _mm_add_ps(macc[r], _mm_movehl_ps(macc[r], macc[r]));  // lane 1: m terms of all pairs
    out[r] = hsum(acc[r]) + _mm_cvtss_f32(_mm_shuffle_ps(m2, m2, 1)) + tail[r];
  }
}

// The q8 row regrouped for dot_q4: per pair of blocks (b, b+1), x 0..15 of both blocks, then x 16..31 of both.
void pair_blocks(int8_t* q, int64_t n) {
  for (int64_t b = 0; b + 2 <= n / QK; b += 2) {
    int8_t t[16];
    std::copy(q + b * QK + 16, q + b * QK + 32, t);
    std::copy(q + (b + 1) * QK, q + (b + 1) * QK + 16, q + b * QK + 16);
    std::copy(t, t + 16, q + (b + 1) * QK);
  }
}

// 8 weights as float32: a plain load, or bf16 widened (zero-extend to 32 bits, shift into the high half).
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const at::BFloat16* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// dst[0..n) = src[0..n) as float32 (exact): a bf16 row widened for the dots, or a chunk of widen_bf16.
inline void widen(const at::BFloat16* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8(src + i));
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

// out[r] = <w row r, x> from element i0 on, for R consecutive rows of a float weight (row stride n; any n, the tail
// in scalar).
template <typename T, int R>
inline void dot_float_256(const T* w, int64_t n, const float* x, float* out, int64_t i0 = 0) {
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  int64_t i = i0;
  for (; i + 8 <= n; i += 8) {
    const __m256 xv = _mm256_loadu_ps(x + i);
    for (int r = 0; r < R; ++r) acc[r] = _mm256_fmadd_ps(load8(w + r * n + i), xv, acc[r]);
  }
  for (int r = 0; r < R; ++r) {
    float s = hsum(acc[r]);
    for (int64_t j = i; j < n; ++j) s += static_cast<float>(w[r * n + j]) * x[j];
    out[r] = s;
  }
}

// dot_int8 / dot_q4 / dot_float: the 16-lane versions where the build has AVX512 (gemv_avx512.h, code only: included
// here, inside this file's namespace), else the 8-lane ones above.
#include "gemv_avx512.h"

// Runs dot(o, rows, m, out) over all (row tile, activation row) pairs, tiles split across threads, and writes
// y[m, o + r] = out[r] * scale[o + r] + bias[o + r] (scale / bias may be null; y float32 or bfloat16, rounded to
// nearest even as .to(bfloat16) does).
template <typename Y, typename Dot>
void for_each_tile(int64_t M, int64_t n_out, int64_t n_in, const float* scale, const float* bias, Y* y,
                   const Dot& dot) {
  const int64_t tiles = (n_out + TILE - 1) / TILE;
  const int64_t grain = std::max<int64_t>(1, g_min_work / (TILE * n_in));  // >= g_min_work weights per thread
  parallel_ranges(tiles, grain, at::get_num_threads(), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t o = t * TILE, rows = std::min(TILE, n_out - o);
      for (int64_t m = 0; m < M; ++m) {  // the tile's weights stay in L1 across the few rows
        float out[TILE];
        dot(o, rows, m, out);
        for (int64_t r = 0; r < rows; ++r)
          y[m * n_out + o + r] = static_cast<Y>(out[r] * (scale ? scale[o + r] : 1.f) + (bias ? bias[o + r] : 0.f));
      }
    }
  });
}

// A float32 contiguous version of t: t itself when it already is one (no aten call: ~200 calls per token).
at::Tensor as_float(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat && t.is_contiguous() ? t : t.to(at::kFloat).contiguous();
}

const float* bias_ptr(const std::optional<at::Tensor>& bias, at::Tensor& keep) {
  if (!bias.has_value()) return nullptr;
  keep = as_float(*bias);
  return keep.data_ptr<float>();
}

// x (..., in) as M float32 rows (x), and the result y (..., out) to fill: bfloat16 for a contiguous bfloat16 x, whose
// rows are widened into a per-thread scratch (a bf16 model's decode step: no aten casts around ~200 GEMVs a token),
// else float32 (returned in x's dtype by in_dtype_of).
struct Rows {
  const float* x;
  at::Tensor y;
  int64_t M;
  at::Tensor keep;  // x as float32 when it was converted by aten
};

Rows rows_of(const at::Tensor& x_in, int64_t n_in, int64_t n_out) {
  TORCH_CHECK(x_in.dim() >= 1 && x_in.size(-1) == n_in, "x's last dimension must be the weight's in_features");
  std::vector<int64_t> sizes = x_in.sizes().vec();
  sizes.back() = n_out;
  const int64_t M = x_in.numel() / n_in;
  if (x_in.scalar_type() == at::kBFloat16 && x_in.is_contiguous()) {
    thread_local std::vector<float> wide;
    wide.resize(x_in.numel());
    widen(x_in.data_ptr<at::BFloat16>(), wide.data(), x_in.numel());
    return {wide.data(), at::empty(sizes, at::kBFloat16), M, at::Tensor()};
  }
  at::Tensor xf = as_float(x_in);
  return {xf.data_ptr<float>(), at::empty(sizes, at::kFloat), M, xf};
}

// Calls fn with y's data as float* or at::BFloat16*.
template <typename Fn>
void with_output(const at::Tensor& y, const Fn& fn) {
  if (y.scalar_type() == at::kBFloat16) fn(y.data_ptr<at::BFloat16>());
  else fn(y.data_ptr<float>());
}

// y in x's dtype (a bf16 y already is).
at::Tensor in_dtype_of(const at::Tensor& y, const at::Tensor& x_in) {
  return y.scalar_type() == x_in.scalar_type() ? y : y.to(x_in.scalar_type());
}

}  // namespace

// x (..., in) float, qw (out, in) int8 with values in -127..127, scale (out,) float32 -> y (..., out) in x's dtype.
at::Tensor int8_linear(const at::Tensor& x_in, const at::Tensor& qw, const at::Tensor& scale,
                       const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(qw.dim() == 2 && qw.scalar_type() == at::kChar && qw.is_contiguous(), "int8_linear: qw (out, in) int8");
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous(), "int8_linear: scale float32");
  const int64_t n_in = qw.size(1), n_out = qw.size(0);
  TORCH_CHECK(n_in % QK == 0, "int8_linear: in_features must be a multiple of 32");
  Rows r = rows_of(x_in, n_in, n_out);
  const int64_t M = r.M;
  thread_local std::vector<int8_t> qx;  // the quantized rows: scratch kept per calling thread (no allocation)
  thread_local std::vector<float> dx;
  qx.resize(M * n_in);
  dx.resize(M * (n_in / QK));
  for (int64_t m = 0; m < M; ++m)
    quantize_row_q8(r.x + m * n_in, n_in, qx.data() + m * n_in, dx.data() + m * (n_in / QK));
  at::Tensor b;
  const float* bp = bias_ptr(bias, b);
  const int8_t* w = qw.data_ptr<int8_t>();
  const int8_t* q = qx.data();
  const float* d = dx.data();
  with_output(r.y, [&](auto* y) {
    for_each_tile(M, n_out, n_in, scale.data_ptr<float>(), bp, y, [&](int64_t o, int64_t rows, int64_t m, float* out) {
      const int8_t* qm = q + m * n_in;
      const float* dm = d + m * (n_in / QK);
      if (rows == TILE) return dot_int8<TILE>(w + o * n_in, n_in, qm, dm, out);
      for (int64_t i = 0; i < rows; ++i) dot_int8<1>(w + (o + i) * n_in, n_in, qm, dm, out + i);
    });
  });
  return in_dtype_of(r.y, x_in);
}

// x (..., in) float, packed (out, in/2) uint8 nibbles, dm (out, in/32, 2) float32 (d, m) -> y (..., out) in x's dtype.
at::Tensor int4_linear(const at::Tensor& x_in, const at::Tensor& packed, const at::Tensor& dm,
                       const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(packed.dim() == 2 && packed.scalar_type() == at::kByte && packed.is_contiguous(),
              "int4_linear: packed (out, in/2) uint8");
  const int64_t n_in = packed.size(1) * 2, n_out = packed.size(0);
  TORCH_CHECK(n_in % QK == 0, "int4_linear: in_features must be a multiple of 32");
  TORCH_CHECK(dm.scalar_type() == at::kFloat && dm.is_contiguous() && dm.dim() == 3 && dm.size(0) == n_out &&
                  dm.size(1) == n_in / QK && dm.size(2) == 2,
              "int4_linear: scales (out, in/32, 2) float32");
  Rows r = rows_of(x_in, n_in, n_out);
  const int64_t M = r.M, nb = n_in / QK;
  thread_local std::vector<int8_t> qx;
  thread_local std::vector<float> dx, sx;
  qx.resize(M * n_in);
  dx.resize(M * nb);
  sx.resize(M * nb);
  for (int64_t m = 0; m < M; ++m) {
    quantize_row_q8(r.x + m * n_in, n_in, qx.data() + m * n_in, dx.data() + m * nb,
                    sx.data() + m * nb);
    pair_blocks(qx.data() + m * n_in, n_in);
  }
  at::Tensor b;
  const float* bp = bias_ptr(bias, b);
  const uint8_t* w = packed.data_ptr<uint8_t>();
  const float* dmp = dm.data_ptr<float>();
  const int8_t* q = qx.data();
  const float* d = dx.data();
  const float* s = sx.data();
  with_output(r.y, [&](auto* y) {
    for_each_tile(M, n_out, n_in, nullptr, bp, y, [&](int64_t o, int64_t rows, int64_t m, float* out) {
      const int8_t* qm = q + m * n_in;
      const float* dmm = d + m * nb;
      const float* sm = s + m * nb;
      if (rows == TILE && n_in <= Q4_TILE_MAX_IN)
        return dot_q4<TILE>(w + o * (n_in / 2), dmp + o * nb * 2, n_in, qm, dmm, sm, out);
      for (int64_t i = 0; i < rows; ++i)
        dot_q4<1>(w + (o + i) * (n_in / 2), dmp + (o + i) * nb * 2, n_in, qm, dmm, sm, out + i);
    });
  });
  return in_dtype_of(r.y, x_in);
}

// x (..., in) float, w (out, in) bfloat16 or float32 -> y (..., out) in x's dtype.
at::Tensor float_linear(const at::Tensor& x_in, const at::Tensor& w, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous(), "float_linear: w must be a contiguous (out, in) matrix");
  const int64_t n_in = w.size(1), n_out = w.size(0);
  Rows r = rows_of(x_in, n_in, n_out);
  at::Tensor b;
  const float* bp = bias_ptr(bias, b);
  const float* xp = r.x;
  auto run = [&](auto* wp) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(wp)>>;
    with_output(r.y, [&](auto* y) {
      for_each_tile(r.M, n_out, n_in, nullptr, bp, y, [&](int64_t o, int64_t rows, int64_t m, float* out) {
        if (rows == TILE) return dot_float<T, TILE>(wp + o * n_in, n_in, xp + m * n_in, out);
        for (int64_t i = 0; i < rows; ++i) dot_float<T, 1>(wp + (o + i) * n_in, n_in, xp + m * n_in, out + i);
      });
    });
  };
  if (w.scalar_type() == at::kBFloat16) run(w.data_ptr<at::BFloat16>());
  else if (w.scalar_type() == at::kFloat) run(w.data_ptr<float>());
  else TORCH_CHECK(false, "float_linear: w must be bfloat16 or float32");
  return in_dtype_of(r.y, x_in);
}

// A long prompt's prefill runs a float32 GEMM, so a bf16 or int8 weight is first made float32 whole. PyTorch's
// conversions spent ~145 ms per 128-token SmolLM2 bf16 prefill (an OpenMP region each, 1.4 GB/s); these stream it
// on the kernels' threads. Both are exact: a bf16 value widens to the same float32, and q * s is one rounding, as in
// PyTorch's q.to(float32) * s[:, None].
constexpr int64_t CONVERT_BLOCK = 16384;  // elements per chunk of work

// w (...) bfloat16, contiguous -> the same values in float32.
at::Tensor widen_bf16(const at::Tensor& w) {
  TORCH_CHECK(w.scalar_type() == at::kBFloat16 && w.is_contiguous(), "widen_bf16: w must be contiguous bfloat16");
  at::Tensor out = at::empty(w.sizes(), at::kFloat);
  const int64_t n = w.numel();
  const at::BFloat16* src = w.data_ptr<at::BFloat16>();
  float* dst = out.data_ptr<float>();
  parallel_ranges((n + CONVERT_BLOCK - 1) / CONVERT_BLOCK, 1, at::get_num_threads(), [&](int64_t b0, int64_t b1) {
    const int64_t start = b0 * CONVERT_BLOCK;
    widen(src + start, dst + start, std::min(n, b1 * CONVERT_BLOCK) - start);
  });
  return out;
}

// One dequantized row: d[i] = q[i] * s, float32 (exact products, 8 at a time) or bf16 (each float32 product rounded
// to nearest even once, as (q.float() * s).to(bfloat16) does).
inline void dequant_row(const int8_t* q, float s, float* d, int64_t n) {
  const __m256 sv = _mm256_set1_ps(s);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i v = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + i)));
    _mm256_storeu_ps(d + i, _mm256_mul_ps(_mm256_cvtepi32_ps(v), sv));
  }
  for (; i < n; ++i) d[i] = static_cast<float>(q[i]) * s;
}
inline void dequant_row(const int8_t* q, float s, at::BFloat16* d, int64_t n) {
  for (int64_t i = 0; i < n; ++i) d[i] = static_cast<at::BFloat16>(static_cast<float>(q[i]) * s);
}

// qw (out, in) int8, scale (out,) float32 -> qw * scale[:, None] as T (float32 or bf16), rows on all threads.
template <typename T>
at::Tensor dequantize_int8_as(const at::Tensor& qw, const at::Tensor& scale, at::ScalarType dtype) {
  TORCH_CHECK(qw.device().is_cpu() && scale.device().is_cpu(), "dequantize_int8: CPU tensors");
  TORCH_CHECK(qw.dim() == 2 && qw.scalar_type() == at::kChar && qw.is_contiguous(), "dequantize_int8: qw (out, in) int8");
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous() && scale.numel() == qw.size(0),
              "dequantize_int8: scale (out,) float32");
  const int64_t n_out = qw.size(0), n_in = qw.size(1);
  at::Tensor out = at::empty({n_out, n_in}, dtype);
  const int8_t* q = qw.data_ptr<int8_t>();
  const float* s = scale.data_ptr<float>();
  T* dst = out.data_ptr<T>();
  const int64_t grain = std::max<int64_t>(1, CONVERT_BLOCK / std::max<int64_t>(1, n_in));  // rows per chunk
  parallel_ranges(n_out, grain, at::get_num_threads(), [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) dequant_row(q + o * n_in, s[o], dst + o * n_in, n_in);
  });
  return out;
}

// float32: a long int8 prompt's GEMM weight; bf16: the same for a CPU that multiplies bf16 in hardware (AMX,
// AVX512-BF16), where an int8 model's prompt runs a bf16 GEMM.
at::Tensor dequantize_int8(const at::Tensor& qw, const at::Tensor& scale) {
  return dequantize_int8_as<float>(qw, scale, at::kFloat);
}
at::Tensor dequantize_int8_bf16(const at::Tensor& qw, const at::Tensor& scale) {
  return dequantize_int8_as<at::BFloat16>(qw, scale, at::kBFloat16);
}

// ---- The elementwise ops of a decode step: RMSNorm and RoPE -----------------------------------------------------
// Each is 4-7 ATen ops in eager PyTorch, and a decoded token runs 61 norms and 60 rotations of SmolLM2; at one row
// the dispatch of those ops costs more than their arithmetic. Same math and rounding as llm_core.model's PyTorch
// code (norm.RMSNorm, attention.apply_rope): every product and sum rounded where ATen rounds it, no fused
// multiply-adds, bf16 results rounded to nearest even as ATen's casts do. RoPE is bit-exact; the norm's sum of
// squares runs in another order (float32 results within a few ulps; bf16 ones, after rounding, rarely one ulp off).
// Single-threaded: the callers use them up to norm.KERNEL_ROWS rows.
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")

template <typename T>
void rms_norm_rows(const T* x, const T* w, T* y, int64_t rows, int64_t C, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * C;
    T* yr = y + r * C;
    float sum[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t i = 0; i < C; ++i) {
      const float h = static_cast<float>(xr[i]);
      sum[i % 8] += h * h;
    }
    const float ms = (((sum[0] + sum[1]) + (sum[2] + sum[3])) + ((sum[4] + sum[5]) + (sum[6] + sum[7]))) /
                     static_cast<float>(C);
    const float inv = 1.0f / std::sqrt(ms + eps);
    for (int64_t i = 0; i < C; ++i) {
      const float h = static_cast<float>(xr[i]);  // (widened again: exact, and no scratch row to allocate)
      if constexpr (std::is_same_v<T, float>) {
        yr[i] = (h * inv) * w[i];  // x * rsqrt(mean(x^2) + eps) * w
      } else {
        const float n = static_cast<float>(static_cast<T>(h * inv));  // normalised, rounded to bf16
        yr[i] = static_cast<T>(static_cast<float>(w[i]) * n);  // w * that, rounded to bf16
      }
    }
  }
}

// x (B, T, H, hs) contiguous, cos and signed sin (T, hs) in x's dtype: x * cos + roll(x, hs/2) * sin, in a new tensor.
template <typename T>
void rope_rows(const T* x, const T* cos, const T* sin, T* y, int64_t rows, int64_t H, int64_t T_, int64_t hs) {
  const int64_t half = hs / 2;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = (r / H) % T_;
    const T* xr = x + r * hs;
    const T* c = cos + t * hs;
    const T* s = sin + t * hs;
    T* yr = y + r * hs;
    for (int64_t i = 0; i < hs; ++i) {
      const T rolled = xr[(i + half) % hs];
      const T a = static_cast<T>(static_cast<float>(xr[i]) * static_cast<float>(c[i]));
      const T b = static_cast<T>(static_cast<float>(rolled) * static_cast<float>(s[i]));
      yr[i] = static_cast<T>(static_cast<float>(a) + static_cast<float>(b));
    }
  }
}

#pragma GCC pop_options

// x (..., C) float32 or bfloat16, contiguous; w (C,) in x's dtype -> RMSNorm(x) in x's dtype (norm.RMSNorm's math).
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "rms_norm: CPU tensors");
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous() && x.scalar_type() == w.scalar_type() && x.dim() >= 1 &&
              w.dim() == 1 && w.size(0) == x.size(-1), "rms_norm: x (..., C) and w (C,) contiguous, one dtype");
  at::Tensor y = at::empty(x.sizes(), x.scalar_type());
  const int64_t C = x.size(-1), rows = C ? x.numel() / C : 0;
  if (x.scalar_type() == at::kFloat) {
    rms_norm_rows(x.data_ptr<float>(), w.data_ptr<float>(), y.data_ptr<float>(), rows, C, static_cast<float>(eps));
  } else {
    TORCH_CHECK(x.scalar_type() == at::kBFloat16, "rms_norm: float32 or bfloat16");
    rms_norm_rows(x.data_ptr<at::BFloat16>(), w.data_ptr<at::BFloat16>(), y.data_ptr<at::BFloat16>(), rows, C,
                  static_cast<float>(eps));
  }
  return y;
}

// x (B, T, H, hs) contiguous float32 or bfloat16; cos, sin (T, hs) contiguous in x's dtype -> the rotated x (a new
// tensor, same layout): attention.apply_rope on x's (B, H, T, hs) transpose, computed before transposing.
at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(x.device().is_cpu() && cos.device().is_cpu() && sin.device().is_cpu(), "rope: CPU tensors");
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous() && cos.is_contiguous() && sin.is_contiguous() &&
              cos.dim() == 2 && cos.sizes() == sin.sizes() && cos.size(0) == x.size(1) &&
              cos.size(1) == x.size(3) && x.size(3) % 2 == 0 && cos.scalar_type() == x.scalar_type() &&
              sin.scalar_type() == x.scalar_type(), "rope: x (B, T, H, hs) and cos/sin (T, hs), contiguous, one dtype");
  at::Tensor y = at::empty(x.sizes(), x.scalar_type());
  const int64_t hs = x.size(3), rows = x.numel() / std::max<int64_t>(1, hs);
  if (x.scalar_type() == at::kFloat) {
    rope_rows(x.data_ptr<float>(), cos.data_ptr<float>(), sin.data_ptr<float>(), y.data_ptr<float>(), rows,
              x.size(2), x.size(1), hs);
  } else {
    TORCH_CHECK(x.scalar_type() == at::kBFloat16, "rope: float32 or bfloat16");
    rope_rows(x.data_ptr<at::BFloat16>(), cos.data_ptr<at::BFloat16>(), sin.data_ptr<at::BFloat16>(),
              y.data_ptr<at::BFloat16>(), rows, x.size(2), x.size(1), hs);
  }
  return y;
}

// True where this CPU runs the instructions the kernels were compiled for.
bool supported() {
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#ifdef LLM_GEMV_AVX512
  return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vnni");
#else
  return avx2;
#endif
}

// The vector width the dots were built for: "avx512" (16 lanes, VNNI) or "avx2" (8 lanes).
std::string isa() {
#ifdef LLM_GEMV_AVX512
  return "avx512";
#else
  return "avx2";
#endif
}

int64_t set_min_work(int64_t n) {
  const int64_t old = g_min_work;
  g_min_work = std::max<int64_t>(1, n);
  return old;
}

// This thread's OpenMP thread count, the one ATen's ops on this thread use (at::get_num_threads() is
// omp_get_max_threads()), without torch.set_num_threads' process-wide effects (a stored count every new thread starts
// from, oneDNN's cache cleared). Returns the previous count. (The extension shares torch's libgomp: same soname.)
int64_t set_thread_count(int64_t n) {
  const int old = omp_get_max_threads();
  omp_set_num_threads(static_cast<int>(std::max<int64_t>(1, n)));
  return old;
}

int64_t set_spin_us(int64_t us) {
  const int64_t old = g_spin_us;
  g_spin_us = std::max<int64_t>(0, us);
  return old;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("int8_linear", &int8_linear, "x @ (qw * scale).T + b, x quantized to int8 per block of 32");
  m.def("int4_linear", &int4_linear, "x @ (q * d + m).T + b for Q4_1 nibbles, x quantized to int8 per block of 32");
  m.def("float_linear", &float_linear, "x @ w.T + b for bf16/fp32 w, float32 accumulation");
  m.def("widen_bf16", &widen_bf16, "a bfloat16 tensor as float32");
  m.def("dequantize_int8", &dequantize_int8, "qw * scale[:, None] as float32");
  m.def("rms_norm", &rms_norm, "RMSNorm of float32/bf16 rows, llm_core.model.norm's math");
  m.def("rope", &rope, "x (B, T, H, hs) rotated by cos/sin (T, hs), attention.apply_rope's math");
  m.def("dequantize_int8_bf16", &dequantize_int8_bf16, "bf16(qw * scale[:, None]), rounded once");
  m.def("supported", &supported, "the CPU has the instructions of this build");
  m.def("isa", &isa, "avx512 or avx2: the instructions the dots were built for");
  m.def("set_min_work", &set_min_work, "fewest weights per thread (returns the previous value)");
  m.def("set_thread_count", &set_thread_count, "this thread's OpenMP thread count (returns the previous one)");
  m.def("set_spin_us", &set_spin_us, "how long idle workers spin before sleeping, in us (returns the previous value)");
}
