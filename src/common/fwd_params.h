// Device-side parameters of a forward kernel: a POD passed by value as __grid_constant__.
// Built once on the host from a validated FwdProblem; kernels never see AttentionParams.
#pragma once

#include <cstdint>

#include "common/fwd_problem.h"

namespace flashcore::detail {

struct FwdParams {
  const void* q;
  const void* k;
  const void* v;
  void* o;
  float* lse;                   // null: not written
  const int32_t* cu_seqlens_q;  // null: fixed lengths (batch strides used)
  const int32_t* cu_seqlens_k;
  int64_t q_batch, q_seq, q_head;
  int64_t k_batch, k_seq, k_head;
  int64_t v_batch, v_seq, v_head;
  int64_t o_batch, o_seq, o_head;
  int32_t batch, seqlen_q, seqlen_k;  // varlen: max lengths
  int64_t total_q, total_k;           // varlen: packed rows (0: unknown)
  int32_t num_heads_q, group;
  int32_t window_left, window_right;  // -1: unbounded; causal is window_right = 0
  float scale_log2;                   // softmax scale * log2(e): kernels use exp2
};

inline FwdParams make_fwd_params(const FwdProblem& f) {
  const AttentionParams& p = f.p;
  FwdParams d{};
  d.q = p.q;
  d.k = p.k;
  d.v = p.v;
  d.o = p.o;
  d.lse = p.lse;
  d.cu_seqlens_q = p.cu_seqlens_q;
  d.cu_seqlens_k = p.cu_seqlens_k;
  d.q_batch = p.q_strides.batch, d.q_seq = p.q_strides.seq, d.q_head = p.q_strides.head;
  d.k_batch = p.k_strides.batch, d.k_seq = p.k_strides.seq, d.k_head = p.k_strides.head;
  d.v_batch = p.v_strides.batch, d.v_seq = p.v_strides.seq, d.v_head = p.v_strides.head;
  d.o_batch = p.o_strides.batch, d.o_seq = p.o_strides.seq, d.o_head = p.o_strides.head;
  d.batch = static_cast<int32_t>(p.batch);
  d.seqlen_q = static_cast<int32_t>(p.seqlen_q);
  d.seqlen_k = static_cast<int32_t>(p.seqlen_k);
  d.total_q = p.total_q;
  d.total_k = p.total_k;
  d.num_heads_q = static_cast<int32_t>(p.num_heads_q);
  d.group = static_cast<int32_t>(f.group);
  // Windows wider than any sequence are unbounded; clamping keeps them in int32.
  auto clamp_window = [&](int64_t w) {
    return w < 0 ? -1
                 : static_cast<int32_t>(w > p.seqlen_k + p.seqlen_q ? p.seqlen_k + p.seqlen_q : w);
  };
  d.window_left = clamp_window(f.window_left);
  d.window_right = clamp_window(f.window_right);
  d.scale_log2 = f.scale * 1.4426950408889634f;
  return d;
}

}  // namespace flashcore::detail
