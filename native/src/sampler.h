// Next-token sampling over a batch of logit rows, as model/sampling.ts's `sampleToken` defines it
// (temperature, top-k, top-p, banned ids; single-precision weights made exact integers), so that
// given the same uniform draw it picks the same token. The uniform draws come from the caller
// (each sequence's seeded generator in JS): one per row whose temperature is above 0.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace nk {

struct SampleRow {
  double temperature;  // <= 0: greedy
  int top_k;           // <= 0: off
  double top_p;        // >= 1: off
  double u;            // uniform draw in [0, 1)
};

// ids[r] = the token sampled from logits[r*V .. (r+1)*V); banned (V bytes, or null) marks ids
// that are never picked. Rows are split over the pool when there are several.
void sample_rows(const float* logits, int n, int V, const uint8_t* banned, const SampleRow* rows, int32_t* ids);

// out[i] = sampling.ts's expWeight(xs[i]), bit for bit (each xs[i] in [-30, 0]).
void exp_weight_array(const float* xs, float* out, int n);

}  // namespace nk

namespace Napi {
class Env;
class Object;
class Value;
}

// The checked sampling arguments of `n` rows of V logits: params [temperature, topK, topP, u] per
// row (Float64Array), banned (Uint8Array of V bytes, or null) and ids (Int32Array of n). On bad
// arguments it throws a RangeError in `env` and returns false. The pointers stay valid while the
// caller holds the arrays.
struct SampleArgs {
  std::vector<nk::SampleRow> rows;
  const uint8_t* banned = nullptr;
  int32_t* ids = nullptr;
};
bool read_sample_args(const Napi::Env& env, size_t n, int V, const Napi::Value& params,
                      const Napi::Value& banned, const Napi::Value& ids, SampleArgs* out);

// Adds `sampleRows(logits: Float32Array, V, params: Float64Array [temperature, topK, topP, u] per
// row, banned: Uint8Array(V) | null, ids: Int32Array(n))` to the addon's exports.
void register_sampler(Napi::Env env, Napi::Object exports);
