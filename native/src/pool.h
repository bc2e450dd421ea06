// A tiny persistent thread pool for the kernels: `run(n, fn)` calls fn(0..n-1), fn(0) on the
// calling thread, the rest on workers that spin briefly and then sleep on a futex (C++20
// atomic wait). One job at a time per process: a caller that finds the pool busy (another
// JS thread is using it) gets `false` from `try_run` and runs single-threaded instead.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace nk {

class Pool {
 public:
  using Fn = void (*)(void* ctx, int index);

  // Threads including the caller; workers start lazily on first use.
  static Pool& instance();
  int size() const { return size_; }
  void set_size(int n);

  // Runs fn(ctx, i) for i in [0, n) and waits; false (nothing run) if the pool is busy.
  bool try_run(int n, Fn fn, void* ctx);

 private:
  explicit Pool(int size) : size_(size) {}
  void start_locked();
  void worker(int id, uint32_t seen);

  int size_;
  bool started_ = false;
  std::mutex busy_;
  std::vector<std::thread> threads_;
  std::atomic<uint32_t> generation_{0};
  std::atomic<int> pending_{0};
  Fn fn_ = nullptr;
  void* ctx_ = nullptr;
  int jobs_ = 0;
};

// Calls fn(ctx, i) for i in [0, n) on the pool, or serially when n == 1 or the pool is busy.
void parallel_for(int n, Pool::Fn fn, void* ctx);

}  // namespace nk
