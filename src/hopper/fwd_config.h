// Tuning table and shared-memory layout of the Hopper forward kernel (docs/hopper-design.md).
// One CTA per SM: warpgroup 0 produces (TMA), each further (consumer) warpgroup owns 64 rows.
#pragma once

#include <algorithm>
#include <cstdint>

namespace flashcore::hopper {

// Softmax knobs (docs/perf-notes.md), overridable for tuning builds only:
// kMaxSlack: the running max is raised only when a row's max grows by more than this (log2
// units), FA4's trick; exact, since O, the sums and the LSE all use the stale max, and P stays
// below 2^kMaxSlack. 0 raises it on every growth.
// kPolyEvery: every kPolyEvery-th group of 8 columns of S takes exp2 from a polynomial on the
// FMA pipe instead of MUFU (0: none), to split the exponentials between the two units.
#ifndef FLASHCORE_HOPPER_MAX_SLACK
#define FLASHCORE_HOPPER_MAX_SLACK 8
#endif
#ifndef FLASHCORE_HOPPER_POLY_EVERY
#define FLASHCORE_HOPPER_POLY_EVERY 0
#endif
// Split tail (tile_scheduler.h): taken when a CTA's share of the tail, plus this many blocks of
// time for its extra tile boundary, the partial write and the merge, is at most a whole
// tile's blocks. 4 keeps D128 1k (share 4.1 of 8 blocks) whole: split, it lost 1-2 %
// (perf-notes H26). Overridable for tuning builds only.
#ifndef FLASHCORE_HOPPER_SPLIT_OVERHEAD
#define FLASHCORE_HOPPER_SPLIT_OVERHEAD 4
#endif
constexpr int kSplitOverheadBlocks = FLASHCORE_HOPPER_SPLIT_OVERHEAD;

struct SoftmaxKnobs {
  static constexpr float kMaxSlack = FLASHCORE_HOPPER_MAX_SLACK;
  static constexpr int kPolyEvery = FLASHCORE_HOPPER_POLY_EVERY;
};

// Per head dim: consumer warpgroups (64 query rows each), key tile N, pipeline stages, and
// whether the consumers take turns on the tensor cores (ping-pong, round robin). Registers per
// consumer thread: O is D/2 floats, S N/2, P N/4. Two consumers get 232 each, three 160:
// D64 with three (O 32 + S 64 + P 32) keeps more softmax in flight against the GEMMs; D256
// takes N = 80 and no ping-pong (FA3's choice). A head dim may add a row for short problems
// (kShort, picked by uses_short_row): D64's has four consumers of 112
// registers and N = 64 (O 32 + S 32 + P 16), so a 1k sequence is four whole 256-row tiles and
// a warpgroup skips diagonal blocks at 64-key grain (perf-notes H15). Its 8 KB blocks take
// four stages, six under causal/window masks (kStagesLocal, H22, H24); D128 three V stages
// (H21).
template <int D, bool kShort = false>
struct FwdTileRow;
struct RowDefaults {
  static constexpr int kStagesLocal = 0;  // > 0: K and V depth under causal/window masks
  // Whether unmasked problems may split their last round of tiles (tile_scheduler.h). Only
  // D128 so far: with the split path compiled in, the D64 and D256 consumers spill 1 and 7
  // registers around it (outside the hot loops, but the build allows no spill).
  static constexpr bool kSplitTail = false;
};
template <int D>
constexpr bool kHasShortRow = false;
// Measured to pay up to these lengths (perf-notes H15, H18): causal/window problems, whose
// diagonal blocks the short row skips at a finer grain, and unmasked ones, where it avoids
// the general row's padded last tile (a 1k sequence is 5.33 tiles of 192 rows).
constexpr int kShortRowMaxSeqlenQ = 2048, kShortRowMaxSeqlenQUnmasked = 1024;
// Whether a problem of head dim D runs on D's short row: the one rule launch_fwd launches by
// and select() checks the TMA maps by (tile_rows).
template <int D>
constexpr bool uses_short_row(bool local_mask, int64_t seqlen_q) {
  return kHasShortRow<D> &&
         seqlen_q <= (local_mask ? kShortRowMaxSeqlenQ : kShortRowMaxSeqlenQUnmasked);
}
#ifndef FLASHCORE_HOPPER_D64_CONSUMERS
#define FLASHCORE_HOPPER_D64_CONSUMERS 3
#endif
#ifndef FLASHCORE_HOPPER_D64_K_STAGES
#define FLASHCORE_HOPPER_D64_K_STAGES 2
#endif
#ifndef FLASHCORE_HOPPER_D64_V_STAGES
#define FLASHCORE_HOPPER_D64_V_STAGES 2
#endif
template <>
struct FwdTileRow<64> : RowDefaults {
  static constexpr int kConsumers = FLASHCORE_HOPPER_D64_CONSUMERS,
                       kBlockN = 128,
                       kStagesK = FLASHCORE_HOPPER_D64_K_STAGES,
                       kStagesV = FLASHCORE_HOPPER_D64_V_STAGES;
  static constexpr bool kPingPong = true;
};
#ifndef FLASHCORE_HOPPER_SHORT_STAGES
#define FLASHCORE_HOPPER_SHORT_STAGES 4
#endif
#ifndef FLASHCORE_HOPPER_SHORT_STAGES_LOCAL
#define FLASHCORE_HOPPER_SHORT_STAGES_LOCAL 6
#endif
template <>
struct FwdTileRow<64, true> : RowDefaults {
  static constexpr int kConsumers = 4, kBlockN = 64, kStagesK = FLASHCORE_HOPPER_SHORT_STAGES,
                       kStagesV = FLASHCORE_HOPPER_SHORT_STAGES,
                       kStagesLocal = FLASHCORE_HOPPER_SHORT_STAGES_LOCAL;
  static constexpr bool kPingPong = true;
};
template <>
constexpr bool kHasShortRow<64> = true;
#ifndef FLASHCORE_HOPPER_D128_BLOCK_N
#define FLASHCORE_HOPPER_D128_BLOCK_N 128
#endif
#ifndef FLASHCORE_HOPPER_D128_K_STAGES
#define FLASHCORE_HOPPER_D128_K_STAGES 2
#endif
#ifndef FLASHCORE_HOPPER_D128_V_STAGES
#define FLASHCORE_HOPPER_D128_V_STAGES 3
#endif
template <>
struct FwdTileRow<128> : RowDefaults {
  static constexpr int kConsumers = 2, kBlockN = FLASHCORE_HOPPER_D128_BLOCK_N,
                       kStagesK = FLASHCORE_HOPPER_D128_K_STAGES,
                       kStagesV = FLASHCORE_HOPPER_D128_V_STAGES;
  static constexpr bool kPingPong = true, kSplitTail = true;
};
template <>
struct FwdTileRow<256> : RowDefaults {
  static constexpr int kConsumers = 2, kBlockN = 80, kStagesK = 2, kStagesV = 2;
  static constexpr bool kPingPong = false;
};

// kLocal: the kernel's mask is causal/window; it changes the ring depth of a row that
// declares kStagesLocal, and turns the split tail off.
template <int D, bool kShort = false, bool kLocal = false>
struct FwdConfig {
  using Row = FwdTileRow<D, kShort>;
  static constexpr int kHeadDim = D;
  static constexpr int kConsumers = Row::kConsumers;
  static constexpr int kBlockM = 64 * kConsumers;  // one m64 wgmma row block per consumer
  static constexpr int kBlockN = Row::kBlockN;
  // K and V rings may differ in depth: K(j+1) is needed a step before V(j).
  static constexpr bool kLocalDepth = kLocal && Row::kStagesLocal > 0;
  static constexpr int kStagesK = kLocalDepth ? Row::kStagesLocal : Row::kStagesK;
  static constexpr int kStagesV = kLocalDepth ? Row::kStagesLocal : Row::kStagesV;
  static constexpr bool kPingPong = Row::kPingPong;
  // Only unmasked kernels split (masked ones pair their tiles instead).
  static constexpr bool kSplitTail = Row::kSplitTail && !kLocal;
  // A warpgroup skips the key blocks none of its 64 rows sees (fwd_mainloop.cuh). Worth it
  // where one warpgroup's rows can miss a whole block of the tile's causal diagonal (D64: 192
  // rows, 128 keys); elsewhere the bookkeeping costs the D256 consumers a spill.
  static constexpr bool kSkipInvisibleBlocks = kBlockM - 64 >= kBlockN;
  static constexpr int kThreads = 128 * (1 + kConsumers);
  static constexpr int kConsumerThreads = 128 * kConsumers;
  // setmaxnreg split within the pool at entry, 65536 / kThreads per thread rounded down to 8
  // (HOPPER-PRIMER 7): 32 + 2 x 232 <= 3 x 168; 32 + 3 x 160 = 4 x 128; 32 + 4 x 112 = 5 x 96.
  // The producer's 32 hold its tile walk and the K-ahead-of-V order without spilling.
  static constexpr int kProducerRegs = 32;
  static constexpr int kEntryRegs = 65536 / kThreads / 8 * 8;
  static constexpr int kConsumerShare =
      (kEntryRegs * kThreads - kProducerRegs * 128) / kConsumerThreads / 8 * 8;
  static constexpr int kConsumerRegs = kConsumerShare > 240 ? 240 : kConsumerShare;
  static constexpr int kStrips = D / 64;  // 128-byte swizzle strips per row
  // A split-tail piece's partial result (fwd_split.cuh): per consumer thread, its D / 2 values
  // of O and its two rows' max and sum.
  static constexpr int64_t kSplitSlotFloats = int64_t(kConsumers) * 128 * (D / 2 + 4);

  // Tiles are stored as TMA writes them: per 64-column strip, rows x 128 bytes, swizzled.
  static constexpr uint32_t kQBytes = kBlockM * D * 2;
  static constexpr uint32_t kKVBytes = kBlockN * D * 2;
  static constexpr uint32_t kQStrip = kBlockM * 128, kKVStrip = kBlockN * 128;
  // Layout (each tile 1024-byte aligned): Q | K stages | V stages | [O] | mbarriers.
  // The epilogue stages O (64-row x 64-column boxes, one per warpgroup and strip) for TMA
  // stores in a tile of its own where one fits (D64, D128); otherwise (D256) in the V buffer
  // of the tile's last key block, which the consumers then release after the epilogue, in as
  // many passes as that buffer needs (perf-notes H20). Either way the Q tile is released after
  // the last S = Q K^T, so the next tile's Q loads under the last P V and the epilogue.
  static constexpr uint32_t kQOff = 0;
  static constexpr uint32_t kKOff = kQOff + kQBytes;
  static constexpr uint32_t kVOff = kKOff + kStagesK * kKVBytes;
  static constexpr uint32_t kOOff = kVOff + kStagesV * kKVBytes;
  static constexpr bool kOInV = kOOff + kQBytes + 2048 > 227 * 1024;
  static constexpr int kOBoxBytes = 64 * 128;
  static constexpr int kOStripsPerPass =
      kOInV ? std::min(int(kKVBytes) / (kConsumers * kOBoxBytes), kStrips) : kStrips;
  static constexpr int kOPasses = kStrips / (kOStripsPerPass > 0 ? kOStripsPerPass : 1);
  // Staging box of warpgroup w and strip s (of a pass): base + w * kOBoxWgStride +
  // s * kOBoxStripStride; the strip stride is the one sw128_offset(row, col, 64) implies.
  static constexpr int kOBoxWgStride = kOStripsPerPass * kOBoxBytes;
  static constexpr int kOBoxStripStride = kOBoxBytes;
  static_assert(kOBoxStripStride == 64 * 128, "sw128_offset with 64 rows lays strips 8 KB apart");
  static constexpr uint32_t kBarOff = kOInV ? kOOff : kOOff + kQBytes;
  static constexpr uint32_t kBarBytes = 8 * (2 + 2 * kStagesK + 2 * kStagesV);
  // +1024: the dynamic smem base is rounded up to 1024 bytes in the kernel.
  static constexpr uint32_t kSmemBytes = kBarOff + kBarBytes + 1024;

  static_assert(D % 64 == 0 && kBlockN % 16 == 0 && kBlockN <= 256 && kBlockM <= 256);
  static_assert(kConsumers >= 2 && kConsumers <= 4, "named barrier ids cover four consumers");
  static_assert(kProducerRegs * 128 + kConsumerRegs * kConsumerThreads <= kEntryRegs * kThreads,
                "setmaxnreg split over the registers allocated at entry");
  static_assert(kKVStrip % 1024 == 0, "strips must stay 1024-byte aligned for SW128");
  static_assert(kSmemBytes <= 227 * 1024, "over the sm_90 shared-memory opt-in limit");
  static_assert(kOStripsPerPass > 0 && kStrips % kOStripsPerPass == 0,
                "O's staging passes must cover the strips evenly");
  static_assert(!(kOInV && kSkipInvisibleBlocks),
                "a warpgroup that skips its last blocks has no V buffer to stage O in");
};

}  // namespace flashcore::hopper
