// Persistent worker threads; see pool.h. The pool object is never destroyed (workers are
// detached) so process exit never joins or terminates a sleeping thread.
#include "pool.h"

#include <cstdlib>

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
  return 4000;
}

Pool& Pool::instance() {
  static Pool* pool = new Pool(default_threads());
  return *pool;
}

void Pool::set_size(int n) {
  std::lock_guard<std::mutex> lock(busy_);
  if (!started_ && n >= 1) size_ = n;
}

void Pool::start_locked() {
  started_ = true;
  for (int id = 1; id < size_; ++id) {
    threads_.emplace_back(&Pool::worker, this, id, generation_.load(std::memory_order_relaxed));
    threads_.back().detach();
  }
}

void Pool::worker(int id, uint32_t seen) {
  const int spins = spin_iterations();
  for (;;) {
    uint32_t now = seen;
    for (int i = 0; i < spins; ++i) {
      now = generation_.load(std::memory_order_acquire);
      if (now != seen) break;
      cpu_relax();
    }
    while (now == seen) {
      generation_.wait(seen, std::memory_order_acquire);
      now = generation_.load(std::memory_order_acquire);
    }
    seen = now;
    if (id < jobs_) fn_(ctx_, id);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

bool Pool::try_run(int n, Fn fn, void* ctx) {
  std::unique_lock<std::mutex> lock(busy_, std::try_to_lock);
  if (!lock.owns_lock()) return false;
  if (!started_) start_locked();
  if (n > size_) n = size_;
  fn_ = fn;
  ctx_ = ctx;
  jobs_ = n;
  pending_.store(size_ - 1, std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_release);
  generation_.notify_all();
  fn(ctx, 0);
  while (pending_.load(std::memory_order_acquire) != 0) cpu_relax();
  return true;
}

void parallel_for(int n, Pool::Fn fn, void* ctx) {
  Pool& pool = Pool::instance();
  if (n > 1 && pool.size() > 1 && n <= pool.size() && pool.try_run(n, fn, ctx)) return;
  for (int i = 0; i < n; ++i) fn(ctx, i);
}

}  // namespace nk
