// Mask policies for forward kernels. A policy answers, for a tile of queries, which key tiles
// to visit and whether a key tile needs per-element masking; the element test itself is the
// bottom-right aligned window of fwd_problem.h (causal = window_right 0).
#pragma once

#include <cstdint>

namespace flashcore::detail {

struct RowRange {
  int lo, hi;  // visible keys [lo, hi)
};

// No causal/window mask: every key below seqlen_k is visible.
struct NoMask {
  static constexpr bool kLocal = false;
  __host__ __device__ static RowRange row(int, int, int sk, int, int) { return {0, sk}; }
};

// Causal and sliding-window masks, one runtime window (left, right), -1 meaning unbounded.
struct LocalMask {
  static constexpr bool kLocal = true;
  __host__ __device__ static RowRange row(int i, int sq, int sk, int wl, int wr) {
    const int diag = i + sk - sq;
    int lo = wl >= 0 ? diag - wl : 0;
    int hi = wr >= 0 ? diag + wr + 1 : sk;
    lo = lo < 0 ? 0 : lo;
    hi = hi > sk ? sk : hi;
    return {lo, hi};
  }
};

// Keys visited by the query rows [m0, m_last]: the union of their ranges (lo and hi are both
// non-decreasing in i). Empty when hi <= lo.
template <class Mask>
__host__ __device__ inline RowRange block_keys(int m0, int m_last, int sq, int sk, int wl, int wr) {
  const RowRange first = Mask::row(m0, sq, sk, wl, wr);
  const RowRange last = Mask::row(m_last, sq, sk, wl, wr);
  return {first.lo, last.hi};
}

// True when every key of [n0, n0 + bn) is visible to every row of [m0, m_last].
template <class Mask>
__host__ __device__ inline bool tile_unmasked(int n0, int bn, int m0, int m_last, int sq, int sk,
                                              int wl, int wr) {
  if (n0 + bn > sk) return false;
  if (!Mask::kLocal) return true;
  const RowRange first = Mask::row(m0, sq, sk, wl, wr);
  const RowRange last = Mask::row(m_last, sq, sk, wl, wr);
  return last.lo <= n0 && first.hi >= n0 + bn;
}

}  // namespace flashcore::detail
