// Fused GPT decoding (see decoder.h). Rows are the tokens fed this call, sequence by sequence;
// all linear layers of a block run as one GEMM over every row of every sequence, attention runs
// per row and head over that row's own cache (keys 0..position, so no padding and a prompt is
// causal by construction). Logits are computed for each sequence's last row only.
#include "decoder.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "elementwise.h"
#include "gemm.h"
#include "pool.h"
#include "simd.h"

namespace nk {

size_t KVCache::bytes() const {
  return static_cast<size_t>(n_layer_) * 2 * n_head_ * capacity_ * head_size_ * sizeof(float);
}

bool KVCache::reserve(int tokens) {
  if (tokens <= capacity_) return true;
  int capacity = std::max(capacity_ * 2, 16);
  capacity = std::min(std::max(capacity, tokens), block_size_);
  // Whole vectors, so that attention reads a row's keys a vector at a time up to its last key
  // (the lanes past it are ignored; zeroed here, they are never a NaN or a denormal).
  capacity = whole_vectors(capacity);
  const size_t floats = static_cast<size_t>(n_layer_) * 2 * n_head_ * capacity * head_size_;
  const size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
  float* data = static_cast<float*>(std::aligned_alloc(64, bytes));
  if (data == nullptr) return false;
  std::memset(data, 0, bytes);
  const size_t plane_new = static_cast<size_t>(capacity) * head_size_;
  const size_t plane_old = static_cast<size_t>(capacity_) * head_size_;
  for (int plane = 0; length_ > 0 && plane < n_layer_ * 2 * n_head_; ++plane) {
    float* dst = data + plane * plane_new;
    const float* src = data_ + plane * plane_old;
    if ((plane / n_head_) % 2 == 0) {  // keys: hs rows of `length_` positions
      for (int d = 0; d < head_size_; ++d)
        std::memcpy(dst + static_cast<size_t>(d) * capacity, src + static_cast<size_t>(d) * capacity_,
                    length_ * sizeof(float));
    } else {
      std::memcpy(dst, src, static_cast<size_t>(length_) * head_size_ * sizeof(float));
    }
  }
  std::free(data_);
  data_ = data;
  capacity_ = capacity;
  released_ = false;
  return true;
}

void KVCache::release() {
  std::free(data_);
  data_ = nullptr;
  capacity_ = 0;
  length_ = 0;
  released_ = true;
  release_pending_ = false;
}

namespace {

constexpr float kLnEps = 1e-5f;
// Multiply-adds of attention in one layer above which heads are split over the pool.
constexpr double kParallelAttention = 3.0e4;

struct Scratch {
  std::vector<float> x, a, qkv, y, tmp, fc, last;
  std::vector<int> row_seq, row_pos;
};

float* sized(std::vector<float>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

void layer_norm(const float* x, const float* g, const float* b, float* out, int rows, int C) {
  for (int r = 0; r < rows; ++r) {
    const float* xr = x + static_cast<size_t>(r) * C;
    float* o = out + static_cast<size_t>(r) * C;
    float mean = 0.f;
    for (int c = 0; c < C; ++c) mean += xr[c];
    mean /= static_cast<float>(C);
    float var = 0.f;
    for (int c = 0; c < C; ++c) var += (xr[c] - mean) * (xr[c] - mean);
    var /= static_cast<float>(C);
    const float inv = 1.f / std::sqrt(var + kLnEps);
    for (int c = 0; c < C; ++c) o[c] = (xr[c] - mean) * inv * g[c] + b[c];
  }
}

// Rows up to this many use the unpacked kernel below; more go to sgemm (prefill).
constexpr int kFewRows = 32;
// A tile's accumulators, its weight vectors and one broadcast must fit in the vector registers
// (32 with AVX-512, 16 with AVX/AVX2 and SSE), or the compiler spills them to the stack inside
// the innermost loop: 6 rows x 4 vectors with AVX-512, 6 x 2 otherwise. The LM head's tiles are
// 8 vocabulary rows x up to 2 vectors with AVX-512, 6 x 2 (or 8 x 1) otherwise.
constexpr int kVectorRegisters = VL == 16 ? 32 : 16;
constexpr int kTileVecs = kVectorRegisters == 32 ? 4 : 2;
// The kernel below walks a strip of w down its rows, one row of n floats apart: with AVX2's
// narrow strips and a small L2 the hardware prefetcher misses that stride, and the loads stall.
// It asks for the strip this many rows ahead (one prefetch per cache line; past the end of w a
// prefetch is a no-op), which took the batch-16 step from 3.8 to 2.8 ms on a 2-core AMD EPYC.
constexpr int kPrefetchRows = 8;
constexpr int kVecsPerLine = VL * 4 >= 64 ? 1 : 64 / (VL * 4);
template <int MV>
constexpr int kLmRows = kVectorRegisters == 32 || MV == 1 ? 8 : 6;
// Multiply-adds above which the unpacked kernel splits its columns over the pool: every linear
// layer of a batch of 16 small-shape rows (and most of one row's), each half then streaming half
// the weights. On the 2-core AMD EPYC this took the batch-16 step from 3.0-3.5 ms (1.5e6, only
// the LM head split) to 1.2-2.2 ms, and one row's from 0.25 to 0.21 ms.
constexpr double kParallelMacs = 6.0e4;

// c[MR, NV*VL] = a[MR, k] · w[k, NV*VL] + bias, w read in place (each weight is used once per
// call when decoding, so packing it would cost more than it saves).
template <int MR, int NV>
inline void tile_nn(const float* a, int lda, const float* w, int ldw, int k, const float* bias, float* c, int ldc) {
  vec acc[MR][NV];
  for (int v = 0; v < NV; ++v) {
    const vec b0 = bias ? load(bias + v * VL) : vec{};
    for (int i = 0; i < MR; ++i) acc[i][v] = b0;
  }
  for (int p = 0; p < k; ++p) {
    vec b[NV];
    for (int v = 0; v < NV; v += kVecsPerLine) __builtin_prefetch(w + static_cast<size_t>(p + kPrefetchRows) * ldw + v * VL);
    for (int v = 0; v < NV; ++v) b[v] = load(w + static_cast<size_t>(p) * ldw + v * VL);
    for (int i = 0; i < MR; ++i) {
      const vec av = splat(a[static_cast<size_t>(i) * lda + p]);
      for (int v = 0; v < NV; ++v) acc[i][v] += av * b[v];
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) store(c + static_cast<size_t>(i) * ldc + v * VL, acc[i][v]);
}

template <int NV>
void rows_nn(const float* a, int m, int k, const float* w, int n, const float* bias, float* c, int j) {
  const float* bj = bias ? bias + j : nullptr;
  int i = 0;
  for (; i + 6 <= m; i += 6) tile_nn<6, NV>(a + static_cast<size_t>(i) * k, k, w + j, n, k, bj, c + static_cast<size_t>(i) * n + j, n);
  const float* ai = a + static_cast<size_t>(i) * k;
  float* ci = c + static_cast<size_t>(i) * n + j;
  switch (m - i) {
    case 5: tile_nn<5, NV>(ai, k, w + j, n, k, bj, ci, n); break;
    case 4: tile_nn<4, NV>(ai, k, w + j, n, k, bj, ci, n); break;
    case 3: tile_nn<3, NV>(ai, k, w + j, n, k, bj, ci, n); break;
    case 2: tile_nn<2, NV>(ai, k, w + j, n, k, bj, ci, n); break;
    case 1: tile_nn<1, NV>(ai, k, w + j, n, k, bj, ci, n); break;
    default: break;
  }
}

struct FewRows {
  const float *a, *w, *bias;
  float* c;
  int m, k, n, parts;
};

// Columns [n * t / parts, n * (t+1) / parts), rounded to vectors, of c = a · w + bias.
void few_rows_part(void* ctx, int t) {
  const FewRows& f = *static_cast<const FewRows*>(ctx);
  const int vecs = f.n / VL;
  const int j0 = vecs * t / f.parts * VL, j1 = vecs * (t + 1) / f.parts * VL;
  int j = j0;
  for (; j + kTileVecs * VL <= j1; j += kTileVecs * VL) rows_nn<kTileVecs>(f.a, f.m, f.k, f.w, f.n, f.bias, f.c, j);
  switch ((j1 - j) / VL) {
    case 3: if constexpr (kTileVecs > 3) rows_nn<3>(f.a, f.m, f.k, f.w, f.n, f.bias, f.c, j); break;
    case 2: if constexpr (kTileVecs > 2) rows_nn<2>(f.a, f.m, f.k, f.w, f.n, f.bias, f.c, j); break;
    case 1: rows_nn<1>(f.a, f.m, f.k, f.w, f.n, f.bias, f.c, j); break;
    default: break;
  }
}

// The LM head for 4 < m <= 2 VL rows: logits[m, V] = h[m, k] · wte[V, k]ᵀ without packing wte.
// Computed as wte · hᵀ: hᵀ [k, m] (padded to whole vectors) stays in cache while each wte row is
// streamed once; every FMA multiplies a broadcast weight by one row of hᵀ.
struct LmHead {
  const float* ht;  // [k][MV * VL]
  const float* wte;
  float* out;
  int m, k, vocab, parts;
};

template <int MR, int MV>
inline void tile_lm(const LmHead& f, int v0) {
  vec acc[MR][MV] = {};
  const float* w = f.wte + static_cast<size_t>(v0) * f.k;
  for (int p = 0; p < f.k; ++p) {
    vec b[MV];
    for (int u = 0; u < MV; ++u) b[u] = load(f.ht + static_cast<size_t>(p) * MV * VL + u * VL);
    for (int r = 0; r < MR; ++r) {
      const vec wv = splat(w[static_cast<size_t>(r) * f.k + p]);
      for (int u = 0; u < MV; ++u) acc[r][u] += wv * b[u];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int u = 0; u < MV; ++u)
      for (int l = 0; l < VL && u * VL + l < f.m; ++l)
        f.out[static_cast<size_t>(u * VL + l) * f.vocab + v0 + r] = acc[r][u][l];
}

template <int MV>
void lm_head_part(void* ctx, int t) {
  const LmHead& f = *static_cast<const LmHead*>(ctx);
  constexpr int MR = kLmRows<MV>;
  const int blocks = (f.vocab + MR - 1) / MR;
  const int v0 = blocks * t / f.parts * MR, v1 = std::min(f.vocab, blocks * (t + 1) / f.parts * MR);
  int v = v0;
  for (; v + MR <= v1; v += MR) tile_lm<MR, MV>(f, v);
  for (; v < v1; ++v) tile_lm<1, MV>(f, v);
}

void lm_head(const float* h, int m, int k, const float* wte, int vocab, float* out) {
  if (m <= 4 || m > 2 * VL) {
    GemmArgs g{};
    g.a = h;
    g.b = wte;
    g.c = out;
    g.batch = 1;
    g.m = m;
    g.n = vocab;
    g.k = k;
    g.trans_b = true;
    g.activation = kLinear;
    sgemm(g);
    return;
  }
  thread_local std::vector<float> ht_buffer;
  const int mv = m > VL ? 2 : 1;
  float* ht = sized(ht_buffer, static_cast<size_t>(k) * mv * VL);
  std::memset(ht, 0, static_cast<size_t>(k) * mv * VL * sizeof(float));
  for (int i = 0; i < m; ++i)
    for (int p = 0; p < k; ++p) ht[static_cast<size_t>(p) * mv * VL + i] = h[static_cast<size_t>(i) * k + p];
  LmHead f{ht, wte, out, m, k, vocab, 1};
  const double macs = static_cast<double>(m) * k * vocab;
  const Pool::Fn part = mv == 2 ? lm_head_part<2> : lm_head_part<1>;
  if (macs >= kParallelMacs) {
    f.parts = Pool::instance().size();
    parallel_for(f.parts, part, &f);
  } else {
    part(&f, 0);
  }
}

// out[rows, n] = in[rows, k] · w[k, n] + bias
void linear(const float* in, int rows, int k, const float* w, int n, const float* bias, float* out) {
  if (rows <= kFewRows && n % VL == 0) {
    FewRows f{in, w, bias, out, rows, k, n, 1};
    const double macs = static_cast<double>(rows) * k * n;
    if (macs >= kParallelMacs && n >= 2 * VL) {
      f.parts = Pool::instance().size();
      parallel_for(f.parts, few_rows_part, &f);
    } else {
      few_rows_part(&f, 0);
    }
    return;
  }
  GemmArgs g{};
  g.a = in;
  g.b = w;
  g.c = out;
  g.batch = 1;
  g.m = rows;
  g.n = n;
  g.k = k;
  g.bias = bias;
  g.activation = kLinear;
  sgemm(g);
}

void add_into(float* x, const float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] += y[i];
}

struct Attention {
  const DecoderShape* shape;
  KVCache* const* caches;
  const int* row_seq;
  const int* row_pos;
  const float* qkv;
  float* y;
  int rows, layer;
};

// The two products of a row's attention keep their sums in registers across the head
// dimension (scores) or the keys (values), instead of loading and storing the running sums at
// every step (23% of a batch-16 step went to those loads and stores; 18.5% after). Each sum adds
// its terms in the same order; the logits moved by at most 7e-7 (float rounding).

// s[j0 + i] = scale · (q · K[:, j0 + i]) for i < U VL, K stored by dimension ([hs][cap]). Each
// sum adds its terms in dimension order.
template <int U>
inline void scores_block(const float* q, const float* K, size_t cap, int hs, int j0, vec scale, float* s) {
  vec acc[U] = {};
  for (int d = 0; d < hs; ++d) {
    const vec qd = splat(q[d]);
    const float* kd = K + d * cap + j0;
    for (int u = 0; u < U; ++u) acc[u] += qd * load(kd + u * VL);
  }
  for (int u = 0; u < U; ++u) store(s + j0 + u * VL, acc[u] * scale);
}

// s[j] = scale · (q · K[:, j]) for j < keys. The keys are taken in whole vectors (the cache's
// capacity is a multiple of VL): s gets whole_vectors(keys) entries, and the caller ignores those
// past `keys`. (A scalar loop over the last keys took a third of the scores' time.)
void scores_of(const float* q, const float* K, size_t cap, int hs, int keys, float scale, float* s) {
  constexpr int U = 4;
  const int vecs = whole_vectors(keys) / VL;
  const vec sc = splat(scale);
  int v = 0;
  for (; v + U <= vecs; v += U) scores_block<U>(q, K, cap, hs, v * VL, sc, s);
  switch (vecs - v) {
    case 3: scores_block<3>(q, K, cap, hs, v * VL, sc, s); break;
    case 2: scores_block<2>(q, K, cap, hs, v * VL, sc, s); break;
    case 1: scores_block<1>(q, K, cap, hs, v * VL, sc, s); break;
    default: break;
  }
}

// out[0, NH VL) = sum over j < keys of (s[j] inv) V[j, :], V stored by position ([cap][hs]).
// W running sums (keys j mod W) keep the multiply-adds from waiting on each other (with one,
// this loop waited out the FMA latency at every key: 45% of attention's time); they are added
// pairwise at the end, so every sum is rounded in a fixed order. W is 2 for heads of 3 or more
// vectors, so that the W NH accumulators stay at 8 or fewer and fit AVX2's 16 registers beside
// the loads.
template <int NH>
void weighted_values(const float* s, float inv, const float* V, int keys, float* out) {
  constexpr int W = NH >= 3 ? 2 : 4;
  vec acc[W][NH] = {};
  int j = 0;
  for (; j + W <= keys; j += W) {
    for (int w = 0; w < W; ++w) {
      const vec p = splat(s[j + w] * inv);
      const float* v = V + static_cast<size_t>(j + w) * NH * VL;
      for (int u = 0; u < NH; ++u) acc[w][u] += p * load(v + u * VL);
    }
  }
  for (int w = 0; j < keys; ++j, ++w) {
    const vec p = splat(s[j] * inv);
    const float* v = V + static_cast<size_t>(j) * NH * VL;
    for (int u = 0; u < NH; ++u) acc[w][u] += p * load(v + u * VL);
  }
  for (int u = 0; u < NH; ++u) {
    if constexpr (W == 4) store(out + u * VL, (acc[0][u] + acc[1][u]) + (acc[2][u] + acc[3][u]));
    else store(out + u * VL, acc[0][u] + acc[1][u]);
  }
}

// softmax(q·Kᵀ / sqrt(hs)) · V for every row, one head.
void attend_head(void* ctx, int h) {
  thread_local std::vector<float> scores;
  const Attention& at = *static_cast<const Attention*>(ctx);
  const int C = at.shape->n_embd, hs = at.shape->head_size();
  const float scale = 1.f / std::sqrt(static_cast<float>(hs));
  float* s = sized(scores, at.shape->block_size + 2 * VL);
  for (int r = 0; r < at.rows; ++r) {
    KVCache* cache = at.caches[at.row_seq[r]];
    const size_t cap = cache->capacity();
    const float* K = cache->keys(at.layer, h);
    const float* V = cache->values(at.layer, h);
    const float* q = at.qkv + static_cast<size_t>(r) * 3 * C + h * hs;
    const int keys = at.row_pos[r] + 1;
    scores_of(q, K, cap, hs, keys, scale, s);
    const int padded = whole_vectors(keys);
    for (int j = keys; j < padded; ++j) s[j] = -INFINITY;
    vec m = splat(-INFINITY);
    for (int j = 0; j < padded; j += VL) {
      const vec x = load(s + j);
      m = m < x ? x : m;  // std::max's rule, lane by lane: a NaN is never taken
    }
    float mx = -INFINITY;
    for (int l = 0; l < VL; ++l) mx = std::max(mx, m[l]);
    const vec mv = splat(mx);
    for (int j = 0; j < padded; j += VL) store(s + j, load(s + j) - mv);
    exp_f32(s, s, keys);
    float total = 0.f;
    for (int j = 0; j < keys; ++j) total += s[j];
    const float inv = 1.f / total;
    float* out = at.y + static_cast<size_t>(r) * C + h * hs;
    switch (hs % VL == 0 ? hs / VL : 0) {
      case 1: weighted_values<1>(s, inv, V, keys, out); break;
      case 2: weighted_values<2>(s, inv, V, keys, out); break;
      case 3: weighted_values<3>(s, inv, V, keys, out); break;
      case 4: weighted_values<4>(s, inv, V, keys, out); break;
      default:
        std::memset(out, 0, hs * sizeof(float));
        for (int j = 0; j < keys; ++j) {
          const float p = s[j] * inv;
          const float* v = V + static_cast<size_t>(j) * hs;
          for (int d = 0; d < hs; ++d) out[d] += p * v[d];
        }
    }
  }
}

}  // namespace

namespace {

// One forward pass of a batch on this thread's scratch (its kernels split over the pool when large).
// With `hidden`, each sequence's last hidden state after the final layer norm is written there
// (n x C) instead of its logits.
void decode_rows(const DecoderShape& shape, const DecoderWeights& w, const DecodeBatch& batch, float* hidden = nullptr) {
  thread_local Scratch sc;
  const int C = shape.n_embd, H = shape.n_head, hs = shape.head_size();
  int R = 0;
  for (int s = 0; s < batch.n; ++s) R += batch.rows[s];
  const size_t RC = static_cast<size_t>(R) * C;
  float* x = sized(sc.x, RC);
  float* a = sized(sc.a, RC);
  float* qkv = sized(sc.qkv, RC * 3);
  float* y = sized(sc.y, RC);
  float* tmp = sized(sc.tmp, RC);
  float* fc = sized(sc.fc, RC * 4);
  if (sc.row_seq.size() < static_cast<size_t>(R)) {
    sc.row_seq.resize(R);
    sc.row_pos.resize(R);
  }
  int* row_seq = sc.row_seq.data();
  int* row_pos = sc.row_pos.data();
  double attention_macs = 0;
  for (int s = 0, r = 0; s < batch.n; ++s) {
    for (int t = 0; t < batch.rows[s]; ++t, ++r) {
      row_seq[r] = s;
      row_pos[r] = batch.caches[s]->length() + t;
      attention_macs += 2.0 * (row_pos[r] + 1) * C;
      const float* te = w.wte + static_cast<size_t>(batch.tokens[r]) * C;
      const float* pe = w.wpe + static_cast<size_t>(row_pos[r]) * C;
      for (int c = 0; c < C; ++c) x[static_cast<size_t>(r) * C + c] = te[c] + pe[c];
    }
  }
  for (int l = 0; l < shape.n_layer; ++l) {
    const LayerWeights& lw = w.layers[l];
    layer_norm(x, lw.ln1_g, lw.ln1_b, a, R, C);
    linear(a, R, C, lw.wqkv, 3 * C, lw.bqkv, qkv);  // [R, 3C]
    for (int r = 0; r < R; ++r) {
      KVCache* cache = batch.caches[row_seq[r]];
      const float* row = qkv + static_cast<size_t>(r) * 3 * C;
      const size_t cap = cache->capacity();
      for (int h = 0; h < H; ++h) {
        float* kt = cache->keys(l, h) + row_pos[r];
        for (int d = 0; d < hs; ++d) kt[d * cap] = row[C + h * hs + d];
        std::memcpy(cache->values(l, h) + static_cast<size_t>(row_pos[r]) * hs, row + 2 * C + h * hs, hs * sizeof(float));
      }
    }
    Attention at{&shape, batch.caches, row_seq, row_pos, qkv, y, R, l};
    if (attention_macs >= kParallelAttention && H > 1)
      parallel_for(H, attend_head, &at);
    else
      for (int h = 0; h < H; ++h) attend_head(&at, h);
    linear(y, R, C, lw.wo, C, lw.bo, tmp);
    add_into(x, tmp, RC);
    layer_norm(x, lw.ln2_g, lw.ln2_b, a, R, C);
    linear(a, R, C, lw.wfc, 4 * C, lw.bfc, fc);  // [R, 4C]
    gelu_f32(fc, fc, static_cast<int64_t>(RC) * 4);  // vectorised erf, on the pool when large
    linear(fc, R, 4 * C, lw.wproj, C, lw.bproj, tmp);
    add_into(x, tmp, RC);
  }
  float* last = hidden ? hidden : sized(sc.last, static_cast<size_t>(batch.n) * C);
  for (int s = 0, r = 0; s < batch.n; ++s) {
    r += batch.rows[s];
    std::memcpy(last + static_cast<size_t>(s) * C, x + static_cast<size_t>(r - 1) * C, C * sizeof(float));
    batch.caches[s]->set_length(batch.caches[s]->length() + batch.rows[s]);
  }
  layer_norm(last, w.lnf_g, w.lnf_b, last, batch.n, C);
  if (!hidden) lm_head(last, batch.n, C, w.wte, shape.vocab, batch.logits);  // [n, V] = last · wteᵀ
}

// A decode step (one token per sequence) of at least this many sequences per thread is split
// by sequences: each thread runs its share through the blocks, with no hand-off between
// kernels. Split by columns instead, a step of 16 small sequences is some 20 jobs of a few
// microseconds, and its second thread bought 1.24x. The output projection (the largest matrix)
// then runs on the whole batch, its vocabulary split between the threads: each reads half of it,
// and the batch's rows fill the vector lanes (16 rows to a 16-lane vector, where a thread's 8
// filled half), and each thread samples its share of the rows.
constexpr int kRowsPerPart = 4;

struct SplitStep {
  const DecoderShape* shape;
  const DecoderWeights* w;
  const DecodeBatch* batch;
  const StepSample* sample;
  float* hidden;  // n x C: each sequence's last hidden state, after the final layer norm
  int parts;
};

void blocks_part(void* ctx, int t) {
  const SplitStep& s = *static_cast<const SplitStep*>(ctx);
  const DecodeBatch& b = *s.batch;
  const int s0 = b.n * t / s.parts, s1 = b.n * (t + 1) / s.parts;
  const DecodeBatch part{s1 - s0, b.caches + s0, b.rows + s0, b.tokens + s0, nullptr};
  decode_rows(*s.shape, *s.w, part, s.hidden + static_cast<size_t>(s0) * s.shape->n_embd);
}

void sample_part(void* ctx, int t) {
  const SplitStep& s = *static_cast<const SplitStep*>(ctx);
  const DecodeBatch& b = *s.batch;
  const int s0 = b.n * t / s.parts, s1 = b.n * (t + 1) / s.parts;
  const int V = s.shape->vocab;
  sample_rows(b.logits + static_cast<size_t>(s0) * V, s1 - s0, V, s.sample->banned, s.sample->rows + s0, s.sample->ids + s0);
}

}  // namespace

void decode(const DecoderShape& shape, const DecoderWeights& w, const DecodeBatch& batch, const StepSample* sample) {
  bool step = true;
  for (int s = 0; s < batch.n && step; ++s) step = batch.rows[s] == 1;
  const int parts = std::min(Pool::instance().size(), batch.n / kRowsPerPart);
  if (step && parts > 1) {
    thread_local std::vector<float> hidden_buffer;
    float* hidden = sized(hidden_buffer, static_cast<size_t>(batch.n) * shape.n_embd);
    SplitStep split{&shape, &w, &batch, sample, hidden, parts};
    parallel_for(parts, blocks_part, &split);
    lm_head(hidden, batch.n, shape.n_embd, w.wte, shape.vocab, batch.logits);
    if (sample) parallel_for(parts, sample_part, &split);
  } else {
    decode_rows(shape, w, batch);
    if (sample) sample_rows(batch.logits, batch.n, shape.vocab, sample->banned, sample->rows, sample->ids);
  }
}

}  // namespace nk
