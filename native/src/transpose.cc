// Axis permutation for 4-byte elements. The permutation is first simplified: size-1 axes are
// dropped and runs of axes that stay adjacent and in order are merged, so [B,T,H,hs] ->
// [B,H,T,hs] becomes a copy of hs-long rows and a 2-D transpose stays 2-D. Then either
//   - the last axis is kept: contiguous rows are copied (memcpy), or
//   - it moves: 16x16 tiles between the output's last axis and the axis that is contiguous in
//     the input, so both reads and writes touch whole cache lines.
// Large tensors are split over the pool along the outermost output axis.
#include "transpose.h"

#include <algorithm>
#include <cstring>

#include "pool.h"

namespace nk {
namespace {

constexpr int kMaxRank = 8;
constexpr int64_t kTile = 16;
constexpr int64_t kParallelElements = 1 << 18;

struct Layout {
  int rank = 0;
  int64_t out_shape[kMaxRank];
  int64_t in_stride[kMaxRank];   // input stride of each output axis
  int64_t out_stride[kMaxRank];  // output stride of each output axis
};

Layout simplify(int rank, const int64_t* shape, const int* perm) {
  // Drop size-1 axes, renumbering the rest.
  int renum[kMaxRank], n = 0;
  for (int i = 0; i < rank; ++i) renum[i] = shape[i] == 1 ? -1 : n++;
  int64_t sh[kMaxRank];
  int p[kMaxRank], m = 0;
  for (int i = 0; i < rank; ++i)
    if (shape[i] != 1) sh[renum[i]] = shape[i];
  for (int i = 0; i < rank; ++i)
    if (renum[perm[i]] >= 0) p[m++] = renum[perm[i]];
  // Merge output-adjacent axes that are also input-adjacent: p[i+1] == p[i] + 1.
  int64_t msh[kMaxRank];  // merged input shape, indexed by merged input axis
  int group_of_input[kMaxRank];
  int groups = 0;
  int gp[kMaxRank];  // output order of merged groups, as the first input axis of each group
  for (int i = 0; i < m;) {
    int j = i + 1;
    while (j < m && p[j] == p[j - 1] + 1) ++j;
    gp[groups++] = p[i];
    i = j;
  }
  // Input axes that start a group, in input order.
  int starts[kMaxRank], ns = 0;
  for (int a = 0; a < n; ++a)
    for (int g = 0; g < groups; ++g)
      if (gp[g] == a) starts[ns++] = a;
  for (int s = 0; s < ns; ++s) {
    const int end = s + 1 < ns ? starts[s + 1] : n;
    int64_t size = 1;
    for (int a = starts[s]; a < end; ++a) size *= sh[a];
    msh[s] = size;
    group_of_input[starts[s]] = s;
  }
  int64_t mstride[kMaxRank];
  int64_t st = 1;
  for (int s = ns - 1; s >= 0; --s) {
    mstride[s] = st;
    st *= msh[s];
  }
  Layout l;
  l.rank = groups;
  for (int g = 0; g < groups; ++g) {
    const int s = group_of_input[gp[g]];
    l.out_shape[g] = msh[s];
    l.in_stride[g] = mstride[s];
  }
  st = 1;
  for (int g = groups - 1; g >= 0; --g) {
    l.out_stride[g] = st;
    st *= l.out_shape[g];
  }
  return l;
}

// Copies the part of the output whose first axis lies in [lo, hi).
void run(const Layout& l, const uint32_t* src, uint32_t* dst, int64_t lo, int64_t hi) {
  const int r = l.rank;
  if (r == 0) {
    if (lo == 0 && hi > 0) dst[0] = src[0];
    return;
  }
  const bool copy_rows = l.in_stride[r - 1] == 1;
  // Inner block: axis r-1 alone (row copy) or axes q and r-1 (tiled transpose).
  int q = -1;
  if (!copy_rows)
    for (int d = 0; d < r - 1; ++d)
      if (l.in_stride[d] == 1) q = d;
  int outer[kMaxRank], no = 0;
  for (int d = 0; d < r - 1; ++d)
    if (d != q) outer[no++] = d;

  int64_t idx[kMaxRank] = {0};
  // Clamp the first axis when it is an outer axis; otherwise the whole range is done once.
  const bool split_first = no > 0 && outer[0] == 0;
  if (!split_first && lo > 0) return;
  if (split_first) idx[0] = lo;
  for (;;) {
    int64_t si = 0, di = 0;
    for (int o = 0; o < no; ++o) {
      si += idx[o] * l.in_stride[outer[o]];
      di += idx[o] * l.out_stride[outer[o]];
    }
    if (copy_rows) {
      std::memcpy(dst + di, src + si, l.out_shape[r - 1] * sizeof(uint32_t));
    } else if (q < 0) {
      // Output last axis strided in input and no axis contiguous in input (cannot happen after
      // simplification, kept for safety): gather.
      const int64_t s = l.in_stride[r - 1];
      for (int64_t j = 0; j < l.out_shape[r - 1]; ++j) dst[di + j] = src[si + j * s];
    } else {
      const int64_t rows = l.out_shape[q], cols = l.out_shape[r - 1];
      const int64_t ss = l.in_stride[r - 1], ds = l.out_stride[q];
      for (int64_t i0 = 0; i0 < rows; i0 += kTile) {
        const int64_t i1 = std::min(rows, i0 + kTile);
        for (int64_t j0 = 0; j0 < cols; j0 += kTile) {
          const int64_t j1 = std::min(cols, j0 + kTile);
          for (int64_t i = i0; i < i1; ++i) {
            uint32_t* d = dst + di + i * ds;
            const uint32_t* s = src + si + i;
            for (int64_t j = j0; j < j1; ++j) d[j] = s[j * ss];
          }
        }
      }
    }
    // Odometer over the outer axes, last fastest.
    int o = no - 1;
    for (; o >= 0; --o) {
      const int64_t end = (o == 0 && split_first) ? hi : l.out_shape[outer[o]];
      if (++idx[o] < end) break;
      idx[o] = 0;
    }
    if (o < 0) return;
  }
}

struct Job {
  const Layout* l;
  const uint32_t* src;
  uint32_t* dst;
  int parts;
};

void run_part(void* ctx, int t) {
  const Job& j = *static_cast<const Job*>(ctx);
  const int64_t n = j.l->out_shape[0];
  run(*j.l, j.src, j.dst, n * t / j.parts, n * (t + 1) / j.parts);
}

}  // namespace

void transpose32(const uint32_t* src, uint32_t* dst, int rank, const int64_t* shape,
                 const int* perm) {
  int64_t size = 1;
  for (int i = 0; i < rank; ++i) size *= shape[i];
  if (size == 0) return;
  const Layout l = simplify(rank, shape, perm);
  int parts = 1;
  if (size >= kParallelElements && l.rank > 1) {
    const bool first_is_outer = !(l.in_stride[0] == 1 && l.in_stride[l.rank - 1] != 1);
    if (first_is_outer && l.out_shape[0] >= 2) parts = std::min<int64_t>(Pool::instance().size(), l.out_shape[0]);
  }
  Job job{&l, src, dst, parts};
  parallel_for(parts, run_part, &job);
}

}  // namespace nk
