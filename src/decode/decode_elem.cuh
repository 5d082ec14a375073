// 16-bit element conversions of the decode kernel (decode_kernel.cuh, decode_epilogue.cuh).
// The warp GEMMs' element type per tag is portable::ElemOf (portable/elem.cuh).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "common/dtype_tag.h"

namespace flashcore::decode {

template <class Tag>
__device__ __forceinline__ float to_f(uint16_t x) {
  if constexpr (std::is_same_v<Tag, detail::Bf16>)
    return __bfloat162float(__ushort_as_bfloat16(x));
  else
    return __half2float(__ushort_as_half(x));
}
template <class Tag>
__device__ __forceinline__ uint16_t from_f(float x) {
  if constexpr (std::is_same_v<Tag, detail::Bf16>)
    return __bfloat16_as_ushort(__float2bfloat16_rn(x));
  else
    return __half_as_ushort(__float2half_rn(x));
}

}  // namespace flashcore::decode
