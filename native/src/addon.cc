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
//   info() -> { kernel, threads }
#include <napi.h>

#include <cstdint>

#include "elementwise.h"
#include "gemm.h"
#include "pool.h"
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
  exports.Set("info", Napi::Function::New(env, Info, "info"));
  return exports;
}

}  // namespace

NODE_API_MODULE(native_kernels, Init)
