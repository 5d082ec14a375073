// Epilogue of the Hopper forward kernel: normalise O, stage it in shared memory, write it with
// TMA stores (varlen: 16-byte row-checked stores, since a tile's tail rows belong to the next
// sequence), write the log-sum-exp. The staging area is O's own tile where one fits, else the
// last key block's V buffer, which the mainloop has not released (FwdConfig::kOInV); either
// way the Q tile was released after the tile's last S = Q K^T.
#pragma once

#include "hopper/fwd_mainloop.cuh"

namespace flashcore::hopper {

// Staging layout: per warpgroup, per 64-column strip, one 64-row x 128-byte box (8 KB, 128-byte
// swizzle, as the O map's TMA box). O's own tile holds all strips of every warpgroup at once;
// a V buffer holds kOStripsPerPass strips of each, so O goes out in kOPasses passes.
template <class Cfg, class Tag, class Mask>
__device__ void store_tile(Consumer<Cfg, Tag>& c, const TilePlan<Cfg, Mask>& plan,
                           const detail::FwdParams& p, const Maps* maps, uint8_t* smem,
                           Barriers<Cfg>& bar, int v_stage, int wg, int tid) {
  constexpr int kSPP = Cfg::kOStripsPerPass, kValuesPerPass = 32 * kSPP;
  const int warp = tid / 32, lane = tid % 32;
  float inv[2], lse[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float l = detail::quad_sum(c.row_sum[r]);
    inv[r] = l > 0.f ? 1.f / l : 0.f;
    lse[r] = l > 0.f ? (c.row_max[r] + __log2f(l)) * 0.6931471805599453f : -INFINITY;
  }
  uint8_t* stage = smem + (Cfg::kOInV ? Cfg::kVOff + v_stage * Cfg::kKVBytes : Cfg::kOOff) +
                   wg * Cfg::kOBoxWgStride;
  const int row = 16 * warp + lane / 4;  // of value 0, within the warpgroup's 64 rows
  const int first = plan.m0 + 64 * wg;
  const uint32_t epi = barrier_id(NamedBarrier::kEpilogue, wg);
  const bool tma = p.cu_seqlens_q == nullptr;
  // The V buffer: every consumer warpgroup's last P V reads all of it, so no warpgroup
  // overwrites it before all have finished theirs. O's own tile: the previous tile's TMA
  // stores may still be reading it. Their issuing thread waited for nothing then, so it waits
  // here, a whole tile later, before anyone writes.
  if (Cfg::kOInV) {
    named_sync(static_cast<uint32_t>(NamedBarrier::kConsumers), Cfg::kConsumerThreads);
  } else if (tma) {
    if (tid == 0) tma_store_wait_read();
    named_sync(epi, 128);
  }
#pragma unroll
  for (int pass = 0; pass < Cfg::kOPasses; ++pass) {
    if (pass > 0) {  // the previous pass's reads of the staging area are done
      if (tma && tid == 0) tma_store_wait_read();
      named_sync(epi, 128);
    }
    // Values 32s..32s+31 of a thread are its columns of strip s (acc_col).
#pragma unroll
    for (int i = pass * kValuesPerPass; i < (pass + 1) * kValuesPerPass; i += 2) {
      const int r = acc_half(i);
      *reinterpret_cast<uint32_t*>(
          stage + sw128_offset(row + 8 * r, acc_col(i, lane) - 64 * kSPP * pass, 64)) =
          pack2<Tag>(c.o[i] * inv[r], c.o[i + 1] * inv[r]);
    }
    if (tma) {
      // Generic-proxy writes, read by the async proxy: fenced first. TMA drops the rows past
      // seqlen_q.
      fence_proxy_async_smem();
      named_sync(epi, 128);
      if (tid == 0) {
        for (int st = 0; st < kSPP; ++st)
          tma_store_4d(&maps->o, 64 * (kSPP * pass + st), plan.h, first, plan.b,
                       stage + st * Cfg::kOBoxStripStride);
        tma_store_commit();
      }
    } else {
      named_sync(epi, 128);
      uint16_t* og = static_cast<uint16_t*>(p.o) + plan.seq.o_off + int64_t(plan.h) * p.o_head +
                     64 * kSPP * pass;
      constexpr int kChunks = 8 * kSPP;  // 16-byte chunks per row and pass
#pragma unroll 4
      for (int idx = tid; idx < 64 * kChunks; idx += 128) {
        const int rr = idx / kChunks, ch = idx % kChunks;
        if (first + rr < plan.seq.sq)
          *reinterpret_cast<uint4*>(og + int64_t(first + rr) * p.o_seq + ch * 8) =
              *reinterpret_cast<const uint4*>(stage + sw128_offset(rr, ch * 8, 64));
      }
    }
  }
  if (p.lse != nullptr && (lane & 3) == 0) {
    float* lp = p.lse + plan.seq.lse_row0 + int64_t(plan.h) * plan.seq.lse_head_stride;
#pragma unroll
    for (int r = 0; r < 2; ++r)
      if (first + row + 8 * r < plan.seq.sq) lp[first + row + 8 * r] = lse[r];
  }
  if (Cfg::kOInV) {
    // The V buffer goes back to the producer once every read of it is done; its TMA writes
    // (async proxy) must follow this warpgroup's generic staging writes and reads.
    if (tma && tid == 0) tma_store_wait_read();
    fence_proxy_async_smem();
    named_sync(epi, 128);
    mbar_arrive(&bar.v_empty[v_stage]);
  } else if (!tma) {
    named_sync(epi, 128);  // the next tile's staging writes follow every thread's reads
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
