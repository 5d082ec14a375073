// The public entry points: query (validate, choose a backend, choose a kernel), run (the same
// decision, then the work), workspace_size. run never allocates or synchronises.
#include <cuda_runtime.h>

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
void list_pointers(const AttentionParams& p, NamedPtr (&out)[7]) {
  out[0] = {"q", p.q};
  out[1] = {"k", p.k};
  out[2] = {"v", p.v};
  out[3] = {"o", p.o};
  out[4] = {"lse", p.lse};
  out[5] = {"cu_seqlens_q", p.cu_seqlens_q};
  out[6] = {"cu_seqlens_k", p.cu_seqlens_k};
}

const void* first_tensor(const AttentionParams& p) {
  return p.q ? p.q : (p.o ? p.o : (p.k ? p.k : p.v));
}

Status check_reference_memory(const AttentionParams& p) {
  NamedPtr ptrs[7];
  list_pointers(p, ptrs);
  for (const NamedPtr& np : ptrs)
    if (np.ptr && detail::memory_kind(np.ptr) == detail::MemoryKind::kDevice)
      return invalid(std::string(np.name) +
                     ": is device memory, but the CPU reference backend needs host memory");
  return detail::validate_cu_seqlens_host(p);
}

Status check_cuda_memory(const AttentionParams& p, int device) {
  NamedPtr ptrs[7];
  list_pointers(p, ptrs);
  for (const NamedPtr& np : ptrs) {
    if (!np.ptr) continue;
    const int d = detail::pointer_device(np.ptr);
    if (d < 0) return invalid(std::string(np.name) + ": must be device memory on the CUDA backend");
    if (d != device)
      return invalid(std::string(np.name) + ": lives on device " + std::to_string(d) +
                     ", but the call runs on device " + std::to_string(device));
  }
  return {};
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

  const int ndev = detail::device_count();
  const void* t = first_tensor(p);
  Backend backend = p.backend;
  if (backend == Backend::kAuto)
    backend = (ndev > 0 && t && detail::memory_kind(t) == detail::MemoryKind::kDevice)
                  ? Backend::kCuda
                  : Backend::kReference;
  plan.backend = backend;

  if (backend == Backend::kReference) {
    plan.status = check_reference_memory(p);
    plan.kernel = "reference";
    return d;
  }
  if (ndev == 0) {
    plan.status = {StatusCode::kNotSupported,
                   "backend: kCuda requested, but no CUDA device is present"};
    return d;
  }
  d.device = p.device >= 0 ? p.device : (t ? detail::pointer_device(t) : detail::current_device());
  if (d.device < 0) d.device = detail::current_device();
  if (d.device >= ndev) {
    plan.status = invalid("device: " + std::to_string(d.device) + " is not a CUDA device (" +
                          std::to_string(ndev) + " present)");
    return d;
  }
  plan.status = check_cuda_memory(p, d.device);
  if (!plan.status.ok()) return d;
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
  if (params.batch == 0 || params.seqlen_q == 0) return {};  // nothing to compute or write

  if (d.plan.workspace_bytes == 0) {
    workspace = nullptr;
  } else if (workspace != nullptr && detail::pointer_device(workspace) != d.device) {
    return invalid("workspace: must be device memory on device " + std::to_string(d.device));
  }

  int prev = -1;
  if (cudaGetDevice(&prev) != cudaSuccess) prev = -1;
  if (prev != d.device && cudaSetDevice(d.device) != cudaSuccess)
    return {StatusCode::kCudaError, "cudaSetDevice(" + std::to_string(d.device) + ") failed"};
  const cudaError_t err =
      d.launch(detail::make_fwd_params(f), workspace, static_cast<cudaStream_t>(stream));
  if (prev >= 0 && prev != d.device) cudaSetDevice(prev);
  if (err != cudaSuccess)
    return {StatusCode::kCudaError,
            std::string("kernel launch failed: ") + cudaGetErrorString(err)};
  return {};
}

namespace {

// Every pointer of a KV-cache call: all host memory for the reference, all on the call's device
// for the CUDA backend.
struct KvPointers {
  NamedPtr ptrs[12];
};
KvPointers kv_pointers(const KvCacheParams& p) {
  return {{{"q", p.q},
           {"o", p.o},
           {"lse", p.lse},
           {"k_cache", p.k_cache},
           {"v_cache", p.v_cache},
           {"block_table", p.block_table},
           {"cache_seqlens", p.cache_seqlens},
           {"k_new", p.k_new},
           {"v_new", p.v_new},
           {"error_flag", p.error_flag},
           {"rotary.cos", p.rotary.cos},
           {"rotary.sin", p.rotary.sin}}};
}

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
  const int ndev = detail::device_count();
  // q may be null when seqlen_q is 0; the caches then say where the call lives.
  const void* first = p.q ? p.q : p.k_cache;
  Backend backend = p.backend;
  if (backend == Backend::kAuto)
    backend = (ndev > 0 && first && detail::memory_kind(first) == detail::MemoryKind::kDevice)
                  ? Backend::kCuda
                  : Backend::kReference;
  plan.backend = backend;
  const KvPointers kp = kv_pointers(p);
  if (backend == Backend::kReference) {
    for (const NamedPtr& np : kp.ptrs)
      if (np.ptr && detail::memory_kind(np.ptr) == detail::MemoryKind::kDevice) {
        plan.status = invalid(std::string(np.name) +
                              ": is device memory, but the CPU reference backend needs host memory");
        return d;
      }
    plan.kernel = "reference";
    return d;
  }
  if (ndev == 0) {
    plan.status = {StatusCode::kNotSupported,
                   "backend: kCuda requested, but no CUDA device is present"};
    return d;
  }
  d.device = p.device >= 0 ? p.device
                           : (first ? detail::pointer_device(first) : detail::current_device());
  if (d.device < 0) d.device = detail::current_device();
  if (d.device >= ndev) {
    plan.status = invalid("device: " + std::to_string(d.device) + " is not a CUDA device (" +
                          std::to_string(ndev) + " present)");
    return d;
  }
  for (const NamedPtr& np : kp.ptrs) {
    if (!np.ptr) continue;
    const int dev = detail::pointer_device(np.ptr);
    if (dev < 0) {
      plan.status = invalid(std::string(np.name) + ": must be device memory on the CUDA backend");
      return d;
    }
    if (dev != d.device) {
      plan.status = invalid(std::string(np.name) + ": lives on device " + std::to_string(dev) +
                            ", but the call runs on device " + std::to_string(d.device));
      return d;
    }
  }
  d.choice = detail::select_kv(detail::resolve(p), d.device);
  plan.status = d.choice.status;
  plan.kernel = d.choice.name;
  plan.workspace_bytes = d.choice.plan.workspace_bytes;
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
  if (params.batch == 0 || params.seqlen_q == 0) return {};  // nothing to read or write
  decode::DecodePlan plan = d.choice.plan;
  if (plan.workspace_bytes > 0 && workspace == nullptr) {  // no workspace: run unsplit
    plan.splits = 1;
    plan.counter_bytes = plan.workspace_bytes = 0;
  }
  if (workspace != nullptr && plan.workspace_bytes > 0 &&
      detail::pointer_device(workspace) != d.device)
    return invalid("workspace: must be device memory on device " + std::to_string(d.device));
  int prev = -1;
  if (cudaGetDevice(&prev) != cudaSuccess) prev = -1;
  if (prev != d.device && cudaSetDevice(d.device) != cudaSuccess)
    return {StatusCode::kCudaError, "cudaSetDevice(" + std::to_string(d.device) + ") failed"};
  const cudaError_t err = d.choice.launch(decode::make_decode_params(f, plan, workspace),
                                          static_cast<cudaStream_t>(stream));
  if (prev >= 0 && prev != d.device) cudaSetDevice(prev);
  if (err != cudaSuccess)
    return {StatusCode::kCudaError, std::string("kernel launch failed: ") + cudaGetErrorString(err)};
  return {};
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
