// Tuning table and shared-memory layout of the Hopper forward kernel (docs/hopper-design.md).
// One CTA per SM: warpgroup 0 produces (TMA), warpgroups 1 and 2 each own 64 query rows.
#pragma once

#include <cstdint>

namespace flashcore::hopper {

// Per head dim: key tile N, pipeline stages, and whether the two consumer warpgroups take
// turns on the tensor cores (ping-pong). Registers per consumer thread at 240: O is D/2
// floats, S and the next S N/2 each, P N/4: D256 takes N = 80 and no ping-pong (FA3's choice).
template <int D>
struct FwdTileRow;
template <>
struct FwdTileRow<64> {
  static constexpr int kBlockN = 128, kStages = 2;
  static constexpr bool kPingPong = true;
};
template <>
struct FwdTileRow<128> {
  static constexpr int kBlockN = 128, kStages = 2;
  static constexpr bool kPingPong = true;
};
template <>
struct FwdTileRow<256> {
  static constexpr int kBlockN = 80, kStages = 2;
  static constexpr bool kPingPong = false;
};

template <int D>
struct FwdConfig {
  static constexpr int kHeadDim = D;
  static constexpr int kBlockM = 128;  // 2 consumer warpgroups x one m64 wgmma row block
  static constexpr int kBlockN = FwdTileRow<D>::kBlockN;
  static constexpr int kStages = FwdTileRow<D>::kStages;
  static constexpr bool kPingPong = FwdTileRow<D>::kPingPong;
  static constexpr int kThreads = 384;
  static constexpr int kConsumerThreads = 256;
  // setmaxnreg split: 24 + 2 x 240 = 504 = 3 x 168, the pool at entry (HOPPER-PRIMER 7).
  static constexpr int kProducerRegs = 24, kConsumerRegs = 240;
  static constexpr int kStrips = D / 64;  // 128-byte swizzle strips per row

  // Tiles are stored as TMA writes them: per 64-column strip, rows x 128 bytes, swizzled.
  static constexpr uint32_t kQBytes = kBlockM * D * 2;
  static constexpr uint32_t kKVBytes = kBlockN * D * 2;
  static constexpr uint32_t kQStrip = kBlockM * 128, kKVStrip = kBlockN * 128;
  // Layout (each tile 1024-byte aligned): Q | K stages | V stages | [O] | mbarriers.
  // The epilogue stages O (each warpgroup its own 64 rows) in a tile of its own where it fits,
  // so the Q tile is released after the last S = Q K^T and the next tile's Q loads under the
  // last P V and the epilogue; otherwise (D = 256) in the Q tile, released after the epilogue.
  static constexpr uint32_t kQOff = 0;
  static constexpr uint32_t kKOff = kQOff + kQBytes;
  static constexpr uint32_t kVOff = kKOff + kStages * kKVBytes;
  static constexpr uint32_t kOOff = kVOff + kStages * kKVBytes;
  static constexpr bool kSeparateO = kOOff + kQBytes + 2048 <= 227 * 1024;
  static constexpr uint32_t kBarOff = kSeparateO ? kOOff + kQBytes : kOOff;
  static constexpr uint32_t kBarBytes = 8 * (2 + 4 * kStages);
  // +1024: the dynamic smem base is rounded up to 1024 bytes in the kernel.
  static constexpr uint32_t kSmemBytes = kBarOff + kBarBytes + 1024;

  static_assert(D % 64 == 0 && kBlockN % 16 == 0 && kBlockN <= 256);
  static_assert(kKVStrip % 1024 == 0, "strips must stay 1024-byte aligned for SW128");
  static_assert(kSmemBytes <= 227 * 1024, "over the sm_90 shared-memory opt-in limit");
};

}  // namespace flashcore::hopper
