// Host-side entry of the Hopper forward kernels: one launch function per compiled
// (dtype, head_dim), compiled for sm_90a only; the tile row and the mask policy are picked
// from the params.
#pragma once

#include <algorithm>

#include <cuda_runtime.h>

#include "common/fwd_params.h"
#include "hopper/fwd_config.h"

namespace flashcore::hopper {

template <class Tag, int kHeadDim>
cudaError_t launch_fwd(const detail::FwdParams& p, cudaStream_t stream);

/// Rows of the Q tile and of a K/V tile of the tile row launch_fwd picks for a problem: the
/// TMA box heights select() checks the maps with.
struct TileRows {
  int q, kv;
};
template <int kHeadDim>
TileRows tile_rows(bool local_mask, int64_t seqlen_q) {
  if constexpr (kHasShortRow<kHeadDim>) {
    if (uses_short_row<kHeadDim>(local_mask, seqlen_q))
      return {FwdConfig<kHeadDim, true>::kBlockM, FwdConfig<kHeadDim, true>::kBlockN};
  }
  return {FwdConfig<kHeadDim>::kBlockM, FwdConfig<kHeadDim>::kBlockN};
}

// Shared memory of the largest configuration launch_fwd may pick for kHeadDim.
template <int kHeadDim>
constexpr int max_smem_bytes() {
  uint32_t m =
      std::max(FwdConfig<kHeadDim>::kSmemBytes, FwdConfig<kHeadDim, false, true>::kSmemBytes);
  if constexpr (kHasShortRow<kHeadDim>)
    m = std::max({m, FwdConfig<kHeadDim, true>::kSmemBytes,
                  FwdConfig<kHeadDim, true, true>::kSmemBytes});
  return int(m);
}

}  // namespace flashcore::hopper
