// Device-side parameters of the KV-cache (decode) kernel and the host's launch plan: a POD
// passed by value, built once on the host from a validated KvProblem (docs/decode-design.md).
#pragma once

#include <algorithm>
#include <cstdint>

#include "common/kv_problem.h"
#include "common/workspace.h"

namespace flashcore::decode {

// Phase stamps for bench/decode_timeline.cu, which defines this before including the kernel
// (stamp i once `landed`, a value the phase waits for, is in a register). The library's
// instances define nothing: the hooks compile to no code.
#ifndef FLASHCORE_DECODE_STAMP
#define FLASHCORE_DECODE_STAMP(i, landed)
#endif

constexpr int kRows = 16;      // query rows (GQA-packed: row = i * group + head in group) a CTA
constexpr int kSplitKeys = 64;  // the fewest keys of the capacity a split is planned for
constexpr int kThreads = 128;  // four warps
constexpr int kMaxSplits = 128;  // bounds the last arriver's merge (splits x loads a thread)
constexpr int kBlockKeys = 64;   // keys a stage holds: 16 per warp
// K/V stages in flight: three keep about 64 KB per SM in the air at D128 (two CTAs an SM), what
// HBM's latency asks at full bandwidth; D256 keeps two (the same bytes, and 136 KB fits sm80).
constexpr int stages(int d) { return d >= 256 ? 2 : 3; }
// CTAs an SM holds: the register bound the kernel is compiled for, and shared memory.
constexpr int min_blocks(int d) { return d >= 256 ? 1 : d >= 128 ? 3 : 4; }
// An fp8 cache's byte stages: four (three blocks in flight, 48 KB at D128 against the 16-bit
// kernel's 64), which with the 16-bit tile take the 16-bit kernel's shared memory exactly;
// D256 keeps two (136 KB, within sm80's 163 KB).
constexpr int fp8_stages(int d) { return d >= 256 ? 2 : 4; }

// How the cache is stored (a policy of the kernel template): as the call's 16-bit dtype, read
// into the stages the warps use; or as e4m3 bytes (kvcache.h, cache_fp8), copied into byte
// stages and widened to the dtype in a 16-bit tile before the warps read them.
struct CacheDtype {
  using T = uint16_t;
  static constexpr bool kFp8 = false;
};
struct CacheE4m3 {
  using T = uint8_t;
  static constexpr bool kFp8 = true;
};

struct DecodeParams {
  const void* q;
  void* o;
  float* lse;
  int64_t q_b, q_s, q_h, o_b, o_s, o_h;
  void* k_cache;
  void* v_cache;
  int64_t kc_b, kc_s, kc_h, vc_b, vc_s, vc_h;  // paged: b = page, s = slot in page
  const int32_t* block_table;
  int64_t bt_stride;
  int32_t num_pages, page_size, capacity;
  const int32_t* cache_seqlens;
  const int32_t* cache_leftpad;  // null: 0
  const void* k_new;
  const void* v_new;
  int64_t kn_b, kn_s, kn_h, vn_b, vn_s, vn_h;
  int32_t* error_flag;
  const float* k_scale;  // fp8 cache: [num_heads_kv]
  const float* v_scale;
  int32_t batch, seqlen_q, num_heads_kv, group, head_dim;
  int32_t window_left, window_right;  // -1: unbounded; causal is window_right = 0
  float scale_log2;
  const void* rot_cos;
  const void* rot_sin;
  int32_t rotary_dim, max_position;
  bool interleaved, paged, append, masked;
  int32_t rows, chunks, splits;  // rows = group * seqlen_q; chunks of kRows; key splits
  int32_t launch_smem;           // shared memory to launch with where above the kernel's need
  int32_t* counters;             // [batch * num_heads_kv * chunks], zero between calls
  float* partials;               // per (unit, split): kRows x D of O, kRows x (max, sum)
};

// How a problem is cut: row chunks per kv head, and key splits chosen from what the host knows
// (batch, heads, capacity, SMs), never from cache_seqlens, so a captured graph stays valid.
// Workspace: the counter area every workspace user shares (common/workspace.h; splits > 1 only
// when there are fewer units than CTA slots, which the counter area covers), then the partials.
struct DecodePlan {
  int32_t chunks = 1, splits = 1;
  int32_t launch_smem = 0;  // 0: what the kernel needs (decode_launch.h, plan_for_device)
  int64_t counter_bytes = 0, workspace_bytes = 0;
};

inline DecodePlan plan_decode(const detail::KvProblem& f, int sms, int ctas_per_sm) {
  DecodePlan pl;
  const int64_t rows = f.p.num_heads_q / f.p.num_heads_kv * f.p.seqlen_q;
  pl.chunks = static_cast<int32_t>(rows > 0 ? (rows + kRows - 1) / kRows : 1);
  const int64_t units = f.p.batch * f.p.num_heads_kv * pl.chunks;
  // Split count: at most what fills every CTA slot in one wave (a second, partial wave would
  // cost a whole split's time), each split at least kSplitKeys keys (one block) of the
  // capacity. Within that, the fewest splits whose time is within 5 % of the least, the time
  // modelled as the most CTAs an SM streams at once times each one's share of a unit's keys:
  // ceil(units s / sms) / s. Two CTAs on an SM share its bandwidth, and each split more costs
  // partials and merge work (perf-notes K12: 16 splits beat 33 at batch 1, 16k, by 4 %).
  // At most 4 CTAs an SM, so a split unit count stays within the counter area's 2 * sms.
  const int64_t slots = int64_t(sms) * (ctas_per_sm < 1 ? 1 : ctas_per_sm > 4 ? 4 : ctas_per_sm);
  const int64_t by_sms = units > 0 ? slots / units : 1;
  const int64_t by_len = (f.capacity + kSplitKeys - 1) / kSplitKeys;
  int64_t most = by_sms < by_len ? by_sms : by_len;
  if (most > kMaxSplits) most = kMaxSplits;
  auto cost = [&](int64_t s) { return double((units * s + sms - 1) / sms) / double(s); };
  double least = cost(1);
  for (int64_t s = 2; s <= most; ++s) least = cost(s) < least ? cost(s) : least;
  int64_t splits = 1;
  while (splits < most && cost(splits) > 1.05 * least) ++splits;
  // An fp8 cache halves the bytes but not the math, which one CTA an SM (one warp on each SM
  // sub-partition) leaves exposed: its plans fill the slots up to two CTAs an SM (perf-notes
  // K25: 64k 84 -> 58 µs at 33 splits against 16).
  if (f.p.cache_fp8 && units > 0) {
    const int64_t two_per_sm = 2 * int64_t(sms) / units;
    splits = std::max(splits, std::min(most, two_per_sm));
  }
  pl.splits = static_cast<int32_t>(splits < 1 ? 1 : splits);
  if (pl.splits > 1) {
    pl.counter_bytes = detail::workspace_counter_bytes(sms);
    pl.workspace_bytes = pl.counter_bytes +
                         units * pl.splits * kRows * (f.p.head_dim + 2) * int64_t(sizeof(float));
  }
  return pl;
}

// Without a workspace the call runs unsplit (its plan's splits need the partials).
inline DecodeParams make_decode_params(const detail::KvProblem& f, DecodePlan pl,
                                       void* workspace) {
  if (workspace == nullptr) pl.splits = 1;
  const KvCacheParams& p = f.p;
  DecodeParams d{};
  d.q = p.q;
  d.o = p.o;
  d.lse = p.lse;
  d.q_b = p.q_strides.batch, d.q_s = p.q_strides.seq, d.q_h = p.q_strides.head;
  d.o_b = p.o_strides.batch, d.o_s = p.o_strides.seq, d.o_h = p.o_strides.head;
  d.k_cache = p.k_cache;
  d.v_cache = p.v_cache;
  d.kc_b = p.k_cache_strides.batch, d.kc_s = p.k_cache_strides.seq, d.kc_h = p.k_cache_strides.head;
  d.vc_b = p.v_cache_strides.batch, d.vc_s = p.v_cache_strides.seq, d.vc_h = p.v_cache_strides.head;
  d.block_table = p.block_table;
  d.bt_stride = p.block_table_stride;
  d.num_pages = static_cast<int32_t>(p.num_pages);
  d.page_size = static_cast<int32_t>(p.page_size);
  d.capacity = static_cast<int32_t>(f.capacity);
  d.cache_seqlens = p.cache_seqlens;
  d.cache_leftpad = p.cache_leftpad;
  d.k_new = p.k_new;
  d.v_new = p.v_new;
  d.kn_b = p.k_new_strides.batch, d.kn_s = p.k_new_strides.seq, d.kn_h = p.k_new_strides.head;
  d.vn_b = p.v_new_strides.batch, d.vn_s = p.v_new_strides.seq, d.vn_h = p.v_new_strides.head;
  d.error_flag = p.error_flag;
  d.k_scale = p.k_scale;
  d.v_scale = p.v_scale;
  d.batch = static_cast<int32_t>(p.batch);
  d.seqlen_q = static_cast<int32_t>(p.seqlen_q);
  d.num_heads_kv = static_cast<int32_t>(p.num_heads_kv);
  d.group = static_cast<int32_t>(f.group);
  d.head_dim = static_cast<int32_t>(p.head_dim);
  auto clamp_window = [&](int64_t w) {
    return w < 0 ? -1 : static_cast<int32_t>(w > f.capacity + p.seqlen_q ? f.capacity + p.seqlen_q : w);
  };
  d.window_left = clamp_window(f.window_left);
  d.window_right = clamp_window(f.window_right);
  d.scale_log2 = f.scale * 1.4426950408889634f;
  d.rot_cos = p.rotary.cos;
  d.rot_sin = p.rotary.sin;
  d.rotary_dim = static_cast<int32_t>(p.rotary.rotary_dim);
  d.max_position = static_cast<int32_t>(p.rotary.max_position);
  d.interleaved = p.rotary.interleaved;
  d.paged = f.paged;
  d.append = f.append;
  d.masked = f.has_mask();
  d.rows = static_cast<int32_t>(f.group * p.seqlen_q);
  d.chunks = pl.chunks;
  d.splits = pl.splits;
  d.launch_smem = pl.launch_smem;
  if (pl.splits > 1) {
    d.counters = static_cast<int32_t*>(workspace);
    d.partials =
        reinterpret_cast<float*>(static_cast<uint8_t*>(workspace) + pl.counter_bytes);
  }
  return d;
}

}  // namespace flashcore::decode
