// Vector types shared by the kernels: GCC vector extensions sized for the build machine
// (-march=native): 16 floats with AVX-512, 8 with AVX/AVX2, 4 otherwise.
#pragma once

#include <algorithm>
#include <cstdint>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace nk {

#if defined(__AVX512F__)
constexpr int VL = 16;
#elif defined(__AVX__)
constexpr int VL = 8;
#else
constexpr int VL = 4;
#endif

typedef float vec __attribute__((vector_size(VL * 4)));
typedef float uvec __attribute__((vector_size(VL * 4), aligned(4)));  // unaligned access
typedef int32_t ivec __attribute__((vector_size(VL * 4)));

// n rounded up to whole vectors.
constexpr int whole_vectors(int n) { return (n + VL - 1) / VL * VL; }

// Part t of `parts` of [0, size): every part but the last a whole number of vectors long, the
// last taking the rest (a split over the pool whose vector loops leave one scalar tail).
struct Range {
  int64_t begin, end;
};
inline Range vector_part(int64_t size, int parts, int t) {
  const int64_t chunk = (size / parts + VL - 1) / VL * VL;
  return {std::min(size, chunk * t), t == parts - 1 ? size : std::min(size, chunk * (t + 1))};
}

inline vec load(const float* p) { return *reinterpret_cast<const uvec*>(p); }
inline void store(float* p, vec v) { *reinterpret_cast<uvec*>(p) = v; }
// Every lane x. A broadcast, not `vec{} + x`: that sum is a scalar add of 0 (it cannot be left
// out, as 0 + -0 is +0) before the broadcast, which cost the LM head's inner loop a dependent
// add per weight and kept every multiply-add from taking its broadcast operand from memory.
inline vec splat(float x) {
#if defined(__AVX512F__)
  return reinterpret_cast<vec>(_mm512_set1_ps(x));
#elif defined(__AVX__)
  return reinterpret_cast<vec>(_mm256_set1_ps(x));
#elif defined(__SSE__)
  return reinterpret_cast<vec>(_mm_set1_ps(x));
#else
  vec v;
  for (int i = 0; i < VL; ++i) v[i] = x;
  return v;
#endif
}

}  // namespace nk
