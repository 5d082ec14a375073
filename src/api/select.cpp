// Dispatch table of the CUDA forward kernels, generated from the build's kernel manifest.
// Support rules (architecture, layouts, grid limits, shared memory) live here and nowhere
// else; query and run both ask select_fwd, so they cannot disagree.
#include "api/select.h"

#include <algorithm>
#include <cstdint>

#include "api/cuda_env.h"
#include "common/dtype_tag.h"
#include "flashcore_portable_manifest.h"
#include "hopper/fwd_launch.h"
#include "hopper/tensor_map.h"
#include "portable/fwd_config.h"
#include "portable/fwd_launch.h"
#include "decode/decode_launch.h"

namespace flashcore::detail {
namespace {

Status not_supported(const std::string& msg) { return {StatusCode::kNotSupported, msg}; }

// Shared memory of the larger of a head dim's two portable configs (unmasked, causal/window).
template <int D>
constexpr int kPortableSmem =
    portable::FwdTile<D, false>::type::kSmemBytes > portable::FwdTile<D, true>::type::kSmemBytes
        ? portable::FwdTile<D, false>::type::kSmemBytes
        : portable::FwdTile<D, true>::type::kSmemBytes;

// The Hopper kernels read q, k, v through TMA maps and write o with 16-byte stores.
template <int D>
Status hopper_fits(const FwdProblem& f) {
  const AttentionParams& p = f.p;
  if (p.batch == 0 || p.seqlen_q == 0 || p.seqlen_k == 0)
    return not_supported("hopper: empty problems run on the portable kernels");
  if (f.varlen && (p.total_q == 0 || p.total_k == 0))
    return not_supported("total_q/total_k: the Hopper kernels need them for varlen calls");
  const struct {
    const char* name;
    const void* ptr;
    Strides s;
  } tensors[4] = {{"q", p.q, p.q_strides},
                  {"k", p.k, p.k_strides},
                  {"v", p.v, p.v_strides},
                  {"o", p.o, p.o_strides}};
  for (const auto& t : tensors) {
    if (reinterpret_cast<uintptr_t>(t.ptr) % 16 != 0)
      return not_supported(std::string("hopper: ") + t.name + " must be 16-byte aligned");
    if (t.s.seq % 8 != 0 || t.s.head % 8 != 0 || (!f.varlen && t.s.batch % 8 != 0))
      return not_supported(std::string("hopper: ") + t.name +
                           "_strides must be multiples of 8 elements (16 bytes)");
  }
  const hopper::TileRows rows = hopper::tile_rows<D>(f.has_mask(), p.seqlen_q);
  const int64_t tiles = (p.seqlen_q + rows.q - 1) / rows.q * p.num_heads_q * p.batch;
  if (tiles > INT32_MAX) return not_supported("hopper: more than 2^31 - 1 tiles");
  hopper::TensorMapSpec spec[4];
  hopper::fwd_map_specs(make_fwd_params(f), p.dtype, D, rows.q, rows.kv, spec);
  for (const hopper::TensorMapSpec& s : spec) {
    const Status st = hopper::check_tensor_map(s);
    if (!st.ok()) return not_supported("hopper: " + st.message);
  }
  return {};
}

// The portable kernels take every problem that reaches the table.
Status always_fits(const FwdProblem&) { return {}; }

template <int D>
int64_t hopper_workspace(const FwdProblem& f, int device) {
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) return 0;
  return hopper::workspace_bytes<D>(make_fwd_params(f), sms);
}
int64_t no_workspace(const FwdProblem&, int) { return 0; }

// The portable kernels take no workspace.
template <class Tag, int D>
cudaError_t portable_launch(const FwdParams& p, void*, cudaStream_t stream) {
  return portable::launch_fwd<Tag, D>(p, stream);
}

struct Entry {
  KernelFamily family;
  const char* prefix;
  DType dtype;
  int head_dim;
  int smem_bytes;
  int min_sm_major, max_sm_major;
  Status (*fits)(const FwdProblem&);
  int64_t (*workspace)(const FwdProblem&, int device);
  FwdLaunch launch;
};

// Hopper rows first: on sm_90 they win whenever they fit.
#define FLASHCORE_HOPPER_ENTRY(Tag, D)    \
  Entry{KernelFamily::kHopper,            \
        "hopper.fwd.",                    \
        dtype_of<Tag>(),                  \
        D,                                \
        hopper::max_smem_bytes<D>(),      \
        9,                                \
        9,                                \
        &hopper_fits<D>,                  \
        &hopper_workspace<D>,             \
        &hopper::launch_fwd<Tag, D>},
#define FLASHCORE_PORTABLE_ENTRY(Tag, D) \
  Entry{KernelFamily::kPortable,         \
        "portable.fwd.",                 \
        dtype_of<Tag>(),                 \
        D,                               \
        kPortableSmem<D>,                \
        8,                               \
        99,                              \
        &always_fits,                    \
        &no_workspace,                   \
        &portable_launch<Tag, D>},
const Entry kFwd[] = {FLASHCORE_HOPPER_MANIFEST(FLASHCORE_HOPPER_ENTRY)
                          FLASHCORE_PORTABLE_MANIFEST(FLASHCORE_PORTABLE_ENTRY)};
#undef FLASHCORE_HOPPER_ENTRY
#undef FLASHCORE_PORTABLE_ENTRY

std::string mask_suffix(const FwdProblem& f) {
  if (!f.has_mask()) return "";
  if (f.window_right == 0 && f.window_left < 0) return ".causal";
  return ".local";
}

// Every CUDA kernel here needs sm80 or newer.
Status needs_sm80(int device) {
  const int major = device_sm_major(device);
  if (major < 8)
    return not_supported("device: compute capability " + std::to_string(major) +
                         ".x; the CUDA kernels need sm80 or newer");
  return {};
}

struct KvEntry {
  DType dtype;
  int head_dim;
  bool fp8;  // e4m3 cache (kvcache.h, cache_fp8)
  KvLaunch launch;
};
#define FLASHCORE_DECODE_ENTRY(Tag, D)                                          \
  KvEntry{dtype_of<Tag>(), D, false, &decode::launch_decode<Tag, D, decode::CacheDtype>}, \
      KvEntry{dtype_of<Tag>(), D, true, &decode::launch_decode<Tag, D, decode::CacheE4m3>},
const KvEntry kKv[] = {FLASHCORE_PORTABLE_MANIFEST(FLASHCORE_DECODE_ENTRY)};
#undef FLASHCORE_DECODE_ENTRY

}  // namespace

KvKernelChoice select_kv(const KvProblem& f, int device) {
  KvKernelChoice c;
  if (!(c.status = needs_sm80(device)).ok()) return c;
  if (f.p.family == KernelFamily::kHopper) {
    c.status = not_supported("family: no Hopper KV-cache kernel yet; the portable one runs on sm_90");
    return c;
  }
  if (f.p.batch > 65535 || f.p.num_heads_kv * ((f.group * f.p.seqlen_q + decode::kRows - 1) /
                                                decode::kRows) > 65535) {
    c.status = not_supported("batch/num_heads_kv/seqlen_q: grid over the CUDA limits (65535)");
    return c;
  }
  int smem_optin = 0, smem_sm = 0, sms = 0;
  cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  cudaDeviceGetAttribute(&smem_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  for (const KvEntry& e : kKv) {
    if (e.dtype != f.p.dtype || e.head_dim != f.p.head_dim || e.fp8 != f.p.cache_fp8) continue;
    const int smem = decode::smem_bytes(e.head_dim, e.fp8);
    if (smem > smem_optin) {
      c.status = not_supported("head_dim: " + std::to_string(e.head_dim) + " needs " +
                               std::to_string(smem) + " bytes of shared memory, device offers " +
                               std::to_string(smem_optin));
      return c;
    }
    c.name = std::string("portable.decode.") + to_string(f.p.dtype) + (e.fp8 ? ".e4m3" : "") +
             ".d" + std::to_string(e.head_dim);
    c.launch = e.launch;
    c.plan = decode::plan_for_device(f, sms, smem_sm);
    return c;
  }
  c.status = not_supported(std::string("dtype/head_dim: no KV-cache kernel compiled for ") +
                           to_string(f.p.dtype) + " with head_dim " +
                           std::to_string(f.p.head_dim));
  return c;
}

KernelChoice select_fwd(const FwdProblem& f, int device) {
  KernelChoice c;
  const int major = device_sm_major(device);
  if (!(c.status = needs_sm80(device)).ok()) return c;
  if (f.p.batch > 65535 || f.p.num_heads_q > 65535) {
    c.status = not_supported("batch/num_heads_q: must be <= 65535 on the CUDA backend");
    return c;
  }
  int smem_optin = 0;
  cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  const KernelFamily want = f.p.family;
  // Why the named family cannot run the problem, reported when nothing else is allowed.
  std::string reason = std::string("dtype/head_dim: no kernel compiled for ") +
                       to_string(f.p.dtype) + " with head_dim " + std::to_string(f.p.head_dim) +
                       (want == KernelFamily::kHopper
                            ? " in the Hopper family (needs a build targeting sm_90a)"
                            : " (see FLASHCORE_PORTABLE_DTYPES / FLASHCORE_PORTABLE_HEAD_DIMS)");
  for (const Entry& e : kFwd) {
    if (e.dtype != f.p.dtype || e.head_dim != f.p.head_dim) continue;
    if (want != KernelFamily::kAuto && want != e.family) continue;
    if (major < e.min_sm_major || major > e.max_sm_major) {
      reason = "family: " + std::string(e.prefix) + " kernels need compute capability " +
               std::to_string(e.min_sm_major) + ".x, device " + std::to_string(device) + " is " +
               std::to_string(major) + ".x";
      continue;
    }
    if (e.smem_bytes > smem_optin) {
      reason = "head_dim: " + std::to_string(e.head_dim) + " needs " +
               std::to_string(e.smem_bytes) + " bytes of shared memory, device " +
               std::to_string(device) + " offers " + std::to_string(smem_optin);
      continue;
    }
    const Status fit = e.fits(f);
    if (!fit.ok()) {
      reason = fit.message;
      continue;
    }
    c.name = std::string(e.prefix) + to_string(f.p.dtype) + ".d" + std::to_string(e.head_dim) +
             mask_suffix(f);
    c.launch = e.launch;
    c.workspace_bytes = e.workspace(f, device);
    return c;
  }
  c.status = not_supported(reason);
  return c;
}

}  // namespace flashcore::detail
