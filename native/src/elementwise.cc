// Vectorised exp and sum. exp: x = n ln2 + r with |r| <= ln2/2, exp(r) by a degree-6
// polynomial, 2^n put into the exponent bits (Cephes expf coefficients). Inputs below -87.34
// give 0 (expf would give subnormals down to -103.9), above 88.72 inf; NaN stays NaN. Sums accumulate in float32 across
// several vector accumulators (so the order differs from a sequential sum, within float32
// rounding). Large inputs are split over the pool.
#include "elementwise.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "pool.h"
#include "simd.h"
#include "vmath.h"

namespace nk {
namespace {

constexpr int64_t kParallelElements = 1 << 17;

void exp_range(const float* x, float* out, int64_t begin, int64_t end) {
  int64_t i = begin;
  for (; i + VL <= end; i += VL) store(out + i, exp_vec(load(x + i)));
  if (i < end) {
    alignas(64) float tail[VL] = {};
    std::memcpy(tail, x + i, (end - i) * sizeof(float));
    const vec y = exp_vec(load(tail));
    std::memcpy(out + i, &y, (end - i) * sizeof(float));
  }
  // NaN propagates through the comparisons above as a non-over, non-under value: exp_vec
  // computes NaN arithmetic for it, so nothing more to do.
}

// erf(x / sqrt2) and exp(-x^2 / 2) of x, both needed by GELU and its gradient.
inline void erf_and_gauss(vec x, vec* erf_out, vec* gauss_out) {
  const vec z = x * splat(0.70710678118654752f);
  const vec az = z < 0.f ? -z : z;
  const vec t = splat(1.f) / (splat(1.f) + splat(0.3275911f) * az);
  vec poly = splat(1.061405429f);
  poly = poly * t + splat(-1.453152027f);
  poly = poly * t + splat(1.421413741f);
  poly = poly * t + splat(-0.284496736f);
  poly = poly * t + splat(0.254829592f);
  poly = poly * t;
  const vec g = exp_vec(-(z * z));
  const vec e = splat(1.f) - poly * g;
  *erf_out = z < 0.f ? -e : e;
  *gauss_out = g;
}

inline vec gelu_vec(vec x) {
  vec e, g;
  erf_and_gauss(x, &e, &g);
  return splat(0.5f) * x * (splat(1.f) + e);
}

inline vec gelu_grad_vec(vec x, vec dy) {
  vec e, g;
  erf_and_gauss(x, &e, &g);
  return dy * (splat(0.5f) * (splat(1.f) + e) + x * g * splat(0.3989422804014327f));
}

struct GeluJob {
  const float* x;
  const float* dy;  // null: forward
  float* out;
  int64_t size;
  int parts;
};

void gelu_part(void* ctx, int t) {
  const GeluJob& j = *static_cast<const GeluJob*>(ctx);
  const auto [begin, end] = vector_part(j.size, j.parts, t);
  int64_t i = begin;
  for (; i + VL <= end; i += VL) {
    const vec x = load(j.x + i);
    store(j.out + i, j.dy ? gelu_grad_vec(x, load(j.dy + i)) : gelu_vec(x));
  }
  if (i < end) {
    alignas(64) float xt[VL] = {}, dt[VL] = {};
    std::memcpy(xt, j.x + i, (end - i) * sizeof(float));
    if (j.dy) std::memcpy(dt, j.dy + i, (end - i) * sizeof(float));
    const vec y = j.dy ? gelu_grad_vec(load(xt), load(dt)) : gelu_vec(load(xt));
    std::memcpy(j.out + i, &y, (end - i) * sizeof(float));
  }
}

struct ExpJob {
  const float* x;
  float* out;
  int64_t size;
  int parts;
};

void exp_part(void* ctx, int t) {
  const ExpJob& j = *static_cast<const ExpJob*>(ctx);
  const auto [begin, end] = vector_part(j.size, j.parts, t);
  exp_range(j.x, j.out, begin, end);
}

inline float row_sum(const float* x, int64_t n) {
  vec acc[4] = {vec{}, vec{}, vec{}, vec{}};
  int64_t i = 0;
  for (; i + 4 * VL <= n; i += 4 * VL)
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) acc[u] += load(x + i + u * VL);
  for (; i + VL <= n; i += VL) acc[0] += load(x + i);
  const vec total = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  float s = 0.f;
  for (int v = 0; v < VL; ++v) s += total[v];
  for (; i < n; ++i) s += x[i];
  return s;
}

struct SumJob {
  const float* x;
  float* out;
  int64_t outer, reduce, inner;
  int parts;
  bool split_inner;
};

// Sums for outer rows [o0, o1) and inner columns [i0, i1).
void sum_block(const SumJob& j, int64_t o0, int64_t o1, int64_t i0, int64_t i1) {
  for (int64_t o = o0; o < o1; ++o) {
    const float* x = j.x + o * j.reduce * j.inner;
    float* out = j.out + o * j.inner;
    if (j.inner == 1) {
      out[0] = row_sum(x, j.reduce);
      continue;
    }
    std::memset(out + i0, 0, (i1 - i0) * sizeof(float));
    for (int64_t r = 0; r < j.reduce; ++r) {
      const float* row = x + r * j.inner;
      for (int64_t i = i0; i < i1; ++i) out[i] += row[i];
    }
  }
}

void sum_part(void* ctx, int t) {
  const SumJob& j = *static_cast<const SumJob*>(ctx);
  if (j.split_inner) {
    const int64_t chunk = (j.inner / j.parts + VL - 1) / VL * VL;
    const int64_t i0 = std::min(j.inner, chunk * t);
    const int64_t i1 = t == j.parts - 1 ? j.inner : std::min(j.inner, chunk * (t + 1));
    if (i0 < i1) sum_block(j, 0, j.outer, i0, i1);
  } else {
    sum_block(j, j.outer * t / j.parts, j.outer * (t + 1) / j.parts, 0, j.inner);
  }
}

}  // namespace

struct AddJob {
  const float *a, *b;
  float* out;
  int64_t size;
  int parts;
};

void add_part(void* ctx, int t) {
  const AddJob& j = *static_cast<const AddJob*>(ctx);
  const auto [begin, end] = vector_part(j.size, j.parts, t);
  int64_t i = begin;
  for (; i + VL <= end; i += VL) store(j.out + i, load(j.a + i) + load(j.b + i));
  for (; i < end; ++i) j.out[i] = j.a[i] + j.b[i];
}

void add_f32(const float* a, const float* b, float* out, int64_t size) {
  if (size <= 0) return;
  AddJob job{a, b, out, size, 1};
  if (size >= kParallelElements / 4) job.parts = Pool::instance().size();
  parallel_for(job.parts, add_part, &job);
}

void exp_f32(const float* x, float* out, int64_t size) {
  if (size <= 0) return;
  ExpJob job{x, out, size, 1};
  if (size >= kParallelElements) job.parts = Pool::instance().size();
  parallel_for(job.parts, exp_part, &job);
}

static void gelu_run(const float* x, const float* dy, float* out, int64_t size) {
  if (size <= 0) return;
  GeluJob job{x, dy, out, size, 1};
  if (size >= kParallelElements / 4) job.parts = Pool::instance().size();
  parallel_for(job.parts, gelu_part, &job);
}

void gelu_f32(const float* x, float* y, int64_t size) { gelu_run(x, nullptr, y, size); }

void gelu_grad_f32(const float* x, const float* dy, float* dx, int64_t size) {
  gelu_run(x, dy, dx, size);
}

void sum_f32(const float* x, float* out, int64_t outer, int64_t reduce, int64_t inner) {
  if (outer <= 0 || inner <= 0) return;
  if (reduce <= 0) {
    std::memset(out, 0, outer * inner * sizeof(float));
    return;
  }
  SumJob job{x, out, outer, reduce, inner, 1, false};
  const int threads = Pool::instance().size();
  if (outer * reduce * inner >= kParallelElements && threads > 1) {
    if (outer >= threads) {
      job.parts = threads;
    } else if (inner >= 2 * VL * threads) {
      job.parts = threads;
      job.split_inner = true;
    }
  }
  parallel_for(job.parts, sum_part, &job);
}

}  // namespace nk
