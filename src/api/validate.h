// Validation in one place: every rule a forward call's arguments must satisfy, each failure
// naming the argument and the rule. Nothing here touches the GPU.
#pragma once

#include "flashcore/flashcore.h"
#include "flashcore/kvcache.h"

namespace flashcore::detail {

/// Rules on sizes, pointers, strides, alignment, masks and scale. Pure: reads no tensor memory.
Status validate_args(const AttentionParams& p);

/// Rules on the contents of cu_seqlens_q/k when they are readable from the host: start at 0,
/// non-decreasing, every length within seqlen_q/seqlen_k (the max lengths).
Status validate_cu_seqlens_host(const AttentionParams& p);

/// The KV-cache call's rules on sizes, pointers, strides, paging and rotary. Pure: reads no
/// tensor memory (cache_seqlens and the block table are checked by each backend as it runs,
/// through error_flag).
Status validate_kv_args(const KvCacheParams& p);

}  // namespace flashcore::detail
