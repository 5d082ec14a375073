// What the CUDA runtime can tell the host without touching device memory: device presence,
// properties and where a pointer lives. Every function is safe on a machine without a driver.
#pragma once

namespace flashcore::detail {

enum class MemoryKind { kHost, kDevice, kUnknown };

int device_count();                       // 0 when no GPU/driver (cudaErrorNoDevice, 35, ...)
MemoryKind memory_kind(const void* ptr);  // kHost for pageable/pinned host memory
int pointer_device(const void* ptr);      // device ordinal owning ptr, -1 if not device memory
int current_device();
int device_sm_major(int device);  // compute capability major, 0 on failure

}  // namespace flashcore::detail
