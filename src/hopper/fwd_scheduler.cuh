// Persistent tile scheduler of the Hopper forward kernel: one CTA per SM walks a fixed order of
// work units, so producer and consumers of a CTA derive the same sequence without talking.
#pragma once

#include "common/fwd_params.h"
#include "common/mask.cuh"
#include "common/seq_slice.cuh"

namespace flashcore::hopper {

// Order: batch, head, m-block innermost, so the CTAs running at one time share a head's K/V
// in L2 (and GQA heads of one kv head follow each other). A CTA takes work units
// blockIdx.x, blockIdx.x + gridDim.x, ...; a unit is one m-block, or under causal/window
// masks, where the work grows with the row index, the pair (heaviest, lightest) of a head:
// every pair costs the same, so the static round-robin stays balanced.
struct TileScheduler {
  int num_m_blocks, num_heads, num_batches;
  bool paired;

  struct Tile {
    int b, h, m_block;
  };
  __host__ __device__ int units_per_head() const {
    return paired ? (num_m_blocks + 1) / 2 : num_m_blocks;
  }
  __host__ __device__ int num_units() const { return units_per_head() * num_heads * num_batches; }
  __host__ __device__ int tiles_per_unit() const { return paired ? 2 : 1; }
  // Tile j of unit u; false when the unit has no such tile (the middle m-block of an odd
  // count is paired with itself).
  __device__ bool tile(int u, int j, Tile* t) const {
    const int per_head = units_per_head();
    const int w = u % per_head, bh = u / per_head;
    int mb = w;
    if (paired) {
      mb = j == 0 ? num_m_blocks - 1 - w : w;
      if (j == 1 && mb == num_m_blocks - 1 - w) return false;
    }
    *t = {bh / num_heads, bh % num_heads, mb};
    return true;
  }
};

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
