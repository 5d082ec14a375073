// Shared-memory tile layout of the portable kernels: rows of kHeadDim 16-bit elements, 16-byte
// chunk c of row r stored at chunk c ^ (r % 8). ldmatrix reads one chunk column of 8
// consecutive rows per phase; the XOR spreads them over 8 distinct 16-byte bank groups.
#pragma once

#include <cstdint>

namespace flashcore::portable {

template <class Cfg>
__device__ __forceinline__ uint32_t swz(int r, int c) {
  return static_cast<uint32_t>((r * Cfg::kChunksPerRow + (c ^ (r & 7))) * 16);
}

}  // namespace flashcore::portable
