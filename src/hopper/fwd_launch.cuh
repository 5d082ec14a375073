// Definition of hopper::launch_fwd, included only by the generated sm_90a instantiation units.
#pragma once

#include "hopper/fwd_kernel.cuh"
#include "hopper/fwd_launch.h"
#include "hopper/tensor_map.h"

namespace flashcore::hopper {

inline Status encode_maps(const detail::FwdParams& p, DType dt, int d, int rows_q, int rows_kv,
                          Maps* m) {
  TensorMapSpec spec[4];
  fwd_map_specs(p, dt, d, rows_q, rows_kv, spec);
  Status st = encode_tensor_map(spec[0], &m->q);
  if (st.ok()) st = encode_tensor_map(spec[1], &m->k);
  if (st.ok()) st = encode_tensor_map(spec[2], &m->v);
  if (st.ok()) st = encode_tensor_map(spec[3], &m->o);
  return st;
}

template <class Cfg, class Tag, class Mask>
cudaError_t launch_with(const FwdArgs& a, int grid, cudaStream_t stream) {
  auto kernel = fwd_kernel<Cfg, Tag, Mask>;
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
  if (err != cudaSuccess) return err;
  kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(a);
  return cudaGetLastError();
}

template <class Cfg, class Tag, class Mask>
cudaError_t launch_cfg(const detail::FwdParams& p, void* workspace, cudaStream_t stream) {
  FwdArgs a{};
  // select() checked every map rule on the host; failing here means the driver refused.
  if (!encode_maps(p, detail::dtype_of<Tag>(), Cfg::kHeadDim, Cfg::kBlockM, Cfg::kBlockN, &a.maps)
           .ok())
    return cudaErrorInvalidValue;
  a.p = p;
  int device = 0, sms = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  a.sched = make_schedule<Cfg>(p, Mask::kLocal, sms, workspace != nullptr);
  if (a.sched.split_tiles > 0) {
    a.split.counters = static_cast<int*>(workspace);
    a.split.slots = reinterpret_cast<float*>(static_cast<uint8_t*>(workspace) +
                                             split_counter_bytes(a.sched));
  }
  // A split tail deals its pieces to every SM, even when there are fewer tiles than SMs.
  const int units = a.sched.num_units();
  const int grid = a.sched.split_tiles > 0 ? a.sched.ctas : units < sms ? units : sms;
  return launch_with<Cfg, Tag, Mask>(a, grid, stream);
}

// The tile row: the head dim's short row where it applies, else its general row; either with
// the mask the params ask for.
template <class Tag, int kHeadDim>
cudaError_t launch_fwd(const detail::FwdParams& p, void* ws, cudaStream_t stream) {
  const bool local = p.window_left >= 0 || p.window_right >= 0;
  if constexpr (kHasShortRow<kHeadDim>) {
    if (uses_short_row<kHeadDim>(local, p.seqlen_q))
      return local ? launch_cfg<FwdConfig<kHeadDim, true, true>, Tag, detail::LocalMask>(p, ws,
                                                                                         stream)
                   : launch_cfg<FwdConfig<kHeadDim, true>, Tag, detail::NoMask>(p, ws, stream);
  }
  return local
             ? launch_cfg<FwdConfig<kHeadDim, false, true>, Tag, detail::LocalMask>(p, ws, stream)
             : launch_cfg<FwdConfig<kHeadDim>, Tag, detail::NoMask>(p, ws, stream);
}

}  // namespace flashcore::hopper
