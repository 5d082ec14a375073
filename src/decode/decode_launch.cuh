// Definition of launch_decode, included only by the generated instantiation units (and by
// bench/decode_timeline.cu, which launches its stamped instance the same way).
#pragma once

#include <atomic>
#include <mutex>

#include "decode/decode_kernel.cuh"
#include "decode/decode_launch.h"

namespace flashcore::decode {

// What a kernel instance's launches ask the runtime once per device: whether the loaded image
// holds griddepcontrol.wait (only one compiled for sm_90+ does: a kernel JIT-compiled from the
// sm_80 PTX, on a GPU newer than the build's targets, has none and must not be launched early),
// and the dynamic shared memory limit, raised once to the device's most. A per-launch limit of
// the launch's own size could be lowered by another thread between its set and its launch.
class LaunchState {
 public:
  explicit LaunchState(const void* kernel) : kernel_(kernel) {}

  // The device's entry (set up on first use), or an error of that setup. A setup that fails
  // is not kept: the next call tries again. After cudaDeviceReset the limit is back at its
  // default while the entry stays, so launches above 48 KB then fail with that error
  // (reported, not silent).
  cudaError_t get(bool& early) {
    int dev = 0;
    cudaError_t err = cudaGetDevice(&dev);
    if (err != cudaSuccess) return err;
    if (dev < 0 || dev >= kDevices) return setup(dev, early);  // not cached past kDevices devices
    Entry& e = entries_[dev];
    if (!e.done.load(std::memory_order_acquire)) {
      std::lock_guard<std::mutex> lock(e.mutex);
      if (!e.done.load(std::memory_order_relaxed)) {
        bool image_early = false;
        if ((err = setup(dev, image_early)) != cudaSuccess) return err;
        e.early = image_early;
        e.done.store(true, std::memory_order_release);  // publishes early
      }
    }
    early = e.early;
    return cudaSuccess;
  }

 private:
  static constexpr int kDevices = 64;
  struct Entry {
    std::mutex mutex;
    std::atomic<bool> done{false};
    bool early = false;
  };

  cudaError_t setup(int dev, bool& early) const {
    cudaFuncAttributes fa{};
    cudaError_t err = cudaFuncGetAttributes(&fa, kernel_);
    if (err != cudaSuccess) return err;
    early = fa.binaryVersion >= 90 && fa.ptxVersion >= 90;
    int most = 0;
    err = cudaDeviceGetAttribute(&most, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (err != cudaSuccess) return err;
    return cudaFuncSetAttribute(kernel_, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                most - static_cast<int>(fa.sharedSizeBytes));
  }

  const void* kernel_;
  Entry entries_[kDevices];
};

// Programmatic dependent launch where the image allows it: the grid may be launched while the
// stream's previous kernel finishes (once that kernel triggers, or as it exits); the kernel
// waits for it (griddepcontrol.wait) before its first read, so only the launch overlaps.
// Shared memory: the plan's launch size where it asks for more than the kernel needs (one CTA
// an SM: decode_launch.h, plan_for_device).
template <int D, class Cache, class Kernel>
cudaError_t launch_decode_kernel(Kernel kernel, const DecodeParams& p, LaunchState& state,
                                 cudaStream_t stream) {
  constexpr int kSmem = smem_bytes(D, Cache::kFp8);
  static_assert(sizeof(Smem<D, Cache>) <= kSmem, "smem_bytes undercounts Smem");
  bool early = false;
  const cudaError_t err = state.get(early);
  if (err != cudaSuccess) return err;
  cudaLaunchAttribute pdl{};
  pdl.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  pdl.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(p.splits, p.num_heads_kv * p.chunks, p.batch);
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = p.launch_smem > kSmem ? p.launch_smem : kSmem;
  cfg.stream = stream;
  cfg.attrs = &pdl;
  cfg.numAttrs = early ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, p);
}

template <class Tag, int kHeadDim, class Cache>
cudaError_t launch_decode(const DecodeParams& p, cudaStream_t stream) {
  auto kernel = decode_kernel<Tag, kHeadDim, Cache>;
  static LaunchState state(reinterpret_cast<const void*>(kernel));
  return launch_decode_kernel<kHeadDim, Cache>(kernel, p, state, stream);
}

}  // namespace flashcore::decode
