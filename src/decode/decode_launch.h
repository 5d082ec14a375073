// Host entry of the KV-cache kernels: one launch function per compiled (dtype, head_dim),
// instantiated from the build's manifest (decode_instance.cu.in).
#pragma once

#include <cuda_runtime.h>

#include "decode/decode_params.h"

namespace flashcore::decode {

template <class Tag, int kHeadDim, class Cache>
cudaError_t launch_decode(const DecodeParams& p, cudaStream_t stream);

// Shared memory one CTA of head dim D takes (decode_kernel.cuh: Smem<D, Cache>: the q tile, the
// K and V stages (fp8: one 16-bit K and V tile plus the byte stages), the flag; 128-byte
// aligned parts).
constexpr int smem_bytes(int d, bool fp8 = false) {
  return kRows * d * 2 +
         (fp8 ? 2 * kBlockKeys * d * 2 + fp8_stages(d) * 2 * kBlockKeys * d
              : stages(d) * 2 * kBlockKeys * d * 2) +
         128;
}

// CTAs of head dim D an SM holds: the register bound the kernel is compiled for, and shared
// memory (the runtime reserves 1 KB a CTA).
inline int ctas_per_sm(int d, bool fp8, int smem_per_sm) {
  const int by_smem = smem_per_sm / (smem_bytes(d, fp8) + 1024);
  return by_smem < min_blocks(d) ? by_smem : min_blocks(d);
}

// The plan a device gets (select.cpp; flashcore-decode-timeline times the same): plan_decode's
// splits. Where its grid is one wave of at most one CTA an SM, the launch asks for just over
// half an SM's shared memory so no SM can hold two: the next decode call, launched early
// (programmatic dependent launch), would otherwise put its CTAs in the second slots as they
// open, two on some SMs and none on others, and stream unevenly (perf-notes K13: 64k 4 µs
// slower).
inline DecodePlan plan_for_device(const detail::KvProblem& f, int sms, int smem_per_sm) {
  const int d = static_cast<int>(f.p.head_dim);
  const bool fp8 = f.p.cache_fp8;
  const int per_sm = ctas_per_sm(d, fp8, smem_per_sm);
  DecodePlan pl = plan_decode(f, sms, per_sm);
  const int64_t ctas = f.p.batch * f.p.num_heads_kv * pl.chunks * int64_t(pl.splits);
  const int half = (smem_per_sm / 2 - 1024 + 16) / 16 * 16;  // 2 x (half + 1 KB) > an SM's
  if (per_sm > 1 && ctas <= sms && half > smem_bytes(d, fp8)) pl.launch_smem = half;
  return pl;
}

}  // namespace flashcore::decode
