// The Hopper forward kernel's persistent schedule as plain data and arithmetic (host and
// device): which (batch, head, m-block) tiles a work unit holds, and how the split tail cuts
// the last tiles into pieces. Tested on the CPU.
#pragma once

#include "common/host_device.h"

namespace flashcore::hopper {

// Order: batch, head, m-block innermost, so the CTAs running at one time share a head's K/V
// in L2 (and GQA heads of one kv head follow each other). A CTA takes work units
// blockIdx.x, blockIdx.x + gridDim.x, ...; a unit is one m-block, or under causal/window
// masks, where the work grows with the row index, the pair (heaviest, lightest) of a head:
// every pair costs the same, so the static round robin stays balanced.
//
// Split tail (unmasked fixed-length problems only, where every tile has the same `blocks` key
// blocks): with units % ctas = split_tiles > 0 the last round would leave SMs idle, so those
// tiles are cut instead. Their key blocks, laid end to end (tail tile k holds positions
// [k * blocks, (k + 1) * blocks)), are dealt out as one contiguous range per CTA, after the
// CTA's whole units. A range is at most `blocks` long, so it touches at most two tiles: its
// piece 0 and maybe piece 1. Each piece leaves its partial result in a workspace slot (piece
// 0 of CTA c: slot c; a piece 1, which starts tail tile k: slot ctas + k), and the last piece
// of a tile to finish merges them (fwd_split.cuh).
struct TileScheduler {
  int num_m_blocks, num_heads, num_batches;
  bool paired;
  int split_tiles = 0, blocks = 0, ctas = 0;  // split_tiles = 0: no split tail

  struct Tile {
    int b, h, m_block;
  };
  // Tail tile k's key blocks [lo, hi), counted from the tile's first block; k < 0: a whole tile.
  struct Piece {
    int k, lo, hi, slot;
  };
  FLASHCORE_HD int units_per_head() const { return paired ? (num_m_blocks + 1) / 2 : num_m_blocks; }
  FLASHCORE_HD int num_units() const { return units_per_head() * num_heads * num_batches; }
  FLASHCORE_HD int whole_units() const { return num_units() - split_tiles; }
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

  // Tail positions are int: make_schedule splits only where (ctas + 1) * split_tiles * blocks
  // stays below 2^31, so this arithmetic needs no 64-bit division (a subroutine call, whose
  // saved registers spilled the consumers).
  // First tail position of CTA c's range; ranges are [split_start(c), split_start(c + 1)).
  FLASHCORE_HD int split_start(int c) const { return c * split_tiles * blocks / ctas; }
  // The CTA whose range holds tail position x: the largest c with split_start(c) <= x.
  FLASHCORE_HD int split_owner(int x) const {
    return ((x + 1) * ctas - 1) / (split_tiles * blocks);
  }
  FLASHCORE_HD int num_slots() const { return ctas + split_tiles; }
  // Slot of piece i of CTA c, which lies in tail tile k.
  FLASHCORE_HD int slot(int c, int i, int k) const { return i == 0 ? c : ctas + k; }
  // Tail index of the tile (b, h, m_block) of an unpaired schedule with a split tail.
  FLASHCORE_HD int tail_index(int b, int h, int m_block) const {
    return (b * num_heads + h) * num_m_blocks + m_block - whole_units();
  }
  // Piece i (0 or 1) of CTA c's range; false when there is none.
  FLASHCORE_HD bool piece(int c, int i, Piece* p) const {
    const int s = split_start(c), e = split_start(c + 1);
    if (s >= e) return false;
    const int k0 = s / blocks, next = (k0 + 1) * blocks;  // next: where tile k0 + 1 starts
    if (i == 0) {
      *p = {k0, s - k0 * blocks, (e < next ? e : next) - k0 * blocks, slot(c, 0, k0)};
      return true;
    }
    if (next >= e) return false;
    *p = {k0 + 1, 0, e - next, slot(c, 1, k0 + 1)};
    return true;
  }
  // How many pieces tail tile k has, and the slot of its j-th in key order.
  FLASHCORE_HD int pieces(int k) const {
    return split_owner((k + 1) * blocks - 1) - split_owner(k * blocks) + 1;
  }
  FLASHCORE_HD int piece_slot(int k, int j) const {
    const int c0 = split_owner(k * blocks);
    if (j > 0) return c0 + j;
    return split_start(c0) == k * blocks ? c0 : ctas + k;
  }
};

}  // namespace flashcore::hopper
