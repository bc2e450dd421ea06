// Fused training kernels; see train.h. Rows (LayerNorm, embeddings, AdamW chunks) and
// (batch, head) pairs (attention) are tasks for the pool; each task writes its own rows or head
// columns, and per-task partial sums (dg, db) are added at the end, so results do not depend on
// which thread ran which task.
#include "train.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "elementwise.h"
#include "gemm.h"
#include "pool.h"
#include "simd.h"
#include "vmath.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace nk {
namespace {

inline vec vsqrt(vec x) {
#if defined(__AVX512F__)
  return reinterpret_cast<vec>(_mm512_sqrt_ps(reinterpret_cast<__m512>(x)));
#elif defined(__AVX__)
  return reinterpret_cast<vec>(_mm256_sqrt_ps(reinterpret_cast<__m256>(x)));
#elif defined(__SSE__)
  return reinterpret_cast<vec>(_mm_sqrt_ps(reinterpret_cast<__m128>(x)));
#else
  vec r;
  for (int k = 0; k < VL; ++k) r[k] = std::sqrt(x[k]);
  return r;
#endif
}

// Below this many float operations a kernel runs on the calling thread alone.
constexpr double kParallelWork = 1 << 16;

inline float hsum(vec v) {
  float s = 0.f;
  for (int i = 0; i < VL; ++i) s += v[i];
  return s;
}

inline float row_sum(const float* x, int64_t n) {
  vec acc[2] = {vec{}, vec{}};
  int64_t i = 0;
  for (; i + 2 * VL <= n; i += 2 * VL) {
    acc[0] += load(x + i);
    acc[1] += load(x + i + VL);
  }
  for (; i + VL <= n; i += VL) acc[0] += load(x + i);
  float s = hsum(acc[0] + acc[1]);
  for (; i < n; ++i) s += x[i];
  return s;
}

// Sum of (x - mean)^2.
inline float row_centered_squares(const float* x, float mean, int64_t n) {
  vec acc = vec{};
  const vec mv = splat(mean);
  int64_t i = 0;
  for (; i + VL <= n; i += VL) {
    const vec d = load(x + i) - mv;
    acc += d * d;
  }
  float s = hsum(acc);
  for (; i < n; ++i) s += (x[i] - mean) * (x[i] - mean);
  return s;
}

int parts_for(double work, int64_t tasks) {
  const int threads = Pool::instance().size();
  if (work < kParallelWork || threads < 2) return 1;
  return static_cast<int>(std::min<int64_t>(threads, tasks));
}

// ------------------------------------------------------------------ layer norm

struct LayerNormJob {
  const float *x, *g, *b;
  float eps;
  int64_t n, c;
  float *y, *mean, *rstd;
  int parts;
};

void layer_norm_part(void* ctx, int t) {
  const LayerNormJob& j = *static_cast<const LayerNormJob*>(ctx);
  const int64_t r0 = j.n * t / j.parts, r1 = j.n * (t + 1) / j.parts;
  const float inv_c = 1.f / static_cast<float>(j.c);
  for (int64_t r = r0; r < r1; ++r) {
    const float* x = j.x + r * j.c;
    float* y = j.y + r * j.c;
    const float mean = row_sum(x, j.c) * inv_c;
    const float var = row_centered_squares(x, mean, j.c) * inv_c;
    const float rstd = 1.f / std::sqrt(var + j.eps);
    for (int64_t i = 0; i < j.c; ++i) y[i] = (x[i] - mean) * rstd * j.g[i] + j.b[i];
    j.mean[r] = mean;
    j.rstd[r] = rstd;
  }
}

struct LayerNormGradJob {
  const float *dy, *x, *g, *mean, *rstd;
  int64_t n, c;
  float* dx;
  float* partial;  // parts x [dg | db]
  int parts;
};

void layer_norm_grad_part(void* ctx, int t) {
  const LayerNormGradJob& j = *static_cast<const LayerNormGradJob*>(ctx);
  const int64_t r0 = j.n * t / j.parts, r1 = j.n * (t + 1) / j.parts;
  const int64_t c = j.c;
  float* dg = j.partial + 2 * c * t;
  float* db = dg + c;
  std::memset(dg, 0, 2 * c * sizeof(float));
  const float inv_c = 1.f / static_cast<float>(c);
  for (int64_t r = r0; r < r1; ++r) {
    const float* dy = j.dy + r * c;
    const float* x = j.x + r * c;
    float* dx = j.dx + r * c;
    const float mean = j.mean[r], rstd = j.rstd[r];
    // dx uses dxhat = dy * g: mean(dxhat) and mean(dxhat * xhat); dx is scratch for dxhat.
    float s1 = 0.f, s2 = 0.f;
    {
      vec a1 = vec{}, a2 = vec{};
      const vec mv = splat(mean), rv = splat(rstd);
      int64_t i = 0;
      for (; i + VL <= c; i += VL) {
        const vec xhat = (load(x + i) - mv) * rv;
        const vec d = load(dy + i);
        const vec dxhat = d * load(j.g + i);
        a1 += dxhat;
        a2 += dxhat * xhat;
        store(dg + i, load(dg + i) + d * xhat);
        store(db + i, load(db + i) + d);
      }
      s1 = hsum(a1);
      s2 = hsum(a2);
      for (; i < c; ++i) {
        const float xhat = (x[i] - mean) * rstd;
        const float dxhat = dy[i] * j.g[i];
        s1 += dxhat;
        s2 += dxhat * xhat;
        dg[i] += dy[i] * xhat;
        db[i] += dy[i];
      }
    }
    s1 *= inv_c;
    s2 *= inv_c;
    for (int64_t i = 0; i < c; ++i) {
      const float xhat = (x[i] - mean) * rstd;
      dx[i] = rstd * (dy[i] * j.g[i] - s1 - xhat * s2);
    }
  }
}

// ------------------------------------------------------------------ attention

struct AttentionJob {
  const float* qkv;
  const float* dy;   // backward only
  const float* att;  // backward only
  int64_t B, T, H, hs;
  float* y;     // forward: y; backward: dqkv
  float* prob;  // forward: att
};

thread_local std::vector<float> attention_scratch;

// row[0, n) = softmax(row[0, n) * scale), row[n, T) = 0: three vector passes (scale and max,
// exp and sum, normalise).
inline void softmax_row(float* row, int64_t n, int64_t T, float scale) {
  vec mv = splat(-INFINITY);
  int64_t j = 0;
  for (; j + VL <= n; j += VL) {
    const vec u = load(row + j) * scale;
    store(row + j, u);
    mv = u > mv ? u : mv;
  }
  float mx = -INFINITY;
  for (int l = 0; l < VL; ++l) mx = std::max(mx, mv[l]);
  for (; j < n; ++j) {
    row[j] *= scale;
    mx = std::max(mx, row[j]);
  }
  // Padding the tail with -inf (exp gives 0) keeps the whole row in vectors; the caller's row
  // has room for it (n < T) or the tail is handled through a small buffer.
  const vec mxv = splat(mx);
  vec acc = vec{};
  for (j = 0; j + VL <= n; j += VL) {
    const vec e = exp_vec(load(row + j) - mxv);
    store(row + j, e);
    acc += e;
  }
  if (j < n) {
    alignas(64) float tail[VL];
    for (int l = 0; l < VL; ++l) tail[l] = j + l < n ? row[j + l] - mx : -INFINITY;
    const vec e = exp_vec(load(tail));
    acc += e;
    std::memcpy(row + j, &e, (n - j) * sizeof(float));
  }
  const vec inv = splat(1.f / hsum(acc));
  for (j = 0; j + VL <= n; j += VL) store(row + j, load(row + j) * inv);
  for (; j < n; ++j) row[j] *= inv[0];
  std::memset(row + n, 0, (T - n) * sizeof(float));
}

// Rows of a causal block: row block [i0, i0 + kCausalBlock) only sees keys [0, i0 + kCausalBlock),
// so the matrix products skip (most of) the masked upper triangle.
constexpr int64_t kCausalBlock = 64;

// Head sizes that are whole vectors (NV of them, 1 to 8) take the fused kernels below, which
// work on groups of kRows query rows at once, without packing and with the exact causal
// triangle: scores S = Q Kᵀ with the keys transposed into scratch (16 keys per vector), a
// causal softmax per row, and Y = P V with each value row loaded once for the group. The
// backward pass reuses that shape: dP = dY Vᵀ, dS = P (dP - rowsum(P dP)) scale, dQ = dS K, and
// dK, dV accumulated per key in scratch as dK[j] += dS[i][j] Q[i], dV[j] += P[i][j] dY[i].
constexpr int kRows = 8;

struct HeadScratch {
  std::vector<float> kt;     // hs x Tp: a head's keys (or values), transposed, zero-padded
  std::vector<float> s;      // kRows x Tp: the group's scores / probabilities / dS
  std::vector<float> dp;     // kRows x Tp: the group's dP (backward)
  std::vector<float> dk, dv;  // T x hs accumulators (backward)
};
thread_local HeadScratch head_scratch;

// dst[d * Tp + j] = src[j * stride + d] for j < T, 0 for T <= j < Tp.
inline void transpose_head(const float* src, int64_t stride, int64_t T, int64_t hs, int64_t Tp, float* dst) {
  for (int64_t d = 0; d < hs; ++d) {
    float* row = dst + d * Tp;
    for (int64_t j = 0; j < T; ++j) row[j] = src[j * stride + d];
    for (int64_t j = T; j < Tp; ++j) row[j] = 0.f;
  }
}

// out[r][j] = a[r] · keys[j] for the group's rows r < rows and keys j < n (whole vectors of
// keys, from the transposed keys kt with row stride Tp); a[r] is a row of hs values at a + r * lda.
template <int NV>
inline void group_scores(const float* a, int64_t lda, int rows, const float* kt, int64_t Tp, int64_t n, float* out) {
  constexpr int hs = NV * VL;
  for (int64_t j = 0; j < n; j += VL) {
    vec acc[kRows] = {};
    for (int d = 0; d < hs; ++d) {
      const vec k = load(kt + d * Tp + j);
      for (int r = 0; r < kRows; ++r)
        if (r < rows) acc[r] += splat(a[r * lda + d]) * k;
    }
    for (int r = 0; r < rows; ++r) store(out + r * Tp + j, acc[r]);
  }
}

// y[r] = Σ_{j < n} w[r][j] · rows[j] for the group's rows r < rows; rows[j] at m + j * ldm (hs
// values), w with row stride Tp, y[r] at y + r * ldy. With `accumulate`, added to y.
template <int NV>
inline void group_weighted_rows(const float* w, int64_t Tp, int rows, const float* m, int64_t ldm, int64_t n, float* y, int64_t ldy) {
  vec acc[kRows][NV] = {};
  for (int64_t j = 0; j < n; ++j) {
    vec x[NV];
    for (int v = 0; v < NV; ++v) x[v] = load(m + j * ldm + v * VL);
    for (int r = 0; r < kRows; ++r) {
      if (r >= rows) break;
      const vec wr = splat(w[r * Tp + j]);
      for (int v = 0; v < NV; ++v) acc[r][v] += wr * x[v];
    }
  }
  for (int r = 0; r < rows; ++r)
    for (int v = 0; v < NV; ++v) store(y + r * ldy + v * VL, acc[r][v]);
}

// acc[j] += Σ_r w[r][j] · x[r] for keys j < n: x[r] at x + r * ldx (hs values), acc rows of hs.
template <int NV>
inline void group_scatter(const float* w, int64_t Tp, int rows, const float* x, int64_t ldx, int64_t n, float* acc) {
  constexpr int hs = NV * VL;
  vec xr[kRows][NV];
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < NV; ++v) xr[r][v] = r < rows ? load(x + r * ldx + v * VL) : vec{};
  for (int64_t j = 0; j < n; ++j) {
    vec sum[NV];
    for (int v = 0; v < NV; ++v) sum[v] = load(acc + j * hs + v * VL);
    for (int r = 0; r < kRows; ++r) {
      if (r >= rows) break;
      const vec wr = splat(w[r * Tp + j]);
      for (int v = 0; v < NV; ++v) sum[v] += wr * xr[r][v];
    }
    for (int v = 0; v < NV; ++v) store(acc + j * hs + v * VL, sum[v]);
  }
}

template <int NV>
void attention_head(const float* q, const float* k, const float* v, int64_t T, int64_t C, float scale, float* p, float* y) {
  constexpr int hs = NV * VL;
  const int64_t Tp = (T + VL - 1) / VL * VL;
  HeadScratch& sc = head_scratch;
  if (sc.kt.size() < static_cast<size_t>(hs * Tp)) sc.kt.resize(hs * Tp);
  if (sc.s.size() < static_cast<size_t>(kRows * Tp)) sc.s.resize(kRows * Tp);
  float* kt = sc.kt.data();
  float* s = sc.s.data();
  transpose_head(k, 3 * C, T, hs, Tp, kt);
  for (int64_t i0 = 0; i0 < T; i0 += kRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kRows, T - i0));
    const int64_t n = i0 + rows;  // keys the group's last row sees
    group_scores<NV>(q + i0 * 3 * C, 3 * C, rows, kt, Tp, n, s);
    for (int r = 0; r < rows; ++r) {
      softmax_row(s + r * Tp, i0 + r + 1, n, scale);
      std::memcpy(p + (i0 + r) * T, s + r * Tp, n * sizeof(float));
      std::memset(p + (i0 + r) * T + n, 0, (T - n) * sizeof(float));
    }
    group_weighted_rows<NV>(s, Tp, rows, v, 3 * C, n, y + i0 * C, C);
  }
}

template <int NV>
void attention_grad_head(const float* q, const float* k, const float* v, const float* p, const float* dy, int64_t T, int64_t C, float scale,
                         float* dq, float* dk, float* dv) {
  constexpr int hs = NV * VL;
  const int64_t Tp = (T + VL - 1) / VL * VL;
  HeadScratch& sc = head_scratch;
  if (sc.kt.size() < static_cast<size_t>(hs * Tp)) sc.kt.resize(hs * Tp);
  if (sc.s.size() < static_cast<size_t>(kRows * Tp)) sc.s.resize(kRows * Tp);
  if (sc.dp.size() < static_cast<size_t>(kRows * Tp)) sc.dp.resize(kRows * Tp);
  if (sc.dk.size() < static_cast<size_t>(T * hs)) sc.dk.resize(T * hs);
  if (sc.dv.size() < static_cast<size_t>(T * hs)) sc.dv.resize(T * hs);
  float* vt = sc.kt.data();
  float* ds = sc.s.data();
  float* dpb = sc.dp.data();
  float* dka = sc.dk.data();
  float* dva = sc.dv.data();
  std::memset(dka, 0, T * hs * sizeof(float));
  std::memset(dva, 0, T * hs * sizeof(float));
  transpose_head(v, 3 * C, T, hs, Tp, vt);
  for (int64_t i0 = 0; i0 < T; i0 += kRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kRows, T - i0));
    const int64_t n = i0 + rows;
    group_scores<NV>(dy + i0 * C, C, rows, vt, Tp, n, dpb);  // dP
    for (int r = 0; r < rows; ++r) {
      const int64_t i = i0 + r, m = i + 1;
      const float* pr = p + i * T;
      float* dr = dpb + r * Tp;
      float* sr = ds + r * Tp;
      vec acc = vec{};
      int64_t j = 0;
      for (; j + VL <= m; j += VL) acc += load(pr + j) * load(dr + j);
      float dot = hsum(acc);
      for (; j < m; ++j) dot += pr[j] * dr[j];
      for (j = 0; j < m; ++j) sr[j] = pr[j] * (dr[j] - dot) * scale;
      for (; j < n; ++j) sr[j] = 0.f;
      // P's row, zero past the diagonal, for dV (the dP buffer is free again).
      std::memcpy(dr, pr, n * sizeof(float));
    }
    group_weighted_rows<NV>(ds, Tp, rows, k, 3 * C, n, dq + i0 * 3 * C, 3 * C);  // dQ = dS K
    group_scatter<NV>(ds, Tp, rows, q + i0 * 3 * C, 3 * C, n, dka);            // dK += dSᵀ Q
    group_scatter<NV>(dpb, Tp, rows, dy + i0 * C, C, n, dva);                 // dV += Pᵀ dY
  }
  for (int64_t j = 0; j < T; ++j) {
    std::memcpy(dk + j * 3 * C, dka + j * hs, hs * sizeof(float));
    std::memcpy(dv + j * 3 * C, dva + j * hs, hs * sizeof(float));
  }
}

// The fused kernels for heads of 1, 2, 4 and 8 whole vectors, and which of them takes a head of
// hs values (-1: none; such heads take the packed products below).
using HeadFn = void (*)(const float*, const float*, const float*, int64_t, int64_t, float, float*, float*);
using HeadGradFn = void (*)(const float*, const float*, const float*, const float*, const float*, int64_t, int64_t, float, float*, float*, float*);
constexpr HeadFn kHeadKernels[] = {attention_head<1>, attention_head<2>, attention_head<4>, attention_head<8>};
constexpr HeadGradFn kHeadGradKernels[] = {attention_grad_head<1>, attention_grad_head<2>, attention_grad_head<4>, attention_grad_head<8>};

int head_kernel(int64_t hs) {
  for (int i = 0; i < 4; ++i)
    if (hs == (int64_t{1} << i) * VL) return i;
  return -1;
}

void attention_part(void* ctx, int task) {
  const AttentionJob& j = *static_cast<const AttentionJob*>(ctx);
  const int64_t T = j.T, hs = j.hs, C = j.H * hs, b = task / j.H, h = task % j.H;
  const float scale = 1.f / std::sqrt(static_cast<float>(hs));
  const float* q = j.qkv + b * T * 3 * C + h * hs;
  const float* k = q + C;
  const float* v = q + 2 * C;
  float* p = j.prob + (b * j.H + h) * T * T;
  float* y = j.y + b * T * C + h * hs;
  if (const int fused = head_kernel(hs); fused >= 0) return kHeadKernels[fused](q, k, v, T, C, scale, p, y);
  // S = Q K^T (lower block triangle), then a causal softmax per row, in place in p.
  for (int64_t i0 = 0; i0 < T; i0 += kCausalBlock) {
    const int64_t i1 = std::min(T, i0 + kCausalBlock);
    sgemm_serial(q + i0 * 3 * C, 3 * C, false, k, 3 * C, true, p + i0 * T, T, i1 - i0, i1, hs);
  }
  for (int64_t i = 0; i < T; ++i) softmax_row(p + i * T, i + 1, T, scale);
  // Y = P V into this head's columns of y.
  for (int64_t i0 = 0; i0 < T; i0 += kCausalBlock) {
    const int64_t i1 = std::min(T, i0 + kCausalBlock);
    sgemm_serial(p + i0 * T, T, false, v, 3 * C, false, y + i0 * C, C, i1 - i0, hs, i1);
  }
}

void attention_grad_part(void* ctx, int task) {
  const AttentionJob& j = *static_cast<const AttentionJob*>(ctx);
  const int64_t T = j.T, hs = j.hs, C = j.H * hs, b = task / j.H, h = task % j.H;
  const float scale = 1.f / std::sqrt(static_cast<float>(hs));
  const float* q = j.qkv + b * T * 3 * C + h * hs;
  const float* k = q + C;
  const float* v = q + 2 * C;
  const float* p = j.att + (b * j.H + h) * T * T;
  const float* dy = j.dy + b * T * C + h * hs;
  float* dq = j.y + b * T * 3 * C + h * hs;
  float* dk = dq + C;
  float* dv = dq + 2 * C;
  if (const int fused = head_kernel(hs); fused >= 0) return kHeadGradKernels[fused](q, k, v, p, dy, T, C, scale, dq, dk, dv);
  std::vector<float>& scratch = attention_scratch;
  if (scratch.size() < static_cast<size_t>(T * T)) scratch.resize(T * T);
  float* ds = scratch.data();
  // dP = dY V^T; dS = P * (dP - rowsum(P * dP)) * scale (zero above the diagonal, where P is).
  for (int64_t i0 = 0; i0 < T; i0 += kCausalBlock) {
    const int64_t i1 = std::min(T, i0 + kCausalBlock);
    sgemm_serial(dy + i0 * C, C, false, v, 3 * C, true, ds + i0 * T, T, i1 - i0, i1, hs);
  }
  for (int64_t i = 0; i < T; ++i) {
    const float* pr = p + i * T;
    float* dr = ds + i * T;
    float dot = 0.f;
    {
      vec acc = vec{};
      int64_t jj = 0;
      for (; jj + VL <= i + 1; jj += VL) acc += load(pr + jj) * load(dr + jj);
      dot = hsum(acc);
      for (; jj <= i; ++jj) dot += pr[jj] * dr[jj];
    }
    for (int64_t jj = 0; jj <= i; ++jj) dr[jj] = pr[jj] * (dr[jj] - dot) * scale;
    std::memset(dr + i + 1, 0, (T - i - 1) * sizeof(float));
  }
  for (int64_t i0 = 0; i0 < T; i0 += kCausalBlock) {
    const int64_t i1 = std::min(T, i0 + kCausalBlock);
    // dQ[i0:i1] = dS[i0:i1, :i1] K[:i1]
    sgemm_serial(ds + i0 * T, T, false, k, 3 * C, false, dq + i0 * 3 * C, 3 * C, i1 - i0, hs, i1);
    // dK[i0:i1] = dS[i0:, i0:i1]^T Q[i0:];  dV[i0:i1] = P[i0:, i0:i1]^T dY[i0:]
    sgemm_serial(ds + i0 * T + i0, T, true, q + i0 * 3 * C, 3 * C, false, dk + i0 * 3 * C, 3 * C, i1 - i0, hs, T - i0);
    sgemm_serial(p + i0 * T + i0, T, true, dy + i0 * C, C, false, dv + i0 * 3 * C, 3 * C, i1 - i0, hs, T - i0);
  }
}

// ------------------------------------------------------------------ embeddings

struct EmbedJob {
  const float *wte, *wpe;
  const int32_t* ids;
  int64_t B, T, C;
  float* x;
  int parts;
};

void embed_part(void* ctx, int t) {
  const EmbedJob& j = *static_cast<const EmbedJob*>(ctx);
  const int64_t n = j.B * j.T, r0 = n * t / j.parts, r1 = n * (t + 1) / j.parts;
  for (int64_t r = r0; r < r1; ++r) {
    const float* a = j.wte + static_cast<int64_t>(j.ids[r]) * j.C;
    const float* p = j.wpe + (r % j.T) * j.C;
    float* x = j.x + r * j.C;
    for (int64_t i = 0; i < j.C; ++i) x[i] = a[i] + p[i];
  }
}

// ------------------------------------------------------------------ log-probabilities

struct LogProbJob {
  const float *dy, *logits;
  const int32_t* targets;
  float *lse, *logp, *dlogits;
  int64_t n, v;
  int parts;
};

thread_local std::vector<float> row_scratch;

void log_prob_part(void* ctx, int t) {
  const LogProbJob& j = *static_cast<const LogProbJob*>(ctx);
  const int64_t r0 = j.n * t / j.parts, r1 = j.n * (t + 1) / j.parts, v = j.v;
  if (row_scratch.size() < static_cast<size_t>(v)) row_scratch.resize(v);
  float* e = row_scratch.data();
  for (int64_t r = r0; r < r1; ++r) {
    const float* x = j.logits + r * v;
    vec mv = splat(-INFINITY);
    int64_t i = 0;
    for (; i + VL <= v; i += VL) {
      const vec u = load(x + i);
      mv = u > mv ? u : mv;
    }
    float mx = -INFINITY;
    for (int k = 0; k < VL; ++k) mx = std::max(mx, mv[k]);
    for (; i < v; ++i) mx = std::max(mx, x[i]);
    const vec mvv = splat(mx);
    for (i = 0; i + VL <= v; i += VL) store(e + i, load(x + i) - mvv);
    for (; i < v; ++i) e[i] = x[i] - mx;
    exp_f32(e, e, v);
    const float lse = mx + std::log(row_sum(e, v));
    j.lse[r] = lse;
    j.logp[r] = x[j.targets[r]] - lse;
  }
}

void log_prob_grad_part(void* ctx, int t) {
  const LogProbJob& j = *static_cast<const LogProbJob*>(ctx);
  const int64_t r0 = j.n * t / j.parts, r1 = j.n * (t + 1) / j.parts, v = j.v;
  for (int64_t r = r0; r < r1; ++r) {
    const float* x = j.logits + r * v;
    float* d = j.dlogits + r * v;
    const vec lse = splat(j.lse[r]);
    int64_t i = 0;
    for (; i + VL <= v; i += VL) store(d + i, load(x + i) - lse);
    for (; i < v; ++i) d[i] = x[i] - j.lse[r];
    exp_f32(d, d, v);
    const vec ndy = splat(-j.dy[r]);
    for (i = 0; i + VL <= v; i += VL) store(d + i, load(d + i) * ndy);
    for (; i < v; ++i) d[i] *= -j.dy[r];
    d[j.targets[r]] += j.dy[r];
  }
}

// ------------------------------------------------------------------ AdamW

struct AdamWJob {
  const AdamWStep* s;
  const float *p, *g, *m, *v;
  int64_t n;
  float *p1, *m1, *v1;
  int parts;
};

// The AdamW update of p[i0, i1) (decay: the factor p is multiplied by), into p1, m1, v1, which
// may be p, m, v themselves (each value is read before its result is written). i0 is a multiple
// of VL from the array's start; a partial vector at the array's end runs the scalar loop.
void adamw_range(const AdamWStep& s, float decay_value, const float* p, const float* g, const float* m_in,
                 const float* v_in, float* p1, float* m1, float* v1, int64_t i0, int64_t i1) {
  const vec scale = splat(s.grad_scale), b1 = splat(s.beta1), b2 = splat(s.beta2);
  const vec c1 = splat(s.one_minus_beta1), c2 = splat(s.one_minus_beta2);
  const vec bc1 = splat(s.bc1), bc2 = splat(s.bc2), eps = splat(s.eps), decay = splat(decay_value);
  const vec lr = splat(s.lr);
  int64_t i = i0;
  for (; i + VL <= i1; i += VL) {
    const vec gi = s.grad_scale == 1.f ? load(g + i) : load(g + i) * scale;
    const vec m = load(m_in + i) * b1 + gi * c1;
    const vec v = load(v_in + i) * b2 + gi * gi * c2;
    const vec update = (m / bc1) / (vsqrt(v / bc2) + eps);
    store(p1 + i, load(p + i) * decay - update * lr);
    store(m1 + i, m);
    store(v1 + i, v);
  }
  for (; i < i1; ++i) {
    const float gi = s.grad_scale == 1.f ? g[i] : g[i] * s.grad_scale;
    const float m = m_in[i] * s.beta1 + gi * s.one_minus_beta1;
    const float v = v_in[i] * s.beta2 + gi * gi * s.one_minus_beta2;
    const float update = (m / s.bc1) / (std::sqrt(v / s.bc2) + s.eps);
    p1[i] = p[i] * decay_value - update * s.lr;
    m1[i] = m;
    v1[i] = v;
  }
}

void adamw_part(void* ctx, int t) {
  const AdamWJob& j = *static_cast<const AdamWJob*>(ctx);
  const auto [i0, i1] = vector_part(j.n, j.parts, t);
  adamw_range(*j.s, j.s->decay, j.p, j.g, j.m, j.v, j.p1, j.m1, j.v1, i0, i1);
}

struct AdamWAllJob {
  const AdamWStep* s;
  const AdamWTensor* tensors;
  const int64_t* first_block;  // count + 1: each tensor's first vector block in the whole
  int count;
  int parts;
};

// Part t updates the vector blocks [total * t / parts, total * (t + 1) / parts) of all the
// tensors laid end to end, each tensor's share from a block boundary of its own.
void adamw_all_part(void* ctx, int t) {
  const AdamWAllJob& j = *static_cast<const AdamWAllJob*>(ctx);
  const int64_t total = j.first_block[j.count];
  const int64_t b0 = total * t / j.parts, b1 = total * (t + 1) / j.parts;
  for (int a = 0; a < j.count; ++a) {
    const int64_t lo = std::max(b0, j.first_block[a]), hi = std::min(b1, j.first_block[a + 1]);
    if (lo >= hi) continue;
    const AdamWTensor& x = j.tensors[a];
    const int64_t i0 = (lo - j.first_block[a]) * VL, i1 = std::min(x.n, (hi - j.first_block[a]) * VL);
    adamw_range(*j.s, x.decay, x.p, x.g, x.m, x.v, x.p, x.m, x.v, i0, i1);
  }
}

}  // namespace

void layer_norm(const float* x, const float* g, const float* b, float eps, int64_t n, int64_t c,
                float* y, float* mean, float* rstd) {
  LayerNormJob job{x, g, b, eps, n, c, y, mean, rstd, parts_for(8.0 * n * c, n)};
  parallel_for(job.parts, layer_norm_part, &job);
}

void layer_norm_grad(const float* dy, const float* x, const float* g, const float* mean,
                     const float* rstd, int64_t n, int64_t c, float* dx, float* dg, float* db) {
  const int parts = parts_for(12.0 * n * c, n);
  std::vector<float> partial(2 * c * parts);
  LayerNormGradJob job{dy, x, g, mean, rstd, n, c, dx, partial.data(), parts};
  parallel_for(parts, layer_norm_grad_part, &job);
  for (int64_t i = 0; i < c; ++i) {
    float sg = 0.f, sb = 0.f;
    for (int t = 0; t < parts; ++t) {
      sg += partial[2 * c * t + i];
      sb += partial[2 * c * t + c + i];
    }
    dg[i] = sg;
    db[i] = sb;
  }
}

void attention(const float* qkv, int64_t B, int64_t T, int64_t H, int64_t hs, float* y, float* att) {
  AttentionJob job{qkv, nullptr, nullptr, B, T, H, hs, y, att};
  const int tasks = static_cast<int>(B * H);
  if (4.0 * B * H * T * T * hs < kParallelWork) {
    for (int t = 0; t < tasks; ++t) attention_part(&job, t);
  } else {
    parallel_for(tasks, attention_part, &job);
  }
}

void attention_grad(const float* dy, const float* qkv, const float* att, int64_t B, int64_t T,
                    int64_t H, int64_t hs, float* dqkv) {
  AttentionJob job{qkv, dy, att, B, T, H, hs, dqkv, nullptr};
  const int tasks = static_cast<int>(B * H);
  if (8.0 * B * H * T * T * hs < kParallelWork) {
    for (int t = 0; t < tasks; ++t) attention_grad_part(&job, t);
  } else {
    parallel_for(tasks, attention_grad_part, &job);
  }
}

void embed(const float* wte, const float* wpe, const int32_t* ids, int64_t B, int64_t T, int64_t C,
           float* x) {
  EmbedJob job{wte, wpe, ids, B, T, C, x, parts_for(2.0 * B * T * C, B * T)};
  parallel_for(job.parts, embed_part, &job);
}

void embed_grad(const float* dx, const int32_t* ids, int64_t B, int64_t T, int64_t C, int64_t V,
                int64_t P, float* dwte, float* dwpe) {
  // Scatter-adds in row order on one thread, so rows sharing a token add in a fixed order.
  std::memset(dwte, 0, V * C * sizeof(float));
  std::memset(dwpe, 0, P * C * sizeof(float));
  for (int64_t r = 0; r < B * T; ++r) {
    const float* src = dx + r * C;
    float* a = dwte + static_cast<int64_t>(ids[r]) * C;
    float* p = dwpe + (r % T) * C;
    for (int64_t i = 0; i < C; ++i) {
      a[i] += src[i];
      p[i] += src[i];
    }
  }
}

void token_log_probs(const float* logits, const int32_t* targets, int64_t n, int64_t v, float* logp,
                     float* lse) {
  LogProbJob job{nullptr, logits, targets, lse, logp, nullptr, n, v, parts_for(6.0 * n * v, n)};
  parallel_for(job.parts, log_prob_part, &job);
}

void token_log_probs_grad(const float* dy, const float* logits, const int32_t* targets,
                          const float* lse, int64_t n, int64_t v, float* dlogits) {
  LogProbJob job{dy, logits, targets, const_cast<float*>(lse), nullptr, dlogits, n, v,
                 parts_for(6.0 * n * v, n)};
  parallel_for(job.parts, log_prob_grad_part, &job);
}

double sum_squares(const float* const* data, const int64_t* sizes, int count) {
  double total = 0.0;
  for (int a = 0; a < count; ++a) {
    const float* x = data[a];
    const int64_t n = sizes[a];
    vec acc[2] = {vec{}, vec{}};
    int64_t i = 0;
    for (; i + 2 * VL <= n; i += 2 * VL) {
      const vec u = load(x + i), w = load(x + i + VL);
      acc[0] += u * u;
      acc[1] += w * w;
    }
    for (; i + VL <= n; i += VL) acc[0] += load(x + i) * load(x + i);
    double s = hsum(acc[0] + acc[1]);
    for (; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
    total += s;
  }
  return total;
}

void adamw(const AdamWStep& s, const float* p, const float* g, const float* m, const float* v,
           int64_t n, float* p1, float* m1, float* v1) {
  AdamWJob job{&s, p, g, m, v, n, p1, m1, v1, parts_for(12.0 * n, n / VL + 1)};
  parallel_for(job.parts, adamw_part, &job);
}

void adamw_all(const AdamWStep& s, const AdamWTensor* tensors, int count) {
  std::vector<int64_t> first_block(static_cast<size_t>(count) + 1, 0);
  double values = 0;
  for (int a = 0; a < count; ++a) {
    first_block[a + 1] = first_block[a] + (tensors[a].n + VL - 1) / VL;
    values += static_cast<double>(tensors[a].n);
  }
  AdamWAllJob job{&s, tensors, first_block.data(), count, parts_for(12.0 * values, first_block[count])};
  parallel_for(job.parts, adamw_all_part, &job);
}

}  // namespace nk
