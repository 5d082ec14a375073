// Dispatch table of the CUDA forward kernels, generated from the build's kernel manifest.
// Support rules (architecture, grid limits, shared memory) live here and nowhere else.
#include "api/select.h"

#include "api/cuda_env.h"
#include "flashcore_portable_manifest.h"
#include "portable/fwd_config.h"
#include "portable/fwd_launch.h"

namespace flashcore::detail {
namespace {

template <class Tag>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<portable::Fp16>() {
  return DType::kFloat16;
}
template <>
constexpr DType dtype_of<portable::Bf16>() {
  return DType::kBFloat16;
}

// Shared memory of the larger of a head dim's two configs (unmasked, causal/window).
template <int D>
constexpr int kMaxSmem =
    portable::FwdTile<D, false>::type::kSmemBytes > portable::FwdTile<D, true>::type::kSmemBytes
        ? portable::FwdTile<D, false>::type::kSmemBytes
        : portable::FwdTile<D, true>::type::kSmemBytes;

struct Entry {
  DType dtype;
  int head_dim;
  int smem_bytes;
  int min_sm_major;
  FwdLaunch launch;
};

#define FLASHCORE_PORTABLE_ENTRY(Tag, D) \
  Entry{dtype_of<portable::Tag>(), D, kMaxSmem<D>, 8, &portable::launch_fwd<portable::Tag, D>},
const Entry kPortableFwd[] = {FLASHCORE_PORTABLE_MANIFEST(FLASHCORE_PORTABLE_ENTRY)};
#undef FLASHCORE_PORTABLE_ENTRY

std::string mask_suffix(const FwdProblem& f) {
  if (!f.has_mask()) return "";
  if (f.window_right == 0 && f.window_left < 0) return ".causal";
  return ".local";
}

Status not_supported(const std::string& msg) { return {StatusCode::kNotSupported, msg}; }

}  // namespace

KernelChoice select_fwd(const FwdProblem& f, int device) {
  KernelChoice c;
  const int major = device_sm_major(device);
  if (major < 8) {
    c.status = not_supported("device: compute capability " + std::to_string(major) +
                             ".x; the CUDA kernels need sm80 or newer");
    return c;
  }
  if (f.p.batch > 65535 || f.p.num_heads_q > 65535) {
    c.status = not_supported("batch/num_heads_q: must be <= 65535 on the CUDA backend");
    return c;
  }
  int smem_optin = 0;
  cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  for (const Entry& e : kPortableFwd) {
    if (e.dtype != f.p.dtype || e.head_dim != f.p.head_dim) continue;
    if (major < e.min_sm_major) continue;
    if (e.smem_bytes > smem_optin) {
      c.status = not_supported("head_dim: " + std::to_string(e.head_dim) + " needs " +
                               std::to_string(e.smem_bytes) + " bytes of shared memory, device " +
                               std::to_string(device) + " offers " + std::to_string(smem_optin));
      return c;
    }
    c.name = std::string("portable.fwd.") + to_string(f.p.dtype) + ".d" +
             std::to_string(e.head_dim) + mask_suffix(f);
    c.launch = e.launch;
    return c;
  }
  c.status = not_supported(std::string("dtype/head_dim: no kernel compiled for ") +
                           to_string(f.p.dtype) + " with head_dim " + std::to_string(f.p.head_dim) +
                           " (see FLASHCORE_PORTABLE_DTYPES / FLASHCORE_PORTABLE_HEAD_DIMS)");
  return c;
}

}  // namespace flashcore::detail
