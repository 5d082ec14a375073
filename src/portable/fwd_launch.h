// Host-side entry of the portable forward kernels: one launch function per compiled
// (dtype, head_dim); the mask policy is picked inside from the params.
#pragma once

#include <cuda_runtime.h>

#include "common/dtype_tag.h"
#include "common/fwd_params.h"

namespace flashcore::portable {

using detail::Bf16;
using detail::Fp16;

template <class DTypeTag, int kHeadDim>
cudaError_t launch_fwd(const detail::FwdParams& p, cudaStream_t stream);

}  // namespace flashcore::portable
