// The 16-bit element type the portable warp GEMMs take for a dtype tag (the forward and the
// decode kernel both instantiate them).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/dtype_tag.h"

namespace flashcore::portable {

template <class Tag>
struct ElemOf;
template <>
struct ElemOf<detail::Fp16> {
  using type = __half;
};
template <>
struct ElemOf<detail::Bf16> {
  using type = __nv_bfloat16;
};

}  // namespace flashcore::portable
