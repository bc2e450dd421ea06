// Batched next-token sampling (see sampler.h). Each step mirrors sampleToken in
// model/sampling.ts: the same candidate set (logits within 30·temperature of the best), the same
// order of summation (id order without top-k/top-p; otherwise descending logit, ties by lower id,
// through the same stable radix sort of 32-bit keys), the same cut-offs, all in double, and the
// same exponential as V8's Math.exp (a vectorisable port of fdlibm's). The exponentials are
// computed once per candidate and kept, where the JS walks them twice.
#include "sampler.h"

#include <napi.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "pool.h"
#include "simd.h"

namespace nk {

// e^x for x in [-700, 0] (every weight the sampler takes: x = (logit - max) / temperature), bit
// for bit V8's Math.exp (fdlibm's e_exp.c as V8 ships it), written without branches so that a
// loop over an array vectorises. No fused multiply-adds: the rounding must be fdlibm's.
__attribute__((optimize("fp-contract=off", "no-trapping-math"))) inline double exp_nonpos(double x) {
  constexpr double ln2HI = 6.93147180369123816490e-01, ln2LO = 1.90821492927058770002e-10,
                   invln2 = 1.44269504088896338700e+00, P1 = 1.66666666666666019037e-01,
                   P2 = -2.77777777770155933842e-03, P3 = 6.61375632143793436117e-05,
                   P4 = -1.65339022054652515390e-06, P5 = 4.13813679705723846039e-08;
  uint64_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  const uint32_t hx = static_cast<uint32_t>(bits >> 32) & 0x7FFFFFFFu;
  const bool reduce = hx > 0x3FD62E42u;  // |x| > 0.5 ln2
  const bool near = hx < 0x3FF0A2B2u;    // |x| < 1.5 ln2: k = ±1
  const bool tiny = hx < 0x3E300000u;    // |x| < 2^-28
  const double sign = std::copysign(1.0, x);
  const double kg = static_cast<double>(static_cast<int32_t>(invln2 * x + 0.5 * sign));
  // k as a double; k·ln2HI and k·ln2LO are exact for k = ±1, so one formula covers fdlibm's table.
  const double k = reduce ? (near ? sign : kg) : 0.0;
  const double hi = x - k * ln2HI;
  const double lo = k * ln2LO;
  const double r = hi - lo;  // x itself when k = 0
  const double tt = r * r;
  const double c = r - tt * (P1 + tt * (P2 + tt * (P3 + tt * (P4 + tt * P5))));
  const uint64_t pk = static_cast<uint64_t>(0x3FF + static_cast<int64_t>(k)) << 52;
  double twopk;
  std::memcpy(&twopk, &pk, sizeof twopk);
  const double y0 = 1.0 - ((r * c) / (c - 2.0) - r);
  const double y1 = (1.0 - ((lo - (r * c) / (2.0 - c)) - hi)) * twopk;
  return tiny ? 1.0 + x : (k == 0.0 ? y0 : y1);
}

typedef double v8d __attribute__((vector_size(64)));
typedef int64_t v8l __attribute__((vector_size(64)));
typedef uint64_t v8u __attribute__((vector_size(64)));
typedef float v8f __attribute__((vector_size(32), aligned(4)));
typedef uint8_t v8b __attribute__((vector_size(8), aligned(1)));

// exp_nonpos on 8 lanes, written with vector extensions (the compiler does not if-convert the
// scalar form). fdlibm divides twice, by c - 2 and by 2 - c; the second quotient is the first
// negated, exactly (IEEE negation and division commute), so one division serves both.
__attribute__((optimize("fp-contract=off"))) inline v8d exp_nonpos8(v8d x) {
  constexpr double ln2HI = 6.93147180369123816490e-01, ln2LO = 1.90821492927058770002e-10,
                   invln2 = 1.44269504088896338700e+00, P1 = 1.66666666666666019037e-01,
                   P2 = -2.77777777770155933842e-03, P3 = 6.61375632143793436117e-05,
                   P4 = -1.65339022054652515390e-06, P5 = 4.13813679705723846039e-08;
  const v8d zero = {}, one = zero + 1.0;
  const v8u bits = reinterpret_cast<v8u&>(x);
  const v8u hx = (bits >> 32) & 0x7FFFFFFFu;
  const v8l reduce = hx > 0x3FD62E42u;
  const v8l near = hx < 0x3FF0A2B2u;
  const v8l tiny = hx < 0x3E300000u;
  const v8u sbits = reinterpret_cast<const v8u&>(one) | (bits & 0x8000000000000000ull);
  const v8d sign = reinterpret_cast<const v8d&>(sbits);
  const v8d kg = __builtin_convertvector(__builtin_convertvector(x * invln2 + sign * 0.5, v8l), v8d);
  const v8d k = reduce ? (near ? sign : kg) : zero;
  const v8d hi = x - k * ln2HI;
  const v8d lo = k * ln2LO;
  const v8d r = hi - lo;
  const v8d tt = r * r;
  const v8d c = r - tt * (P1 + tt * (P2 + tt * (P3 + tt * (P4 + tt * P5))));
  const v8u pk = (v8u)__builtin_convertvector(k, v8l) + 0x3FFu;
  const v8u pk52 = pk << 52;
  const v8d twopk = reinterpret_cast<const v8d&>(pk52);
  const v8d q = (r * c) / (c - 2.0);  // and (r * c) / (2 - c) = -q
  const v8d y0 = 1.0 - (q - r);
  const v8d y1 = (1.0 - ((lo + q) - hi)) * twopk;
  return tiny ? x + 1.0 : (k == zero ? y0 : y1);
}

// xs[i] = e^xs[i] over the array (each xs[i] in [-700, 0]).
void exp_nonpos_array(double* xs, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    v8d x;
    std::memcpy(&x, xs + i, sizeof x);
    const v8d y = exp_nonpos8(x);
    std::memcpy(xs + i, &y, sizeof y);
  }
  for (; i < n; ++i) xs[i] = exp_nonpos(xs[i]);
}

namespace {

struct Scratch {
  std::vector<uint64_t> item, item2;  // key << 32 | id
  std::vector<int32_t> id;
  std::vector<double> probs;
  std::vector<uint8_t> ok;
  void size(int V) {
    if (static_cast<int>(id.size()) >= V) return;
    item.resize(V);
    item2.resize(V);
    id.resize(V);
    probs.resize(V);
    ok.resize(V);
  }
};

inline bool allowed(const uint8_t* banned, int i) { return banned == nullptr || banned[i] == 0; }

// Unsigned order of the key is descending float order, -0 and +0 equal (sampling.ts's descendingKey
// without the top-bit flip, which only keeps V8's integers small).
inline uint32_t descending_key(float logit) {
  float f = logit + 0.f;
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  const uint32_t ascending = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return ~ascending;
}

// Stable LSD radix sort of the first n items (key << 32 | id, in id order) by key; returns the
// sorted ids. One pass counts all four bytes of the keys; a byte every key shares is skipped.
const int32_t* radix_sort(Scratch& s, int n) {
  uint64_t* from = s.item.data();
  uint64_t* to = s.item2.data();
  int counts[4][256] = {};
  for (int i = 0; i < n; ++i) {
    const uint32_t k = static_cast<uint32_t>(from[i] >> 32);
    ++counts[0][k & 255];
    ++counts[1][(k >> 8) & 255];
    ++counts[2][(k >> 16) & 255];
    ++counts[3][k >> 24];
  }
  for (int d = 0; d < 4; ++d) {
    const int shift = 32 + 8 * d;
    int* c = counts[d];
    if (c[(from[0] >> shift) & 255] == n) continue;
    for (int b = 0, sum = 0; b < 256; ++b) {
      const int here = c[b];
      c[b] = sum;
      sum += here;
    }
    for (int i = 0; i < n; ++i) to[c[(from[i] >> shift) & 255]++] = from[i];
    std::swap(from, to);
  }
  int32_t* id = s.id.data();
  for (int i = 0; i < n; ++i) id[i] = static_cast<int32_t>(from[i]);
  return id;
}

// The largest allowed logit of a row (-inf when there is none; NaNs never win a comparison):
// the order of comparisons does not change a maximum, so lanes take their share.
float row_max(const float* l, int V, const uint8_t* banned) {
  typedef uint8_t bvec __attribute__((vector_size(VL), aligned(1)));
  constexpr float ninf = -std::numeric_limits<float>::infinity();
  vec mx = splat(ninf);
  int i = 0;
  for (; i + VL <= V; i += VL) {
    vec x = load(l + i);
    if (banned) {
      bvec b;
      std::memcpy(&b, banned + i, sizeof b);
      x = __builtin_convertvector(b, ivec) != 0 ? splat(ninf) : x;
    }
    mx = x > mx ? x : mx;
  }
  float m = ninf;
  for (int k = 0; k < VL; ++k)
    if (mx[k] > m) m = mx[k];
  for (; i < V; ++i)
    if (allowed(banned, i) && l[i] > m) m = l[i];
  return m;
}

// A row with temperature above 0 whose largest allowed logit is `max`: the sorted path (top-k,
// top-p), and any row whose maximum is not finite. No fused multiply-adds here either: the JS
// rounds each operation.
__attribute__((optimize("fp-contract=off"))) int32_t sample_one(const float* l, int V, const uint8_t* banned, const SampleRow& p, double max, Scratch& s) {
  const double floor = max - 30 * p.temperature;
  s.size(V);
  double* probs = s.probs.data();
  if (p.top_k <= 0 && p.top_p >= 1) {
    // Candidates in id order: each one's weight in probs (the others' entries are unused).
    uint8_t* ok = s.ok.data();
    int32_t last = -1;
    for (int i = 0; i < V; ++i) {
      const double x = l[i];
      ok[i] = allowed(banned, i) && x >= floor;
      probs[i] = ok[i] ? (x - max) / p.temperature : 0.0;
      if (ok[i]) last = i;
    }
    exp_nonpos_array(probs, last + 1);
    double total = 0;
    for (int i = 0; i <= last; ++i)
      if (ok[i]) total += probs[i];
    double r = p.u * total;
    for (int i = 0; i <= last; ++i) {
      if (ok[i] && (r -= probs[i]) <= 0) return i;
    }
    return last;
  }
  int n = 0;
  for (int i = 0; i < V; ++i) {
    const double x = l[i];
    if (allowed(banned, i) && x >= floor) {
      s.item[n++] = static_cast<uint64_t>(descending_key(l[i])) << 32 | static_cast<uint32_t>(i);
    }
  }
  if (n == 0) return -1;
  const int32_t* ids = radix_sort(s, n);
  if (p.top_k > 0 && p.top_k < n) n = p.top_k;
  for (int j = 0; j < n; ++j) probs[j] = (static_cast<double>(l[ids[j]]) - max) / p.temperature;
  exp_nonpos_array(probs, n);
  double total = 0;
  for (int j = 0; j < n; ++j) total += probs[j];
  if (p.top_p < 1) {
    double acc = 0;
    for (int j = 0; j < n; ++j) {
      acc += probs[j] / total;
      if (acc >= p.top_p) {
        n = j + 1;
        break;
      }
    }
    total = 0;
    for (int j = 0; j < n; ++j) total += probs[j];
  }
  double r = p.u * total;
  for (int j = 0; j < n; ++j) {
    r -= probs[j];
    if (r <= 0) return ids[j];
  }
  return ids[n - 1];
}

// ---- Plain rows (temperature above 0, no top-k, no top-p), the common case, vectorised. The JS
// (sampleAll) adds the candidates' weights in id order and walks them again with the draw; here
// each weight is computed once, a non-candidate gets weight 0 (every candidate's is above 0: its
// exponent is at least -30), so adding or subtracting it changes nothing and the sums run over
// the whole row without a branch, bit for bit the JS's.

// w[i] = e^((l[i] - max) / T) for every allowed logit at or above floor, else 0. Dividing by a
// temperature of 1 changes nothing, so it is skipped then.
__attribute__((optimize("fp-contract=off"))) void plain_weights(const float* l, int V, const uint8_t* banned, double max, double floor, double T, double* w) {
  const v8d zero = {};
  const bool divide = T != 1.0;
  int i = 0;
  for (; i + 8 <= V; i += 8) {
    v8f xf;
    std::memcpy(&xf, l + i, sizeof xf);
    const v8d x = __builtin_convertvector(xf, v8d);
    v8l ok = x >= floor;
    if (banned) {
      v8b b;
      std::memcpy(&b, banned + i, sizeof b);
      ok &= __builtin_convertvector(b, v8l) == 0;
    }
    v8d e = x - max;
    if (divide) e = e / T;
    const v8d y = exp_nonpos8(ok ? e : zero);
    const v8d out = ok ? y : zero;
    std::memcpy(w + i, &out, sizeof out);
  }
  for (; i < V; ++i) {
    const double x = l[i];
    w[i] = allowed(banned, i) && x >= floor ? exp_nonpos((x - max) / T) : 0.0;
  }
}

// The sum of each of K rows' weights in id order, the K additions of each index side by side so
// that they overlap (one row's additions wait on each other).
template <int K>
void plain_totals(double* const* w, int V, double* totals) {
  double t[K] = {};
  for (int i = 0; i < V; ++i)
    for (int k = 0; k < K; ++k) t[k] += w[k][i];
  for (int k = 0; k < K; ++k) totals[k] = t[k];
}

// The token where the draw u·total is used up, walking the weights in id order (the last
// candidate if rounding leaves some over).
int32_t plain_draw(const double* w, int V, double total, double u) {
  double r = u * total;
  int32_t last = -1;
  for (int i = 0; i < V; ++i) {
    const double p = w[i];
    if (p > 0) {
      last = i;
      if ((r -= p) <= 0) return i;
    }
  }
  return last;
}

constexpr int kPlainGroup = 4;

// Rows sampled together by the plain path: their weights (one row of V doubles each) and ids.
struct PlainGroup {
  std::vector<double> weights;
  int rows[kPlainGroup];
  double u[kPlainGroup];
  int n = 0;
  double* row(int k, int V) {
    if (static_cast<int>(weights.size()) < kPlainGroup * V) weights.resize(static_cast<size_t>(kPlainGroup) * V);
    return weights.data() + static_cast<size_t>(k) * V;
  }
  void finish(int V, int32_t* ids) {
    if (n == 0) return;
    double* w[kPlainGroup];
    double totals[kPlainGroup];
    for (int k = 0; k < n; ++k) w[k] = row(k, V);
    switch (n) {
      case 4: plain_totals<4>(w, V, totals); break;
      case 3: plain_totals<3>(w, V, totals); break;
      case 2: plain_totals<2>(w, V, totals); break;
      default: plain_totals<1>(w, V, totals);
    }
    for (int k = 0; k < n; ++k) ids[rows[k]] = plain_draw(w[k], V, totals[k], u[k]);
    n = 0;
  }
};

// The greedy pick: the first index of the largest allowed logit (-1 when none is above -inf).
int32_t greedy(const float* l, int V, const uint8_t* banned) {
  const float max = row_max(l, V, banned);
  if (max == -std::numeric_limits<float>::infinity()) return -1;
  for (int i = 0; i < V; ++i)
    if (l[i] == max && allowed(banned, i)) return i;
  return -1;
}

struct Job {
  const float* logits;
  int n, V, per_task;
  const uint8_t* banned;
  const SampleRow* rows;
  int32_t* ids;
};

void run_task(void* ctx, int task) {
  const Job& j = *static_cast<const Job*>(ctx);
  thread_local Scratch scratch;
  thread_local PlainGroup group;
  const int end = std::min(j.n, (task + 1) * j.per_task);
  for (int r = task * j.per_task; r < end; ++r) {
    const float* l = j.logits + static_cast<size_t>(r) * j.V;
    const SampleRow& p = j.rows[r];
    if (p.temperature <= 0) {
      j.ids[r] = greedy(l, j.V, j.banned);
      continue;
    }
    const double max = row_max(l, j.V, j.banned);
    if (!std::isfinite(max)) {
      j.ids[r] = sample_one(l, j.V, j.banned, p, max, scratch);
    } else if (p.top_k <= 0 && p.top_p >= 1) {
      plain_weights(l, j.V, j.banned, max, max - 30 * p.temperature, p.temperature, group.row(group.n, j.V));
      group.rows[group.n] = r;
      group.u[group.n++] = p.u;
      if (group.n == kPlainGroup) group.finish(j.V, j.ids);
    } else {
      j.ids[r] = sample_one(l, j.V, j.banned, p, max, scratch);
    }
  }
  group.finish(j.V, j.ids);
}

}  // namespace

void sample_rows(const float* logits, int n, int V, const uint8_t* banned, const SampleRow* rows, int32_t* ids) {
  const int threads = Pool::instance().size();
  const int tasks = n >= 4 ? std::min(n, threads) : 1;
  Job job{logits, n, V, (n + tasks - 1) / tasks, banned, rows, ids};
  if (tasks > 1) parallel_for(tasks, run_task, &job);
  else run_task(&job, 0);
}

}  // namespace nk

bool read_sample_args(const Napi::Env& env, size_t n, int V, const Napi::Value& params_value,
                      const Napi::Value& banned_value, const Napi::Value& ids_value, SampleArgs* out) {
  auto bad = [&](const char* message) {
    Napi::RangeError::New(env, message).ThrowAsJavaScriptException();
    return false;
  };
  if (!params_value.IsTypedArray() || !ids_value.IsTypedArray()) return bad("sampleRows: expected (Float32Array, V, Float64Array, Uint8Array | null, Int32Array)");
  Napi::TypedArray params = params_value.As<Napi::TypedArray>();
  Napi::TypedArray ids = ids_value.As<Napi::TypedArray>();
  if (params.TypedArrayType() != napi_float64_array || ids.TypedArrayType() != napi_int32_array)
    return bad("sampleRows: expected (Float32Array, V, Float64Array, Uint8Array | null, Int32Array)");
  if (ids.ElementLength() != n || params.ElementLength() < n * 4) return bad("sampleRows: logits or params shorter than the rows");
  out->banned = nullptr;
  if (banned_value.IsTypedArray()) {
    Napi::TypedArray b = banned_value.As<Napi::TypedArray>();
    if (b.TypedArrayType() != napi_uint8_array || b.ElementLength() < static_cast<size_t>(V)) return bad("sampleRows: banned must be a Uint8Array of V bytes");
    out->banned = static_cast<const uint8_t*>(b.ArrayBuffer().Data()) + b.ByteOffset();
  } else if (!banned_value.IsNull() && !banned_value.IsUndefined()) {
    return bad("sampleRows: banned must be a Uint8Array or null");
  }
  const double* p = reinterpret_cast<const double*>(static_cast<const uint8_t*>(params.ArrayBuffer().Data()) + params.ByteOffset());
  out->rows.resize(n);
  for (size_t r = 0; r < n; ++r) {
    const double* q = p + 4 * r;
    if (!(q[3] >= 0 && q[3] < 1) || std::isnan(q[0]) || std::isnan(q[2])) return bad("sampleRows: bad sampling params");
    out->rows[r] = {q[0], q[1] > 2147483647.0 ? 2147483647 : static_cast<int>(q[1]), q[2], q[3]};
  }
  out->ids = reinterpret_cast<int32_t*>(static_cast<uint8_t*>(ids.ArrayBuffer().Data()) + ids.ByteOffset());
  return true;
}

namespace {

Napi::Value SampleRows(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  auto bad = [&](const char* message) {
    Napi::RangeError::New(env, message).ThrowAsJavaScriptException();
    return env.Undefined();
  };
  if (info.Length() < 5 || !info[0].IsTypedArray() || !info[1].IsNumber() || !info[2].IsTypedArray() || !info[4].IsTypedArray())
    return bad("sampleRows: expected (Float32Array, V, Float64Array, Uint8Array | null, Int32Array)");
  Napi::TypedArray logits = info[0].As<Napi::TypedArray>();
  Napi::TypedArray ids = info[4].As<Napi::TypedArray>();
  if (logits.TypedArrayType() != napi_float32_array || ids.TypedArrayType() != napi_int32_array)
    return bad("sampleRows: expected (Float32Array, V, Float64Array, Uint8Array | null, Int32Array)");
  const double v = info[1].As<Napi::Number>().DoubleValue();
  const size_t n = ids.ElementLength();
  if (!(v >= 1) || v != static_cast<int>(v) || n == 0) return bad("sampleRows: bad V or no rows");
  const int V = static_cast<int>(v);
  if (logits.ElementLength() < n * V) return bad("sampleRows: logits or params shorter than the rows");
  SampleArgs args;
  if (!read_sample_args(env, n, V, info[2], info[3], info[4], &args)) return env.Undefined();
  const float* l = reinterpret_cast<const float*>(static_cast<const uint8_t*>(logits.ArrayBuffer().Data()) + logits.ByteOffset());
  nk::sample_rows(l, static_cast<int>(n), V, args.banned, args.rows.data(), args.ids);
  return env.Undefined();
}

// expNonPositive(xs: Float64Array): e^x in place, x in [-700, 0]: the sampler's exponential, so a
// test can hold it to Math.exp bit for bit.
Napi::Value ExpNonPositive(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
    Napi::RangeError::New(env, "expNonPositive: expected a Float64Array").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Float64Array xs = info[0].As<Napi::Float64Array>();
  for (size_t i = 0; i < xs.ElementLength(); ++i) {
    if (!(xs[i] >= -700 && xs[i] <= 0)) {
      Napi::RangeError::New(env, "expNonPositive: values must lie in [-700, 0]").ThrowAsJavaScriptException();
      return env.Undefined();
    }
  }
  nk::exp_nonpos_array(xs.Data(), static_cast<int>(xs.ElementLength()));
  return env.Undefined();
}

}  // namespace

void register_sampler(Napi::Env env, Napi::Object exports) {
  exports.Set("sampleRows", Napi::Function::New(env, SampleRows, "sampleRows"));
  exports.Set("expNonPositive", Napi::Function::New(env, ExpNonPositive, "expNonPositive"));
}
