// Batched next-token sampling (see sampler.h). Each step mirrors sampleToken in
// model/sampling.ts: the same candidate set (logits within 30·temperature of the best), the same
// order of summation (id order without top-k/top-p; otherwise descending logit, ties by lower id,
// through the same stable radix sort of 32-bit keys), the same cut-offs, all in double. The
// exponentials are computed once per candidate and kept, where the JS walks them twice.
#include "sampler.h"

#include <napi.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "pool.h"

namespace nk {
namespace {

struct Scratch {
  std::vector<uint32_t> key, key2;
  std::vector<int32_t> id, id2;
  std::vector<double> probs;
  void size(int V) {
    if (static_cast<int>(key.size()) >= V) return;
    key.resize(V);
    key2.resize(V);
    id.resize(V);
    id2.resize(V);
    probs.resize(V);
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

// Stable LSD radix sort of the first n (key, id) pairs; returns the sorted ids.
const int32_t* radix_sort(Scratch& s, int n) {
  uint32_t* key = s.key.data();
  int32_t* id = s.id.data();
  uint32_t* key2 = s.key2.data();
  int32_t* id2 = s.id2.data();
  int counts[256];
  for (int shift = 0; shift < 32; shift += 8) {
    std::memset(counts, 0, sizeof counts);
    for (int i = 0; i < n; ++i) ++counts[(key[i] >> shift) & 255];
    if (counts[(key[0] >> shift) & 255] == n) continue;
    for (int b = 0, sum = 0; b < 256; ++b) {
      const int c = counts[b];
      counts[b] = sum;
      sum += c;
    }
    for (int i = 0; i < n; ++i) {
      const int at = counts[(key[i] >> shift) & 255]++;
      key2[at] = key[i];
      id2[at] = id[i];
    }
    std::swap(key, key2);
    std::swap(id, id2);
  }
  return id;
}

int32_t sample_one(const float* l, int V, const uint8_t* banned, const SampleRow& p, Scratch& s) {
  if (p.temperature <= 0) {
    int32_t best = -1;
    double best_logit = -std::numeric_limits<double>::infinity();
    for (int i = 0; i < V; ++i) {
      const double x = l[i];
      if (allowed(banned, i) && x > best_logit) {
        best_logit = x;
        best = i;
      }
    }
    return best;
  }
  double max = -std::numeric_limits<double>::infinity();
  for (int i = 0; i < V; ++i) {
    const double x = l[i];
    if (allowed(banned, i) && x > max) max = x;
  }
  const double floor = max - 30 * p.temperature;
  s.size(V);
  double* probs = s.probs.data();
  if (p.top_k <= 0 && p.top_p >= 1) {
    // Candidates in id order; probs[i] holds each one's weight (0 for the rest).
    double total = 0;
    int32_t last = -1;
    for (int i = 0; i < V; ++i) {
      const double x = l[i];
      if (allowed(banned, i) && x >= floor) {
        const double w = std::exp((x - max) / p.temperature);
        probs[i] = w;
        total += w;
        last = i;
      } else {
        probs[i] = -1;
      }
    }
    double r = p.u * total;
    for (int i = 0; i <= last; ++i) {
      if (probs[i] >= 0 && (r -= probs[i]) <= 0) return i;
    }
    return last;
  }
  int n = 0;
  for (int i = 0; i < V; ++i) {
    const double x = l[i];
    if (allowed(banned, i) && x >= floor) {
      s.key[n] = descending_key(l[i]);
      s.id[n++] = i;
    }
  }
  if (n == 0) return -1;
  const int32_t* ids = radix_sort(s, n);
  if (p.top_k > 0 && p.top_k < n) n = p.top_k;
  double total = 0;
  for (int j = 0; j < n; ++j) {
    const double w = std::exp((static_cast<double>(l[ids[j]]) - max) / p.temperature);
    probs[j] = w;
    total += w;
  }
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
  for (int r = task * j.per_task; r < end; ++r)
    j.ids[r] = sample_one(j.logits + static_cast<size_t>(r) * j.V, j.V, j.banned, j.rows[r], scratch);
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
  Napi::TypedArray params = info[2].As<Napi::TypedArray>();
  Napi::TypedArray ids = info[4].As<Napi::TypedArray>();
  if (logits.TypedArrayType() != napi_float32_array || params.TypedArrayType() != napi_float64_array || ids.TypedArrayType() != napi_int32_array)
    return bad("sampleRows: expected (Float32Array, V, Float64Array, Uint8Array | null, Int32Array)");
  const double v = info[1].As<Napi::Number>().DoubleValue();
  const size_t n = ids.ElementLength();
  if (!(v >= 1) || v != static_cast<int>(v) || n == 0) return bad("sampleRows: bad V or no rows");
  const int V = static_cast<int>(v);
  if (logits.ElementLength() < n * V || params.ElementLength() < n * 4) return bad("sampleRows: logits or params shorter than the rows");
  const uint8_t* banned = nullptr;
  if (info[3].IsTypedArray()) {
    Napi::TypedArray b = info[3].As<Napi::TypedArray>();
    if (b.TypedArrayType() != napi_uint8_array || b.ElementLength() < static_cast<size_t>(V)) return bad("sampleRows: banned must be a Uint8Array of V bytes");
    banned = static_cast<const uint8_t*>(b.ArrayBuffer().Data()) + b.ByteOffset();
  } else if (!info[3].IsNull() && !info[3].IsUndefined()) {
    return bad("sampleRows: banned must be a Uint8Array or null");
  }
  const double* p = reinterpret_cast<const double*>(static_cast<const uint8_t*>(params.ArrayBuffer().Data()) + params.ByteOffset());
  std::vector<nk::SampleRow> rows(n);
  for (size_t r = 0; r < n; ++r) {
    const double* q = p + 4 * r;
    if (!(q[3] >= 0 && q[3] < 1) || std::isnan(q[0]) || std::isnan(q[2])) return bad("sampleRows: bad sampling params");
    rows[r] = {q[0], q[1] > 2147483647.0 ? 2147483647 : static_cast<int>(q[1]), q[2], q[3]};
  }
  const float* l = reinterpret_cast<const float*>(static_cast<const uint8_t*>(logits.ArrayBuffer().Data()) + logits.ByteOffset());
  int32_t* out = reinterpret_cast<int32_t*>(static_cast<uint8_t*>(ids.ArrayBuffer().Data()) + ids.ByteOffset());
  nk::sample_rows(l, static_cast<int>(n), V, banned, rows.data(), out);
  return env.Undefined();
}

}  // namespace

void register_sampler(Napi::Env env, Napi::Object exports) {
  exports.Set("sampleRows", Napi::Function::New(env, SampleRows, "sampleRows"));
}
