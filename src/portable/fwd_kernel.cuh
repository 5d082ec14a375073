// Portable (sm80+) forward attention, the FlashAttention-2 algorithm: one CTA per (query tile,
// head, batch); K and V tiles stream through two-stage cp.async rings, one tile ahead; S = QK^T
// and O += PV on mma.sync with the online softmax in registers (docs/perf-notes.md has the
// variants measured against this loop).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/fwd_params.h"
#include "common/mask.cuh"
#include "common/seq_slice.cuh"
#include "portable/fwd_config.h"
#include "portable/fwd_epilogue.cuh"
#include "portable/sm80_ops.cuh"
#include "portable/smem_layout.cuh"
#include "portable/softmax.cuh"
#include "portable/warp_gemm.cuh"

namespace flashcore::portable {

using detail::FwdParams;
using detail::seq_slice;
using detail::SeqSlice;

// Copies rows [0, kRows) of a global tile (row stride in elements) into swizzled smem; rows at
// or past `valid` are zero-filled and not read. Thread tid always moves chunk tid % kCPR of
// rows tid / kCPR + k * kRowStep; kRowStep is a multiple of 8, so the swizzle term is the same
// for all of them and each copy is base + k * step in both address spaces.
template <class Cfg, int kRows, int kThreads, class Elem>
__device__ __forceinline__ void load_tile(uint32_t smem, const Elem* g, int64_t stride, int valid,
                                          int tid) {
  constexpr int kCPR = Cfg::kChunksPerRow;
  constexpr int kRowStep = kThreads / kCPR;
  static_assert(kThreads % kCPR == 0 && kRowStep % 8 == 0 && kRows % kRowStep == 0);
  const int r0 = tid / kCPR, ch = tid % kCPR;
  const uint32_t dst = smem + swz<Cfg>(r0, ch);
  const Elem* src = g + r0 * stride + ch * 8;
#pragma unroll
  for (int k = 0; k < kRows / kRowStep; ++k) {
    const bool ok = r0 + k * kRowStep < valid;
    cp_async_16(dst + k * kRowStep * kCPR * 16, ok ? src + k * kRowStep * stride : g, ok);
  }
}

template <class Cfg, class Elem, class Mask>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kMinBlocks)
    fwd_kernel(const __grid_constant__ FwdParams p) {
  constexpr int kMT = Cfg::kMTiles, kNT = Cfg::kNTiles, kDT = Cfg::kDTiles;
  constexpr int kBM = Cfg::kBlockM, kBN = Cfg::kBlockN, kD = Cfg::kHeadDim;
  constexpr uint32_t kTileBytes = kBN * kD * 2;
  extern __shared__ __align__(128) uint8_t smem[];
  // Layout: Q tile | K stage 0 | K stage 1 | V stage 0 | V stage 1.
  const uint32_t sQ = smem_addr(smem);
  const uint32_t sK = sQ + kBM * kD * 2;
  const uint32_t sV = sK + 2 * kTileBytes;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int b = blockIdx.z, h = blockIdx.y, hk = h / p.group;
  // Causal/window tiles get heavier with the row index: launch those first.
  const int m_block = Mask::kLocal ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  // A malformed device list (an entry reaching outside the packed tensors) gets no rows. D128
  // is at its register limit: there the check runs out of line, once (perf-notes H28).
  constexpr bool kOutOfLine = kD == 128;
  if (kOutOfLine && p.cu_seqlens_q != nullptr &&
      !detail::entry_in_bounds_call(p.cu_seqlens_q, p.cu_seqlens_k, b, p.total_q, p.total_k))
    return;
  const SeqSlice seq = seq_slice(p, b, false, /*checked=*/kOutOfLine);
  const int m0 = m_block * kBM;
  if (m0 >= seq.sq) return;
  const int m_last = min(m0 + kBM, seq.sq) - 1;

  const Elem* qg = static_cast<const Elem*>(p.q) + seq.q_off + h * p.q_head + m0 * p.q_seq;
  const Elem* kg = static_cast<const Elem*>(p.k) + seq.k_off + hk * p.k_head;
  const Elem* vg = static_cast<const Elem*>(p.v) + seq.v_off + hk * p.v_head;
  Elem* og = static_cast<Elem*>(p.o) + seq.o_off + h * p.o_head + m0 * p.o_seq;
  float* lse = p.lse ? p.lse + seq.lse_row0 + h * seq.lse_head_stride + m0 : nullptr;

  const detail::RowRange keys =
      detail::block_keys<Mask>(m0, m_last, seq.sq, seq.sk, p.window_left, p.window_right);
  if (keys.hi <= keys.lo) {  // no row of this tile sees a key (also seqlen_k == 0)
    store_empty<Cfg>(og, p.o_seq, lse, m_last - m0 + 1, tid);
    return;
  }
  const int t_begin = keys.lo / kBN, t_end = (keys.hi + kBN - 1) / kBN;
  // Key tile t lives in stage (t - t_begin) % 2 of its ring.
  auto stage = [&](int t) { return static_cast<uint32_t>((t - t_begin) & 1) * kTileBytes; };
  auto load_k = [&](int t) {
    const int64_t k_seq = opaque(p.k_seq);
    load_tile<Cfg, kBN, Cfg::kThreads>(sK + stage(t), kg + t * kBN * k_seq, k_seq, seq.sk - t * kBN,
                                       tid);
  };
  auto load_v = [&](int t) {
    const int64_t v_seq = opaque(p.v_seq);
    load_tile<Cfg, kBN, Cfg::kThreads>(sV + stage(t), vg + t * kBN * v_seq, v_seq, seq.sk - t * kBN,
                                       tid);
  };

  float o[kMT][kDT][4];
  float row_max[kMT][2], row_sum[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt)
      o[mt][dt][0] = o[mt][dt][1] = o[mt][dt][2] = o[mt][dt][3] = 0.f;
    row_max[mt][0] = row_max[mt][1] = -INFINITY;
    row_sum[mt][0] = row_sum[mt][1] = 0.f;
  }
  const int warp_row0 = warp * Cfg::kRowsPerWarp;  // first query row of this warp in the tile
  const uint32_t sQ_warp = sQ + warp_row0 * kD * 2;
  const LaneOffsets<Cfg> lanes(lane);

  // S of key tile t, masked where the tile is not fully visible to every row of the CTA.
  auto scores = [&](float(&s)[kMT][kNT][4], int t, const LaneOffsets<Cfg>& lo) {
    qk_gemm<Cfg, Elem>(s, sQ_warp, sK + stage(t), lo);
    if (!detail::tile_unmasked<Mask>(t * kBN, kBN, m0, m_last, seq.sq, seq.sk, p.window_left,
                                     p.window_right))
      apply_mask<Cfg, Mask>(s, t * kBN, m0 + warp_row0, seq.sq, seq.sk, p.window_left,
                            p.window_right, lane);
  };

  // Two groups: Q and K(t0) gate the first QK^T; V(t0) lands while it runs.
  load_tile<Cfg, kBM, Cfg::kThreads>(sQ, qg, p.q_seq, seq.sq - m0, tid);
  load_k(t_begin);
  cp_async_commit();
  load_v(t_begin);
  cp_async_commit();
  for (int t = t_begin; t < t_end; ++t) {
    const bool first = t == t_begin;
    if (first)
      cp_async_wait<1>();
    else
      cp_async_wait<0>();
    __syncthreads();  // K(t) landed; every warp is done with tile t-1, whose stages we refill
    if (t + 1 < t_end) {
      load_k(t + 1);
      load_v(t + 1);
    }
    cp_async_commit();
    const LaneOffsets<Cfg> lo = lanes.laundered();
    float s[kMT][kNT][4];
    scores(s, t, lo);
    online_softmax<Cfg>(s, row_max, row_sum, o, p.scale_log2);
    if (first) {  // V(t0): all but the prefetch group just committed
      cp_async_wait<1>();
      __syncthreads();
    }
    pv_gemm<Cfg, Elem>(o, s, sV + stage(t), lo);
  }

  store_output<Cfg, Elem>(o, row_max, row_sum, smem, og, p.o_seq, lse, m_last - m0 + 1, warp_row0,
                          lane);
}

}  // namespace flashcore::portable
