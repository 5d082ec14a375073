// Host side of TMA: tensor maps (CUtensorMap) for the attention tensors, encoded through the
// driver entry point obtained from the runtime (no libcuda link). The rules of
// cuTensorMapEncodeTiled (CUDA 13 cuda.h) are checked here first, so a bad layout gets a
// message naming the field instead of CUDA_ERROR_INVALID_VALUE.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "common/fwd_params.h"
#include "flashcore/flashcore.h"

namespace flashcore::hopper {

struct TensorMapSpec {
  const void* base = nullptr;
  DType dtype = DType::kBFloat16;  // 2-byte elements
  int rank = 0;                    // 1..5
  uint64_t dims[5] = {};           // elements, innermost first
  uint64_t strides[4] = {};        // bytes, of dims 1..rank-1 (dim 0 is contiguous)
  uint32_t box[5] = {};            // elements per copy, innermost first
  int swizzle_bytes = 128;         // 0 (none), 32, 64 or 128
};

/// The cuTensorMapEncodeTiled rules, each failure naming the field: base 16-byte aligned,
/// 1 <= rank <= 5, 1 <= dims <= 2^32, strides multiples of 16 and < 2^40, 1 <= box <= 256,
/// inner box a multiple of 16 bytes and within the swizzle span.
Status check_tensor_map(const TensorMapSpec& spec);

/// check_tensor_map, then the driver's cuTensorMapEncodeTiled into *map (64-byte aligned).
/// kNotSupported when the driver or its entry point is unavailable (no GPU).
Status encode_tensor_map(const TensorMapSpec& spec, CUtensorMap* map);

/// A rank-4 view {head_dim, heads, seqlen, batch} of a (batch, seqlen, heads, head_dim)
/// tensor with element strides s, copied in boxes of {64 elements (128 bytes), 1 head,
/// box_rows rows, 1 batch}: one 128-byte swizzle strip of a tile per copy. Rows past seqlen
/// are zero-filled by TMA on loads and dropped on stores.
TensorMapSpec bshd_tile_map(const void* base, DType dtype, const Strides& s, int64_t batch,
                            int64_t seqlen, int64_t heads, int64_t head_dim, uint32_t box_rows);

/// The maps of q, k, v, o (in that order) for a forward call: boxes of rows_q / rows_kv rows
/// for q / k, v, and of 64 rows (one consumer warpgroup's) for o.
/// Varlen tensors are one packed "batch" of total_q / total_k rows; a dim of extent 1 gets a
/// stride TMA accepts (a multiple of 16 bytes), since it is never stepped.
void fwd_map_specs(const detail::FwdParams& p, DType dtype, int head_dim, uint32_t rows_q,
                   uint32_t rows_kv, TensorMapSpec out[4]);

}  // namespace flashcore::hopper
