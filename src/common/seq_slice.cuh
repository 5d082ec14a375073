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

// Whether a varlen entry's rows [q0, q1) and keys [k0, k1) lie inside the packed tensors, for
// each of q and k whose total the caller gave (> 0). Both ends non-negative: then q1 - q0
// cannot overflow (a start of 2^30 and an end of -2^30 - 1 would wrap it to INT_MAX).
__device__ __forceinline__ bool entry_in_bounds(int q0, int q1, int k0, int k1, int64_t total_q,
                                                int64_t total_k) {
  return !((total_q > 0 && (min(q0, q1) < 0 || q1 > total_q)) ||
           (total_k > 0 && (min(k0, k1) < 0 || k1 > total_k)));
}

// The same for entry b, out of line: a kernel at its register limit calls it once at entry,
// where inlined the check reshuffled the portable D128 kernel's registers and cost it 8 %
// (perf-notes H28).
static __device__ __noinline__ bool entry_in_bounds_call(const int32_t* cu_q, const int32_t* cu_k,
                                                         int b, int64_t total_q, int64_t total_k) {
  return entry_in_bounds(cu_q[b], cu_q[b + 1], cu_k[b], cu_k[b + 1], total_q, total_k);
}

// fixed_lengths: the caller knows p has no cu_seqlens (lets the compiler drop the varlen arm).
// checked: the caller has already returned where !entry_in_bounds (the portable kernel).
__device__ __forceinline__ SeqSlice seq_slice(const FwdParams& p, int b, bool fixed_lengths = false,
                                              bool checked = false) {
  SeqSlice s;
  if (!fixed_lengths && p.cu_seqlens_q != nullptr) {
    const int q0 = p.cu_seqlens_q[b], k0 = p.cu_seqlens_k[b];
    // The host cannot check device-resident cu_seqlens without a sync, so every CTA bounds
    // what it touches: each length is clamped to [0, max], and an entry reaching outside the
    // packed tensors (where the caller gave total_q/total_k) gets no rows, so nothing of it is
    // read or written. Only sq changes: clamping the entries themselves, which the offsets
    // below carry, cost 1-3 % (64-bit) on the Hopper varlen causal row (perf-notes H27).
    const int q1 = p.cu_seqlens_q[b + 1], k1 = p.cu_seqlens_k[b + 1];
    s.sq = min(max(q1 - q0, 0), p.seqlen_q);
    s.sk = min(max(k1 - k0, 0), p.seqlen_k);
    if (!checked && !entry_in_bounds(q0, q1, k0, k1, p.total_q, p.total_k)) s.sq = 0;
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
