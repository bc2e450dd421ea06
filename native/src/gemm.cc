// Packed, register-blocked SGEMM (the classic Goto/BLIS loop nest) for row-major matrices.
//
// Loops: jc over NC columns -> pc over KC depth (pack B into NR-wide panels) -> ic over MC rows
// (pack A into MR-tall panels) -> jr, ir over MR x NR tiles computed by the micro-kernel, whose
// accumulators live in registers. Transposes are absorbed by the packing routines, so all four
// transpose cases run the same micro-kernel. The micro-kernel is written with GCC vector
// extensions and compiled for the build machine (-march=native): AVX-512 gives a 12x32 tile,
// AVX2 6x16, anything else a portable 4x8 fallback.
//
// Threads: one thread for small problems (decoding-size matmuls must stay cheap); otherwise the
// matrices of a batch are tasks for the pool, or each matrix is cut into a few slices of rows or
// columns per thread. The operand every slice reads whole is packed once, by all threads, and
// its panels are shared; each slice packs only its own part of the other operand.
#include "gemm.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "pool.h"

#if defined(__SSE__)
#include <immintrin.h>
#endif

namespace nk {
namespace {

#if defined(__AVX512F__)
constexpr int VL = 16;
constexpr int MR = 12;
const char* const kKernelName = "avx512 12x32";
#elif defined(__AVX2__)
constexpr int VL = 8;
constexpr int MR = 6;
const char* const kKernelName = "avx2 6x16";
#else
constexpr int VL = 4;
constexpr int MR = 4;
const char* const kKernelName = "portable 4x8";
#endif
constexpr int NV = 2;
constexpr int NR = VL * NV;

constexpr int64_t KC = 256;
constexpr int64_t MC = MR * 12;
constexpr int64_t NC = 2048;

// Up to this many rows, B is used in place (see gemm_few_rows).
constexpr int64_t kFewRows = 4;

// Row or column slices per thread when one matrix is split.
constexpr int64_t kSlicesPerThread = 4;

// Work (2*m*n*k summed over the batch) below which one thread is faster than waking another.
constexpr double kParallelFlops = 3.0e6;

typedef float vec __attribute__((vector_size(VL * 4)));
typedef float uvec __attribute__((vector_size(VL * 4), aligned(4)));

struct Mat {
  const float* a;
  int64_t lda;
  const float* b;
  int64_t ldb;
  float* c;
  int64_t ldc;
  int64_t m, n, k;
  bool ta, tb;
};

struct Buffer {
  float* data = nullptr;
  size_t capacity = 0;
  float* ensure(size_t floats) {
    if (floats > capacity) {
      std::free(data);
      size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
      data = static_cast<float*>(std::aligned_alloc(64, bytes));
      if (!data) {
        // Out of memory for a packing panel: stop with a message rather than write through NULL.
        std::fprintf(stderr, "native kernels: cannot allocate a %zu-byte GEMM panel\n", bytes);
        std::abort();
      }
      capacity = floats;
    }
    return data;
  }
};

thread_local Buffer pack_a_buffer;
thread_local Buffer pack_b_buffer;

// d[p * W + i] = src[i * ld + p] for the first `valid` of W rows, 0 for the others: the
// transposing copy of packing, in 4 x 4 blocks where SSE is available.
void pack_transposed(const float* src, int64_t ld, int valid, int W, int64_t kc, float* d) {
  int64_t p = 0;
#if defined(__SSE__)
  const int w4 = W / 4 * 4;
  for (; p + 4 <= kc; p += 4) {
    for (int i = 0; i < w4; i += 4) {
      __m128 r[4];
      for (int q = 0; q < 4; ++q)
        r[q] = i + q < valid ? _mm_loadu_ps(src + (i + q) * ld + p) : _mm_setzero_ps();
      _MM_TRANSPOSE4_PS(r[0], r[1], r[2], r[3]);
      for (int q = 0; q < 4; ++q) _mm_storeu_ps(d + (p + q) * W + i, r[q]);
    }
    for (int i = w4; i < W; ++i)
      for (int q = 0; q < 4; ++q) d[(p + q) * W + i] = i < valid ? src[i * ld + p + q] : 0.f;
  }
#endif
  for (; p < kc; ++p)
    for (int i = 0; i < W; ++i) d[p * W + i] = i < valid ? src[i * ld + p] : 0.f;
}

// Packs rows [i0, i0+mc) x depth [p0, p0+kc) of op(A) into MR-tall panels, zero-padded.
void pack_a(const Mat& s, int64_t i0, int64_t p0, int64_t mc, int64_t kc, float* dst) {
  for (int64_t ir = 0; ir < mc; ir += MR) {
    const int64_t rows = std::min<int64_t>(MR, mc - ir);
    float* d = dst + ir * kc;
    if (s.ta) {
      // A is k x m: each depth step reads MR contiguous values.
      for (int64_t p = 0; p < kc; ++p) {
        const float* src = s.a + (p0 + p) * s.lda + i0 + ir;
        if (rows == MR) {
          std::memcpy(d + p * MR, src, MR * sizeof(float));
          continue;
        }
        int i = 0;
        for (; i < rows; ++i) d[p * MR + i] = src[i];
        for (; i < MR; ++i) d[p * MR + i] = 0.f;
      }
    } else {
      pack_transposed(s.a + (i0 + ir) * s.lda + p0, s.lda, static_cast<int>(rows), MR, kc, d);
    }
  }
}

// Packs depth [p0, p0+kc) x columns [j0, j0+nc) of op(B) into NR-wide panels, zero-padded.
void pack_b(const Mat& s, int64_t p0, int64_t j0, int64_t kc, int64_t nc, float* dst) {
  for (int64_t jr = 0; jr < nc; jr += NR) {
    const int64_t cols = std::min<int64_t>(NR, nc - jr);
    float* d = dst + jr * kc;
    if (!s.tb) {
      for (int64_t p = 0; p < kc; ++p) {
        const float* src = s.b + (p0 + p) * s.ldb + j0 + jr;
        if (cols == NR) {
          std::memcpy(d + p * NR, src, NR * sizeof(float));
        } else {
          int j = 0;
          for (; j < cols; ++j) d[p * NR + j] = src[j];
          for (; j < NR; ++j) d[p * NR + j] = 0.f;
        }
      }
    } else {
      // B is n x k: column j of op(B) is a contiguous row of B.
      pack_transposed(s.b + (j0 + jr) * s.ldb + p0, s.ldb, static_cast<int>(cols), NR, kc, d);
    }
  }
}

// C[mr x nr] (+)= Apanel * Bpanel over kc steps.
inline void micro_kernel(int64_t kc, const float* __restrict a, const float* __restrict b,
                         float* c, int64_t ldc, bool accumulate, int mr, int nr) {
  vec acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = vec{};

  for (int64_t p = 0; p < kc; ++p) {
    vec bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = *reinterpret_cast<const vec*>(b + v * VL);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const float ai = a[i];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] += ai * bv[v];
    }
    a += MR;
    b += NR;
  }

  if (mr == MR && nr == NR) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      uvec* row = reinterpret_cast<uvec*>(c + i * ldc);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        if (accumulate)
          row[v] += acc[i][v];
        else
          row[v] = acc[i][v];
      }
    }
    return;
  }
  alignas(64) float tile[MR * NR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) *reinterpret_cast<vec*>(tile + i * NR + v * VL) = acc[i][v];
  for (int i = 0; i < mr; ++i) {
    float* row = c + i * ldc;
    const float* t = tile + i * NR;
    if (accumulate)
      for (int j = 0; j < nr; ++j) row[j] += t[j];
    else
      for (int j = 0; j < nr; ++j) row[j] = t[j];
  }
}

// The micro-tiles of one packed block: C[ic, ic+mc) x [jc, jc+nc) (+)= the A panels (panel ir at
// ap + ir * kc) times the B panels (panel jr at bp + jr * kc).
inline void block_tiles(const Mat& s, int64_t kc, const float* ap, const float* bp, int64_t ic, int64_t mc,
                        int64_t jc, int64_t nc, bool accumulate) {
  for (int64_t jr = 0; jr < nc; jr += NR) {
    const int nr = static_cast<int>(std::min<int64_t>(NR, nc - jr));
    for (int64_t ir = 0; ir < mc; ir += MR) {
      const int mr = static_cast<int>(std::min<int64_t>(MR, mc - ir));
      micro_kernel(kc, ap + ir * kc, bp + jr * kc, s.c + (ic + ir) * s.ldc + jc + jr, s.ldc, accumulate, mr, nr);
    }
  }
}

void gemm_few_rows(const Mat& s);

void gemm_serial(const Mat& s) {
  if (s.m <= 0 || s.n <= 0) return;
  if (s.k <= 0) {
    for (int64_t i = 0; i < s.m; ++i) std::memset(s.c + i * s.ldc, 0, s.n * sizeof(float));
    return;
  }
  if (s.m <= kFewRows) {
    gemm_few_rows(s);
    return;
  }
  const int64_t kc_max = std::min(KC, s.k);
  const int64_t nc_max = std::min(NC, (s.n + NR - 1) / NR * NR);
  const int64_t mc_max = std::min(MC, (s.m + MR - 1) / MR * MR);
  float* bp = pack_b_buffer.ensure(kc_max * nc_max);
  float* ap = pack_a_buffer.ensure(kc_max * mc_max);
  for (int64_t jc = 0; jc < s.n; jc += NC) {
    const int64_t nc = std::min(NC, s.n - jc);
    for (int64_t pc = 0; pc < s.k; pc += KC) {
      const int64_t kc = std::min(KC, s.k - pc);
      pack_b(s, pc, jc, kc, nc, bp);
      for (int64_t ic = 0; ic < s.m; ic += MC) {
        const int64_t mc = std::min(MC, s.m - ic);
        pack_a(s, ic, pc, mc, kc, ap);
        block_tiles(s, kc, ap, bp, ic, mc, jc, nc, pc > 0);
      }
    }
  }
}

// Few rows (decoding one token at a time): packing would copy all of B to use it once, so B is
// streamed in place instead: rows of C accumulate rows of B (B not transposed), or each element
// is a dot product with a contiguous row of B (B transposed).
void gemm_few_rows(const Mat& s) {
  constexpr int kMaxK = 4096;
  alignas(64) float arow[kMaxK];
  for (int64_t i = 0; i < s.m; ++i) std::memset(s.c + i * s.ldc, 0, s.n * sizeof(float));
  if (!s.tb) {
    for (int64_t p = 0; p < s.k; ++p) {
      const float* b = s.b + p * s.ldb;
      for (int64_t i = 0; i < s.m; ++i) {
        const float av = s.ta ? s.a[p * s.lda + i] : s.a[i * s.lda + p];
        float* c = s.c + i * s.ldc;
        for (int64_t j = 0; j < s.n; ++j) c[j] += av * b[j];
      }
    }
    return;
  }
  for (int64_t i = 0; i < s.m; ++i) {
    for (int64_t p0 = 0; p0 < s.k; p0 += kMaxK) {
      const int64_t kc = std::min<int64_t>(kMaxK, s.k - p0);
      for (int64_t p = 0; p < kc; ++p)
        arow[p] = s.ta ? s.a[(p0 + p) * s.lda + i] : s.a[i * s.lda + p0 + p];
      float* c = s.c + i * s.ldc;
      for (int64_t j = 0; j < s.n; ++j) {
        const float* b = s.b + j * s.ldb + p0;
        vec acc[4] = {vec{}, vec{}, vec{}, vec{}};
        int64_t p = 0;
        for (; p + 4 * VL <= kc; p += 4 * VL)
#pragma GCC unroll 4
          for (int u = 0; u < 4; ++u)
            acc[u] += *reinterpret_cast<const vec*>(arow + p + u * VL) *
                      *reinterpret_cast<const uvec*>(b + p + u * VL);
        vec total = (acc[0] + acc[1]) + (acc[2] + acc[3]);
        float sum = 0.f;
        for (int v = 0; v < VL; ++v) sum += total[v];
        for (; p < kc; ++p) sum += arow[p] * b[p];
        c[j] += sum;
      }
    }
  }
}

inline float activate(float x, int activation, float alpha) {
  switch (activation) {
    case kRelu: return x > 0.f ? x : 0.f;
    case kRelu6: return std::min(std::max(x, 0.f), 6.f);
    case kLeakyRelu: return x < 0.f ? alpha * x : x;
    case kSigmoid: return 1.f / (1.f + std::exp(-x));
    case kElu: return x < 0.f ? std::expm1(x) : x;
    default: return x;
  }
}

// Bias and activation over an m x n block of C (columns j0.. of the full row for the bias).
void epilogue(const GemmArgs& g, float* c, int64_t ldc, int64_t m, int64_t n, int64_t j0) {
  if (g.bias == nullptr && g.activation == kLinear) return;
  for (int64_t i = 0; i < m; ++i) {
    float* row = c + i * ldc;
    if (g.bias != nullptr)
      for (int64_t j = 0; j < n; ++j) row[j] += g.bias[j0 + j];
    if (g.activation != kLinear)
      for (int64_t j = 0; j < n; ++j) row[j] = activate(row[j], g.activation, g.alpha);
  }
}

Mat matrix(const GemmArgs& g, int64_t batch) {
  Mat s;
  s.a = g.a + batch * g.stride_a;
  s.b = g.b + batch * g.stride_b;
  s.c = g.c + batch * g.m * g.n;
  s.lda = g.trans_a ? g.m : g.k;
  s.ldb = g.trans_b ? g.k : g.n;
  s.ldc = g.n;
  s.m = g.m;
  s.n = g.n;
  s.k = g.k;
  s.ta = g.trans_a;
  s.tb = g.trans_b;
  return s;
}

// Tasks over whole matrices (kBatch), or over column slices of every matrix of a few rows
// (kFewRowCols: B streamed in place, nothing packed to share).
struct Plan {
  const GemmArgs* g;
  int parts;
  enum { kBatch, kFewRowCols } split;
};

void run_part(void* ctx, int t) {
  const Plan& plan = *static_cast<const Plan*>(ctx);
  const GemmArgs& g = *plan.g;
  if (plan.split == Plan::kBatch) {
    Mat s = matrix(g, t);
    gemm_serial(s);
    epilogue(g, s.c, s.ldc, s.m, s.n, 0);
    return;
  }
  const int64_t units = (g.n + NR - 1) / NR;
  const int64_t lo = std::min(g.n, units * t / plan.parts * NR);
  const int64_t hi = std::min(g.n, units * (t + 1) / plan.parts * NR);
  if (lo >= hi) return;
  for (int64_t b = 0; b < g.batch; ++b) {
    Mat s = matrix(g, b);
    s.b += s.tb ? lo * s.ldb : lo;
    s.c += lo;
    s.n = hi - lo;
    gemm_serial(s);
    epilogue(g, s.c, s.ldc, s.m, s.n, lo);
  }
}

// One matrix split between threads by rows or by columns of C. The operand every
// slice needs whole (B for row slices, A for column slices) is packed once, its panels shared by
// the slices, rather than packed again by each: the slices then pack only their own part of the
// other operand. Two jobs: the shared panels (tasks over depth blocks and panel groups), then
// the slices.
struct Split {
  const GemmArgs* g;
  Mat s;
  bool by_rows;
  int parts;
  float* shared;    // depth block pc at shared + pc * pad; its panel at row or column x at + x * kc
  int64_t pad;      // n (by rows) or m (by columns) rounded up to whole panels
  int64_t groups;   // panel groups per depth block in the packing job
  int64_t group;    // panels per group
};

void pack_shared(void* ctx, int t) {
  const Split& sp = *static_cast<const Split*>(ctx);
  const int64_t pc = t / sp.groups * KC;
  const int64_t kc = std::min(KC, sp.s.k - pc);
  const int64_t unit = sp.by_rows ? NR : MR;
  const int64_t extent = sp.by_rows ? sp.s.n : sp.s.m;
  const int64_t x0 = t % sp.groups * sp.group * unit;
  const int64_t x1 = std::min(extent, x0 + sp.group * unit);
  if (x0 >= x1) return;
  float* dst = sp.shared + pc * sp.pad + x0 * kc;
  if (sp.by_rows)
    pack_b(sp.s, pc, x0, kc, x1 - x0, dst);
  else
    pack_a(sp.s, x0, pc, x1 - x0, kc, dst);
}

void run_slice(void* ctx, int t) {
  const Split& sp = *static_cast<const Split*>(ctx);
  const Mat& s = sp.s;
  const int64_t extent = sp.by_rows ? s.m : s.n;
  const int64_t unit = sp.by_rows ? MR : NR;
  const int64_t units = (extent + unit - 1) / unit;
  const int64_t lo = std::min(extent, units * t / sp.parts * unit);
  const int64_t hi = std::min(extent, units * (t + 1) / sp.parts * unit);
  if (lo >= hi) return;
  const int64_t kc_max = std::min(KC, s.k);
  if (sp.by_rows) {
    float* ap = pack_a_buffer.ensure(kc_max * std::min(MC, (hi - lo + MR - 1) / MR * MR));
    for (int64_t jc = 0; jc < s.n; jc += NC) {
      const int64_t nc = std::min(NC, s.n - jc);
      for (int64_t pc = 0; pc < s.k; pc += KC) {
        const int64_t kc = std::min(KC, s.k - pc);
        const float* bp = sp.shared + pc * sp.pad + jc * kc;
        for (int64_t ic = lo; ic < hi; ic += MC) {
          const int64_t mc = std::min(MC, hi - ic);
          pack_a(s, ic, pc, mc, kc, ap);
          block_tiles(s, kc, ap, bp, ic, mc, jc, nc, pc > 0);
        }
      }
    }
    epilogue(*sp.g, s.c + lo * s.ldc, s.ldc, hi - lo, s.n, 0);
    return;
  }
  float* bp = pack_b_buffer.ensure(kc_max * std::min(NC, (hi - lo + NR - 1) / NR * NR));
  for (int64_t jc = lo; jc < hi; jc += NC) {
    const int64_t nc = std::min(NC, hi - jc);
    for (int64_t pc = 0; pc < s.k; pc += KC) {
      const int64_t kc = std::min(KC, s.k - pc);
      pack_b(s, pc, jc, kc, nc, bp);
      const float* ap = sp.shared + pc * sp.pad;
      for (int64_t ic = 0; ic < s.m; ic += MC) {
        block_tiles(s, kc, ap + ic * kc, bp, ic, std::min(MC, s.m - ic), jc, nc, pc > 0);
      }
    }
  }
  epilogue(*sp.g, s.c + lo, s.ldc, s.m, hi - lo, lo);
}

thread_local Buffer shared_pack_buffer;

void gemm_split(const GemmArgs& g, bool by_rows, int parts, int threads) {
  Split sp{&g, {}, by_rows, parts, nullptr, 0, 1, 1};
  const int64_t unit = by_rows ? NR : MR;
  const int64_t extent = by_rows ? g.n : g.m;
  const int64_t panels = (extent + unit - 1) / unit;
  sp.pad = panels * unit;
  const int64_t blocks = (g.k + KC - 1) / KC;
  // Enough packing tasks for every thread to take a few, at least a panel each.
  const int64_t want = std::max<int64_t>(1, (4 * threads + blocks - 1) / blocks);
  sp.group = std::max<int64_t>(1, (panels + want - 1) / want);
  sp.groups = (panels + sp.group - 1) / sp.group;
  sp.shared = shared_pack_buffer.ensure(g.k * sp.pad);
  // One operand broadcast over the batch (stride 0) is packed once for all of its matrices.
  const bool one_shared = (by_rows ? g.stride_b : g.stride_a) == 0;
  for (int64_t b = 0; b < g.batch; ++b) {
    sp.s = matrix(g, b);
    if (b == 0 || !one_shared) parallel_for(static_cast<int>(blocks * sp.groups), pack_shared, &sp);
    parallel_for(parts, run_slice, &sp);
  }
}

}  // namespace

void sgemm(const GemmArgs& g) {
  if (g.batch <= 0 || g.m <= 0 || g.n <= 0) return;
  const int threads = Pool::instance().size();
  const double flops = 2.0 * g.batch * g.m * g.n * g.k;
  if (threads > 1 && flops >= kParallelFlops && g.k > 0) {
    if (g.batch >= 2 * threads) {
      Plan plan{&g, static_cast<int>(g.batch), Plan::kBatch};
      parallel_for(plan.parts, run_part, &plan);
      return;
    }
    const int64_t col_tiles = (g.n + NR - 1) / NR;
    if (g.m <= kFewRows) {
      const int64_t slices = std::max<int64_t>(1, std::min<int64_t>(col_tiles / 4, kSlicesPerThread * threads) / threads);
      Plan plan{&g, static_cast<int>(slices * threads), Plan::kFewRowCols};
      parallel_for(plan.parts, run_part, &plan);
      return;
    }
    // Split the larger side, counted in micro-tiles, into a few slices per thread: when a
    // thread is descheduled (a busy machine), the others take its remaining slices. The count
    // is a multiple of the threads (3 slices on 2 threads would leave one thread a third idle).
    const int64_t row_tiles = (g.m + MR - 1) / MR;
    const int64_t tiles = std::max(row_tiles, col_tiles);
    const int64_t slices = std::max<int64_t>(1, std::min<int64_t>(tiles / 4, kSlicesPerThread * threads) / threads);
    gemm_split(g, row_tiles >= col_tiles, static_cast<int>(slices * threads), threads);
    return;
  }
  for (int64_t b = 0; b < g.batch; ++b) {
    Mat s = matrix(g, b);
    gemm_serial(s);
    epilogue(g, s.c, s.ldc, s.m, s.n, 0);
  }
}

void sgemm_serial(const float* a, int64_t lda, bool trans_a, const float* b, int64_t ldb,
                  bool trans_b, float* c, int64_t ldc, int64_t m, int64_t n, int64_t k) {
  Mat s;
  s.a = a;
  s.lda = lda;
  s.b = b;
  s.ldb = ldb;
  s.c = c;
  s.ldc = ldc;
  s.m = m;
  s.n = n;
  s.k = k;
  s.ta = trans_a;
  s.tb = trans_b;
  gemm_serial(s);
}

const char* sgemm_kernel_name() { return kKernelName; }

}  // namespace nk
