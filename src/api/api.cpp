// The public entry points: query (validate, choose a backend, choose a kernel), run (the same
// decision, then the work), workspace_size. run never allocates or synchronises.
#include <cuda_runtime.h>

#include <array>
#include <string>

#include "api/cuda_env.h"
#include "api/select.h"
#include "api/validate.h"
#include "common/fwd_params.h"
#include "common/fwd_problem.h"
#include "common/kv_problem.h"
#include "flashcore/flashcore.h"
#include "flashcore/kvcache.h"
#include "reference/reference.h"

namespace flashcore {
namespace {

Status invalid(const std::string& msg) { return {StatusCode::kInvalidArgument, msg}; }

struct NamedPtr {
  const char* name;
  const void* ptr;
};

// Every pointer of the call, so memory-space rules are checked for all of them alike.
std::array<NamedPtr, 7> pointers(const AttentionParams& p) {
  return {{{"q", p.q},
           {"k", p.k},
           {"v", p.v},
           {"o", p.o},
           {"lse", p.lse},
           {"cu_seqlens_q", p.cu_seqlens_q},
           {"cu_seqlens_k", p.cu_seqlens_k}}};
}
std::array<NamedPtr, 15> pointers(const KvCacheParams& p) {
  return {{{"q", p.q},
           {"o", p.o},
           {"lse", p.lse},
           {"k_cache", p.k_cache},
           {"v_cache", p.v_cache},
           {"block_table", p.block_table},
           {"cache_seqlens", p.cache_seqlens},
           {"cache_leftpad", p.cache_leftpad},
           {"k_new", p.k_new},
           {"v_new", p.v_new},
           {"error_flag", p.error_flag},
           {"rotary.cos", p.rotary.cos},
           {"rotary.sin", p.rotary.sin},
           {"k_scale", p.k_scale},
           {"v_scale", p.v_scale}}};
}

// Where a call runs, the same rules for every entry point: kAuto picks CUDA when `first` (the
// call's leading tensor) is device memory of a present GPU; the reference needs every pointer
// in host memory, CUDA every pointer on the call's device (`device`, else first's).
struct Placement {
  Status status;
  Backend backend = Backend::kReference;
  int device = -1;
};
template <size_t N>
Placement place(Backend requested, int device, const void* first,
                const std::array<NamedPtr, N>& ptrs) {
  Placement pl;
  const int ndev = detail::device_count();
  pl.backend = requested;
  if (pl.backend == Backend::kAuto)
    pl.backend = (ndev > 0 && first && detail::memory_kind(first) == detail::MemoryKind::kDevice)
                     ? Backend::kCuda
                     : Backend::kReference;
  if (pl.backend == Backend::kReference) {
    for (const NamedPtr& np : ptrs)
      if (np.ptr && detail::memory_kind(np.ptr) == detail::MemoryKind::kDevice) {
        pl.status = invalid(std::string(np.name) +
                            ": is device memory, but the CPU reference backend needs host memory");
        return pl;
      }
    return pl;
  }
  if (ndev == 0) {
    pl.status = {StatusCode::kNotSupported,
                 "backend: kCuda requested, but no CUDA device is present"};
    return pl;
  }
  pl.device =
      device >= 0 ? device : (first ? detail::pointer_device(first) : detail::current_device());
  if (pl.device < 0) pl.device = detail::current_device();
  if (pl.device >= ndev) {
    pl.status = invalid("device: " + std::to_string(pl.device) + " is not a CUDA device (" +
                        std::to_string(ndev) + " present)");
    return pl;
  }
  for (const NamedPtr& np : ptrs) {
    if (!np.ptr) continue;
    const int d = detail::pointer_device(np.ptr);
    if (d < 0) {
      pl.status = invalid(std::string(np.name) + ": must be device memory on the CUDA backend");
      return pl;
    }
    if (d != pl.device) {
      pl.status = invalid(std::string(np.name) + ": lives on device " + std::to_string(d) +
                          ", but the call runs on device " + std::to_string(pl.device));
      return pl;
    }
  }
  return pl;
}

// Runs launch() with `device` current, restoring the caller's device after.
template <class F>
Status launch_on(int device, F&& launch) {
  int prev = -1;
  if (cudaGetDevice(&prev) != cudaSuccess) prev = -1;
  if (prev != device && cudaSetDevice(device) != cudaSuccess)
    return {StatusCode::kCudaError, "cudaSetDevice(" + std::to_string(device) + ") failed"};
  const cudaError_t err = launch();
  if (prev >= 0 && prev != device) cudaSetDevice(prev);
  if (err != cudaSuccess)
    return {StatusCode::kCudaError, std::string("kernel launch failed: ") + cudaGetErrorString(err)};
  return {};
}

// A workspace the kernel will use must be device memory on the call's device.
Status check_workspace(const void* workspace, int device) {
  if (workspace != nullptr && detail::pointer_device(workspace) != device)
    return invalid("workspace: must be device memory on device " + std::to_string(device));
  return {};
}

// The CUDA tail both run()s share: nothing to do for an empty call, a workspace only where the
// plan wants one (and then on the call's device), the launch with that device current.
template <class Launch>
Status launch_planned(const Plan& plan, int device, bool empty, void* workspace, Launch&& launch) {
  if (empty) return {};
  if (plan.workspace_bytes == 0) workspace = nullptr;
  const Status ws = check_workspace(workspace, device);
  if (!ws.ok()) return ws;
  return launch_on(device, [&] { return launch(workspace); });
}

struct Decision {
  Plan plan;
  int device = -1;
  detail::FwdLaunch launch = nullptr;
};

Decision decide(const AttentionParams& p) {
  Decision d;
  Plan& plan = d.plan;
  plan.status = detail::validate_args(p);
  if (!plan.status.ok()) return d;
  const void* first = p.q ? p.q : (p.o ? p.o : (p.k ? p.k : p.v));
  const Placement pl = place(p.backend, p.device, first, pointers(p));
  plan.status = pl.status;
  plan.backend = pl.backend;
  d.device = pl.device;
  if (!plan.status.ok()) return d;
  if (pl.backend == Backend::kReference) {
    plan.status = detail::validate_cu_seqlens_host(p);
    plan.kernel = "reference";
    return d;
  }
  detail::KernelChoice choice = detail::select_fwd(detail::resolve(p), d.device);
  plan.status = choice.status;
  plan.kernel = choice.name;
  plan.workspace_bytes = choice.workspace_bytes;
  d.launch = choice.launch;
  return d;
}

}  // namespace

Plan query(const AttentionParams& params) { return decide(params).plan; }

int64_t workspace_size(const AttentionParams& params) {
  const Plan plan = query(params);
  return plan.status.ok() ? plan.workspace_bytes : 0;
}

Status run(const AttentionParams& params, void* workspace, void* stream) {
  const Decision d = decide(params);
  if (!d.plan.status.ok()) return d.plan.status;
  const detail::FwdProblem f = detail::resolve(params);
  if (d.plan.backend == Backend::kReference) return ref::forward(f);
  return launch_planned(d.plan, d.device, params.batch == 0 || params.seqlen_q == 0, workspace,
                        [&](void* ws) {
                          return d.launch(detail::make_fwd_params(f), ws,
                                          static_cast<cudaStream_t>(stream));
                        });
}

namespace {

struct KvDecision {
  Plan plan;
  int device = -1;
  detail::KvKernelChoice choice;
};

KvDecision decide_kv(const KvCacheParams& p) {
  KvDecision d;
  Plan& plan = d.plan;
  plan.status = detail::validate_kv_args(p);
  if (!plan.status.ok()) return d;
  // q may be null when seqlen_q is 0; the caches then say where the call lives.
  const Placement pl = place(p.backend, p.device, p.q ? p.q : p.k_cache, pointers(p));
  plan.status = pl.status;
  plan.backend = pl.backend;
  d.device = pl.device;
  if (!plan.status.ok()) return d;
  if (pl.backend == Backend::kReference) {
    plan.kernel = "reference";
    return d;
  }
  d.choice = detail::select_kv(detail::resolve(p), d.device);
  plan.status = d.choice.status;
  plan.kernel = d.choice.name;
  plan.workspace_bytes = d.choice.plan.workspace_bytes;
  plan.kv_splits = d.choice.plan.splits;
  return d;
}

}  // namespace

Plan query(const KvCacheParams& params) { return decide_kv(params).plan; }

int64_t workspace_size(const KvCacheParams& params) {
  const Plan plan = query(params);
  return plan.status.ok() ? plan.workspace_bytes : 0;
}

Status run(const KvCacheParams& params, void* workspace, void* stream) {
  KvDecision d = decide_kv(params);
  if (!d.plan.status.ok()) return d.plan.status;
  const detail::KvProblem f = detail::resolve(params);
  if (d.plan.backend == Backend::kReference) return ref::kvcache(f);
  // A null workspace (no split planned) makes make_decode_params run unsplit.
  return launch_planned(d.plan, d.device, params.batch == 0 || params.seqlen_q == 0, workspace,
                        [&](void* ws) {
                          return d.choice.launch(decode::make_decode_params(f, d.choice.plan, ws),
                                                 static_cast<cudaStream_t>(stream));
                        });
}

int cuda_device_count() { return detail::device_count(); }

const char* to_string(DType dtype) {
  switch (dtype) {
    case DType::kFloat16:
      return "fp16";
    case DType::kBFloat16:
      return "bf16";
  }
  return "unknown";
}

const char* to_string(Backend backend) {
  switch (backend) {
    case Backend::kAuto:
      return "auto";
    case Backend::kReference:
      return "reference";
    case Backend::kCuda:
      return "cuda";
  }
  return "unknown";
}

}  // namespace flashcore
