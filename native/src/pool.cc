// Persistent worker threads; see pool.h. The pool object is never destroyed and its workers
// are detached, so process exit never joins or terminates a sleeping thread.
#include "pool.h"

#include <chrono>
#include <cstdlib>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void cpu_relax() { _mm_pause(); }
#else
static inline void cpu_relax() {}
#endif

namespace nk {

static int default_threads() {
  if (const char* env = std::getenv("TF_NATIVE_THREADS")) {
    int n = std::atoi(env);
    if (n >= 1 && n <= 64) return n;
  }
  unsigned hw = std::thread::hardware_concurrency();
  if (hw == 0) hw = 1;
  return hw > 8 ? 8 : static_cast<int>(hw);
}

// Spin iterations a worker waits for the next job before sleeping (a pause is ~10-70 cycles).
static int spin_iterations() {
  if (const char* env = std::getenv("TF_NATIVE_SPIN")) return std::atoi(env);
  return 2000;
}

// Pause iterations the caller spins for the last tasks of a job before it starts yielding.
static constexpr int kCallerSpins = 4000;
// Back-off: after this many stalled jobs in a row, this many jobs run on the caller alone.
static constexpr int kStallsBeforeBackOff = 3;
static constexpr int kSerialJobs = 200;

// Set while this thread runs a task of a job: a parallel_for inside a task runs its tasks
// serially (the pool holds one job at a time, and that job is this one).
static thread_local bool t_in_task = false;

Pool& Pool::instance() {
  static Pool* pool = new Pool(default_threads());
  return *pool;
}

void Pool::work(uint32_t generation) {
  for (;;) {
    uint64_t s = claim_.load(std::memory_order_acquire);
    if (static_cast<uint32_t>(s >> 32) != generation) return;
    const uint32_t index = static_cast<uint32_t>(s);
    if (index >= static_cast<uint32_t>(tasks_.load(std::memory_order_acquire))) return;
    // Success means job `generation` is still running, so fn_/ctx_ are its own.
    if (claim_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel)) {
      t_in_task = true;
      fn_(ctx_, static_cast<int>(index));
      t_in_task = false;
      done_.fetch_add(1, std::memory_order_release);
    }
  }
}

void Pool::worker() {
  const int spins = spin_iterations();
  uint32_t seen = 0;
  for (;;) {
    uint32_t now = wake_.load(std::memory_order_acquire);
    for (int i = 0; i < spins && now == seen; ++i) {
      cpu_relax();
      now = wake_.load(std::memory_order_acquire);
    }
    while (now == seen) {
      wake_.wait(seen, std::memory_order_acquire);
      now = wake_.load(std::memory_order_acquire);
    }
    seen = now;
    work(now);
  }
}

bool Pool::try_run(int n, Fn fn, void* ctx) {
  if (serial_jobs_.load(std::memory_order_relaxed) > 0) {
    serial_jobs_.fetch_sub(1, std::memory_order_relaxed);
    return false;
  }
  std::unique_lock<std::mutex> lock(busy_, std::try_to_lock);
  if (!lock.owns_lock()) return false;
  if (!started_) {
    started_ = true;
    for (int i = 1; i < size_; ++i) std::thread(&Pool::worker, this).detach();
  }
  // Close the claim word first, under the new generation and with no task left: a worker still
  // in work() for the last job (descheduled after its last task, or woken late) may hold that
  // job's final claim word and, once tasks_ grows, would pass the bound check; its CAS must then
  // fail, or it would run a task index past the old job's end with the old job's dead ctx_, or
  // run a task of this job twice and let done_ count one too many. A worker that reads the new
  // tasks_ (release/acquire) is ordered after this store, so its CAS sees it and fails.
  const uint32_t g = ++generation_;
  claim_.store((static_cast<uint64_t>(g) << 32) | 0xFFFFFFFFu, std::memory_order_seq_cst);
  fn_ = fn;
  ctx_ = ctx;
  tasks_.store(n, std::memory_order_release);
  done_.store(0, std::memory_order_relaxed);
  claim_.store(static_cast<uint64_t>(g) << 32, std::memory_order_release);
  wake_.store(g, std::memory_order_release);
  wake_.notify_all();
  const auto start = std::chrono::steady_clock::now();
  work(g);
  const auto worked = std::chrono::steady_clock::now();
  // A worker still running a task may have been descheduled (a busy machine): after a short
  // spin, yield so it can finish instead of burning the time slice it needs.
  int spins = 0;
  for (; done_.load(std::memory_order_acquire) < n; ++spins) {
    if (spins < kCallerSpins) cpu_relax();
    else std::this_thread::yield();
  }
  if (spins >= kCallerSpins) {
    const auto waited = std::chrono::steady_clock::now() - worked;
    if (waited > worked - start && ++stalls_ >= kStallsBeforeBackOff) {
      stalls_ = 0;
      serial_jobs_.store(kSerialJobs, std::memory_order_relaxed);
    }
  } else {
    stalls_ = 0;
  }
  return true;
}

void parallel_for(int n, Pool::Fn fn, void* ctx) {
  Pool& pool = Pool::instance();
  if (n > 1 && pool.size() > 1 && !t_in_task && pool.try_run(n, fn, ctx)) return;
  for (int i = 0; i < n; ++i) fn(ctx, i);
}

}  // namespace nk
