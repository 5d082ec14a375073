// The resolved forward problem: user params plus the values derived from them once (scale,
// effective window, group size). Built only from validated params; shared by every backend.
#pragma once

#include <cmath>
#include <cstdint>

#include "flashcore/flashcore.h"

namespace flashcore::detail {

struct FwdProblem {
  AttentionParams p;
  bool varlen = false;
  int64_t group = 1;          // num_heads_q / num_heads_kv
  float scale = 0.0f;         // resolved softmax scale
  int64_t window_left = -1;   // -1: unbounded
  int64_t window_right = -1;  // -1: unbounded; 0 when causal
  bool has_mask() const { return window_left >= 0 || window_right >= 0; }
};

inline FwdProblem resolve(const AttentionParams& p) {
  FwdProblem f;
  f.p = p;
  f.varlen = p.cu_seqlens_q != nullptr;
  f.group = p.num_heads_q / p.num_heads_kv;
  f.scale =
      p.softmax_scale != 0.0f ? p.softmax_scale : 1.0f / std::sqrt(static_cast<float>(p.head_dim));
  f.window_left = p.window_left < 0 ? -1 : p.window_left;
  f.window_right = p.causal ? 0 : (p.window_right < 0 ? -1 : p.window_right);
  return f;
}

/// Keys [lo, hi) visible to query i of a sequence with lengths sq, sk (bottom-right aligned).
/// Empty when hi <= lo. Shared by the reference, the kernels' tile ranges and the tests.
struct KeyRange {
  int64_t lo, hi;
};
inline KeyRange visible_keys(int64_t i, int64_t sq, int64_t sk, int64_t wl, int64_t wr) {
  const int64_t diag = i + sk - sq;
  int64_t lo = wl >= 0 ? diag - wl : 0;
  int64_t hi = wr >= 0 ? diag + wr + 1 : sk;
  if (lo < 0) lo = 0;
  if (hi > sk) hi = sk;
  return {lo, hi};
}

}  // namespace flashcore::detail
