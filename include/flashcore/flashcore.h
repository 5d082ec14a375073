// flashcore public C++ API: exact attention forward. Plain data in, Status out; no device code,
// no framework types. run() never allocates, synchronises or reads device memory on the host.
#pragma once

#include <cstdint>
#include <string>

namespace flashcore {

/// Element type of q, k, v and o. Accumulation is always fp32 (float64 in the CPU reference).
enum class DType : int32_t { kFloat16 = 0, kBFloat16 = 1 };

/// Where the work runs. kAuto: the CUDA backend when q lives in device memory of a present GPU,
/// otherwise the CPU reference.
enum class Backend : int32_t { kAuto = 0, kReference = 1, kCuda = 2 };

/// Which CUDA kernel family serves a call. kAuto: the Hopper kernels (TMA + wgmma) on sm_90
/// when they support the problem, the portable sm80+ kernels otherwise. Naming a family makes
/// query/run answer kNotSupported, with the reason, where that family cannot run the problem.
enum class KernelFamily : int32_t { kAuto = 0, kHopper = 1, kPortable = 2 };

enum class StatusCode : int32_t {
  kOk = 0,
  kInvalidArgument = 1,  ///< an input breaks a rule; the message names the argument and the rule
  kNotSupported = 2,     ///< valid input that no compiled kernel handles on this device
  kCudaError = 3,        ///< a CUDA runtime call failed; the message carries its text
};

struct Status {
  StatusCode code = StatusCode::kOk;
  std::string message;
  bool ok() const { return code == StatusCode::kOk; }
};

/// Strides of a (batch, seqlen, heads, head_dim) tensor, in elements. head_dim is contiguous.
/// In the variable-length form the batch stride is unused and seq indexes packed tokens.
struct Strides {
  int64_t batch = 0;
  int64_t seq = 0;
  int64_t head = 0;
};

/// Forward attention. O[b, i, h] = softmax(scale * Q[b, i, h] K[b, :, h/g]^T) V[b, :, h/g],
/// g = num_heads_q / num_heads_kv.
///
/// Masking (causal and window) is aligned bottom-right: with off = seqlen_k - seqlen_q, query i
/// sees key j iff j < seqlen_k, j <= i + off + window_right (when window_right >= 0) and
/// j >= i + off - window_left (when window_left >= 0). causal = true forces window_right = 0.
/// A query row that sees no key gets output 0 and log-sum-exp -inf.
struct AttentionParams {
  const void* q = nullptr;  ///< [B, Sq, Hq, D] or packed [total_q, Hq, D]
  const void* k = nullptr;  ///< [B, Sk, Hkv, D] or packed [total_k, Hkv, D]
  const void* v = nullptr;  ///< like k
  void* o = nullptr;        ///< like q
  Strides q_strides, k_strides, v_strides, o_strides;

  /// Optional log-sum-exp (natural log, fp32): contiguous [B, Hq, Sq], or [Hq, total_q] varlen
  /// (total_q as given below, else cu_seqlens_q[batch]; rows past the last sequence untouched).
  float* lse = nullptr;

  DType dtype = DType::kBFloat16;
  int64_t batch = 0;
  int64_t seqlen_q = 0;  ///< varlen: max_seqlen_q, an upper bound of every sequence's length
  int64_t seqlen_k = 0;  ///< varlen: max_seqlen_k
  int64_t num_heads_q = 0;
  int64_t num_heads_kv = 0;
  int64_t head_dim = 0;  ///< 64, 128 or 256

  /// Variable-length batches: int32 prefix sums with batch + 1 entries, starting at 0, in the
  /// same memory as q. Both or neither. On the CUDA backend their contents are read by the
  /// kernel only (graph safety): sequences longer than the max lengths are truncated to them.
  const int32_t* cu_seqlens_q = nullptr;
  const int32_t* cu_seqlens_k = nullptr;
  /// Varlen only, optional: rows of the packed q (total_q) and k/v (total_k), i.e. the last
  /// entries of cu_seqlens as the caller knows them. The Hopper kernels need them to bound
  /// their tensor maps; 0 (unknown) keeps varlen calls on the portable kernels. Given, the CUDA
  /// kernels also skip an entry of the device lists with a negative start or end, or an end
  /// past the packed tensors (its output rows are left as they were: README, "graph safety").
  int64_t total_q = 0;
  int64_t total_k = 0;

  float softmax_scale = 0.0f;  ///< > 0; 0 selects 1/sqrt(head_dim)
  bool causal = false;
  int64_t window_left = -1;   ///< -1: unbounded
  int64_t window_right = -1;  ///< -1: unbounded

  Backend backend = Backend::kAuto;
  KernelFamily family = KernelFamily::kAuto;  ///< CUDA backend only
  int device = -1;                            ///< CUDA device ordinal; -1: the current device
};

/// What query() decided: whether run() would accept these params, and with which kernel.
struct Plan {
  Status status;  ///< ok, or why not
  Backend backend = Backend::kReference;
  std::string kernel;  ///< e.g. "hopper.fwd.bf16.d128.causal", "portable.fwd.fp16.d64"
  int64_t workspace_bytes = 0;
  /// KV-cache calls (kvcache.h) on the CUDA backend: the CTAs each cache is split across when
  /// run() gets a workspace (chosen from the SM count, the batch, the heads and the capacity,
  /// never from cache_seqlens, so a captured graph keeps it); 1 for every other call.
  int64_t kv_splits = 1;
};

/// Validates and plans without running anything. Safe to call anywhere.
Plan query(const AttentionParams& params);

/// Bytes of device workspace run() can use for these params (also Plan::workspace_bytes); 0
/// when it uses none. Today: the Hopper kernels' split tail, which deals the last round of
/// tiles of an unmasked fixed-length problem out over every SM in pieces along the keys.
int64_t workspace_size(const AttentionParams& params);

/// Runs attention. stream is a cudaStream_t (nullptr: the legacy default stream) and is ignored
/// by the CPU reference, which runs synchronously on host memory.
/// workspace is optional: null, or workspace_size(params) bytes of device memory on the call's
/// device, zero-filled before its first use. Every call leaves it zero-filled where it counts,
/// so one buffer (sized for the largest problem) serves any number of calls in one stream;
/// calls that may run concurrently need separate buffers. Without it the result is the same
/// up to rounding, and some shapes run slower.
Status run(const AttentionParams& params, void* workspace = nullptr, void* stream = nullptr);

/// Number of usable CUDA devices; 0 when there is no GPU or driver (never an error).
int cuda_device_count();

const char* to_string(DType dtype);
const char* to_string(Backend backend);

}  // namespace flashcore
