// Persistent tile scheduler of the Hopper forward kernel: one CTA per SM walks a fixed order of
// work units, so producer and consumers of a CTA derive the same sequence without talking.
#pragma once

#include "common/fwd_params.h"
#include "common/mask.cuh"
#include "common/seq_slice.cuh"
#include "hopper/tile_scheduler.h"

namespace flashcore::hopper {

// What a tile covers: its sequence, first row, and the key blocks [n_begin, n_end) it visits
// (walked downwards, so the causal diagonal comes first). Producer and consumers both build it.
template <class Cfg, class Mask>
struct TilePlan {
  detail::SeqSlice seq;
  int b, h, m0;
  int n_begin, n_end;

  __device__ TilePlan(const detail::FwdParams& p, TileScheduler::Tile t)
      : seq(detail::seq_slice(p, t.b)), b(t.b), h(t.h), m0(t.m_block * Cfg::kBlockM) {
    n_begin = n_end = 0;
    if (m0 >= seq.sq || seq.sk == 0) return;
    const int m_last = min(m0 + Cfg::kBlockM, seq.sq) - 1;
    const detail::RowRange r =
        detail::block_keys<Mask>(m0, m_last, seq.sq, seq.sk, p.window_left, p.window_right);
    if (r.hi <= r.lo) return;
    n_begin = r.lo / Cfg::kBlockN;
    n_end = (r.hi + Cfg::kBlockN - 1) / Cfg::kBlockN;
  }
  __device__ bool has_rows() const { return m0 < seq.sq; }
  __device__ bool has_keys() const { return n_end > n_begin; }
};

}  // namespace flashcore::hopper
