// Epilogue of the Hopper forward kernel: normalise O, stage it in the warpgroup's rows of the
// O (or Q) tile, write it with TMA stores (varlen: 16-byte row-checked stores), write the
// log-sum-exp.
#pragma once

#include "hopper/fwd_mainloop.cuh"

namespace flashcore::hopper {

template <class Cfg, class Tag, class Mask>
__device__ void store_tile(Consumer<Cfg, Tag>& c, const TilePlan<Cfg, Mask>& plan,
                           const detail::FwdParams& p, const Maps* maps, uint8_t* smem,
                           Barriers<Cfg>& bar, int wg, int tid) {
  constexpr int kD = Cfg::kHeadDim, kCPR = kD / 8, kRows = Cfg::kBlockM;
  const int warp = tid / 32, lane = tid % 32;
  float inv[2], lse[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float l = detail::quad_sum(c.row_sum[r]);
    inv[r] = l > 0.f ? 1.f / l : 0.f;
    lse[r] = l > 0.f ? (c.row_max[r] + __log2f(l)) * 0.6931471805599453f : -INFINITY;
  }
  // Staging tile: O's own, or the Q tile, which every wgmma of this warpgroup has finished
  // reading (wait_group 0) and which the producer refills only after q_empty.
  uint8_t* stage = smem + (Cfg::kSeparateO ? Cfg::kOOff : Cfg::kQOff);
  const int row_base = 64 * wg + 16 * warp + lane / 4;
  const uint32_t epi = barrier_id(NamedBarrier::kEpilogue, wg);
  const bool tma = p.cu_seqlens_q == nullptr;
  // O's own tile: the previous tile's TMA stores may still be reading these rows. Their issuing
  // thread waited for nothing then, so it waits here, a whole tile later, before anyone writes.
  if (Cfg::kSeparateO && tma) {
    if (tid == 0) tma_store_wait_read();
    named_sync(epi, 128);
  }
#pragma unroll
  for (int i = 0; i < Consumer<Cfg, Tag>::kO; i += 2) {
    const int r = acc_half(i);
    *reinterpret_cast<uint32_t*>(stage + sw128_offset(row_base + 8 * r, acc_col(i, lane), kRows)) =
        pack2<Tag>(c.o[i] * inv[r], c.o[i + 1] * inv[r]);
  }
  const int first = plan.m0 + 64 * wg;
  if (tma) {
    // One TMA store per 64-column strip of this warpgroup's rows, issued by one thread; TMA
    // drops rows past seqlen_q. The staging writes above are generic-proxy writes: fenced for
    // the async proxy first. In the Q tile the stores must have read the rows before the
    // producer may refill it (q_empty below); O's own tile is waited for at the next tile.
    fence_proxy_async_smem();
    named_sync(epi, 128);
    if (tid == 0) {
      for (int st = 0; st < Cfg::kStrips; ++st)
        tma_store_4d(&maps->o, 64 * st, plan.h, first, plan.b,
                     stage + st * kRows * 128 + 64 * wg * 128);
      tma_store_commit();
      if (!Cfg::kSeparateO) tma_store_wait_read();
    }
  } else {
    // Varlen: the rows past this sequence are the next sequence's, so 16-byte row-checked
    // stores from every thread.
    named_sync(epi, 128);
    uint16_t* og = static_cast<uint16_t*>(p.o) + plan.seq.o_off + int64_t(plan.h) * p.o_head;
#pragma unroll 4
    for (int idx = tid; idx < 64 * kCPR; idx += 128) {
      const int row = idx / kCPR, ch = idx % kCPR;
      if (first + row < plan.seq.sq)
        *reinterpret_cast<uint4*>(og + int64_t(first + row) * p.o_seq + ch * 8) =
            *reinterpret_cast<const uint4*>(stage + sw128_offset(64 * wg + row, ch * 8, kRows));
    }
  }
  if (p.lse != nullptr && (lane & 3) == 0) {
    float* lp = p.lse + plan.seq.lse_row0 + int64_t(plan.h) * plan.seq.lse_head_stride;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = plan.m0 + row_base + 8 * r;
      if (row < plan.seq.sq) lp[row] = lse[r];
    }
  }
  // The producer's TMA writes into the Q tile (the async proxy) must follow the TMA stores'
  // reads of it; in O's own tile the next tile's staging writes must follow every thread's
  // 16-byte reads (varlen).
  if (!Cfg::kSeparateO) {
    fence_proxy_async_smem();
    named_sync(epi, 128);
    mbar_arrive(&bar.q_empty);
  } else if (!tma) {
    named_sync(epi, 128);
  }
}

// A tile whose rows see no key: O = 0, LSE = -inf. Nothing was loaded for it.
template <class Cfg, class Mask>
__device__ void store_empty_tile(const TilePlan<Cfg, Mask>& plan, const detail::FwdParams& p,
                                 int wg, int tid) {
  constexpr int kCPR = Cfg::kHeadDim / 8;
  const int first = plan.m0 + 64 * wg;
  uint16_t* og = static_cast<uint16_t*>(p.o) + plan.seq.o_off + int64_t(plan.h) * p.o_head;
  for (int idx = tid; idx < 64 * kCPR; idx += 128) {
    const int row = idx / kCPR, ch = idx % kCPR;
    if (first + row < plan.seq.sq)
      *reinterpret_cast<uint4*>(og + int64_t(first + row) * p.o_seq + ch * 8) =
          make_uint4(0, 0, 0, 0);
  }
  if (p.lse != nullptr && tid < 64 && first + tid < plan.seq.sq)
    p.lse[plan.seq.lse_row0 + int64_t(plan.h) * plan.seq.lse_head_stride + first + tid] = -INFINITY;
}

}  // namespace flashcore::hopper
