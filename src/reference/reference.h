// CPU reference backend: the executable specification of forward attention. float64
// accumulation, multithreaded over (batch, head). Reads and writes host memory only.
#pragma once

#include "common/fwd_problem.h"
#include "common/kv_problem.h"
#include "flashcore/flashcore.h"

namespace flashcore::ref {

struct Options {
  /// Round the softmax probabilities P to the input dtype before P·V (and keep the fp32
  /// normaliser unrounded), as the GPU kernels do. Tests use it to build a same-precision
  /// reference whose error against the exact one sets the tolerance.
  bool round_p = false;
  int num_threads = 0;  ///< 0: std::thread::hardware_concurrency()
  /// O is multiplied by this before its one rounding to the dtype (an fp8 cache's v_scale).
  double o_scale = 1.0;
};

/// Computes o (and lse when given) for an already validated problem whose tensors are in host
/// memory. cu_seqlens, when present, are host arrays.
Status forward(const detail::FwdProblem& f, const Options& opt = {});

/// The KV-cache call on host memory (kvcache.h): checks each entry's cache_seqlens, left pad,
/// block table, rotary positions and fp8 scales (OR-ing KvCacheError bits into *error_flag and
/// poisoning that entry's output), rotates q and k_new, appends k_new/v_new to the cache
/// (quantized for an fp8 cache), then runs forward() over each entry's cache rows as one packed
/// variable-length problem (an fp8 cache: once per kv head, its scales applied there).
Status kvcache(const detail::KvProblem& f, const Options& opt = {});

}  // namespace flashcore::ref
