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

  // fixed_lengths: p has no cu_seqlens (split tail pieces), see seq_slice.
  __device__ TilePlan(const detail::FwdParams& p, TileScheduler::Tile t, bool fixed_lengths = false)
      : seq(detail::seq_slice(p, t.b, fixed_lengths)),
        b(t.b),
        h(t.h),
        m0(t.m_block * Cfg::kBlockM) {
    n_begin = n_end = 0;
    if (m0 >= seq.sq || seq.sk == 0) return;
    const int m_last = min(m0 + Cfg::kBlockM, seq.sq) - 1;
    const detail::RowRange r =
        detail::block_keys<Mask>(m0, m_last, seq.sq, seq.sk, p.window_left, p.window_right);
    if (r.hi <= r.lo) return;
    n_begin = r.lo / Cfg::kBlockN;
    n_end = (r.hi + Cfg::kBlockN - 1) / Cfg::kBlockN;
  }
  // A piece of a split tail tile visits only its share of the tile's key blocks.
  __device__ void clip(const TileScheduler::Piece& piece) {
    n_end = n_begin + piece.hi;
    n_begin += piece.lo;
  }
  __device__ bool has_rows() const { return m0 < seq.sq; }
  __device__ bool has_keys() const { return n_end > n_begin; }
};

// A CTA's work in order: its whole units round robin (whole(tile)), then, in kernels that
// split (FwdConfig::kSplitTail), its pieces of the split tail (split(tile, piece, i), piece i
// of the CTA's range).
// Producer and consumers walk it alike, so they agree without talking. Two loops, not one
// walk object: the walk state stays what the whole-tile loop needs (the D64 and D256
// consumers have no register to spare).
template <class Cfg, class Whole, class Split>
__device__ __forceinline__ void for_each_tile(const TileScheduler& s, Whole&& whole,
                                              Split&& split) {
  TileScheduler::Tile tile;
  for (int u = blockIdx.x; u < s.whole_units(); u += gridDim.x) {
#pragma unroll 1
    for (int j = 0; j < s.tiles_per_unit(); ++j)
      if (s.tile(u, j, &tile)) whole(tile);
  }
  if constexpr (Cfg::kSplitTail) {
    TileScheduler::Piece piece;
#pragma unroll 1
    for (int i = 0; i < 2 && s.split_tiles > 0 && s.piece(blockIdx.x, i, &piece); ++i) {
      s.tile(s.whole_units() + piece.k, 0, &tile);
      split(tile, piece, i);
    }
  }
}

}  // namespace flashcore::hopper
