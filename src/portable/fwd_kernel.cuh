// Portable (sm80+) forward attention, the FlashAttention-2 algorithm: one CTA per (query tile,
// head, batch); K/V tiles stream through a two-stage cp.async ring; S = QK^T and O += PV on
// mma.sync with the online softmax in registers. Smem rows are XOR-swizzled in 16-byte chunks
// (chunk ^ row % 8) so ldmatrix reads of 8 rows hit 8 distinct bank groups.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/fwd_params.h"
#include "common/mask.cuh"
#include "portable/fwd_config.h"
#include "portable/fwd_epilogue.cuh"
#include "portable/sm80_ops.cuh"
#include "portable/smem_layout.cuh"
#include "portable/softmax.cuh"

namespace flashcore::portable {

using detail::FwdParams;

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

// Where one batch entry's sequences live: fixed lengths, or a varlen slice of packed tokens.
struct SeqSlice {
  int64_t q_off, k_off, v_off, o_off;  // element offsets of token 0
  int sq, sk;
  int64_t lse_row0, lse_head_stride;  // lse index of (head 0, token 0) and per-head stride
};

__device__ __forceinline__ SeqSlice seq_slice(const FwdParams& p, int b) {
  SeqSlice s;
  if (p.cu_seqlens_q != nullptr) {
    const int q0 = p.cu_seqlens_q[b], k0 = p.cu_seqlens_k[b];
    // The host cannot check device-resident cu_seqlens without a sync: clamp each length to
    // [0, max] so a bad list can never address memory outside [cu[b], cu[b] + max).
    s.sq = min(max(p.cu_seqlens_q[b + 1] - q0, 0), p.seqlen_q);
    s.sk = min(max(p.cu_seqlens_k[b + 1] - k0, 0), p.seqlen_k);
    s.q_off = int64_t(q0) * p.q_seq;
    s.k_off = int64_t(k0) * p.k_seq;
    s.v_off = int64_t(k0) * p.v_seq;
    s.o_off = int64_t(q0) * p.o_seq;
    s.lse_row0 = q0;
    s.lse_head_stride = p.cu_seqlens_q[p.batch];  // [Hq, total_q]
  } else {
    s.sq = p.seqlen_q;
    s.sk = p.seqlen_k;
    s.q_off = b * p.q_batch;
    s.k_off = b * p.k_batch;
    s.v_off = b * p.v_batch;
    s.o_off = b * p.o_batch;
    s.lse_head_stride = p.seqlen_q;  // [B, Hq, Sq]
    s.lse_row0 = int64_t(b) * p.num_heads_q * p.seqlen_q;
  }
  return s;
}

template <class Cfg, class Elem, class Mask>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kMinBlocks)
    fwd_kernel(const __grid_constant__ FwdParams p) {
  constexpr int kMT = Cfg::kMTiles, kNT = Cfg::kNTiles, kDT = Cfg::kDTiles;
  constexpr int kBM = Cfg::kBlockM, kBN = Cfg::kBlockN, kD = Cfg::kHeadDim;
  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t sQ = smem_addr(smem);
  const uint32_t sK = sQ + kBM * kD * 2;            // stage s at sK + s * kTileBytes
  const uint32_t sV = sK + 2 * kBN * kD * 2;
  constexpr uint32_t kTileBytes = kBN * kD * 2;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int b = blockIdx.z, h = blockIdx.y, hk = h / p.group;
  // Causal/window tiles get heavier with the row index: launch those first.
  const int m_block = Mask::kLocal ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const SeqSlice seq = seq_slice(p, b);
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

  load_tile<Cfg, kBM, Cfg::kThreads>(sQ, qg, p.q_seq, seq.sq - m0, tid);
  load_tile<Cfg, kBN, Cfg::kThreads>(sK, kg + int64_t(t_begin) * kBN * p.k_seq, p.k_seq,
                                     seq.sk - t_begin * kBN, tid);
  load_tile<Cfg, kBN, Cfg::kThreads>(sV, vg + int64_t(t_begin) * kBN * p.v_seq, p.v_seq,
                                     seq.sk - t_begin * kBN, tid);
  cp_async_commit();

  float o[kMT][kDT][4];
  float row_max[kMT][2], row_sum[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt) o[mt][dt][0] = o[mt][dt][1] = o[mt][dt][2] = o[mt][dt][3] = 0.f;
    row_max[mt][0] = row_max[mt][1] = -INFINITY;
    row_sum[mt][0] = row_sum[mt][1] = 0.f;
  }
  const int warp_row0 = warp * Cfg::kRowsPerWarp;  // first query row of this warp in the tile
  const int g = lane / 4, t4 = lane % 4;
  // ldmatrix lane offsets. Every fragment starts on a multiple of 8 rows, so the swizzle term of
  // lane l is l % 8 and chunk (2k + b) lands at byte 16 * ((2k) ^ (b ^ l % 8)): one per-lane
  // offset XOR 32k, instead of a table of addresses held in registers.
  constexpr int kRowBytes = kD * 2;
  const uint32_t q_off = (lane % 16) * kRowBytes + 16 * ((lane / 16) ^ (lane % 8));
  const uint32_t k_off = (lane % 8 + 8 * (lane / 16)) * kRowBytes + 16 * (((lane / 8) % 2) ^ (lane % 8));
  const uint32_t v_off = (lane % 8 + 8 * ((lane / 8) % 2)) * kRowBytes + 16 * ((lane / 16) ^ (lane % 8));

  for (int t = t_begin; t < t_end; ++t) {
    const uint32_t stage = ((t - t_begin) & 1) * kTileBytes;
    // All of tile t has landed and every warp is done with tile t-1, whose stage we refill.
    cp_async_wait<0>();
    __syncthreads();
    if (t + 1 < t_end) {
      const int n1 = (t + 1) * kBN;
      const int64_t k_seq = opaque(p.k_seq), v_seq = opaque(p.v_seq);
      load_tile<Cfg, kBN, Cfg::kThreads>(sK + (stage ^ kTileBytes), kg + n1 * k_seq, k_seq,
                                         seq.sk - n1, tid);
      load_tile<Cfg, kBN, Cfg::kThreads>(sV + (stage ^ kTileBytes), vg + n1 * v_seq, v_seq,
                                         seq.sk - n1, tid);
    }
    cp_async_commit();

    // S = Q K^T for this warp's rows.
    const uint32_t q_lane = opaque(q_off), k_lane = opaque(k_off), v_lane = opaque(v_off);
    float s[kMT][kNT][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < Cfg::kKSteps; ++ks) {
      uint32_t a[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
        ldmatrix_x4(a[mt], sQ + (warp_row0 + mt * 16) * kRowBytes + (q_lane ^ (32 * ks)));
#pragma unroll
      for (int np = 0; np < kNT / 2; ++np) {
        uint32_t bk[4];
        ldmatrix_x4(bk, sK + stage + np * 16 * kRowBytes + (k_lane ^ (32 * ks)));
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          Mma<Elem>::run(s[mt][2 * np], a[mt], bk[0], bk[1]);
          Mma<Elem>::run(s[mt][2 * np + 1], a[mt], bk[2], bk[3]);
        }
      }
    }

    const int n0 = t * kBN;
    if (!detail::tile_unmasked<Mask>(n0, kBN, m0, m_last, seq.sq, seq.sk, p.window_left,
                                     p.window_right))
      apply_mask<Cfg, Mask>(s, n0, m0 + warp_row0, seq.sq, seq.sk, p.window_left,
                            p.window_right, lane);
    online_softmax<Cfg>(s, row_max, row_sum, o, p.scale_log2);

    // O += P V: the S accumulators of n-tiles 2kk, 2kk+1 are exactly the A fragment of k16 kk.
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) {
      uint32_t a[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        a[mt][0] = Mma<Elem>::pack(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        a[mt][1] = Mma<Elem>::pack(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        a[mt][2] = Mma<Elem>::pack(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        a[mt][3] = Mma<Elem>::pack(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < kDT / 2; ++dp) {
        uint32_t bv[4];
        ldmatrix_x4_trans(bv, sV + stage + kk * 16 * kRowBytes + (v_lane ^ (32 * dp)));
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          Mma<Elem>::run(o[mt][2 * dp], a[mt], bv[0], bv[1]);
          Mma<Elem>::run(o[mt][2 * dp + 1], a[mt], bv[2], bv[3]);
        }
      }
    }
  }

  store_output<Cfg, Elem>(o, row_max, row_sum, smem, og, p.o_seq, lse, m_last - m0 + 1,
                          warp_row0, lane);
}

}  // namespace flashcore::portable
