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
  // Programmatic dependent launch: the grid may be launched while the stream's previous kernel
  // finishes (once that kernel triggers, or as it exits); the kernel waits for it
  // (griddepcontrol.wait) before its first read, so only the launch itself overlaps. Only an
  // image compiled for sm_90+ holds that wait: a kernel JIT-compiled from the sm_80 PTX (a newer
  // GPU than the build's targets) must not be launched early. Asked once per process: the
  // image is the device's, and the library runs on one kind of GPU at a time.
  static const bool has_wait = [&] {
    cudaFuncAttributes fa{};
    return cudaFuncGetAttributes(&fa, kernel) == cudaSuccess && fa.binaryVersion >= 90 &&
           fa.ptxVersion >= 90;
  }();
  cudaLaunchAttribute pdl{};
  pdl.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  pdl.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(p.splits, p.num_heads_kv * p.chunks, p.batch);
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = smem_bytes(kHeadDim);
  cfg.stream = stream;
  cfg.attrs = &pdl;
  cfg.numAttrs = has_wait ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, p);
}

}  // namespace flashcore::decode
