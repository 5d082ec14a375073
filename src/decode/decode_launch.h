// Host entry of the KV-cache kernels: one launch function per compiled (dtype, head_dim),
// instantiated from the build's manifest (decode_instance.cu.in).
#pragma once

#include <cuda_runtime.h>

#include "decode/decode_params.h"

namespace flashcore::decode {

template <class Tag, int kHeadDim>
cudaError_t launch_decode(const DecodeParams& p, cudaStream_t stream);

// Shared memory one CTA of head dim D takes (decode_kernel.cuh: Smem<D>).
constexpr int smem_bytes(int d) { return kRows * d * 4 + 2 * 2 * kBlockN * (d + 8) * 2 + 16; }

}  // namespace flashcore::decode
