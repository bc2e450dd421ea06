// Transpose (axis permutation) of a dense row-major tensor of 4-byte elements.
#pragma once

#include <cstdint>

namespace nk {

// dst = permute(src, perm); shape and perm have `rank` entries (rank <= 8).
void transpose32(const uint32_t* src, uint32_t* dst, int rank, const int64_t* shape,
                 const int* perm);

}  // namespace nk
