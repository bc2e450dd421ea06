// Vector types shared by the kernels: GCC vector extensions sized for the build machine
// (-march=native): 16 floats with AVX-512, 8 with AVX/AVX2, 4 otherwise.
#pragma once

#include <cstdint>

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

inline vec load(const float* p) { return *reinterpret_cast<const uvec*>(p); }
inline void store(float* p, vec v) { *reinterpret_cast<uvec*>(p) = v; }
inline vec splat(float x) { return vec{} + x; }

}  // namespace nk
