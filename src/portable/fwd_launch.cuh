// Definition of launch_fwd, included only by the generated instantiation units.
#pragma once

#include "portable/elem.cuh"
#include "portable/fwd_kernel.cuh"
#include "portable/fwd_launch.h"

namespace flashcore::portable {

template <class Cfg, class Elem, class Mask>
cudaError_t launch_fwd_with(const detail::FwdParams& p, cudaStream_t stream) {
  auto kernel = fwd_kernel<Cfg, Elem, Mask>;
  // Above 48 KB of dynamic smem needs an opt-in; it is a host-side attribute, graph safe.
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
  if (err != cudaSuccess) return err;
  const dim3 grid((p.seqlen_q + Cfg::kBlockM - 1) / Cfg::kBlockM, p.num_heads_q, p.batch);
  kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

template <class Tag, int kHeadDim>
cudaError_t launch_fwd(const detail::FwdParams& p, cudaStream_t stream) {
  using Elem = typename ElemOf<Tag>::type;
  const bool local = p.window_left >= 0 || p.window_right >= 0;
  return local ? launch_fwd_with<typename FwdTile<kHeadDim, true>::type, Elem, detail::LocalMask>(
                     p, stream)
               : launch_fwd_with<typename FwdTile<kHeadDim, false>::type, Elem, detail::NoMask>(
                     p, stream);
}

}  // namespace flashcore::portable
