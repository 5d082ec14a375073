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

}  // namespace flashcore::python

XLA_FFI_DECLARE_HANDLER_SYMBOL(flashcore_jax_kvcache_cuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(flashcore_jax_kvcache_cpu);
