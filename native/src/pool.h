// A tiny persistent thread pool for the kernels. `parallel_for(n, fn, ctx)` runs fn(ctx, i) for
// i in [0, n): the calling thread and the workers claim tasks from a shared counter, so when a
// worker is slow to wake (the machine is busy) the caller simply does more of the work itself.
// Workers spin briefly after a job, then sleep on a futex (C++20 atomic wait). One job at a
// time per process: a caller that finds the pool busy (another JS thread is using it) runs its
// tasks alone. On an oversubscribed machine a worker can be descheduled in the middle of a task
// and the caller then waits for it at the end of every job; when that happens several jobs in a
// row (the caller waited longer than it worked), the pool backs off: the next jobs run on the
// caller alone, then it tries the workers again. Results do not depend on who ran a task.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>

namespace nk {

class Pool {
 public:
  using Fn = void (*)(void* ctx, int index);

  static Pool& instance();
  // Threads including the caller.
  int size() const { return size_; }
  // Runs the tasks and waits; false (nothing run) if the pool is busy or backing off.
  bool try_run(int n, Fn fn, void* ctx);

 private:
  explicit Pool(int size) : size_(size) {}
  void worker();
  void work(uint32_t generation);

  const int size_;
  bool started_ = false;
  std::mutex busy_;
  uint32_t generation_ = 0;          // written by the caller only
  std::atomic<uint32_t> wake_{0};    // generation workers wait on
  std::atomic<uint64_t> claim_{0};   // generation << 32 | next task index
  std::atomic<int> done_{0};
  int stalls_ = 0;                    // consecutive jobs whose caller waited longer than it worked
  std::atomic<int> serial_jobs_{0};   // jobs still to run on the caller alone (backing off)
  std::atomic<int> tasks_{0};  // written after claim_ is closed, read before a claim (see try_run)
  Fn fn_ = nullptr;
  void* ctx_ = nullptr;
};

// Calls fn(ctx, i) for i in [0, n), on the pool when there is more than one task (serially when
// called from inside a task).
void parallel_for(int n, Pool::Fn fn, void* ctx);

}  // namespace nk
