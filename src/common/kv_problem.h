// The resolved KV-cache problem: user params plus the values derived from them once (scale,
// effective window, group size, capacity). Built only from validated params; shared by every
// backend.
#pragma once

#include <cmath>
#include <cstdint>

#include "flashcore/kvcache.h"

namespace flashcore::detail {

struct KvProblem {
  KvCacheParams p;
  bool paged = false;
  bool append = false;        // k_new/v_new given
  int64_t group = 1;          // num_heads_q / num_heads_kv
  int64_t capacity = 0;       // rows a batch entry's cache can hold
  float scale = 0.0f;         // resolved softmax scale
  int64_t window_left = -1;   // -1: unbounded
  int64_t window_right = -1;  // -1: unbounded; 0 when causal
  bool has_mask() const { return window_left >= 0 || window_right >= 0; }
  int64_t new_keys() const { return append ? p.seqlen_q : 0; }
  // Rotary position of query i of an entry whose cache held `len` rows before the call.
  int64_t query_position(int64_t len, int64_t i) const { return has_mask() ? len + i : len; }
};

inline KvProblem resolve(const KvCacheParams& p) {
  KvProblem f;
  f.p = p;
  f.paged = p.block_table != nullptr;
  f.append = p.k_new != nullptr;
  f.group = p.num_heads_q / p.num_heads_kv;
  f.capacity = f.paged ? p.max_pages_per_seq * p.page_size : p.cache_capacity;
  f.scale =
      p.softmax_scale != 0.0f ? p.softmax_scale : 1.0f / std::sqrt(static_cast<float>(p.head_dim));
  f.window_left = p.window_left < 0 ? -1 : p.window_left;
  f.window_right = p.causal ? 0 : (p.window_right < 0 ? -1 : p.window_right);
  return f;
}

}  // namespace flashcore::detail
