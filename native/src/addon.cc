// N-API surface of the native kernels. Every kernel works in place on one ArrayBuffer (the
// wasm backend's heap) and takes its arguments as a Float64Array of byte offsets and sizes,
// which keeps a call to two JS values. Offsets and extents are checked against the buffer:
// a bad call throws instead of touching memory outside the heap.
//
//   gemm(heap, [aOff, bOff, cOff, batch, m, n, k, transA, transB, strideA, strideB,
//               biasOff (-1: none), activation, alpha])      strides in elements, 0 broadcasts
//   transpose(heap, [srcOff, dstOff, rank, ...shape, ...perm])    4-byte elements
//   exp(heap, [xOff, outOff, size])                                float32
//   sum(heap, [xOff, outOff, outer, reduce, inner])                float32, x as [outer, reduce, inner]
//   add(heap, [aOff, bOff, outOff, size])                           float32, same sizes
//   info() -> { kernel, threads }
//
// Fused decoding (decoder.h): KV caches are native objects handed to JS as tagged externals.
//   cacheNew(nLayer, nHead, headSize, blockSize) -> cache     freed by cacheFree or by the GC
//   cacheFree(cache)                                           releases its memory now
//   cacheBytes(cache) -> bytes held
//   decode(heap, [nLayer, nHead, C, V, blockSize, N, ...weight offsets (wte, wpe,
//          12 per block in checkpoint order, lnf.g, lnf.b), ...rows (N), ...tokens (sum rows)],
//          caches (Array of N distinct caches), logits (Float32Array, N*V),
//          sample: null | [params, banned, ids] (sampleRows of the logits, row by row, by the
//          thread that computed each row))
//   decodeAsync(heap, params, caches, logits, sample: null | [params, banned, ids]) -> Promise:
//          the same on a worker thread, then sampleRows of the logits there (see DecodeWorker)
//
// Fused training kernels (train.h, elementwise.h); all float32 except ids (int32):
//   layerNorm(heap, [xOff, gOff, bOff, yOff, meanOff, rstdOff, n, c, eps])
//   layerNormGrad(heap, [dyOff, xOff, gOff, meanOff, rstdOff, dxOff, dgOff, dbOff, n, c])
//   attention(heap, [qkvOff, yOff, attOff, B, T, H, hs])
//   attentionGrad(heap, [dyOff, qkvOff, attOff, dqkvOff, B, T, H, hs])
//   gelu(heap, [xOff, yOff, size])
//   geluGrad(heap, [xOff, dyOff, dxOff, size])
//   embed(heap, [wteOff, wpeOff, idsOff, xOff, B, T, C, V, P])     ids checked to lie in [0, V)
//   embedGrad(heap, [dxOff, idsOff, dwteOff, dwpeOff, B, T, C, V, P])
//   tokenLogProbs(heap, [logitsOff, targetsOff, logpOff, lseOff, n, v])   targets checked in [0, v)
//   tokenLogProbsGrad(heap, [dyOff, logitsOff, targetsOff, lseOff, dlogitsOff, n, v])
//   sumSquares(heap, [count, off0, size0, off1, size1, ...]) -> sum of squares of all values
//   adamw(heap, [pOff, gOff, mOff, vOff, p1Off, m1Off, v1Off, n, lr, beta1, beta2, eps,
//                1 - beta1, 1 - beta2, decay, gradScale, bc1, bc2])
//   adamwAll(heap, [count, lr, beta1, beta2, eps, 1 - beta1, 1 - beta2, 1, gradScale, bc1, bc2,
//                   then per tensor pOff, gOff, mOff, vOff, n, decay])   p, m, v updated in place
// Sampling (sampler.h): sampleRows(logits, V, params, banned, ids).
#include <atomic>
#include <napi.h>

#include <cstdint>
#include <string>
#include <vector>

#include "decoder.h"
#include "elementwise.h"
#include "gemm.h"
#include "pool.h"
#include "train.h"
#include "sampler.h"
#include "transpose.h"

namespace {

struct Heap {
  uint8_t* data;
  size_t bytes;
  const double* p;
  size_t np;
};

bool fail(const Napi::Env& env, const char* message) {
  Napi::RangeError::New(env, message).ThrowAsJavaScriptException();
  return false;
}

bool read_args(const Napi::CallbackInfo& info, size_t min_params, Heap* h) {
  const Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsArrayBuffer() || !info[1].IsTypedArray())
    return fail(env, "expected (ArrayBuffer, Float64Array)");
  Napi::ArrayBuffer buffer = info[0].As<Napi::ArrayBuffer>();
  Napi::TypedArray typed = info[1].As<Napi::TypedArray>();
  if (typed.TypedArrayType() != napi_float64_array) return fail(env, "params must be a Float64Array");
  Napi::Float64Array params = typed.As<Napi::Float64Array>();
  h->data = static_cast<uint8_t*>(buffer.Data());
  h->bytes = buffer.ByteLength();
  h->p = params.Data();
  h->np = params.ElementLength();
  if (h->np < min_params) return fail(env, "too few params");
  return true;
}

// True when [offset, offset + 4 * floats) lies inside the heap and is 4-byte aligned.
bool in_heap(const Heap& h, double offset, double floats) {
  return offset >= 0 && floats >= 0 && static_cast<uint64_t>(offset) % 4 == 0 &&
         offset + 4.0 * floats <= static_cast<double>(h.bytes);
}

Napi::Value Gemm(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  Heap h;
  if (!read_args(info, 14, &h)) return env.Undefined();
  const double* p = h.p;
  nk::GemmArgs g;
  g.batch = static_cast<int64_t>(p[3]);
  g.m = static_cast<int64_t>(p[4]);
  g.n = static_cast<int64_t>(p[5]);
  g.k = static_cast<int64_t>(p[6]);
  g.trans_a = p[7] != 0;
  g.trans_b = p[8] != 0;
  g.stride_a = static_cast<int64_t>(p[9]);
  g.stride_b = static_cast<int64_t>(p[10]);
  g.activation = static_cast<int>(p[12]);
  g.alpha = static_cast<float>(p[13]);
  if (g.batch < 0 || g.m < 0 || g.n < 0 || g.k < 0 || g.stride_a < 0 || g.stride_b < 0) {
    fail(env, "gemm: negative size");
    return env.Undefined();
  }
  const double last = g.batch > 0 ? static_cast<double>(g.batch - 1) : 0.0;
  const double mk = static_cast<double>(g.m) * g.k, kn = static_cast<double>(g.k) * g.n;
  const double mn = static_cast<double>(g.m) * g.n;
  const bool has_bias = p[11] >= 0;
  if (!in_heap(h, p[0], g.stride_a * last + mk) || !in_heap(h, p[1], g.stride_b * last + kn) ||
      !in_heap(h, p[2], g.batch * mn) || (has_bias && !in_heap(h, p[11], g.n))) {
    fail(env, "gemm: operand outside the heap");
    return env.Undefined();
  }
  g.a = reinterpret_cast<const float*>(h.data + static_cast<uint64_t>(p[0]));
  g.b = reinterpret_cast<const float*>(h.data + static_cast<uint64_t>(p[1]));
  g.c = reinterpret_cast<float*>(h.data + static_cast<uint64_t>(p[2]));
  g.bias = has_bias ? reinterpret_cast<const float*>(h.data + static_cast<uint64_t>(p[11])) : nullptr;
  nk::sgemm(g);
  return env.Undefined();
}

Napi::Value Transpose(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  Heap h;
  if (!read_args(info, 3, &h)) return env.Undefined();
  const int rank = static_cast<int>(h.p[2]);
  if (rank < 0 || rank > 8 || h.np < 3 + 2 * static_cast<size_t>(rank)) {
    fail(env, "transpose: bad rank");
    return env.Undefined();
  }
  int64_t shape[8];
  int perm[8];
  double size = 1;
  unsigned seen = 0;
  for (int i = 0; i < rank; ++i) {
    shape[i] = static_cast<int64_t>(h.p[3 + i]);
    perm[i] = static_cast<int>(h.p[3 + rank + i]);
    if (shape[i] < 0 || perm[i] < 0 || perm[i] >= rank || (seen & (1u << perm[i]))) {
      fail(env, "transpose: bad shape or permutation");
      return env.Undefined();
    }
    seen |= 1u << perm[i];
    size *= static_cast<double>(shape[i]);
  }
  if (!in_heap(h, h.p[0], size) || !in_heap(h, h.p[1], size)) {
    fail(env, "transpose: operand outside the heap");
    return env.Undefined();
  }
  nk::transpose32(reinterpret_cast<const uint32_t*>(h.data + static_cast<uint64_t>(h.p[0])),
                  reinterpret_cast<uint32_t*>(h.data + static_cast<uint64_t>(h.p[1])), rank, shape,
                  perm);
  return env.Undefined();
}

Napi::Value Exp(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  Heap h;
  if (!read_args(info, 3, &h)) return env.Undefined();
  const double size = h.p[2];
  if (size < 0 || !in_heap(h, h.p[0], size) || !in_heap(h, h.p[1], size)) {
    fail(env, "exp: operand outside the heap");
    return env.Undefined();
  }
  nk::exp_f32(reinterpret_cast<const float*>(h.data + static_cast<uint64_t>(h.p[0])),
              reinterpret_cast<float*>(h.data + static_cast<uint64_t>(h.p[1])),
              static_cast<int64_t>(size));
  return env.Undefined();
}

Napi::Value Add(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  Heap h;
  if (!read_args(info, 4, &h)) return env.Undefined();
  const double n = h.p[3];
  if (n < 0 || n != static_cast<double>(static_cast<int64_t>(n)) || !in_heap(h, h.p[0], n) || !in_heap(h, h.p[1], n) || !in_heap(h, h.p[2], n)) {
    fail(env, "add: operand outside the heap");
    return env.Undefined();
  }
  nk::add_f32(reinterpret_cast<const float*>(h.data + static_cast<uint64_t>(h.p[0])),
              reinterpret_cast<const float*>(h.data + static_cast<uint64_t>(h.p[1])),
              reinterpret_cast<float*>(h.data + static_cast<uint64_t>(h.p[2])), static_cast<int64_t>(n));
  return env.Undefined();
}

Napi::Value Sum(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  Heap h;
  if (!read_args(info, 5, &h)) return env.Undefined();
  const double outer = h.p[2], reduce = h.p[3], inner = h.p[4];
  if (outer < 0 || reduce < 0 || inner < 0 || !in_heap(h, h.p[0], outer * reduce * inner) ||
      !in_heap(h, h.p[1], outer * inner)) {
    fail(env, "sum: operand outside the heap");
    return env.Undefined();
  }
  nk::sum_f32(reinterpret_cast<const float*>(h.data + static_cast<uint64_t>(h.p[0])),
              reinterpret_cast<float*>(h.data + static_cast<uint64_t>(h.p[1])),
              static_cast<int64_t>(outer), static_cast<int64_t>(reduce), static_cast<int64_t>(inner));
  return env.Undefined();
}

// ------------------------------------------------------------------ fused decoding

const napi_type_tag kCacheTag = {0x6b7663616368650aULL, 0x9d2c5e1f4b3a7081ULL};

nk::KVCache* unwrap_cache(const Napi::Env& env, const Napi::Value& value) {
  if (!value.IsExternal()) return nullptr;
  bool tagged = false;
  if (napi_check_object_type_tag(env, value, &kCacheTag, &tagged) != napi_ok || !tagged) return nullptr;
  return value.As<Napi::External<nk::KVCache>>().Data();
}

Napi::Value CacheNew(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  int dims[4];
  for (int i = 0; i < 4; ++i) {
    if (info.Length() <= static_cast<size_t>(i) || !info[i].IsNumber()) {
      fail(env, "cacheNew: expected (nLayer, nHead, headSize, blockSize)");
      return env.Undefined();
    }
    const double d = info[i].As<Napi::Number>().DoubleValue();
    if (!(d >= 1 && d <= 1 << 20) || d != static_cast<int>(d)) {
      fail(env, "cacheNew: bad dimension");
      return env.Undefined();
    }
    dims[i] = static_cast<int>(d);
  }
  auto* cache = new nk::KVCache(dims[0], dims[1], dims[2], dims[3]);
  auto ext = Napi::External<nk::KVCache>::New(env, cache, [](Napi::Env, nk::KVCache* c) { delete c; });
  napi_type_tag_object(env, ext, &kCacheTag);
  return ext;
}

Napi::Value CacheFree(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  nk::KVCache* cache = info.Length() > 0 ? unwrap_cache(env, info[0]) : nullptr;
  if (cache == nullptr) fail(env, "cacheFree: not a KV cache");
  else cache->release_when_idle();
  return env.Undefined();
}

Napi::Value CacheBytes(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  nk::KVCache* cache = info.Length() > 0 ? unwrap_cache(env, info[0]) : nullptr;
  if (cache == nullptr) {
    fail(env, "cacheBytes: not a KV cache");
    return env.Undefined();
  }
  return Napi::Number::New(env, static_cast<double>(cache->bytes()));
}

// The checked arguments of a decode call: every cache reserved for its rows, every pointer
// inside the heap (or the logits array), which the caller keeps alive while it runs.
struct DecodeCall {
  nk::DecoderShape shape;
  nk::DecoderWeights w;
  std::vector<nk::KVCache*> caches;
  std::vector<int> rows;
  std::vector<int32_t> tokens;
  float* logits = nullptr;
};

// Reads decode(heap, params, caches, logits); throws in JS and returns false on bad arguments.
bool read_decode(const Napi::CallbackInfo& info, DecodeCall* call) {
  const Napi::Env env = info.Env();
  Heap h;
  if (!read_args(info, 6, &h)) return false;
  const double* p = h.p;
  nk::DecoderShape& shape = call->shape;
  shape.n_layer = static_cast<int>(p[0]);
  shape.n_head = static_cast<int>(p[1]);
  shape.n_embd = static_cast<int>(p[2]);
  shape.vocab = static_cast<int>(p[3]);
  shape.block_size = static_cast<int>(p[4]);
  const int n = static_cast<int>(p[5]);
  if (shape.n_layer < 1 || shape.n_head < 1 || shape.n_embd < 1 || shape.vocab < 1 ||
      shape.block_size < 1 || shape.n_embd % shape.n_head != 0 || n < 1) {
    fail(env, "decode: bad shape");
    return false;
  }
  const size_t n_weights = 4 + 12 * static_cast<size_t>(shape.n_layer);
  if (h.np < 6 + n_weights + n) {
    fail(env, "decode: too few params");
    return false;
  }
  if (info.Length() < 4 || !info[2].IsArray() || !info[3].IsTypedArray() ||
      info[3].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
    fail(env, "decode: expected (ArrayBuffer, Float64Array, caches, Float32Array)");
    return false;
  }
  // Weights, with the number of floats each must span.
  const double C = shape.n_embd;
  const double sizes[12] = {C, C, C * 3 * C, 3 * C, C * C, C, C, C, C * 4 * C, 4 * C, 4 * C * C, C};
  const float* wp[4 + 12 * 64];
  if (shape.n_layer > 64) {
    fail(env, "decode: too many layers");
    return false;
  }
  for (size_t i = 0; i < n_weights; ++i) {
    double floats;
    if (i == 0) floats = static_cast<double>(shape.vocab) * C;
    else if (i == 1) floats = static_cast<double>(shape.block_size) * C;
    else if (i >= n_weights - 2) floats = C;
    else floats = sizes[(i - 2) % 12];
    if (!in_heap(h, p[6 + i], floats)) {
      fail(env, "decode: weight outside the heap");
      return false;
    }
    wp[i] = reinterpret_cast<const float*>(h.data + static_cast<uint64_t>(p[6 + i]));
  }
  nk::DecoderWeights& w = call->w;
  w.wte = wp[0];
  w.wpe = wp[1];
  for (int l = 0; l < shape.n_layer; ++l) {
    const float* const* q = wp + 2 + 12 * l;
    w.layers.push_back({q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7], q[8], q[9], q[10], q[11]});
  }
  w.lnf_g = wp[n_weights - 2];
  w.lnf_b = wp[n_weights - 1];
  Napi::Array list = info[2].As<Napi::Array>();
  Napi::Float32Array logits = info[3].As<Napi::Float32Array>();
  if (list.Length() != static_cast<uint32_t>(n) ||
      logits.ElementLength() != static_cast<size_t>(n) * shape.vocab) {
    fail(env, "decode: caches or logits do not match N");
    return false;
  }
  std::vector<nk::KVCache*>& caches = call->caches;
  std::vector<int>& rows = call->rows;
  caches.resize(n);
  rows.resize(n);
  const double* tokens_in = p + 6 + n_weights + n;
  size_t total = 0;
  for (int s = 0; s < n; ++s) {
    caches[s] = unwrap_cache(env, list.Get(static_cast<uint32_t>(s)));
    const double r = p[6 + n_weights + s];
    if (caches[s] == nullptr || !caches[s]->matches(shape)) {
      fail(env, "decode: not a KV cache of this shape");
      return false;
    }
    if (!(r >= 1) || caches[s]->length() + r > shape.block_size) {
      fail(env, "decode: a sequence would exceed blockSize");
      return false;
    }
    if (caches[s]->in_flight()) {
      fail(env, "decode: a KV cache is in a running step");
      return false;
    }
    for (int t = 0; t < s; ++t)
      if (caches[t] == caches[s]) {
        fail(env, "decode: the same cache twice in a batch");
        return false;
      }
    rows[s] = static_cast<int>(r);
    total += rows[s];
  }
  if (h.np < 6 + n_weights + n + total) {
    fail(env, "decode: too few tokens");
    return false;
  }
  std::vector<int32_t>& tokens = call->tokens;
  tokens.resize(total);
  for (size_t i = 0; i < total; ++i) {
    const double t = tokens_in[i];
    if (!(t >= 0 && t < shape.vocab) || t != static_cast<int32_t>(t)) {
      fail(env, "decode: token id out of range");
      return false;
    }
    tokens[i] = static_cast<int32_t>(t);
  }
  for (int s = 0; s < n; ++s) {
    if (!caches[s]->reserve(caches[s]->length() + rows[s])) {
      fail(env, "decode: out of memory for the KV cache");
      return false;
    }
  }
  call->logits = logits.Data();
  return true;
}

// The step, then (with `sample`) each row's next token, sampled by the thread that computed it.
void run_decode(const DecodeCall& c, const SampleArgs* sample = nullptr) {
  const nk::StepSample step_sample = sample ? nk::StepSample{sample->banned, sample->rows.data(), sample->ids} : nk::StepSample{};
  nk::decode(c.shape, c.w, {static_cast<int>(c.caches.size()), c.caches.data(), c.rows.data(), c.tokens.data(), c.logits}, sample ? &step_sample : nullptr);
}

// The optional `sample` argument of decode and decodeAsync, info[4]: null | [params, banned, ids].
// False (and a thrown error) when it is neither; *has says whether it was given.
bool read_step_sample(const Napi::CallbackInfo& info, const DecodeCall& call, const char* who, SampleArgs* args, bool* has) {
  *has = info.Length() > 4 && info[4].IsArray();
  if (*has) {
    Napi::Array s = info[4].As<Napi::Array>();
    if (s.Length() != 3) return fail(info.Env(), who);
    return read_sample_args(info.Env(), call.caches.size(), call.shape.vocab, s.Get(0u), s.Get(1u), s.Get(2u), args);
  }
  if (info.Length() > 4 && !info[4].IsNull() && !info[4].IsUndefined()) return fail(info.Env(), who);
  return true;
}

Napi::Value Decode(const Napi::CallbackInfo& info) {
  DecodeCall call;
  SampleArgs args;
  bool sample = false;
  if (read_decode(info, &call) && read_step_sample(info, call, "decode: sample must be [params, banned, ids] or null", &args, &sample))
    run_decode(call, sample ? &args : nullptr);
  return info.Env().Undefined();
}

// decodeAsync: decode on a worker thread while the JS thread goes on, then optionally samples
// every row of the logits there too (sampleRows). Resolves when both are done. Until then its
// caches refuse other decodes and a cacheFree of them takes effect when the step ends; the heap,
// the caches, the logits and the sampling arrays are held so the collector keeps them. The heap
// must not move meanwhile: V8 grows wasm memory in place on 64-bit hosts, and the caller keeps
// the weights alive (GPT.dispose waits for its running steps).
class DecodeWorker : public Napi::AsyncWorker {
 public:
  DecodeWorker(Napi::Env env, DecodeCall call, bool sample, SampleArgs args)
      : Napi::AsyncWorker(env, "nkDecode"), deferred_(Napi::Promise::Deferred::New(env)),
        call_(std::move(call)), sample_(sample), args_(std::move(args)) {
    for (nk::KVCache* c : call_.caches) c->enter_flight();
  }
  Napi::Promise promise() const { return deferred_.Promise(); }
  void hold(const Napi::Value& v) {
    if (v.IsObject()) held_.push_back(Napi::Persistent(v.As<Napi::Object>()));
  }
  void Execute() override { run_decode(call_, sample_ ? &args_ : nullptr); }
  void OnOK() override {
    settle();
    deferred_.Resolve(Env().Undefined());
  }
  void OnError(const Napi::Error& e) override {
    settle();
    deferred_.Reject(e.Value());
  }

 private:
  void settle() {
    for (nk::KVCache* c : call_.caches) c->leave_flight();
    for (auto& r : held_) r.Reset();
  }
  Napi::Promise::Deferred deferred_;
  DecodeCall call_;
  bool sample_;
  SampleArgs args_;
  std::vector<Napi::ObjectReference> held_;
};

// decodeAsync(heap, params, caches, logits, sample: null | [params, banned, ids]) -> Promise
Napi::Value DecodeAsync(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  DecodeCall call;
  if (!read_decode(info, &call)) return env.Undefined();
  SampleArgs args;
  bool sample = false;
  if (!read_step_sample(info, call, "decodeAsync: sample must be [params, banned, ids] or null", &args, &sample)) return env.Undefined();
  auto* worker = new DecodeWorker(env, std::move(call), sample, std::move(args));
  for (size_t i = 0; i < 5 && i < info.Length(); ++i) worker->hold(info[i]);
  worker->Queue();
  return worker->promise();
}

// ------------------------------------------------------------------ fused training kernels

// Sizes must be whole numbers in [0, 2^40]: they index memory.
bool sizes_ok(const double* p, size_t from, size_t to) {
  for (size_t i = from; i < to; ++i)
    if (!(p[i] >= 0 && p[i] <= 1099511627776.0) || p[i] != static_cast<double>(static_cast<int64_t>(p[i])))
      return false;
  return true;
}

template <typename T>
T* at(const Heap& h, double offset) {
  return reinterpret_cast<T*>(h.data + static_cast<uint64_t>(offset));
}

Napi::Value LayerNorm(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  Heap h;
  if (!read_args(info, 9, &h)) return env.Undefined();
  const double* p = h.p;
  const double n = p[6], c = p[7];
  if (!sizes_ok(p, 6, 8) || !in_heap(h, p[0], n * c) || !in_heap(h, p[1], c) || !in_heap(h, p[2], c) ||
      !in_heap(h, p[3], n * c) || !in_heap(h, p[4], n) || !in_heap(h, p[5], n)) {
    fail(env, "layerNorm: operand outside the heap");
    return env.Undefined();
  }
  nk::layer_norm(at<const float>(h, p[0]), at<const float>(h, p[1]), at<const float>(h, p[2]),
                 static_cast<float>(p[8]), static_cast<int64_t>(n), static_cast<int64_t>(c),
                 at<float>(h, p[3]), at<float>(h, p[4]), at<float>(h, p[5]));
  return env.Undefined();
}

Napi::Value LayerNormGrad(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  Heap h;
  if (!read_args(info, 10, &h)) return env.Undefined();
  const double* p = h.p;
  const double n = p[8], c = p[9];
  if (!sizes_ok(p, 8, 10) || !in_heap(h, p[0], n * c) || !in_heap(h, p[1], n * c) || !in_heap(h, p[2], c) ||
      !in_heap(h, p[3], n) || !in_heap(h, p[4], n) || !in_heap(h, p[5], n * c) || !in_heap(h, p[6], c) ||
      !in_heap(h, p[7], c)) {
    fail(env, "layerNormGrad: operand outside the heap");
    return env.Undefined();
  }
  nk::layer_norm_grad(at<const float>(h, p[0]), at<const float>(h, p[1]), at<const float>(h, p[2]),
                      at<const float>(h, p[3]), at<const float>(h, p[4]), static_cast<int64_t>(n),
                      static_cast<int64_t>(c), at<float>(h, p[5]), at<float>(h, p[6]), at<float>(h, p[7]));
  return env.Undefined();
}

Napi::Value Attention(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  Heap h;
  if (!read_args(info, 7, &h)) return env.Undefined();
  const double* p = h.p;
  const double B = p[3], T = p[4], H = p[5], hs = p[6], C = H * hs;
  if (!sizes_ok(p, 3, 7) || B * H > 1 << 30 || !in_heap(h, p[0], B * T * 3 * C) ||
      !in_heap(h, p[1], B * T * C) || !in_heap(h, p[2], B * H * T * T)) {
    fail(env, "attention: operand outside the heap");
    return env.Undefined();
  }
  nk::attention(at<const float>(h, p[0]), static_cast<int64_t>(B), static_cast<int64_t>(T),
                static_cast<int64_t>(H), static_cast<int64_t>(hs), at<float>(h, p[1]), at<float>(h, p[2]));
  return env.Undefined();
}

Napi::Value AttentionGrad(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  Heap h;
  if (!read_args(info, 8, &h)) return env.Undefined();
  const double* p = h.p;
  const double B = p[4], T = p[5], H = p[6], hs = p[7], C = H * hs;
  if (!sizes_ok(p, 4, 8) || B * H > 1 << 30 || !in_heap(h, p[0], B * T * C) ||
      !in_heap(h, p[1], B * T * 3 * C) || !in_heap(h, p[2], B * H * T * T) ||
      !in_heap(h, p[3], B * T * 3 * C)) {
    fail(env, "attentionGrad: operand outside the heap");
    return env.Undefined();
  }
  nk::attention_grad(at<const float>(h, p[0]), at<const float>(h, p[1]), at<const float>(h, p[2]),
                     static_cast<int64_t>(B), static_cast<int64_t>(T), static_cast<int64_t>(H),
                     static_cast<int64_t>(hs), at<float>(h, p[3]));
  return env.Undefined();
}

Napi::Value Gelu(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  Heap h;
  if (!read_args(info, 3, &h)) return env.Undefined();
  const double size = h.p[2];
  if (!sizes_ok(h.p, 2, 3) || !in_heap(h, h.p[0], size) || !in_heap(h, h.p[1], size)) {
    fail(env, "gelu: operand outside the heap");
    return env.Undefined();
  }
  nk::gelu_f32(at<const float>(h, h.p[0]), at<float>(h, h.p[1]), static_cast<int64_t>(size));
  return env.Undefined();
}

Napi::Value GeluGrad(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  Heap h;
  if (!read_args(info, 4, &h)) return env.Undefined();
  const double size = h.p[3];
  if (!sizes_ok(h.p, 3, 4) || !in_heap(h, h.p[0], size) || !in_heap(h, h.p[1], size) ||
      !in_heap(h, h.p[2], size)) {
    fail(env, "geluGrad: operand outside the heap");
    return env.Undefined();
  }
  nk::gelu_grad_f32(at<const float>(h, h.p[0]), at<const float>(h, h.p[1]), at<float>(h, h.p[2]),
                    static_cast<int64_t>(size));
  return env.Undefined();
}

// Checks the shared layout of embed and embedGrad: p[4..8] = B, T, C, V, P; ids at p[idsAt].
bool embed_ids_ok(const Napi::Env& env, const Heap& h, int ids_at, const char* name) {
  const double* p = h.p;
  const double B = p[4], T = p[5], C = p[6], V = p[7], P = p[8];
  if (!sizes_ok(p, 4, 9) || T > P || !in_heap(h, p[ids_at], B * T)) {
    std::string message = std::string(name) + ": bad shape or operand outside the heap";
    return fail(env, message.c_str());
  }
  const int32_t* ids = at<const int32_t>(h, p[ids_at]);
  for (int64_t i = 0, n = static_cast<int64_t>(B * T); i < n; ++i) {
    if (ids[i] < 0 || ids[i] >= V) {
      std::string message = std::string(name) + ": token id " + std::to_string(ids[i]) +
                            " outside vocabulary [0, " + std::to_string(static_cast<int64_t>(V)) + ")";
      return fail(env, message.c_str());
    }
  }
  (void)C;
  return true;
}

Napi::Value Embed(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  Heap h;
  if (!read_args(info, 9, &h)) return env.Undefined();
  const double* p = h.p;
  if (!embed_ids_ok(env, h, 2, "embed")) return env.Undefined();
  const double B = p[4], T = p[5], C = p[6], V = p[7], P = p[8];
  if (!in_heap(h, p[0], V * C) || !in_heap(h, p[1], P * C) || !in_heap(h, p[3], B * T * C)) {
    fail(env, "embed: operand outside the heap");
    return env.Undefined();
  }
  nk::embed(at<const float>(h, p[0]), at<const float>(h, p[1]), at<const int32_t>(h, p[2]),
            static_cast<int64_t>(B), static_cast<int64_t>(T), static_cast<int64_t>(C), at<float>(h, p[3]));
  return env.Undefined();
}

Napi::Value EmbedGrad(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  Heap h;
  if (!read_args(info, 9, &h)) return env.Undefined();
  const double* p = h.p;
  if (!embed_ids_ok(env, h, 1, "embedGrad")) return env.Undefined();
  const double B = p[4], T = p[5], C = p[6], V = p[7], P = p[8];
  if (!in_heap(h, p[0], B * T * C) || !in_heap(h, p[2], V * C) || !in_heap(h, p[3], P * C)) {
    fail(env, "embedGrad: operand outside the heap");
    return env.Undefined();
  }
  nk::embed_grad(at<const float>(h, p[0]), at<const int32_t>(h, p[1]), static_cast<int64_t>(B),
                 static_cast<int64_t>(T), static_cast<int64_t>(C), static_cast<int64_t>(V),
                 static_cast<int64_t>(P), at<float>(h, p[2]), at<float>(h, p[3]));
  return env.Undefined();
}

// Targets [n] int32 at `offset`, each in [0, v).
bool targets_ok(const Napi::Env& env, const Heap& h, double offset, double n, double v, const char* name) {
  if (!in_heap(h, offset, n)) return fail(env, (std::string(name) + ": operand outside the heap").c_str());
  const int32_t* t = at<const int32_t>(h, offset);
  for (int64_t i = 0; i < static_cast<int64_t>(n); ++i) {
    if (t[i] < 0 || t[i] >= v) {
      std::string message = std::string(name) + ": target " + std::to_string(t[i]) + " outside [0, " +
                            std::to_string(static_cast<int64_t>(v)) + ")";
      return fail(env, message.c_str());
    }
  }
  return true;
}

Napi::Value TokenLogProbs(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  Heap h;
  if (!read_args(info, 6, &h)) return env.Undefined();
  const double* p = h.p;
  const double n = p[4], v = p[5];
  if (!sizes_ok(p, 4, 6) || v < 1 || !in_heap(h, p[0], n * v) || !in_heap(h, p[2], n) || !in_heap(h, p[3], n)) {
    fail(env, "tokenLogProbs: operand outside the heap");
    return env.Undefined();
  }
  if (!targets_ok(env, h, p[1], n, v, "tokenLogProbs")) return env.Undefined();
  nk::token_log_probs(at<const float>(h, p[0]), at<const int32_t>(h, p[1]), static_cast<int64_t>(n),
                      static_cast<int64_t>(v), at<float>(h, p[2]), at<float>(h, p[3]));
  return env.Undefined();
}

Napi::Value TokenLogProbsGrad(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  Heap h;
  if (!read_args(info, 7, &h)) return env.Undefined();
  const double* p = h.p;
  const double n = p[5], v = p[6];
  if (!sizes_ok(p, 5, 7) || v < 1 || !in_heap(h, p[0], n) || !in_heap(h, p[1], n * v) || !in_heap(h, p[3], n) ||
      !in_heap(h, p[4], n * v)) {
    fail(env, "tokenLogProbsGrad: operand outside the heap");
    return env.Undefined();
  }
  if (!targets_ok(env, h, p[2], n, v, "tokenLogProbsGrad")) return env.Undefined();
  nk::token_log_probs_grad(at<const float>(h, p[0]), at<const float>(h, p[1]), at<const int32_t>(h, p[2]),
                           at<const float>(h, p[3]), static_cast<int64_t>(n), static_cast<int64_t>(v),
                           at<float>(h, p[4]));
  return env.Undefined();
}

Napi::Value SumSquares(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  Heap h;
  if (!read_args(info, 1, &h)) return env.Undefined();
  const double count = h.p[0];
  if (!sizes_ok(h.p, 0, 1) || h.np < 1 + 2 * count) {
    fail(env, "sumSquares: too few params");
    return env.Undefined();
  }
  std::vector<const float*> data(static_cast<size_t>(count));
  std::vector<int64_t> sizes(static_cast<size_t>(count));
  for (size_t a = 0; a < data.size(); ++a) {
    const double off = h.p[1 + 2 * a], size = h.p[2 + 2 * a];
    if (!sizes_ok(h.p, 2 + 2 * a, 3 + 2 * a) || !in_heap(h, off, size)) {
      fail(env, "sumSquares: operand outside the heap");
      return env.Undefined();
    }
    data[a] = at<const float>(h, off);
    sizes[a] = static_cast<int64_t>(size);
  }
  return Napi::Number::New(env, nk::sum_squares(data.data(), sizes.data(), static_cast<int>(count)));
}

// An AdamW step's scalars from 10 params: lr, beta1, beta2, eps, 1 - beta1, 1 - beta2, decay,
// gradScale, bc1, bc2.
nk::AdamWStep adamw_step(const double* p) {
  nk::AdamWStep s;
  s.lr = static_cast<float>(p[0]);
  s.beta1 = static_cast<float>(p[1]);
  s.beta2 = static_cast<float>(p[2]);
  s.eps = static_cast<float>(p[3]);
  s.one_minus_beta1 = static_cast<float>(p[4]);
  s.one_minus_beta2 = static_cast<float>(p[5]);
  s.decay = static_cast<float>(p[6]);
  s.grad_scale = static_cast<float>(p[7]);
  s.bc1 = static_cast<float>(p[8]);
  s.bc2 = static_cast<float>(p[9]);
  return s;
}

Napi::Value AdamW(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  Heap h;
  if (!read_args(info, 18, &h)) return env.Undefined();
  const double* p = h.p;
  const double n = p[7];
  bool ok = sizes_ok(p, 7, 8);
  for (int i = 0; i < 7 && ok; ++i) ok = in_heap(h, p[i], n);
  if (!ok) {
    fail(env, "adamw: operand outside the heap");
    return env.Undefined();
  }
  const nk::AdamWStep s = adamw_step(p + 8);
  nk::adamw(s, at<const float>(h, p[0]), at<const float>(h, p[1]), at<const float>(h, p[2]),
            at<const float>(h, p[3]), static_cast<int64_t>(n), at<float>(h, p[4]), at<float>(h, p[5]),
            at<float>(h, p[6]));
  return env.Undefined();
}

Napi::Value AdamWAll(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  Heap h;
  if (!read_args(info, 11, &h)) return env.Undefined();
  const double* p = h.p;
  const double count = p[0];
  if (!sizes_ok(p, 0, 1) || h.np < 11 + 6 * count) {
    fail(env, "adamwAll: too few params");
    return env.Undefined();
  }
  const nk::AdamWStep s = adamw_step(p + 1);  // its decay is each tensor's own below
  std::vector<nk::AdamWTensor> tensors(static_cast<size_t>(count));
  for (size_t a = 0; a < tensors.size(); ++a) {
    const double* t = p + 11 + 6 * a;
    bool ok = sizes_ok(t, 4, 5);
    for (int i = 0; i < 4 && ok; ++i) ok = in_heap(h, t[i], t[4]);
    if (!ok) {
      fail(env, "adamwAll: operand outside the heap");
      return env.Undefined();
    }
    tensors[a] = {at<float>(h, t[0]), at<const float>(h, t[1]), at<float>(h, t[2]), at<float>(h, t[3]), static_cast<int64_t>(t[4]), static_cast<float>(t[5])};
  }
  nk::adamw_all(s, tensors.data(), static_cast<int>(count));
  return env.Undefined();
}

// ------------------------------------------------------------------ pool check

// poolCheck(jobs): runs `jobs` parallel jobs of 1..13 tasks back to back (the pattern of a decode
// or training step: many short jobs whose task counts change), each task counting its index in
// the job's own slot, and returns how many tasks ran twice, ran outside their job's range, or
// never ran. A correct pool gives zeros; the test runs it under load to give races their chance.
namespace {
struct PoolCheckJob {
  int n;
  std::atomic<int> hits[16];
};
std::atomic<int64_t> pool_check_out_of_range{0};
void pool_check_task(void* ctx, int i) {
  auto* job = static_cast<PoolCheckJob*>(ctx);
  if (i < 0 || i >= job->n) pool_check_out_of_range.fetch_add(1, std::memory_order_relaxed);
  else job->hits[i].fetch_add(1, std::memory_order_relaxed);
}
}  // namespace

Napi::Value PoolCheck(const Napi::CallbackInfo& info) {
  const int64_t jobs = info[0].As<Napi::Number>().Int64Value();
  // Slots live for the whole call, so a task that runs with an older job's context reads live
  // memory and is counted instead of crashing.
  static PoolCheckJob slots[4];
  pool_check_out_of_range.store(0);
  int64_t duplicates = 0, missing = 0;
  for (int64_t j = 0; j < jobs; ++j) {
    PoolCheckJob& job = slots[j % 4];
    job.n = 1 + static_cast<int>((j * 7) % 13);
    for (auto& h : job.hits) h.store(0, std::memory_order_relaxed);
    nk::parallel_for(job.n, pool_check_task, &job);
    for (int i = 0; i < job.n; ++i) {
      const int h = job.hits[i].load(std::memory_order_relaxed);
      if (h > 1) duplicates += h - 1;
      if (h == 0) ++missing;
    }
  }
  Napi::Object out = Napi::Object::New(info.Env());
  out.Set("jobs", static_cast<double>(jobs));
  out.Set("duplicates", static_cast<double>(duplicates));
  out.Set("outOfRange", static_cast<double>(pool_check_out_of_range.load()));
  out.Set("missing", static_cast<double>(missing));
  return out;
}

// ------------------------------------------------------------------ module

Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Object out = Napi::Object::New(info.Env());
  out.Set("kernel", nk::sgemm_kernel_name());
  out.Set("threads", nk::Pool::instance().size());
  return out;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("gemm", Napi::Function::New(env, Gemm, "gemm"));
  exports.Set("transpose", Napi::Function::New(env, Transpose, "transpose"));
  exports.Set("exp", Napi::Function::New(env, Exp, "exp"));
  exports.Set("sum", Napi::Function::New(env, Sum, "sum"));
  exports.Set("add", Napi::Function::New(env, Add, "add"));
  exports.Set("info", Napi::Function::New(env, Info, "info"));
  exports.Set("poolCheck", Napi::Function::New(env, PoolCheck, "poolCheck"));
  exports.Set("cacheNew", Napi::Function::New(env, CacheNew, "cacheNew"));
  exports.Set("cacheFree", Napi::Function::New(env, CacheFree, "cacheFree"));
  exports.Set("cacheBytes", Napi::Function::New(env, CacheBytes, "cacheBytes"));
  exports.Set("decode", Napi::Function::New(env, Decode, "decode"));
  exports.Set("decodeAsync", Napi::Function::New(env, DecodeAsync, "decodeAsync"));
  // Fused training kernels.
  exports.Set("layerNorm", Napi::Function::New(env, LayerNorm, "layerNorm"));
  exports.Set("layerNormGrad", Napi::Function::New(env, LayerNormGrad, "layerNormGrad"));
  exports.Set("attention", Napi::Function::New(env, Attention, "attention"));
  exports.Set("attentionGrad", Napi::Function::New(env, AttentionGrad, "attentionGrad"));
  exports.Set("gelu", Napi::Function::New(env, Gelu, "gelu"));
  exports.Set("geluGrad", Napi::Function::New(env, GeluGrad, "geluGrad"));
  exports.Set("embed", Napi::Function::New(env, Embed, "embed"));
  exports.Set("embedGrad", Napi::Function::New(env, EmbedGrad, "embedGrad"));
  exports.Set("tokenLogProbs", Napi::Function::New(env, TokenLogProbs, "tokenLogProbs"));
  exports.Set("tokenLogProbsGrad", Napi::Function::New(env, TokenLogProbsGrad, "tokenLogProbsGrad"));
  exports.Set("sumSquares", Napi::Function::New(env, SumSquares, "sumSquares"));
  exports.Set("adamw", Napi::Function::New(env, AdamW, "adamw"));
  exports.Set("adamwAll", Napi::Function::New(env, AdamWAll, "adamwAll"));
  register_sampler(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(native_kernels, Init)
