// Thin, failure-tolerant wrappers over the CUDA runtime. A missing driver is "no GPU", never an
// error: the library then serves every call from the CPU reference.
#include "api/cuda_env.h"

#include <cuda_runtime.h>

namespace flashcore::detail {

int device_count() {
  static const int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();  // clear the sticky "no driver" error
      return 0;
    }
    return n;
  }();
  return count;
}

MemoryKind memory_kind(const void* ptr) {
  if (ptr == nullptr) return MemoryKind::kUnknown;
  if (device_count() == 0) return MemoryKind::kHost;
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, ptr) != cudaSuccess) {
    cudaGetLastError();
    return MemoryKind::kHost;
  }
  switch (attr.type) {
    case cudaMemoryTypeDevice:
    case cudaMemoryTypeManaged:
      return MemoryKind::kDevice;
    default:
      return MemoryKind::kHost;  // unregistered or pinned host memory
  }
}

int pointer_device(const void* ptr) {
  if (ptr == nullptr || device_count() == 0) return -1;
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, ptr) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  return (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged) ? attr.device
                                                                                   : -1;
}

int current_device() {
  int d = 0;
  if (cudaGetDevice(&d) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  return d;
}

int device_sm_major(int device) {
  int major = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return major;
}

}  // namespace flashcore::detail
