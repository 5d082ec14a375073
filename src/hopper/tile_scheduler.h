// The Hopper forward kernel's persistent schedule as plain data and arithmetic (host and
// device): which (batch, head, m-block) tiles a work unit holds. Tested on the CPU.
#pragma once

#include "common/host_device.h"

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
  FLASHCORE_HD int units_per_head() const { return paired ? (num_m_blocks + 1) / 2 : num_m_blocks; }
  FLASHCORE_HD int num_units() const { return units_per_head() * num_heads * num_batches; }
  FLASHCORE_HD int tiles_per_unit() const { return paired ? 2 : 1; }
  // Tile j of unit u; false when the unit has no such tile (the middle m-block of an odd
  // count is paired with itself).
  FLASHCORE_HD bool tile(int u, int j, Tile* t) const {
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

}  // namespace flashcore::hopper
