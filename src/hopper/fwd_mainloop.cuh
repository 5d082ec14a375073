// Mainloop of the Hopper forward kernel: the TMA producer and the consumer warpgroups'
// S = Q K^T (SS wgmma), online softmax in registers, O += P V (RS wgmma).
#pragma once

#include <type_traits>

#include "common/device_math.cuh"
#include "hopper/fwd_config.h"
#include "hopper/fwd_scheduler.cuh"
#include "hopper/sm90_ops.cuh"
#include "hopper/smem_desc.h"

namespace flashcore::hopper {

// The CTA's mbarriers (layout kBarOff of FwdConfig). full: TMA landed (1 arrival + bytes);
// empty: the consumers finished with the tile (every consumer thread arrives, so no warp can
// be early). Q is empty after the tile's last S = Q K^T; the last key block's V, where O is
// staged in it (FwdConfig::kOInV), after the epilogue.
template <class Cfg>
struct Barriers {
  uint64_t q_full, q_empty;
  uint64_t k_full[Cfg::kStagesK], k_empty[Cfg::kStagesK];
  uint64_t v_full[Cfg::kStagesV], v_empty[Cfg::kStagesV];

  __device__ void init() {
    mbar_init(&q_full, 1);
    mbar_init(&q_empty, Cfg::kConsumerThreads);
    for (int s = 0; s < Cfg::kStagesK; ++s) {
      mbar_init(&k_full[s], 1);
      mbar_init(&k_empty[s], Cfg::kConsumerThreads);
    }
    for (int s = 0; s < Cfg::kStagesV; ++s) {
      mbar_init(&v_full[s], 1);
      mbar_init(&v_empty[s], Cfg::kConsumerThreads);
    }
  }
};

// Slot of the index-th K/V block in a ring of kStages buffers; the parity flips each lap
// (HOPPER-PRIMER 6). Producer and consumers count blocks the same way.
template <int kStages>
struct Slot {
  int stage;
  uint32_t parity;
  __device__ explicit Slot(uint32_t index)
      : stage(static_cast<int>(index % kStages)), parity((index / kStages) & 1) {}
};

struct Maps {
  CUtensorMap q, k, v, o;  // (B, S, H, D) views, boxes of 64 columns (bshd_tile_map)
};

// Waits until the consumers emptied a buffer, then loads a tile of `rows` rows into it, one
// 64-column strip per copy, all completing on `full` (expect_tx counts the whole tile).
template <class Cfg>
__device__ __forceinline__ void load_tile(uint8_t* dst, uint32_t strip_bytes, uint32_t bytes,
                                          const CUtensorMap* map, int head, int row, int batch,
                                          uint64_t* empty, uint32_t empty_parity, uint64_t* full) {
  mbar_wait(empty, empty_parity);
  mbar_arrive_expect_tx(full, bytes);
  for (int st = 0; st < Cfg::kStrips; ++st)
    tma_load_4d(dst + st * strip_bytes, map, 64 * st, head, row, batch, full);
}

// One thread issues every copy. Per tile: K(last), Q, then each lower block's K ahead of the V
// of the block above it, in the order the consumers need them (S of a block is issued with P V
// of the block above), so waiting for a V slot never holds back the next K; the tile's lowest
// V last. Empty barriers are waited with the parity of the previous lap (a fresh barrier
// passes parity 1).
template <class Cfg, class Mask>
__device__ void produce(const detail::FwdParams& p, const Maps* maps, const TileScheduler& sched,
                        uint8_t* smem, Barriers<Cfg>& bar) {
  constexpr int kBN = Cfg::kBlockN;
  uint32_t block = 0;  // K/V blocks loaded so far
  uint32_t tile_count = 0;
  const bool varlen = p.cu_seqlens_q != nullptr;
  auto load = [&](const TilePlan<Cfg, Mask>& plan) {
    if (!plan.has_keys()) return;
    const int bc = varlen ? 0 : plan.b;  // varlen maps are one packed "batch"
    const int hk = plan.h / p.group;
    int krow = plan.seq.k_row0 + plan.n_end * kBN;
    for (int n = plan.n_end - 1; n >= plan.n_begin; --n, ++block) {
      krow -= kBN;
      const Slot<Cfg::kStagesK> ks(block);
      load_tile<Cfg>(smem + Cfg::kKOff + ks.stage * Cfg::kKVBytes, Cfg::kKVStrip, Cfg::kKVBytes,
                     &maps->k, hk, krow, bc, &bar.k_empty[ks.stage], ks.parity ^ 1,
                     &bar.k_full[ks.stage]);
      // The previous tile released Q (q_empty) after its last QK^T or its epilogue.
      if (n == plan.n_end - 1) {
        load_tile<Cfg>(smem + Cfg::kQOff, Cfg::kQStrip, Cfg::kQBytes, &maps->q, plan.h,
                       plan.seq.q_row0 + plan.m0, bc, &bar.q_empty, (tile_count & 1) ^ 1,
                       &bar.q_full);
      } else {  // V of the block above
        const Slot<Cfg::kStagesV> vs(block - 1);
        load_tile<Cfg>(smem + Cfg::kVOff + vs.stage * Cfg::kKVBytes, Cfg::kKVStrip,
                       Cfg::kKVBytes, &maps->v, hk, krow + kBN, bc, &bar.v_empty[vs.stage],
                       vs.parity ^ 1, &bar.v_full[vs.stage]);
      }
    }
    const Slot<Cfg::kStagesV> vs(block - 1);
    load_tile<Cfg>(smem + Cfg::kVOff + vs.stage * Cfg::kKVBytes, Cfg::kKVStrip, Cfg::kKVBytes,
                   &maps->v, hk, krow, bc, &bar.v_empty[vs.stage], vs.parity ^ 1,
                   &bar.v_full[vs.stage]);
    ++tile_count;
  };
  for_each_tile<Cfg>(
      sched, [&](TileScheduler::Tile t) { load(TilePlan<Cfg, Mask>(p, t)); },
      [&](TileScheduler::Tile t, const TileScheduler::Piece& piece, int) {
        TilePlan<Cfg, Mask> plan(p, t, true);
        plan.clip(piece);
        load(plan);
      });
}

template <class Tag>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  return std::is_same_v<Tag, detail::Bf16> ? detail::pack_bf16x2(lo, hi)
                                           : detail::pack_f16x2(lo, hi);
}

// Accumulator layout of m64nNk16 (HOPPER-PRIMER 4): value i of a thread sits in row
// lane/4 + 8*((i>>1)&1) of its warp's 16 and column 8*(i>>2) + 2*(lane%4) + (i&1).
__device__ __forceinline__ int acc_half(int i) { return (i >> 1) & 1; }
__device__ __forceinline__ int acc_col(int i, int lane) {
  return 8 * (i >> 2) + 2 * (lane & 3) + (i & 1);
}

// The RS A fragment of keys 16kk..16kk+15 is accumulator values 8kk..8kk+7 in order
// (HOPPER-PRIMER 4): P goes from the S accumulators to the PV wgmma without shuffles.
template <class Tag, int M>
__device__ __forceinline__ void to_fragment(const float (&s)[M], uint32_t (&pf)[M / 8][4]) {
#pragma unroll
  for (int kk = 0; kk < M / 8; ++kk)
#pragma unroll
    for (int q = 0; q < 4; ++q) pf[kk][q] = pack2<Tag>(s[8 * kk + 2 * q], s[8 * kk + 2 * q + 1]);
}

// Consumer state and steps for one warpgroup's 64 query rows.
template <class Cfg, class Tag>
struct Consumer {
  static constexpr int kD = Cfg::kHeadDim, kBN = Cfg::kBlockN;
  static constexpr int kS = kBN / 2, kO = kD / 2, kKChunks = kBN / 16;

  float o[kO];
  float row_max[2], row_sum[2];  // running max in log2 units; per-thread partial sums
  int lo[2], hi[2];              // visible keys of this thread's two rows

  __device__ void start_tile() {
#pragma unroll
    for (int i = 0; i < kO; ++i) o[i] = 0.f;
    row_max[0] = row_max[1] = -INFINITY;
    row_sum[0] = row_sum[1] = 0.f;
  }

  // S = Q K^T: D/16 k-steps; within a 128-byte strip +32 bytes, across strips + strip size.
  // Each batch opens with wgmma.fence after the last register writes (FA3's gemm does the
  // same); without it ptxas injects its own arrive and serialises the wgmmas (C7519).
  __device__ static void issue_qk(float (&s)[kS], uint64_t q_desc, uint64_t k_desc) {
    fence_regs(s);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
      const uint32_t a = (kk / 4) * Cfg::kQStrip + (kk % 4) * 32;
      const uint32_t b = (kk / 4) * Cfg::kKVStrip + (kk % 4) * 32;
      WgmmaSS<kBN, Tag>::mma(s, q_desc + (a >> 4), k_desc + (b >> 4), kk > 0);
    }
    wgmma_commit();
  }

  // O += P V: V is the MN-major B operand; a k16 step is 16 keys = 2048 bytes.
  __device__ void issue_pv(uint32_t (&pf)[kKChunks][4], uint64_t v_desc) {
    fence_regs(o);
    fence_regs(pf);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kKChunks; ++kk)
      WgmmaRS<kD, Tag>::mma(o, pf[kk], v_desc + ((kk * 2048) >> 4), 1);
    wgmma_commit();
  }

  __device__ void mask(float (&s)[kS], int n0, int lane) const {
#pragma unroll
    for (int i = 0; i < kS; ++i) {
      const int col = n0 + acc_col(i, lane), r = acc_half(i);
      if (col < lo[r] || col >= hi[r]) s[i] = -INFINITY;
    }
  }

  // Online softmax step in base 2: leaves P in s, returns in alpha the factor that rescales
  // O (and has rescaled the sums) from the old running max to the new one (SoftmaxKnobs).
  __device__ void softmax(float (&s)[kS], float scale_log2, float (&alpha)[2]) {
    constexpr int kPoly = SoftmaxKnobs::kPolyEvery;
    constexpr int kPolyPeriod = kPoly > 0 ? kPoly : 1;  // keeps % defined when kPoly is 0
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int i = 2 * r; i < kS; i += 4) mx = fmaxf(mx, fmaxf(s[i], s[i + 1]));
      mx = detail::quad_max(mx);
      const float m_new = mx * scale_log2;
      // -inf + slack stays -inf: the first visible key always sets the max (alpha = 0).
      const bool raise = m_new > row_max[r] + SoftmaxKnobs::kMaxSlack;
      alpha[r] = raise ? ex2(row_max[r] - m_new) : 1.f;
      row_max[r] = raise ? m_new : row_max[r];
      // A row with nothing visible yet keeps max -inf; subtract 0 so exp2 gives 0, not NaN.
      const float m_use = row_max[r] == -INFINITY ? 0.f : row_max[r];
      float sum = 0.f;
#pragma unroll
      for (int i = 2 * r; i < kS; i += 4) {
        const float x0 = fmaf(s[i], scale_log2, -m_use), x1 = fmaf(s[i + 1], scale_log2, -m_use);
        const bool poly = kPoly > 0 && (i / 4) % kPolyPeriod == kPoly - 1;
        s[i] = poly ? ex2_poly(x0) : ex2(x0);
        s[i + 1] = poly ? ex2_poly(x1) : ex2(x1);
        sum += s[i] + s[i + 1];
      }
      row_sum[r] = row_sum[r] * alpha[r] + sum;
    }
  }

  // O needs rescaling only when some row of the warp raised its max (rare with a max slack).
  __device__ static bool needs_rescale(const float (&alpha)[2]) {
    return __any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f);
  }
  __device__ void rescale(const float (&alpha)[2]) {
#pragma unroll
    for (int i = 0; i < kO; ++i) o[i] *= alpha[acc_half(i)];
  }
};

// Ping-pong turns (HOPPER-PRIMER 8), round robin over the consumers: a warpgroup issues its
// GEMMs only after the previous one has issued its own, so the others' softmax runs while its
// GEMMs hold the tensor cores. `other` is the next warpgroup's barrier; each barrier counts
// its owner's sync and its predecessor's arrive (256 threads).
template <bool kOn>
struct SchedulerBarrier {
  uint32_t mine, other;
  __device__ void take() const {
    if (kOn) named_sync(mine, 256);
  }
  __device__ void pass() const {
    if (kOn) named_arrive(other, 256);
  }
};

// End (exclusive) of the key blocks that some row of warpgroup wg sees; plan.n_begin when none
// does. Only the top is trimmed: below it the blocks are the tile's, masked per element.
template <class Cfg, class Mask>
__device__ __forceinline__ int warpgroup_block_end(const TilePlan<Cfg, Mask>& plan,
                                                   const detail::FwdParams& p, int wg) {
  if constexpr (!Cfg::kSkipInvisibleBlocks) return plan.n_end;
  const int r0 = plan.m0 + 64 * wg;
  if (r0 >= plan.seq.sq) return plan.n_begin;
  const detail::RowRange k = detail::block_keys<Mask>(
      r0, min(r0 + 63, plan.seq.sq - 1), plan.seq.sq, plan.seq.sk, p.window_left, p.window_right);
  if (k.hi <= k.lo) return plan.n_begin;
  return max(plan.n_begin, min(plan.n_end, (k.hi + Cfg::kBlockN - 1) / Cfg::kBlockN));
}

// A key block that no row of this warpgroup sees: no wgmma, no softmax, but the warpgroup
// takes its turn (every consumer takes the same number per tile, or the round robin breaks)
// and releases K, V (and Q after the tile's last block) like any other block. It waits for
// each buffer to be full before arriving on its empty barrier, so the arrival cannot count
// toward the previous lap of that barrier.
template <class Cfg, class Mask, class Turn>
__device__ __forceinline__ void skip_block(const TilePlan<Cfg, Mask>& plan, Barriers<Cfg>& bar,
                                           uint32_t block, int n, const Turn& turn) {
  const Slot<Cfg::kStagesK> ks(block);
  const Slot<Cfg::kStagesV> vs(block);
  turn.take();
  mbar_wait(&bar.k_full[ks.stage], ks.parity);
  turn.pass();
  mbar_arrive(&bar.k_empty[ks.stage]);
  if (n == plan.n_begin) mbar_arrive(&bar.q_empty);
  mbar_wait(&bar.v_full[vs.stage], vs.parity);
  mbar_arrive(&bar.v_empty[vs.stage]);
}

// One tile of one consumer warpgroup, FA3's intra-warpgroup order: S(j+1) = Q K(j+1)^T is
// issued together with O += P(j) V(j), and the softmax of S(j+1) runs while the PV
// wgmmas are in flight. Returns the V stage of the tile's last block, which stays held where
// the epilogue stages O in it (FwdConfig::kOInV).
template <class Cfg, class Tag, class Mask>
__device__ int consume_tile(Consumer<Cfg, Tag>& c, const TilePlan<Cfg, Mask>& plan,
                             const detail::FwdParams& p, uint8_t* smem, Barriers<Cfg>& bar,
                             uint32_t& block, int wg, int lane,
                             const SchedulerBarrier<Cfg::kPingPong>& turn) {
  using C = Consumer<Cfg, Tag>;
  constexpr int kBN = Cfg::kBlockN;
  const uint64_t q_desc =
      wgmma_desc(smem_addr(smem + Cfg::kQOff) + wg * 64 * 128, 16, 1024, DescSwizzle::k128B);
  auto k_desc = [&](int s) {
    return wgmma_desc(smem_addr(smem + Cfg::kKOff + s * Cfg::kKVBytes), 16, 1024,
                      DescSwizzle::k128B);
  };
  auto v_desc = [&](int s) {
    return wgmma_desc(smem_addr(smem + Cfg::kVOff + s * Cfg::kKVBytes), Cfg::kKVStrip, 1024,
                      DescSwizzle::k128B);
  };
  // Rows of this warpgroup; a block needs per-element masking unless all of it is visible.
  const int r0 = plan.m0 + wg * 64, r_last = r0 + 63;
  auto needs_mask = [&](int n) {
    return !detail::tile_unmasked<Mask>(n * kBN, kBN, r0, r_last, plan.seq.sq, plan.seq.sk,
                                        p.window_left, p.window_right);
  };

  float s[C::kS];
  uint32_t pf[C::kKChunks][4];
  float alpha[2];

  // block counts the K/V blocks consumed so far, as the producer counts them. Blocks at or
  // above n_hi are invisible to every row of this warpgroup (above the causal diagonal of a
  // 192-row tile, or rows past the sequence end): skipped, see skip_block.
  const int n_hi = warpgroup_block_end(plan, p, wg);
  if constexpr (Cfg::kSkipInvisibleBlocks) {
#pragma unroll 1
    for (int n = plan.n_end - 1; n >= n_hi; --n, ++block) skip_block(plan, bar, block, n, turn);
    if (n_hi == plan.n_begin) {  // nothing visible: the turn a last P V would have taken
      turn.take();
      turn.pass();
      return -1;
    }
  }
  int n = n_hi - 1;
  Slot<Cfg::kStagesK> ks(block);
  turn.take();
  mbar_wait(&bar.k_full[ks.stage], ks.parity);
  C::issue_qk(s, q_desc, k_desc(ks.stage));
  turn.pass();
  // PV done: O and P may be touched again, V's buffer goes back to the producer (unless it
  // is the last block's and O will be staged in it).
  auto finish_pv = [&](int v_stage, bool release = true) {
    wgmma_wait<0>();
    fence_regs(c.o);
    fence_regs(pf);
    if (release) mbar_arrive(&bar.v_empty[v_stage]);
  };
  // S of block n computed (its wgmma group waited for): K's buffer goes back to the producer,
  // and so does Q after the tile's last block; then mask and softmax.
  auto after_s = [&](int n_done) {
    fence_regs(s);
    mbar_arrive(&bar.k_empty[ks.stage]);
    if (n_done == plan.n_begin) mbar_arrive(&bar.q_empty);
    if (needs_mask(n_done)) c.mask(s, n_done * kBN, lane);
    c.softmax(s, p.scale_log2, alpha);
  };
  wgmma_wait<0>();
  after_s(n);
  to_fragment<Tag>(s, pf);
  Slot<Cfg::kStagesV> vs(block);  // V of the block whose P is in pf
  ++block;

  for (--n; n >= plan.n_begin; --n, ++block) {
    ks = Slot<Cfg::kStagesK>(block);
    turn.take();
    mbar_wait(&bar.k_full[ks.stage], ks.parity);
    C::issue_qk(s, q_desc, k_desc(ks.stage));
    mbar_wait(&bar.v_full[vs.stage], vs.parity);
    c.issue_pv(pf, v_desc(vs.stage));
    turn.pass();
    wgmma_wait<1>();  // this block's S; the P V just issued may still run
    after_s(n);
    // The P V wait sits in both arms of the rescale branch on purpose: ptxas hoists a wgmma
    // wait to the top of its basic block, which put it ahead of the softmax, so the
    // exponentials ran after this warpgroup's P V instead of under it (perf-notes H11). The
    // branch, taken on a warp vote after the softmax, keeps the wait behind them.
    if (C::needs_rescale(alpha)) {
      finish_pv(vs.stage);
      c.rescale(alpha);
    } else {
      finish_pv(vs.stage);
    }
    to_fragment<Tag>(s, pf);
    vs = Slot<Cfg::kStagesV>(block);
  }

  turn.take();
  mbar_wait(&bar.v_full[vs.stage], vs.parity);
  c.issue_pv(pf, v_desc(vs.stage));
  turn.pass();
  finish_pv(vs.stage, !Cfg::kOInV);
  return vs.stage;
}

}  // namespace flashcore::hopper
