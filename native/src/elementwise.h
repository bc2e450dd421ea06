// Element-wise and reduction kernels on float32.
#pragma once

#include <cstdint>

namespace nk {

// out[i] = exp(x[i]) (relative error ~2 ulp; overflow to inf and underflow to 0 as expf).
void exp_f32(const float* x, float* out, int64_t size);

// out = a + b, element by element (out may be a or b).
void add_f32(const float* a, const float* b, float* out, int64_t size);

// x viewed as [outer, reduce, inner]; out[o, i] = sum over r of x[o, r, i].
void sum_f32(const float* x, float* out, int64_t outer, int64_t reduce, int64_t inner);

// Exact (erf) GELU, y = x/2 * (1 + erf(x/sqrt2)), and its backward dx = dy * gelu'(x). erf is
// Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7), the approximation tfjs uses.
void gelu_f32(const float* x, float* y, int64_t size);
void gelu_grad_f32(const float* x, const float* dy, float* dx, int64_t size);

}  // namespace nk
