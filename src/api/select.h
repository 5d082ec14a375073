// The one runtime -> template bridge: a table of compiled kernels answering both "is this
// problem supported on this device?" and "which kernel runs it?", so query and run agree.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "common/fwd_params.h"
#include "common/fwd_problem.h"
#include "common/kv_problem.h"
#include "decode/decode_params.h"
#include "flashcore/flashcore.h"

namespace flashcore::detail {

// workspace: null or workspace_bytes of zero-filled device memory (flashcore.h).
using FwdLaunch = cudaError_t (*)(const FwdParams&, void* workspace, cudaStream_t);

struct KernelChoice {
  Status status;  // ok, or why no kernel serves the problem
  std::string name;
  FwdLaunch launch = nullptr;
  int64_t workspace_bytes = 0;  // what launch uses when given a workspace
};

/// Picks the forward kernel for a validated problem on `device`.
KernelChoice select_fwd(const FwdProblem& f, int device);

using KvLaunch = cudaError_t (*)(const decode::DecodeParams&, cudaStream_t);

struct KvKernelChoice {
  Status status;
  std::string name;
  KvLaunch launch = nullptr;
  decode::DecodePlan plan;  // with a workspace; without one the call runs unsplit
};

/// Picks the KV-cache kernel for a validated problem on `device`.
KvKernelChoice select_kv(const KvProblem& f, int device);

}  // namespace flashcore::detail
