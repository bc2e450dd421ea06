// Vector math shared by the kernels: exp of a vector of floats (see elementwise.cc for the
// method and its range).
#pragma once

#include <cmath>
#include <cstring>

#include "simd.h"

namespace nk {

inline vec exp_vec(vec x) {
  const vec hi = splat(88.7228393f), lo = splat(-87.3365447504f);
  const ivec over = x > hi, under = x < lo;
  x = x > hi ? hi : x;
  x = x < lo ? lo : x;
  // n = round(x / ln2) with the 1.5*2^23 trick.
  const vec magic = splat(12582912.0f);
  vec t = x * splat(1.44269504088896341f) + magic;
  const vec n = t - magic;
  vec r = x - n * splat(0.693359375f);
  r = r - n * splat(-2.12194440e-4f);
  vec p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  p = p * r * r + r + splat(1.0f);
  ivec bits;
  std::memcpy(&bits, &t, sizeof(bits));
  ivec magic_bits;
  std::memcpy(&magic_bits, &magic, sizeof(magic_bits));
  ivec n_i = bits - magic_bits;
  // 2^128 is not a float: scale by 2^127 and double p instead.
  const ivec top = n_i > 127;
  n_i = top ? 127 : n_i;
  p = top ? p * 2.0f : p;
  const ivec e = (n_i + 127) << 23;
  vec scale;
  std::memcpy(&scale, &e, sizeof(scale));
  vec y = p * scale;
  y = over ? splat(INFINITY) : y;
  y = under ? vec{} : y;
  return y;
}

}  // namespace nk
