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

// CTAs of head dim D an SM holds: the register bound the kernel is compiled for, and shared
// memory (the runtime reserves 1 KB a CTA).
inline int ctas_per_sm(int d, int smem_per_sm) {
  const int by_smem = smem_per_sm / (smem_bytes(d) + 1024);
  return by_smem < min_blocks(d) ? by_smem : min_blocks(d);
}

// The plan a device gets (select.cpp; flashcore-decode-timeline times the same): every CTA
// slot filled in one wave.
inline DecodePlan plan_for_device(const detail::KvProblem& f, int sms, int smem_per_sm) {
  return plan_decode(f, sms, ctas_per_sm(static_cast<int>(f.p.head_dim), smem_per_sm));
}

}  // namespace flashcore::decode
