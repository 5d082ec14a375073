// The split tail's merge (TileScheduler): every piece of a split tile leaves its unnormalised
// O and its row statistics in its workspace slot; the CTA whose piece finishes last merges all
// of the tile's pieces and runs the epilogue. The merge reads every piece, its own included,
// in key order, so the result is the same whichever CTA comes last (bit for bit).
#pragma once

#include "hopper/fwd_mainloop.cuh"

namespace flashcore::hopper {

// Workspace: one counter per split tile (zero between calls: the merging CTA resets it),
// then TileScheduler::num_slots() slots of FwdConfig::kSplitSlotFloats.
struct SplitWorkspace {
  int* counters;
  float* slots;
};

// Slot layout: per consumer warpgroup, per float4 v of a thread (kO / 4 of O, then (max0,
// max1, sum0, sum1)), the warpgroup's 128 threads side by side, so each access is coalesced.
template <class Cfg, class Tag>
__device__ __forceinline__ float4* slot_at(const SplitWorkspace& ws, int slot, int wg, int tid) {
  constexpr int kV4 = Consumer<Cfg, Tag>::kO / 4 + 1;
  return reinterpret_cast<float4*>(ws.slots + int64_t(slot) * Cfg::kSplitSlotFloats) +
         wg * 128 * kV4 + tid;
}

// Called by every consumer thread after its piece's last P V. Returns true in every consumer
// thread of the CTA that merged (c then holds the whole tile, ready for store_tile), false
// in every thread of the others.
// k: the tail tile, slot: this piece's slot.
template <class Cfg, class Tag>
__device__ bool merge_split(Consumer<Cfg, Tag>& c, const SplitWorkspace& ws,
                            const TileScheduler& s, int k, int slot, int wg, int tid) {
  constexpr int kO4 = Consumer<Cfg, Tag>::kO / 4;
  float4* mine = slot_at<Cfg, Tag>(ws, slot, wg, tid);
#pragma unroll
  for (int v = 0; v < kO4; ++v)
    __stcg(mine + v * 128, make_float4(c.o[4 * v], c.o[4 * v + 1], c.o[4 * v + 2], c.o[4 * v + 3]));
  __stcg(mine + kO4 * 128, make_float4(c.row_max[0], c.row_max[1], c.row_sum[0], c.row_sum[1]));
  // Release: every thread's slot writes are visible device-wide before the count goes up.
  __threadfence();
  const uint32_t all = static_cast<uint32_t>(NamedBarrier::kConsumers);
  named_sync(all, Cfg::kConsumerThreads);
  bool last = false;
  if (wg == 0 && tid == 0) {
    last = atomicAdd(ws.counters + k, 1) == s.pieces(k) - 1;
    if (last) ws.counters[k] = 0;  // every piece has counted: the next call starts at 0
  }
  if (!named_sync_or(all, Cfg::kConsumerThreads, last)) return false;
  __threadfence();  // acquire: the other pieces' slots, read through L2 (__ldcg), not L1
  c.start_tile();
  for (int j = 0; j < s.pieces(k); ++j) {
    const float4* src = slot_at<Cfg, Tag>(ws, s.piece_slot(k, j), wg, tid);
    const float4 st = __ldcg(src + kO4 * 128);
    const float m[2] = {st.x, st.y}, l[2] = {st.z, st.w};
    float a[2], b[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float mx = fmaxf(c.row_max[r], m[r]);
      // A row no piece has seen a key of yet keeps max -inf; its factors are 0, not NaN.
      a[r] = c.row_max[r] == -INFINITY ? 0.f : ex2(c.row_max[r] - mx);
      b[r] = m[r] == -INFINITY ? 0.f : ex2(m[r] - mx);
      c.row_sum[r] = c.row_sum[r] * a[r] + l[r] * b[r];
      c.row_max[r] = mx;
    }
#pragma unroll
    for (int v = 0; v < kO4; ++v) {
      const float4 x = __ldcg(src + v * 128);
      const float xs[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int i = 4 * v + q;
        c.o[i] = c.o[i] * a[acc_half(i)] + xs[q] * b[acc_half(i)];
      }
    }
  }
  return true;
}

}  // namespace flashcore::hopper
