// Definition of launch_decode, included only by the generated instantiation units.
#pragma once

#include "decode/decode_kernel.cuh"
#include "decode/decode_launch.h"

namespace flashcore::decode {

template <class Tag, int kHeadDim>
cudaError_t launch_decode(const DecodeParams& p, cudaStream_t stream) {
  static_assert(sizeof(Smem<kHeadDim>) <= smem_bytes(kHeadDim), "smem_bytes undercounts Smem");
  auto kernel = decode_kernel<Tag, kHeadDim>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         smem_bytes(kHeadDim));
  if (err != cudaSuccess) return err;
  const dim3 grid(p.splits, p.num_heads_kv * p.chunks, p.batch);
  kernel<<<grid, kThreads, smem_bytes(kHeadDim), stream>>>(p);
  return cudaGetLastError();
}

}  // namespace flashcore::decode
