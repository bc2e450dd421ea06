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

namespace nk {
namespace {

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

void attention_part(void* ctx, int task) {
  const AttentionJob& j = *static_cast<const AttentionJob*>(ctx);
  const int64_t T = j.T, hs = j.hs, C = j.H * hs, b = task / j.H, h = task % j.H;
  const float scale = 1.f / std::sqrt(static_cast<float>(hs));
  const float* q = j.qkv + b * T * 3 * C + h * hs;
  const float* k = q + C;
  const float* v = q + 2 * C;
  float* p = j.prob + (b * j.H + h) * T * T;
  // S = Q K^T, then a causal softmax per row, in place in p.
  sgemm_serial(q, 3 * C, false, k, 3 * C, true, p, T, T, T, hs);
  for (int64_t i = 0; i < T; ++i) {
    float* row = p + i * T;
    float mx = -INFINITY;
    for (int64_t jj = 0; jj <= i; ++jj) {
      row[jj] *= scale;
      mx = std::max(mx, row[jj]);
    }
    for (int64_t jj = 0; jj <= i; ++jj) row[jj] -= mx;
    exp_f32(row, row, i + 1);
    const float inv = 1.f / row_sum(row, i + 1);
    for (int64_t jj = 0; jj <= i; ++jj) row[jj] *= inv;
    std::memset(row + i + 1, 0, (T - i - 1) * sizeof(float));
  }
  // Y = P V into this head's columns of y.
  sgemm_serial(p, T, false, v, 3 * C, false, j.y + b * T * C + h * hs, C, T, hs, T);
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
  std::vector<float>& scratch = attention_scratch;
  if (scratch.size() < static_cast<size_t>(T * T)) scratch.resize(T * T);
  float* ds = scratch.data();
  // dP = dY V^T; dS = P * (dP - rowsum(P * dP)) * scale (zero above the diagonal, where P is).
  sgemm_serial(dy, C, false, v, 3 * C, true, ds, T, T, T, hs);
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
  sgemm_serial(ds, T, false, k, 3 * C, false, dq, 3 * C, T, hs, T);  // dQ = dS K
  sgemm_serial(ds, T, true, q, 3 * C, false, dk, 3 * C, T, hs, T);   // dK = dS^T Q
  sgemm_serial(p, T, true, dy, C, false, dv, 3 * C, T, hs, T);       // dV = P^T dY
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

// ------------------------------------------------------------------ AdamW

struct AdamWJob {
  const AdamWStep* s;
  const float *p, *g, *m, *v;
  int64_t n;
  float *p1, *m1, *v1;
  int parts;
};

void adamw_part(void* ctx, int t) {
  const AdamWJob& j = *static_cast<const AdamWJob*>(ctx);
  const AdamWStep& s = *j.s;
  const int64_t chunk = (j.n / j.parts + VL - 1) / VL * VL;
  const int64_t i0 = std::min(j.n, chunk * t);
  const int64_t i1 = t == j.parts - 1 ? j.n : std::min(j.n, chunk * (t + 1));
  for (int64_t i = i0; i < i1; ++i) {
    const float g = s.grad_scale == 1.f ? j.g[i] : j.g[i] * s.grad_scale;
    const float m = j.m[i] * s.beta1 + g * s.one_minus_beta1;
    const float v = j.v[i] * s.beta2 + g * g * s.one_minus_beta2;
    const float update = (m / s.bc1) / (std::sqrt(v / s.bc2) + s.eps);
    j.p1[i] = j.p[i] * s.decay - update * s.lr;
    j.m1[i] = m;
    j.v1[i] = v;
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

}  // namespace nk
