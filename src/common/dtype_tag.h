// Compile-time tags of the 16-bit element types, shared by every kernel family's templates
// and the dispatch table (host-safe: no device headers).
#pragma once

#include "flashcore/flashcore.h"

namespace flashcore::detail {

struct Fp16 {};
struct Bf16 {};

template <class Tag>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<Fp16>() {
  return DType::kFloat16;
}
template <>
constexpr DType dtype_of<Bf16>() {
  return DType::kBFloat16;
}

}  // namespace flashcore::detail
