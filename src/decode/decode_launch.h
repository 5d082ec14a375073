// Host entry of the KV-cache kernels: one launch function per compiled (dtype, head_dim),
// instantiated from the build's manifest (decode_instance.cu.in).
#pragma once

#include <cuda_runtime.h>

#include "decode/decode_params.h"

namespace flashcore::decode {

template <class Tag, int kHeadDim>
cudaError_t launch_decode(const DecodeParams& p, cudaStream_t stream);

// Shared memory one CTA of head dim D takes (decode_kernel.cuh: Smem<D>: the q tile, the K and
// V stages, the flag; 128-byte aligned parts).
constexpr int smem_bytes(int d) { return kRows * d * 2 + stages(d) * 2 * kBlockKeys * d * 2 + 128; }

}  // namespace flashcore::decode
