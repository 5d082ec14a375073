// Definition of launch_decode, included only by the generated instantiation units (and by
// bench/decode_timeline.cu, which launches its stamped instance the same way).
#pragma once

#include "decode/decode_kernel.cuh"
#include "decode/decode_launch.h"

namespace flashcore::decode {

// Whether a kernel's loaded image holds griddepcontrol.wait: only one compiled for sm_90+ does.
// A kernel JIT-compiled from the sm_80 PTX (a GPU newer than the build's targets) has none and
// must not be launched early.
inline bool image_waits_for_dependency(const void* kernel) {
  cudaFuncAttributes fa{};
  return cudaFuncGetAttributes(&fa, kernel) == cudaSuccess && fa.binaryVersion >= 90 &&
         fa.ptxVersion >= 90;
}

// Programmatic dependent launch where the image allows it: the grid may be launched while the
// stream's previous kernel finishes (once that kernel triggers, or as it exits); the kernel
// waits for it (griddepcontrol.wait) before its first read, so only the launch overlaps.
// Shared memory: the plan's launch size where it asks for more than the kernel needs (one CTA
// an SM: decode_launch.h, plan_for_device).
template <int D, class Kernel>
cudaError_t launch_decode_kernel(Kernel kernel, const DecodeParams& p, bool early,
                                 cudaStream_t stream) {
  static_assert(sizeof(Smem<D>) <= smem_bytes(D), "smem_bytes undercounts Smem");
  const int smem = p.launch_smem > smem_bytes(D) ? p.launch_smem : smem_bytes(D);
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  cudaLaunchAttribute pdl{};
  pdl.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  pdl.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(p.splits, p.num_heads_kv * p.chunks, p.batch);
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = &pdl;
  cfg.numAttrs = early ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, p);
}

template <class Tag, int kHeadDim>
cudaError_t launch_decode(const DecodeParams& p, cudaStream_t stream) {
  auto kernel = decode_kernel<Tag, kHeadDim>;
  // Asked once per instance: the image is the device's, and the library runs on one kind of
  // GPU at a time.
  static const bool early = image_waits_for_dependency(reinterpret_cast<const void*>(kernel));
  return launch_decode_kernel<kHeadDim>(kernel, p, early, stream);
}

}  // namespace flashcore::decode
