// Where one batch entry's sequences live: fixed lengths, or a varlen slice of packed tokens.
// Shared by the forward kernels; device code.
#pragma once

#include <cstdint>

#include "common/fwd_params.h"

namespace flashcore::detail {

struct SeqSlice {
  int64_t q_off, k_off, v_off, o_off;  // element offsets of token 0
  int sq, sk;
  int64_t lse_row0, lse_head_stride;  // lse index of (head 0, token 0) and per-head stride
  int q_row0, k_row0;  // token index of row 0 along the seq dim (varlen: cu_seqlens[b])
};

// fixed_lengths: the caller knows p has no cu_seqlens (lets the compiler drop the varlen arm).
__device__ __forceinline__ SeqSlice seq_slice(const FwdParams& p, int b,
                                              bool fixed_lengths = false) {
  SeqSlice s;
  if (!fixed_lengths && p.cu_seqlens_q != nullptr) {
    const int q0 = p.cu_seqlens_q[b], k0 = p.cu_seqlens_k[b];
    // The host cannot check device-resident cu_seqlens without a sync: clamp each length to
    // [0, max] so a bad list can never address memory outside [cu[b], cu[b] + max). (Clamping
    // the entries to total_q/total_k as well cost 1-3 % on the Hopper varlen causal row in a
    // 64-bit form and spills in the portable D128 kernel in a 32-bit one: perf-notes H27.)
    s.sq = min(max(p.cu_seqlens_q[b + 1] - q0, 0), p.seqlen_q);
    s.sk = min(max(p.cu_seqlens_k[b + 1] - k0, 0), p.seqlen_k);
    s.q_off = int64_t(q0) * p.q_seq;
    s.k_off = int64_t(k0) * p.k_seq;
    s.v_off = int64_t(k0) * p.v_seq;
    s.o_off = int64_t(q0) * p.o_seq;
    s.lse_row0 = q0;
    // [Hq, total_q]: the caller's total_q where given (packed q may end in padding rows, as
    // FlashAttention-2's lse does), else the last cu_seqlens_q entry.
    s.lse_head_stride = p.total_q > 0 ? p.total_q : p.cu_seqlens_q[p.batch];
    s.q_row0 = q0;
    s.k_row0 = k0;
  } else {
    s.sq = p.seqlen_q;
    s.sk = p.seqlen_k;
    s.q_off = b * p.q_batch;
    s.k_off = b * p.k_batch;
    s.v_off = b * p.v_batch;
    s.o_off = b * p.o_batch;
    s.lse_head_stride = p.seqlen_q;  // [B, Hq, Sq]
    s.lse_row0 = int64_t(b) * p.num_heads_q * p.seqlen_q;
    s.q_row0 = 0;
    s.k_row0 = 0;
  }
  return s;
}

}  // namespace flashcore::detail
