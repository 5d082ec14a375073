// Host-side entry of the Hopper forward kernels: one launch function per compiled
// (dtype, head_dim), compiled for sm_90a only; the mask policy is picked from the params.
#pragma once

#include <cuda_runtime.h>

#include "common/fwd_params.h"
#include "hopper/fwd_config.h"

namespace flashcore::hopper {

template <class Tag, int kHeadDim>
cudaError_t launch_fwd(const detail::FwdParams& p, cudaStream_t stream);

/// Rows of the Q tile and of a K/V tile: the TMA box heights select() checks the maps with.
template <int kHeadDim>
constexpr int kTileRowsQ = FwdConfig<kHeadDim>::kBlockM;
template <int kHeadDim>
constexpr int kTileRowsKV = FwdConfig<kHeadDim>::kBlockN;

}  // namespace flashcore::hopper
