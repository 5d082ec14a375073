// CPU reference backend: the executable specification of forward attention. float64
// accumulation, multithreaded over (batch, head). Reads and writes host memory only.
#pragma once

#include "common/fwd_problem.h"
#include "flashcore/flashcore.h"

namespace flashcore::ref {

struct Options {
  /// Round the softmax probabilities P to the input dtype before P·V (and keep the fp32
  /// normaliser unrounded), as the GPU kernels do. Tests use it to build a same-precision
  /// reference whose error against the exact one sets the tolerance.
  bool round_p = false;
  int num_threads = 0;  ///< 0: std::thread::hardware_concurrency()
};

/// Computes o (and lse when given) for an already validated problem whose tensors are in host
/// memory. cu_seqlens, when present, are host arrays.
Status forward(const detail::FwdProblem& f, const Options& opt = {});

}  // namespace flashcore::ref
