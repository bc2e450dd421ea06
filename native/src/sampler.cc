// Batched next-token sampling (see sampler.h). Each row is weighed as model/sampling.ts defines
// it: single-precision exponents and exponential (every operation as the JS rounds it, no fused
// multiply-adds), integer weights trunc(e^x · 2^S) whose sums are exact in double precision. The
// sums are exact, so they may be taken in any order: the weights are added lane by lane, the draw
// skips whole blocks, and top-k and top-p find their boundary by a radix select over the
// candidates instead of sorting them; the pick is still the JS's, token for token.
#include "sampler.h"

#include <napi.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "pool.h"
#include "simd.h"

namespace nk {

typedef float v8f __attribute__((vector_size(32)));
typedef float v8fu __attribute__((vector_size(32), aligned(4)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef double v8d __attribute__((vector_size(64)));
typedef double v8du __attribute__((vector_size(64), aligned(8)));
typedef int64_t v8l __attribute__((vector_size(64)));
typedef uint8_t v8b __attribute__((vector_size(8), aligned(1)));

namespace {

constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kE1 = 1.9875691500e-4f, kE2 = 1.3981999507e-3f, kE3 = 8.3334519073e-3f,
                kE4 = 4.1665795894e-2f, kE5 = 1.6666665459e-1f, kE6 = 5.0000001201e-1f;

// sampling.ts's expWeight, e^x for x in [-30, 0], operation for operation; T is float or v8f.
template <typename T, typename I>
__attribute__((optimize("fp-contract=off"))) inline T exp_weight_t(T x) {
  const T v = x * kLog2e + 0.5f;
  const I vi = __builtin_convertvector(v, I);  // truncation toward zero
  const T vt = __builtin_convertvector(vi, T);
  const T k = vt > v ? vt - 1.0f : vt;  // floor
  const T f = (x - k * kLn2Hi) - k * kLn2Lo;
  const T z = f * f;
  T p = kE1 * f + kE2;
  p = p * f + kE3;
  p = p * f + kE4;
  p = p * f + kE5;
  p = p * f + kE6;
  const T y = (p * z + f) + 1.0f;
  const I bits = (__builtin_convertvector(k, I) + 127) << 23;  // 2^k, k in [-44, 0]
  T pow2;
  std::memcpy(&pow2, &bits, sizeof pow2);
  return y * pow2;
}

typedef float f1 __attribute__((vector_size(4)));
typedef int32_t i1 __attribute__((vector_size(4)));

inline float exp_weight1(float x) {
  const f1 v = {x};
  return exp_weight_t<f1, i1>(v)[0];
}

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

// The largest allowed logit of a row (-inf when there is none; NaNs never win a comparison):
// the order of comparisons does not change a maximum, so lanes take their share.
float row_max(const float* l, int V, const uint8_t* banned) {
  constexpr float ninf = -std::numeric_limits<float>::infinity();
  v8f mx = v8f{} + ninf;
  int i = 0;
  for (; i + 8 <= V; i += 8) {
    v8f x = *reinterpret_cast<const v8fu*>(l + i);
    if (banned) {
      v8b b;
      std::memcpy(&b, banned + i, sizeof b);
      x = __builtin_convertvector(b, v8i) != 0 ? v8f{} + ninf : x;
    }
    mx = x > mx ? x : mx;
  }
  float m = ninf;
  for (int k = 0; k < 8; ++k)
    if (mx[k] > m) m = mx[k];
  for (; i < V; ++i)
    if (allowed(banned, i) && l[i] > m) m = l[i];
  return m;
}

// The greedy pick: the first index of the largest allowed logit (-1 when none is above -inf).
int32_t greedy(const float* l, int V, const uint8_t* banned) {
  const float max = row_max(l, V, banned);
  if (max == -std::numeric_limits<float>::infinity()) return -1;
  for (int i = 0; i < V; ++i)
    if (l[i] == max && allowed(banned, i)) return i;
  return -1;
}

int weight_bits(int V) {
  int bits = 0;
  while ((int64_t{1} << bits) < V) ++bits;
  return std::min(40, 53 - bits);
}

// q[i] = trunc(expWeight(x) · 2^S) for each allowed token with x = (l - max) · invT ≥ -30, else
// 0; returns their sum (exact: every partial sum is an integer below 2^53).
__attribute__((optimize("fp-contract=off"))) double weigh(const float* l, int V, const uint8_t* banned, float max, float invT, double* q) {
  const double scale = std::ldexp(1.0, weight_bits(V));
  v8d sum = {};
  int i = 0;
  for (; i + 8 <= V; i += 8) {
    const v8f x = (*reinterpret_cast<const v8fu*>(l + i) - max) * invT;
    v8i ok = x >= -30.0f;
    if (banned) {
      v8b b;
      std::memcpy(&b, banned + i, sizeof b);
      ok &= __builtin_convertvector(b, v8i) == 0;
    }
    const v8f w = exp_weight_t<v8f, v8i>(ok ? x : v8f{});
    const v8d wq = __builtin_convertvector(__builtin_convertvector(__builtin_convertvector(w, v8d) * scale, v8l), v8d);
    const v8d out = __builtin_convertvector(ok, v8l) != 0 ? wq : v8d{};
    *reinterpret_cast<v8du*>(q + i) = out;
    sum += out;
  }
  double total = 0;
  for (int k = 0; k < 8; ++k) total += sum[k];
  for (; i < V; ++i) {
    const float x = (l[i] - max) * invT;
    q[i] = allowed(banned, i) && x >= -30.0f ? std::trunc(static_cast<double>(exp_weight1(x)) * scale) : 0.0;
    total += q[i];
  }
  return total;
}

// floor(u · total), at most total - 1: the running sum of weights the pick must exceed.
inline double draw_target(double u, double total) { return std::min(std::floor(u * total), total - 1); }

// The first token whose running sum of weights (in id order) exceeds r, skipping whole blocks.
int32_t pick_in_id_order(const double* q, int V, double r) {
  double acc = 0;
  int i = 0;
  for (; i + 8 <= V; i += 8) {
    const v8d b = *reinterpret_cast<const v8du*>(q + i);
    double s = 0;
    for (int k = 0; k < 8; ++k) s += b[k];
    if (acc + s > r) break;
    acc += s;
  }
  for (; i < V; ++i) {
    acc += q[i];
    if (acc > r) return i;
  }
  return -1;
}

struct Item {
  uint64_t c;  // descending key << 32 | id: the candidates' order (logit descending, lower id first)
  double q;
};

struct Scratch {
  std::vector<double> q;
  std::vector<Item> items, sub, tmp, tmp2;
  void size(int V) {
    if (static_cast<int>(q.size()) >= V) return;
    q.resize(V);
    items.resize(V);
    sub.resize(V);
    tmp.resize(V);
    tmp2.resize(V);
  }
};

// The order key c of the first of the n items (in c order; given in id order) at which the
// running weight reaches target: a radix select on the logit keys, up to 11 bits at a time from
// the highest bit in which the keys differ (`differ`: the OR of each key XOR the first one),
// keeping only the bucket the target falls in. Items of one key stay in id order, their c order.
// `a` and `b` are scratch of n items; `items` is not changed.
uint64_t mass_boundary(const Item* items, int n, double target, uint32_t differ, Item* a, Item* b) {
  double base = 0;
  const Item* cur = items;
  int hi = differ ? 31 - __builtin_clz(differ) : -1;
  for (;;) {
    if (hi < 0 || n <= 32) {
      Item* own = a;
      if (cur != a) std::memcpy(own, cur, n * sizeof(Item));
      if (hi >= 0) std::sort(own, own + n, [](const Item& x, const Item& y) { return x.c < y.c; });
      double acc = base;
      for (int j = 0; j < n; ++j) {
        acc += own[j].q;
        if (acc >= target) return own[j].c;
      }
      return own[n - 1].c;  // target beyond every item (cannot happen with exact sums)
    }
    const int shift = std::max(0, hi - 10);
    const uint32_t mask = (2u << (hi - shift)) - 1;
    double mass[2048] = {};
    for (int j = 0; j < n; ++j) mass[(static_cast<uint32_t>(cur[j].c >> 32) >> shift) & mask] += cur[j].q;
    uint32_t bucket = 0;
    for (; bucket < mask; ++bucket) {
      if (mass[bucket] > 0 && base + mass[bucket] >= target) break;
      base += mass[bucket];
    }
    Item* next = cur == a ? b : a;
    int m = 0;
    for (int j = 0; j < n; ++j)
      if (((static_cast<uint32_t>(cur[j].c >> 32) >> shift) & mask) == bucket) next[m++] = cur[j];
    cur = next;
    n = m;
    hi = shift - 1;
    if (cur == b) {  // keep the invariant "the final pass reads a" simple: copy back
      std::memcpy(a, b, n * sizeof(Item));
      cur = a;
    }
  }
}

// A row with top-k or top-p: the candidates (id order), the boundary of each cut, then the draw
// among the kept ones in id order.
int32_t sample_cut(const float* l, int V, const uint8_t* banned, const SampleRow& p, float max, float invT, Scratch& s) {
  s.size(V);
  double* q = s.q.data();
  weigh(l, V, banned, max, invT, q);
  Item* items = s.items.data();
  int n = 0;
  uint32_t first = 0, differ = 0;
  for (int i = 0; i < V; ++i) {
    if (q[i] <= 0) continue;
    const uint32_t key = descending_key(l[i]);
    if (n == 0) first = key;
    differ |= key ^ first;
    items[n++] = {static_cast<uint64_t>(key) << 32 | static_cast<uint32_t>(i), q[i]};
  }
  if (n == 0) return -1;
  uint64_t bound = ~uint64_t{0};
  const Item* kept = items;
  int k = n;
  if (p.top_k > 0 && p.top_k < n) {
    Item* sub = s.sub.data();
    std::memcpy(sub, items, n * sizeof(Item));
    std::nth_element(sub, sub + (p.top_k - 1), sub + n, [](const Item& x, const Item& y) { return x.c < y.c; });
    bound = sub[p.top_k - 1].c;
    // The kept ones, back in id order.
    k = 0;
    differ = 0;
    for (int j = 0; j < n; ++j)
      if (items[j].c <= bound) {
        const uint32_t key = static_cast<uint32_t>(items[j].c >> 32);
        if (k == 0) first = key;
        differ |= key ^ first;
        sub[k++] = items[j];
      }
    kept = sub;
  }
  if (p.top_p < 1) {
    double total = 0;
    for (int j = 0; j < k; ++j) total += kept[j].q;
    bound = std::min(bound, mass_boundary(kept, k, p.top_p * total, differ, s.tmp.data(), s.tmp2.data()));
  }
  double total = 0;
  for (int j = 0; j < n; ++j)
    if (items[j].c <= bound) total += items[j].q;
  const double r = draw_target(p.u, total);
  double acc = 0;
  for (int j = 0; j < n; ++j) {
    if (items[j].c > bound) continue;
    acc += items[j].q;
    if (acc > r) return static_cast<int32_t>(items[j].c & 0xFFFFFFFFu);
  }
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
  const int end = std::min(j.n, (task + 1) * j.per_task);
  for (int r = task * j.per_task; r < end; ++r) {
    const float* l = j.logits + static_cast<size_t>(r) * j.V;
    const SampleRow& p = j.rows[r];
    const float max = row_max(l, j.V, j.banned);
    const float invT = static_cast<float>(1.0 / p.temperature);
    if (p.temperature <= 0 || std::isinf(invT) || std::isinf(max)) {
      j.ids[r] = greedy(l, j.V, j.banned);
    } else if (p.top_k <= 0 && p.top_p >= 1) {
      scratch.size(j.V);
      double* q = scratch.q.data();
      const double total = weigh(l, j.V, j.banned, max, invT, q);
      j.ids[r] = total > 0 ? pick_in_id_order(q, j.V, draw_target(p.u, total)) : -1;
    } else {
      j.ids[r] = sample_cut(l, j.V, j.banned, p, max, invT, scratch);
    }
  }
}

}  // namespace

void exp_weight_array(const float* xs, float* out, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    const v8f y = exp_weight_t<v8f, v8i>(*reinterpret_cast<const v8fu*>(xs + i));
    *reinterpret_cast<v8fu*>(out + i) = y;
  }
  for (; i < n; ++i) out[i] = exp_weight1(xs[i]);
}

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

// expWeight(xs: Float32Array) -> Float32Array: the sampler's exponential of each value (each in
// [-30, 0]), so that a test can hold it to sampling.ts's expWeight bit for bit.
Napi::Value ExpWeight(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
    Napi::RangeError::New(env, "expWeight: expected a Float32Array").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Float32Array xs = info[0].As<Napi::Float32Array>();
  const size_t n = xs.ElementLength();
  for (size_t i = 0; i < n; ++i) {
    if (!(xs[i] >= -30 && xs[i] <= 0)) {
      Napi::RangeError::New(env, "expWeight: values must lie in [-30, 0]").ThrowAsJavaScriptException();
      return env.Undefined();
    }
  }
  Napi::Float32Array out = Napi::Float32Array::New(env, n);
  nk::exp_weight_array(xs.Data(), out.Data(), static_cast<int>(n));
  return out;
}

}  // namespace

void register_sampler(Napi::Env env, Napi::Object exports) {
  exports.Set("sampleRows", Napi::Function::New(env, SampleRows, "sampleRows"));
  exports.Set("expWeight", Napi::Function::New(env, ExpWeight, "expWeight"));
}
