// wgmma shared-memory matrix descriptors and the 128-byte swizzle they read, as constexpr
// bit arithmetic usable on host (tests) and device. Field layout: HOPPER-PRIMER section 1
// (PTX "Matrix Descriptor Format"); the swizzle: section 2.
#pragma once

#include <cstdint>

#include "common/host_device.h"

namespace flashcore::hopper {

// The descriptor's 2-bit swizzle code. Not the TMA map's CUtensorMapSwizzle (128B is 3 there).
enum class DescSwizzle : uint32_t { kNone = 0, k128B = 1, k64B = 2, k32B = 3 };

/// 64-bit wgmma descriptor: start address, leading and stride byte offsets (all in 16-byte
/// units, 14 bits each), base offset 0 (TMA-written tiles), swizzle mode in bits 62-63.
FLASHCORE_HD constexpr uint64_t wgmma_desc(uint32_t smem_addr, uint32_t lbo_bytes,
                                           uint32_t sbo_bytes, DescSwizzle swizzle) {
  return static_cast<uint64_t>((smem_addr & 0x3FFFFu) >> 4) |
         (static_cast<uint64_t>((lbo_bytes >> 4) & 0x3FFFu) << 16) |
         (static_cast<uint64_t>((sbo_bytes >> 4) & 0x3FFFu) << 32) |
         (static_cast<uint64_t>(swizzle) << 62);
}

/// K-major 16-bit tile of `rows` rows in 128-byte swizzled strips of 64 columns (what TMA
/// writes with SWIZZLE_128B and 64-element boxes): byte offset of element (r, k) from a
/// 1024-byte aligned tile start.
FLASHCORE_HD constexpr uint32_t sw128_offset(uint32_t r, uint32_t k, uint32_t rows) {
  return (k / 64) * rows * 128 + r * 128 + ((((k % 64) / 8) ^ (r % 8)) * 16) + (k % 8) * 2;
}

}  // namespace flashcore::hopper
