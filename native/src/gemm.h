// Float32 GEMM for row-major matrices: C[b] = act(op(A[b]) * op(B[b]) + bias), batched.
#pragma once

#include <cstdint>

namespace nk {

enum Activation : int {
  kLinear = 0,
  kRelu = 1,
  kRelu6 = 2,
  kLeakyRelu = 4,
  kSigmoid = 5,
  kElu = 6,
};

struct GemmArgs {
  const float* a;  // op(A) is m x k; A is k x m when trans_a
  const float* b;  // op(B) is k x n; B is n x k when trans_b
  float* c;        // m x n, fully overwritten
  int64_t batch, m, n, k;
  bool trans_a, trans_b;
  int64_t stride_a, stride_b;  // elements between batches; 0 broadcasts one matrix
  const float* bias;           // n values added to every row, or null
  int activation;              // Activation
  float alpha;                 // leaky relu slope
};

void sgemm(const GemmArgs& args);

// C = op(A) * op(B) for one matrix with explicit leading dimensions (row strides, in elements),
// on the calling thread only: for kernels that already run as pool tasks (fused attention).
void sgemm_serial(const float* a, int64_t lda, bool trans_a, const float* b, int64_t ldb,
                  bool trans_b, float* c, int64_t ldc, int64_t m, int64_t n, int64_t k);

// Name of the micro-kernel compiled in ("avx512 12x32", ...), for logs and benchmarks.
const char* sgemm_kernel_name();

}  // namespace nk
