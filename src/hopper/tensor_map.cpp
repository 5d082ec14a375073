// TMA tensor-map rules and encoding; see tensor_map.h.
#include "hopper/tensor_map.h"

#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <string>

namespace flashcore::hopper {
namespace {

Status invalid(const std::string& msg) { return {StatusCode::kInvalidArgument, msg}; }

// The CUtensorMapSwizzle enum (cuda.h): a different code from the wgmma descriptor's.
bool swizzle_enum(int bytes, CUtensorMapSwizzle* out) {
  switch (bytes) {
    case 0:
      *out = CU_TENSOR_MAP_SWIZZLE_NONE;
      return true;
    case 32:
      *out = CU_TENSOR_MAP_SWIZZLE_32B;
      return true;
    case 64:
      *out = CU_TENSOR_MAP_SWIZZLE_64B;
      return true;
    case 128:
      *out = CU_TENSOR_MAP_SWIZZLE_128B;
      return true;
    default:
      return false;
  }
}

}  // namespace

Status check_tensor_map(const TensorMapSpec& spec) {
  constexpr uint64_t kElemBytes = 2;
  if (spec.dtype != DType::kFloat16 && spec.dtype != DType::kBFloat16)
    return invalid("tensor map dtype: must be fp16 or bf16");
  if (spec.base == nullptr || (reinterpret_cast<uintptr_t>(spec.base) & 15u))
    return invalid("tensor map base: must be a non-null 16-byte aligned address");
  if (spec.rank < 1 || spec.rank > 5)
    return invalid("tensor map rank: must be 1..5 (got " + std::to_string(spec.rank) + ")");
  for (int i = 0; i < spec.rank; ++i) {
    const std::string at = "[" + std::to_string(i) + "]";
    if (spec.dims[i] < 1 || spec.dims[i] > (uint64_t{1} << 32))
      return invalid("tensor map dims" + at + ": must be 1..2^32 (got " +
                     std::to_string(spec.dims[i]) + ")");
    if (spec.box[i] < 1 || spec.box[i] > 256)
      return invalid("tensor map box" + at + ": must be 1..256 (got " +
                     std::to_string(spec.box[i]) + ")");
    if (i > 0) {
      const uint64_t st = spec.strides[i - 1];
      if (st % 16 != 0 || st >= (uint64_t{1} << 40))
        return invalid("tensor map strides[" + std::to_string(i - 1) + "] (dim " +
                       std::to_string(i) + "): must be a multiple of 16 bytes below 2^40 (got " +
                       std::to_string(st) + ")");
    }
  }
  const uint64_t inner = spec.box[0] * kElemBytes;
  if (inner % 16 != 0)
    return invalid("tensor map box[0]: " + std::to_string(inner) +
                   " bytes, must be a multiple of 16");
  CUtensorMapSwizzle sw;
  if (!swizzle_enum(spec.swizzle_bytes, &sw))
    return invalid("tensor map swizzle: must be 0, 32, 64 or 128 bytes");
  if (spec.swizzle_bytes > 0 && inner > static_cast<uint64_t>(spec.swizzle_bytes))
    return invalid("tensor map box[0]: " + std::to_string(inner) +
                   " bytes exceed the swizzle span of " + std::to_string(spec.swizzle_bytes));
  return {};
}

Status encode_tensor_map(const TensorMapSpec& spec, CUtensorMap* map) {
  Status st = check_tensor_map(spec);
  if (!st.ok()) return st;
  if ((reinterpret_cast<uintptr_t>(map) & 63u) != 0)
    return invalid("tensor map: destination must be 64-byte aligned");
  // Looked up once per process: the lookup costs microseconds, and run() encodes three maps
  // per call.
  static void* const fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault,
                                         &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      f = nullptr;
    }
    return f;
  }();
  if (fn == nullptr)
    return {StatusCode::kNotSupported,
            "tensor map: cuTensorMapEncodeTiled unavailable (no CUDA driver)"};
  CUtensorMapSwizzle sw = CU_TENSOR_MAP_SWIZZLE_NONE;
  swizzle_enum(spec.swizzle_bytes, &sw);
  const cuuint32_t elem_strides[5] = {1, 1, 1, 1, 1};
  cuuint64_t dims[5], strides[4];
  cuuint32_t box[5];
  for (int i = 0; i < spec.rank; ++i) {
    dims[i] = spec.dims[i];
    box[i] = spec.box[i];
    if (i > 0) strides[i - 1] = spec.strides[i - 1];
  }
  const CUresult r = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn)(
      map,
      spec.dtype == DType::kBFloat16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                     : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
      static_cast<cuuint32_t>(spec.rank), const_cast<void*>(spec.base), dims, strides, box,
      elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, sw, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    return {StatusCode::kCudaError,
            "tensor map: cuTensorMapEncodeTiled failed with CUresult " + std::to_string(r)};
  return {};
}

TensorMapSpec bshd_tile_map(const void* base, DType dtype, const Strides& s, int64_t batch,
                            int64_t seqlen, int64_t heads, int64_t head_dim, uint32_t box_rows) {
  TensorMapSpec m;
  m.base = base;
  m.dtype = dtype;
  m.rank = 4;
  m.dims[0] = static_cast<uint64_t>(head_dim);
  m.dims[1] = static_cast<uint64_t>(heads);
  m.dims[2] = static_cast<uint64_t>(seqlen);
  m.dims[3] = static_cast<uint64_t>(batch);
  m.strides[0] = static_cast<uint64_t>(s.head) * 2;
  m.strides[1] = static_cast<uint64_t>(s.seq) * 2;
  m.strides[2] = static_cast<uint64_t>(s.batch) * 2;
  m.box[0] = 64;
  m.box[1] = 1;
  m.box[2] = box_rows;
  m.box[3] = 1;
  m.swizzle_bytes = 128;
  return m;
}

void fwd_map_specs(const detail::FwdParams& p, DType dtype, int head_dim, uint32_t rows_q,
                   uint32_t rows_kv, TensorMapSpec out[4]) {
  const bool varlen = p.cu_seqlens_q != nullptr;
  const int64_t batch = varlen ? 1 : p.batch;
  const int64_t sq = varlen ? p.total_q : p.seqlen_q, sk = varlen ? p.total_k : p.seqlen_k;
  const int64_t hk = p.num_heads_q / p.group;
  auto strides = [&](int64_t b, int64_t s, int64_t h, int64_t rows, int64_t heads) {
    Strides st{b, s, h};
    if (heads == 1) st.head = 8;
    if (batch == 1) st.batch = 8 * (rows > 0 ? rows : 1) * (s > 0 ? s : 1);
    return st;
  };
  out[0] = bshd_tile_map(p.q, dtype, strides(p.q_batch, p.q_seq, p.q_head, sq, p.num_heads_q),
                         batch, sq, p.num_heads_q, head_dim, rows_q);
  out[1] = bshd_tile_map(p.k, dtype, strides(p.k_batch, p.k_seq, p.k_head, sk, hk), batch, sk, hk,
                         head_dim, rows_kv);
  out[2] = bshd_tile_map(p.v, dtype, strides(p.v_batch, p.v_seq, p.v_head, sk, hk), batch, sk, hk,
                         head_dim, rows_kv);
  out[3] = bshd_tile_map(p.o, dtype, strides(p.o_batch, p.o_seq, p.o_head, sq, p.num_heads_q),
                         batch, sq, p.num_heads_q, head_dim, 64);
}

}  // namespace flashcore::hopper
