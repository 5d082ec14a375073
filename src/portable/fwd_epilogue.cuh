// Epilogue of the portable forward kernel: normalise O by the softmax sum, write LSE, and store
// O through smem so each global store is a coalesced 16-byte chunk. Each warp stages its rows in
// its own rows of the Q tile, which no other warp reads: a warp-level sync suffices.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "portable/sm80_ops.cuh"
#include "portable/smem_layout.cuh"

namespace flashcore::portable {

// Rows [0, valid) of a tile that sees no key: O = 0, LSE = -inf.
template <class Cfg, class Elem>
__device__ __forceinline__ void store_empty(Elem* og, int64_t o_seq, float* lse, int valid,
                                            int tid) {
  const uint4 zero = make_uint4(0, 0, 0, 0);
  for (int c = tid; c < valid * Cfg::kChunksPerRow; c += Cfg::kThreads) {
    const int r = c / Cfg::kChunksPerRow, ch = c % Cfg::kChunksPerRow;
    *reinterpret_cast<uint4*>(og + r * o_seq + ch * 8) = zero;
  }
  if (lse != nullptr)
    for (int r = tid; r < valid; r += Cfg::kThreads) lse[r] = -INFINITY;
}

template <class Cfg, class Elem>
__device__ __forceinline__ void store_output(float (&o)[Cfg::kMTiles][Cfg::kDTiles][4],
                                             const float (&row_max)[Cfg::kMTiles][2],
                                             float (&row_sum)[Cfg::kMTiles][2], uint8_t* smem,
                                             Elem* og, int64_t o_seq, float* lse, int valid,
                                             int warp_row0, int lane) {
  const int g = lane / 4, t4 = lane % 4;
  __syncwarp();
#pragma unroll
  for (int mt = 0; mt < Cfg::kMTiles; ++mt)
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      float l = row_sum[mt][hr];
      l = detail::quad_sum(l);
      const float inv = l > 0.f ? 1.f / l : 0.f;  // a row that saw no key: O = 0
      const int r = warp_row0 + mt * 16 + g + 8 * hr;
      if (lse != nullptr && t4 == 0 && r < valid)
        lse[r] = l > 0.f ? (row_max[mt][hr] + __log2f(l)) * 0.6931471805599453f : -INFINITY;
#pragma unroll
      for (int dt = 0; dt < Cfg::kDTiles; ++dt) {
        const uint32_t packed =
            Mma<Elem>::pack(o[mt][dt][2 * hr] * inv, o[mt][dt][2 * hr + 1] * inv);
        *reinterpret_cast<uint32_t*>(smem + swz<Cfg>(r, dt) + t4 * 4) = packed;
      }
    }
  __syncwarp();
  constexpr int kChunks = Cfg::kRowsPerWarp * Cfg::kChunksPerRow;
#pragma unroll
  for (int c = lane; c < kChunks; c += 32) {
    const int r = warp_row0 + c / Cfg::kChunksPerRow, ch = c % Cfg::kChunksPerRow;
    if (r < valid)
      *reinterpret_cast<uint4*>(og + r * o_seq + ch * 8) =
          *reinterpret_cast<const uint4*>(smem + swz<Cfg>(r, ch));
  }
}

}  // namespace flashcore::portable
