// The Hopper forward kernel: persistent, warp-specialised (one TMA producer warpgroup, two to
// four consumer warpgroups of 64 query rows each, per the tile row), TMA + wgmma, ping-pong
// between the consumers.
// Design and budgets: docs/hopper-design.md.
#pragma once

#include "hopper/fwd_epilogue.cuh"
#include "hopper/fwd_mainloop.cuh"
#include "hopper/fwd_split.cuh"

namespace flashcore::hopper {

struct FwdArgs {
  Maps maps;  // first: CUtensorMap is 64-byte aligned
  detail::FwdParams p;
  TileScheduler sched;
  SplitWorkspace split;  // used only when sched.split_tiles > 0
};

template <class Cfg, class Tag, class Mask>
__global__ void __launch_bounds__(Cfg::kThreads, 1) fwd_kernel(const __grid_constant__ FwdArgs a) {
  extern __shared__ uint8_t smem_raw[];
  // 128-byte swizzled tiles are read by wgmma with base offset 0: keep them 1024-aligned.
  uint8_t* smem =
      reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  auto& bar = *reinterpret_cast<Barriers<Cfg>*>(smem + Cfg::kBarOff);
  // Broadcast from lane 0 so ptxas knows the role branch is warp-uniform; otherwise it treats
  // the consumer path as divergent and serialises its wgmmas (C7520).
  const int wg = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x / 128), 0);
  if (threadIdx.x == 0) {
    bar.init();
    mbar_init_fence();
  }
  __syncthreads();

  if (wg == 0) {
    regs_dealloc<Cfg::kProducerRegs>();
    if (threadIdx.x == 0) {
      tma_prefetch(&a.maps.q);
      tma_prefetch(&a.maps.k);
      tma_prefetch(&a.maps.v);
      tma_prefetch(&a.maps.o);
      produce<Cfg, Mask>(a.p, &a.maps, a.sched, smem, bar);
    }
    return;
  }

  regs_alloc<Cfg::kConsumerRegs>();
  const int cwg = wg - 1, tid = threadIdx.x % 128, warp = tid / 32, lane = tid % 32;
  const SchedulerBarrier<Cfg::kPingPong> turn{
      barrier_id(NamedBarrier::kSched, cwg),
      barrier_id(NamedBarrier::kSched, (cwg + 1) % Cfg::kConsumers)};
  // Consumer 0 takes the first turn: the last consumer hands it over once up front.
  if (cwg == Cfg::kConsumers - 1) turn.pass();

  Consumer<Cfg, Tag> c;
  uint32_t block = 0;  // K/V blocks consumed, counted as the producer loads them
  uint32_t tile_count = 0;
  // The mainloop of one tile or piece.
  auto compute = [&](const TilePlan<Cfg, Mask>& plan, int& v_stage) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const detail::RowRange rr =
          Mask::row(plan.m0 + 64 * cwg + 16 * warp + lane / 4 + 8 * r, plan.seq.sq, plan.seq.sk,
                    a.p.window_left, a.p.window_right);
      c.lo[r] = rr.lo;
      c.hi[r] = rr.hi;
    }
    c.start_tile();
    mbar_wait(&bar.q_full, tile_count & 1);
    v_stage = consume_tile(c, plan, a.p, smem, bar, block, cwg, lane, turn);
    ++tile_count;
  };
  for_each_tile<Cfg>(
      a.sched,
      [&](TileScheduler::Tile t) {
        const TilePlan<Cfg, Mask> plan(a.p, t);
        if (!plan.has_keys()) {
          if (plan.has_rows()) store_empty_tile(plan, a.p, cwg, tid);
          return;
        }
        int v_stage;
        compute(plan, v_stage);
        store_tile(c, plan, a.p, &a.maps, smem, bar, v_stage, cwg, tid);
      },
      [&](TileScheduler::Tile t, const TileScheduler::Piece& piece, int i) {
        TilePlan<Cfg, Mask> plan(a.p, t, true);  // unmasked, fixed lengths: it has keys
        plan.clip(piece);
        int v_stage;
        compute(plan, v_stage);
        // The piece's tile and slot again, from what stayed live: holding the piece through
        // the mainloop spilled the D64 and D256 consumers.
        const int k = a.sched.tail_index(plan.b, plan.h, plan.m0 / Cfg::kBlockM);
        if (merge_split(c, a.split, a.sched, k, a.sched.slot(blockIdx.x, i, k), cwg, tid))
          store_tile(c, plan, a.p, &a.maps, smem, bar, v_stage, cwg, tid);
        else if (Cfg::kOInV)
          mbar_arrive(&bar.v_empty[v_stage]);  // no O to stage: the last V goes back now
      });
  // The opening hand-over left one arrival on consumer 0's barrier: take it.
  if (cwg == 0) turn.take();
  // The last tile's O stores must be complete before the CTA's shared memory goes away.
  if (tid == 0) tma_store_wait_all();
}

}  // namespace flashcore::hopper
