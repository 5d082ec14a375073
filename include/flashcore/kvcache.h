// flashcore public C++ API: attention against a KV cache (decode, chunked prefill, speculative
// verification). Plain data in, Status out; run() never allocates, synchronises or reads device
// memory on the host, so a call can be captured in a CUDA graph and replayed while the
// contents of cache_seqlens change.
#pragma once

#include <cstdint>

#include "flashcore/flashcore.h"

namespace flashcore {

/// Rotary embedding applied inside the call to q and k_new (LLaMA's RoPE). cos and sin are
/// contiguous [max_position, rotary_dim / 2] tables of the call's dtype; the first rotary_dim
/// channels of each head rotate, the rest pass through. Interleaved (GPT-J): channel pairs
/// (2i, 2i + 1) rotate by angle i; otherwise (GPT-NeoX, half-split): pairs (i, i + rotary_dim/2).
/// Positions: new key i of batch entry b sits at cache_seqlens[b] + i; query i at
/// cache_seqlens[b] + i under causal or window masks, else at cache_seqlens[b] for every i
/// (FlashAttention-2's convention).
struct Rotary {
  const void* cos = nullptr;
  const void* sin = nullptr;
  int64_t rotary_dim = 0;  ///< 0: no rotary; else even and <= head_dim
  int64_t max_position = 0;
  bool interleaved = false;
};

/// Bits of *error_flag (OR-ed in by the call; the caller clears it). A batch entry with an error
/// writes nothing to the cache and gets NaN output and NaN log-sum-exp rows, so a bad entry is
/// never silently wrong.
enum KvCacheError : int32_t {
  kKvCacheOverflow = 1,       ///< cache_seqlens[b] < 0 or cache_seqlens[b] + new keys > capacity
  kKvBlockTableOutOfRange = 2,  ///< a block-table entry the call needs is outside [0, num_pages)
  kKvRotaryOutOfRange = 4,    ///< a rotary position is >= Rotary::max_position
  kKvLeftpadOutOfRange = 8,   ///< cache_leftpad[b] < 0 or > cache_seqlens[b]
  kKvScaleInvalid = 16,       ///< fp8 cache: a k_scale/v_scale the entry uses is not finite and > 0
};

/// O[b, i, h] = softmax(scale * Q[b, i, h] K_b^T) V_b where K_b, V_b are the first L_b =
/// cache_seqlens[b] (+ seqlen_q when k_new is given) rows of batch entry b's cache, after the
/// new keys have been written at rows cache_seqlens[b] .. + seqlen_q - 1. Masks are aligned
/// bottom-right: query i sees key j iff j <= i + L_b - seqlen_q + window_right (causal:
/// window_right = 0) and j >= i + L_b - seqlen_q - window_left, as in AttentionParams; with
/// cache_leftpad, also j >= cache_leftpad[b]. cache_seqlens itself is not updated. A call with seqlen_q = 0 reads and writes nothing.
///
/// Contiguous cache: k_cache/v_cache are [batch, cache_capacity, num_heads_kv, head_dim] with
/// strides {batch, seq, head}. Paged cache (block_table non-null): they are [num_pages,
/// page_size, num_heads_kv, head_dim] with strides {page, slot in page, head} given as {batch,
/// seq, head}; row r of entry b is slot r % page_size of page block_table[b * block_table_stride
/// + r / page_size]; the capacity is max_pages_per_seq * page_size. Entries may share pages
/// they only read (a common prefix), but a page that receives appended rows (k_new/v_new) must
/// be mapped by that entry alone: the call writes and reads it without ordering between
/// entries.
struct KvCacheParams {
  const void* q = nullptr;  ///< [batch, seqlen_q, num_heads_q, head_dim]
  void* o = nullptr;        ///< like q
  Strides q_strides, o_strides;
  float* lse = nullptr;  ///< optional fp32 [batch, num_heads_q, seqlen_q], natural log

  void* k_cache = nullptr;
  void* v_cache = nullptr;
  Strides k_cache_strides, v_cache_strides;
  int64_t cache_capacity = 0;  ///< contiguous only: rows per batch entry

  const int32_t* block_table = nullptr;  ///< paged: [batch, max_pages_per_seq] int32
  int64_t block_table_stride = 0;        ///< paged: >= max_pages_per_seq
  int64_t max_pages_per_seq = 0;
  int64_t num_pages = 0;
  int64_t page_size = 0;

  const int32_t* cache_seqlens = nullptr;  ///< [batch] int32, in the same memory as q
  /// Optional [batch] int32, same memory as q (FlashAttention-2's cache_leftpad): entry b's
  /// keys start at cache row cache_leftpad[b]; rows before it are neither read nor attended.
  /// Positions (rotary, masks) stay those of the cache rows.
  const int32_t* cache_leftpad = nullptr;

  /// Optional, both or neither: [batch, seqlen_q, num_heads_kv, head_dim], appended to the cache
  /// (after rotary) before attending.
  const void* k_new = nullptr;
  const void* v_new = nullptr;
  Strides k_new_strides, v_new_strides;

  int32_t* error_flag = nullptr;  ///< required: KvCacheError bits, same memory as q

  /// fp8 cache: k_cache and v_cache hold float8 e4m3 bytes (OCP E4M3FN: bias 7, max 448, no
  /// infinities), strides in elements (= bytes), multiples of 16, pointers 16-byte aligned
  /// (the 16-bit caches' rule is 8 elements). A cached byte x of kv head h stands for
  /// e4m3(x) * k_scale[h] (v_scale[h]): scores are scale * k_scale[h] * (q . k8), outputs
  /// v_scale[h] * sum(p v8), rounded once to dtype. Appended rows are stored as e4m3 of
  /// k_new / k_scale[h] (after rotary) and v_new / v_scale[h], rounded to nearest even and
  /// saturated at +-448, and attended as stored. q, o, k_new, v_new and rotary keep dtype.
  bool cache_fp8 = false;
  const float* k_scale = nullptr;  ///< cache_fp8: [num_heads_kv] fp32, same memory as q
  const float* v_scale = nullptr;  ///< cache_fp8: [num_heads_kv] fp32, same memory as q

  DType dtype = DType::kBFloat16;
  int64_t batch = 0;
  int64_t seqlen_q = 0;  ///< 1 for decode; more for chunked prefill or verification
  int64_t num_heads_q = 0;
  int64_t num_heads_kv = 0;
  int64_t head_dim = 0;  ///< 64, 128 or 256

  float softmax_scale = 0.0f;  ///< 0: 1/sqrt(head_dim)
  bool causal = false;
  int64_t window_left = -1;
  int64_t window_right = -1;
  Rotary rotary;

  Backend backend = Backend::kAuto;
  KernelFamily family = KernelFamily::kAuto;
  int device = -1;
};

/// Validates and plans without running anything.
Plan query(const KvCacheParams& params);

/// Bytes of device workspace run() needs (split-KV partial results); 0 when none.
int64_t workspace_size(const KvCacheParams& params);

/// Runs attention against the cache; writes k_new/v_new into it first. workspace is optional:
/// null, or workspace_size(params) bytes of device memory zero-filled before its first use,
/// which lets a short batch split the cache over all SMs. As for flashcore::run, every call
/// leaves the buffer's counters at zero, so one buffer serves calls of both entry points and
/// any shape in one stream (sized for the largest).
Status run(const KvCacheParams& params, void* workspace = nullptr, void* stream = nullptr);

}  // namespace flashcore
