// Host-side entry of the Hopper forward kernels: one launch function per compiled
// (dtype, head_dim), compiled for sm_90a only; the tile row and the mask policy are picked
// from the params.
#pragma once

#include <algorithm>

#include <cuda_runtime.h>

#include "common/fwd_params.h"
#include "common/workspace.h"
#include "hopper/fwd_config.h"
#include "hopper/tile_scheduler.h"

namespace flashcore::hopper {

// workspace: null, or workspace_bytes<kHeadDim>(p, SM count) bytes, zero-filled before its
// first use (each call leaves it so); without it no tail is split.
template <class Tag, int kHeadDim>
cudaError_t launch_fwd(const detail::FwdParams& p, void* workspace, cudaStream_t stream);

// The persistent schedule of a problem on `sms` SMs, with a split tail where one pays: an
// unmasked fixed-length problem whose last round of tiles would leave SMs idle, cut when each
// CTA's share of it (plus kSplitOverheadBlocks) is at most a whole tile's key blocks and at
// least one block (and the tail positions fit TileScheduler's int arithmetic).
template <class Cfg>
TileScheduler make_schedule(const detail::FwdParams& p, bool local, int sms, bool split) {
  TileScheduler s{(p.seqlen_q + Cfg::kBlockM - 1) / Cfg::kBlockM, p.num_heads_q, p.batch, local};
  if (!split || !Cfg::kSplitTail || local || p.cu_seqlens_q != nullptr || sms <= 0) return s;
  const int tail = s.num_units() % sms;
  const int64_t blocks = (int64_t(p.seqlen_k) + Cfg::kBlockN - 1) / Cfg::kBlockN;
  const int64_t work = tail * blocks;
  if (tail == 0 || work < sms || (work + sms - 1) / sms + kSplitOverheadBlocks > blocks) return s;
  if ((int64_t(sms) + 1) * work >= (int64_t{1} << 31)) return s;  // TileScheduler's int range
  s.split_tiles = tail;
  s.blocks = static_cast<int>(blocks);
  s.ctas = sms;
  return s;
}

// Workspace layout of a split schedule: the counter area (common/workspace.h; split_tiles <
// ctas), then the slots.
inline int64_t split_counter_bytes(const TileScheduler& s) {
  return detail::workspace_counter_bytes(s.ctas);
}
template <class Cfg>
int64_t split_workspace_bytes(const TileScheduler& s) {
  if (s.split_tiles == 0) return 0;
  return split_counter_bytes(s) + int64_t(s.num_slots()) * Cfg::kSplitSlotFloats * 4;
}

// Bytes of workspace launch_fwd uses for p on a GPU of `sms` SMs (0: none).
template <int kHeadDim>
int64_t workspace_bytes(const detail::FwdParams& p, int sms) {
  if (p.window_left >= 0 || p.window_right >= 0) return 0;  // only unmasked problems split
  if constexpr (kHasShortRow<kHeadDim>) {
    using Short = FwdConfig<kHeadDim, true>;
    if (uses_short_row<kHeadDim>(false, p.seqlen_q))
      return split_workspace_bytes<Short>(make_schedule<Short>(p, false, sms, true));
  }
  using General = FwdConfig<kHeadDim>;
  return split_workspace_bytes<General>(make_schedule<General>(p, false, sms, true));
}

/// Rows of the Q tile and of a K/V tile of the tile row launch_fwd picks for a problem: the
/// TMA box heights select() checks the maps with.
struct TileRows {
  int q, kv;
};
template <int kHeadDim>
TileRows tile_rows(bool local_mask, int64_t seqlen_q) {
  if constexpr (kHasShortRow<kHeadDim>) {
    if (uses_short_row<kHeadDim>(local_mask, seqlen_q))
      return {FwdConfig<kHeadDim, true>::kBlockM, FwdConfig<kHeadDim, true>::kBlockN};
  }
  return {FwdConfig<kHeadDim>::kBlockM, FwdConfig<kHeadDim>::kBlockN};
}

// Shared memory of the largest configuration launch_fwd may pick for kHeadDim.
template <int kHeadDim>
constexpr int max_smem_bytes() {
  uint32_t m =
      std::max(FwdConfig<kHeadDim>::kSmemBytes, FwdConfig<kHeadDim, false, true>::kSmemBytes);
  if constexpr (kHasShortRow<kHeadDim>)
    m = std::max({m, FwdConfig<kHeadDim, true>::kSmemBytes,
                  FwdConfig<kHeadDim, true, true>::kSmemBytes});
  return int(m);
}

}  // namespace flashcore::hopper
