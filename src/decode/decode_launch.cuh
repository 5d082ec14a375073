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
  int device = 0, major = 0;
  if ((err = cudaGetDevice(&device)) != cudaSuccess) return err;
  if ((err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device)) != cudaSuccess)
    return err;
  // sm_90+: programmatic dependent launch. The grid may be launched while the stream's previous
  // kernel finishes (once that kernel triggers, or as it exits); the kernel waits for it
  // (griddepcontrol.wait) before its first read, so only the launch itself overlaps.
  cudaLaunchAttribute pdl{};
  pdl.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  pdl.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(p.splits, p.num_heads_kv * p.chunks, p.batch);
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = smem_bytes(kHeadDim);
  cfg.stream = stream;
  cfg.attrs = &pdl;
  cfg.numAttrs = major >= 9 ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, p);
}

}  // namespace flashcore::decode
