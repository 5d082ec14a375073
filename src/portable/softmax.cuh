// Masking and the online softmax on mma.sync m16n8 accumulator fragments. Thread (g = lane/4,
// t4 = lane%4) holds rows g and g+8 of each m16 tile, columns 8n + 2*t4 + {0,1} of each n8
// tile; a row's values live in the 4 lanes of a quad, so row reductions shuffle with xor 1, 2.
#pragma once

#include <cuda_runtime.h>

#include "common/mask.cuh"
#include "portable/sm80_ops.cuh"

namespace flashcore::portable {

// Sets scores outside each row's visible key range to -inf. row0: the warp's first query row
// (sequence coordinates); n0: the tile's first key.
template <class Cfg, class Mask>
__device__ __forceinline__ void apply_mask(float (&s)[Cfg::kMTiles][Cfg::kNTiles][4], int n0,
                                           int row0, int sq, int sk, int wl, int wr, int lane) {
  const int g = lane / 4, t4 = lane % 4;
#pragma unroll
  for (int mt = 0; mt < Cfg::kMTiles; ++mt)
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const detail::RowRange r = Mask::row(row0 + mt * 16 + g + 8 * hr, sq, sk, wl, wr);
#pragma unroll
      for (int nt = 0; nt < Cfg::kNTiles; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int j = n0 + nt * 8 + 2 * t4 + e;
          if (j < r.lo || j >= r.hi) s[mt][nt][2 * hr + e] = -INFINITY;
        }
    }
}

// One key tile of the online softmax in base 2 (scores scaled by scale*log2(e) inside the exp2
// argument). Leaves P = exp2(s*scale - max) in s, updates the running max and the per-thread
// partial row sums (quad-reduced once, in the epilogue), and rescales O.
template <class Cfg>
__device__ __forceinline__ void online_softmax(float (&s)[Cfg::kMTiles][Cfg::kNTiles][4],
                                               float (&row_max)[Cfg::kMTiles][2],
                                               float (&row_sum)[Cfg::kMTiles][2],
                                               float (&o)[Cfg::kMTiles][Cfg::kDTiles][4],
                                               float scale_log2) {
  float corr[Cfg::kMTiles][2];
  bool raised = false;
#pragma unroll
  for (int mt = 0; mt < Cfg::kMTiles; ++mt)
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < Cfg::kNTiles; ++nt)
        mx = fmaxf(mx, fmaxf(s[mt][nt][2 * hr], s[mt][nt][2 * hr + 1]));
      mx = detail::quad_max(mx);
      const float m_old = row_max[mt][hr];
      const float m_new = fmaxf(m_old, mx * scale_log2);
      // A row with nothing visible yet keeps max -inf; subtract 0 so exp2 gives 0, not NaN.
      const float m_use = m_new == -INFINITY ? 0.f : m_new;
      corr[mt][hr] = m_new == m_old ? 1.f : ex2(m_old - m_use);
      raised |= m_new != m_old;
      row_max[mt][hr] = m_new;
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < Cfg::kNTiles; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float x = ex2(fmaf(s[mt][nt][2 * hr + e], scale_log2, -m_use));
          s[mt][nt][2 * hr + e] = x;
          sum += x;
        }
      row_sum[mt][hr] = row_sum[mt][hr] * corr[mt][hr] + sum;
    }
  // Once the running maxima settle (most tiles after the first few), no row of the warp needs
  // rescaling: skip the 2 * kDTiles multiplies per row on a warp-uniform branch.
  if (__any_sync(0xffffffffu, raised)) {
#pragma unroll
    for (int mt = 0; mt < Cfg::kMTiles; ++mt)
#pragma unroll
      for (int dt = 0; dt < Cfg::kDTiles; ++dt) {
        o[mt][dt][0] *= corr[mt][0];
        o[mt][dt][1] *= corr[mt][0];
        o[mt][dt][2] *= corr[mt][1];
        o[mt][dt][3] *= corr[mt][1];
      }
  }
}

}  // namespace flashcore::portable
