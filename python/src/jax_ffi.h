// What the XLA FFI handlers (jax_ffi.cpp, jax_ffi_kvcache.cpp) share: error conversion, and
// the handler symbols the module registers.
#pragma once

#include <exception>
#include <string>

#include "flashcore/flashcore.h"
#include "xla/ffi/api/ffi.h"

namespace flashcore::python {

inline xla::ffi::Error invalid(const std::string& what) {
  return xla::ffi::Error(xla::ffi::ErrorCode::kInvalidArgument, what);
}

// Runs call() (returning a flashcore::Status) as a handler's result. No exception may leave a
// handler (XLA calls it through C): the reference backend's threads or an allocation can throw.
template <class Call>
xla::ffi::Error guarded(Call&& call) {
  namespace ffi = xla::ffi;
  Status s;
  try {
    s = call();
  } catch (const std::exception& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("flashcore: ") + e.what());
  } catch (...) {
    return ffi::Error(ffi::ErrorCode::kInternal, "flashcore: unknown exception");
  }
  if (s.ok()) return ffi::Error::Success();
  return ffi::Error(s.code == StatusCode::kCudaError      ? ffi::ErrorCode::kInternal
                    : s.code == StatusCode::kNotSupported ? ffi::ErrorCode::kUnimplemented
                                                          : ffi::ErrorCode::kInvalidArgument,
                    s.message);
}

// The four 16-bit buffers of a call (q, k, v, out, or their cache names): `rank` dimensions
// each (dims names them in the message), q float16 or bfloat16, the others q's dtype, the
// third shaped as the second and the fourth as q.
inline xla::ffi::Error check_four(const xla::ffi::AnyBuffer* const (&bufs)[4],
                                  const char* const (&names)[4], size_t rank, const char* dims) {
  namespace ffi = xla::ffi;
  for (int i = 0; i < 4; ++i)
    if (bufs[i]->dimensions().size() != rank)
      return invalid(std::string(names[i]) + ": must have " + std::to_string(rank) +
                     " dimensions" + dims);
  const ffi::DataType t = bufs[0]->element_type();
  if (t != ffi::DataType::F16 && t != ffi::DataType::BF16)
    return invalid(std::string(names[0]) + ": dtype must be float16 or bfloat16");
  for (int i = 1; i < 4; ++i)
    if (bufs[i]->element_type() != t)
      return invalid(std::string(names[i]) + ": dtype must match " + names[0] + "'s");
  for (size_t i = 0; i < rank; ++i) {
    if (bufs[2]->dimensions()[i] != bufs[1]->dimensions()[i])
      return invalid(std::string(names[2]) + ": shape must match " + names[1] + "'s");
    if (bufs[3]->dimensions()[i] != bufs[0]->dimensions()[i])
      return invalid(std::string(names[3]) + ": shape must match " + names[0] + "'s");
  }
  return ffi::Error::Success();
}

}  // namespace flashcore::python

XLA_FFI_DECLARE_HANDLER_SYMBOL(flashcore_jax_kvcache_cuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(flashcore_jax_kvcache_cpu);
