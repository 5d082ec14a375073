// Tuning table of the portable forward kernel: tile shape, warps and occupancy per head dim.
// Each warp owns kBlockM / kWarps query rows (whole m16 tiles) and sweeps the key tile.
#pragma once

#include <type_traits>

namespace flashcore::portable {

template <int kHeadDim_, int kBlockM_, int kBlockN_, int kWarps_, int kMinBlocks_>
struct FwdConfig {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kWarps = kWarps_;
  static constexpr int kMinBlocks = kMinBlocks_;  // CTAs per SM the register budget targets
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kRowsPerWarp = kBlockM / kWarps;
  static constexpr int kMTiles = kRowsPerWarp / 16;   // m16 tiles per warp
  static constexpr int kNTiles = kBlockN / 8;         // n8 tiles of S per row block
  static constexpr int kDTiles = kHeadDim / 8;        // n8 tiles of O
  static constexpr int kKSteps = kHeadDim / 16;       // k16 steps of Q·K^T
  static constexpr int kChunksPerRow = kHeadDim / 8;  // 16-byte chunks per smem row
  // Q tile + two stages of (K, V) tiles, 16-bit elements.
  static constexpr int kSmemBytes = 2 * kHeadDim * (kBlockM + 2 * 2 * kBlockN);
  static_assert(kRowsPerWarp % 16 == 0 && kBlockN % 16 == 0 && kHeadDim % 64 == 0);
};

// Registers: S is kMTiles*kNTiles*4 floats and O kMTiles*kDTiles*4 floats per thread, under a
// cap of 65536 / (threads * kMinBlocks) (255 at most). Rows are chosen by scripts/tune on the
// H100 (docs/perf-notes.md); CMake's FLASHCORE_TILE_OVERRIDES replaces a
// row (macros FLASHCORE_TILE_D<D>_BM/_BN/_WARPS/_MINBLOCKS) for tuning builds only.
// kLocal: the causal/window mask policy, whose row may differ from the unmasked one.
template <int kHeadDim, bool kLocal>
struct FwdTile;
template <bool kLocal>
struct FwdTile<64, kLocal> {
#ifdef FLASHCORE_TILE_D64_BM
  using type = FwdConfig<64, FLASHCORE_TILE_D64_BM, FLASHCORE_TILE_D64_BN, FLASHCORE_TILE_D64_WARPS,
                         FLASHCORE_TILE_D64_MINBLOCKS>;
#else
  // Unmasked: three CTAs per SM (168 registers, small spills) beat 128x128 with two, more warps
  // hiding the softmax's ALU latency; causal at 16k prefers 128x128 (docs/perf-notes.md).
  using type =
      std::conditional_t<kLocal, FwdConfig<64, 128, 128, 4, 2>, FwdConfig<64, 128, 64, 4, 3> >;
#endif
};
template <bool kLocal>
struct FwdTile<128, kLocal> {
#ifdef FLASHCORE_TILE_D128_BM
  using type = FwdConfig<128, FLASHCORE_TILE_D128_BM, FLASHCORE_TILE_D128_BN,
                         FLASHCORE_TILE_D128_WARPS, FLASHCORE_TILE_D128_MINBLOCKS>;
#else
  using type = FwdConfig<128, 128, 64, 4, 2>;
#endif
};
// D = 256: one m16 tile per warp keeps O at 128 registers; 192 KB smem gives one CTA per SM.
template <bool kLocal>
struct FwdTile<256, kLocal> {
#ifdef FLASHCORE_TILE_D256_BM
  using type = FwdConfig<256, FLASHCORE_TILE_D256_BM, FLASHCORE_TILE_D256_BN,
                         FLASHCORE_TILE_D256_WARPS, FLASHCORE_TILE_D256_MINBLOCKS>;
#else
  using type = FwdConfig<256, 128, 64, 8, 1>;
#endif
};

}  // namespace flashcore::portable
