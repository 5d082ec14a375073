// XLA FFI handlers: flash_attn_func and flash_attn_varlen_func on JAX arrays as XLA custom
// calls (jax.ffi.ffi_call), so JAX's own buffers and stream are used, on the GPU and the host,
// eagerly and under jax.jit.
// Built only where jaxlib's FFI headers were found at configure time (python/CMakeLists.txt);
// the Python side is flashcore/_jax.py. XLA hands over dense row-major buffers and allocates
// the outputs; nothing here allocates. No workspace: the Hopper kernels then run without a
// split tail (the same result up to rounding).
#include <nanobind/nanobind.h>

#include <cstdint>
#include <exception>
#include <string>
#include <utility>

#include "flashcore/flashcore.h"
#include "xla/ffi/api/ffi.h"

namespace nb = nanobind;
namespace ffi = xla::ffi;

namespace {

// The attributes flashcore/_jax.py passes, in one place for both platforms' bindings.
template <class Binding>
auto with_attrs(Binding b) {
  return std::move(b)
      .template Attr<float>("softmax_scale")
      .template Attr<bool>("causal")
      .template Attr<int64_t>("window_left")
      .template Attr<int64_t>("window_right");
}

ffi::Error invalid(const std::string& what) {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, what);
}

// The params of a (B, S, H, D) forward over XLA's buffers; softmax_scale 0 means
// 1/sqrt(head_dim), as in the core.
ffi::Error fwd_params(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v, ffi::AnyBuffer out,
                      ffi::Buffer<ffi::F32> lse, float scale, bool causal, int64_t wl,
                      int64_t wr, flashcore::AttentionParams& p) {
  const ffi::AnyBuffer* all[] = {&q, &k, &v, &out};
  const char* names[] = {"q", "k", "v", "out"};
  for (int i = 0; i < 4; ++i)
    if (all[i]->dimensions().size() != 4)
      return invalid(std::string(names[i]) + ": must have 4 dimensions (batch, seqlen, heads, head_dim)");
  const ffi::DataType t = q.element_type();
  if (t != ffi::DataType::F16 && t != ffi::DataType::BF16)
    return invalid("q: dtype must be float16 or bfloat16");
  for (int i = 1; i < 4; ++i)
    if (all[i]->element_type() != t)
      return invalid(std::string(names[i]) + ": dtype must match q's");
  auto dense = [](const ffi::AnyBuffer& b) {
    const auto d = b.dimensions();
    return flashcore::Strides{d[1] * d[2] * d[3], d[2] * d[3], d[3]};
  };
  const auto qd = q.dimensions(), kd = k.dimensions();
  p.dtype = t == ffi::DataType::F16 ? flashcore::DType::kFloat16 : flashcore::DType::kBFloat16;
  p.q = q.untyped_data();
  p.k = k.untyped_data();
  p.v = v.untyped_data();
  p.o = out.untyped_data();
  p.lse = lse.typed_data();
  p.q_strides = dense(q), p.k_strides = dense(k), p.v_strides = dense(v), p.o_strides = dense(out);
  p.batch = qd[0], p.seqlen_q = qd[1], p.num_heads_q = qd[2], p.head_dim = qd[3];
  p.seqlen_k = kd[1], p.num_heads_kv = kd[2];
  // The core sees only pointers and strides: every shape must be the one q and k give it.
  const auto vd = v.dimensions(), od = out.dimensions(), ld = lse.dimensions();
  for (int i = 0; i < 4; ++i) {
    if (vd[i] != kd[i]) return invalid("v: shape must match k's");
    if (od[i] != qd[i]) return invalid("out: shape must match q's");
  }
  if (kd[0] != qd[0]) return invalid("k: batch must match q's");
  if (kd[3] != qd[3]) return invalid("k: head_dim must match q's");
  if (ld.size() != 3 || ld[0] != qd[0] || ld[1] != qd[2] || ld[2] != qd[1])
    return invalid("softmax_lse: shape must be (batch, heads, seqlen_q)");
  p.softmax_scale = scale;
  p.causal = causal;
  p.window_left = wl;
  p.window_right = wr;
  return ffi::Error::Success();
}

// The params of a packed varlen forward: q/out (total_q, Hq, D), k/v (total_k, Hkv, D), int32
// cu_seqlens (B + 1), lse (Hq, total_q).
ffi::Error varlen_params(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                         ffi::Buffer<ffi::S32> cu_q, ffi::Buffer<ffi::S32> cu_k, ffi::AnyBuffer out,
                         ffi::Buffer<ffi::F32> lse, int64_t max_q, int64_t max_k, float scale,
                         bool causal, int64_t wl, int64_t wr, flashcore::AttentionParams& p) {
  const ffi::AnyBuffer* all[] = {&q, &k, &v, &out};
  const char* names[] = {"q", "k", "v", "out"};
  for (int i = 0; i < 4; ++i)
    if (all[i]->dimensions().size() != 3)
      return invalid(std::string(names[i]) + ": must have 3 dimensions (total, heads, head_dim)");
  const ffi::DataType t = q.element_type();
  if (t != ffi::DataType::F16 && t != ffi::DataType::BF16)
    return invalid("q: dtype must be float16 or bfloat16");
  for (int i = 1; i < 4; ++i)
    if (all[i]->element_type() != t)
      return invalid(std::string(names[i]) + ": dtype must match q's");
  const auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions(), od = out.dimensions();
  for (int i = 0; i < 3; ++i) {
    if (vd[i] != kd[i]) return invalid("v: shape must match k's");
    if (od[i] != qd[i]) return invalid("out: shape must match q's");
  }
  if (kd[2] != qd[2]) return invalid("k: head_dim must match q's");
  const auto cq = cu_q.dimensions(), ck = cu_k.dimensions(), ld = lse.dimensions();
  if (cq.size() != 1 || ck.size() != 1 || cq[0] != ck[0] || cq[0] < 1)
    return invalid("cu_seqlens_q/cu_seqlens_k: must be 1-d of the same length (batch + 1)");
  if (ld.size() != 2 || ld[0] != qd[1] || ld[1] != qd[0])
    return invalid("softmax_lse: shape must be (heads, total_q)");
  auto packed = [](const ffi::AnyBuffer& b) {
    const auto d = b.dimensions();
    return flashcore::Strides{0, d[1] * d[2], d[2]};
  };
  p.dtype = t == ffi::DataType::F16 ? flashcore::DType::kFloat16 : flashcore::DType::kBFloat16;
  p.q = q.untyped_data();
  p.k = k.untyped_data();
  p.v = v.untyped_data();
  p.o = out.untyped_data();
  p.lse = lse.typed_data();
  p.q_strides = packed(q), p.k_strides = packed(k), p.v_strides = packed(v), p.o_strides = packed(out);
  p.cu_seqlens_q = cu_q.typed_data();
  p.cu_seqlens_k = cu_k.typed_data();
  p.batch = cq[0] - 1;
  p.seqlen_q = max_q, p.seqlen_k = max_k;
  p.total_q = qd[0], p.total_k = kd[0];
  p.num_heads_q = qd[1], p.num_heads_kv = kd[1], p.head_dim = qd[2];
  p.softmax_scale = scale;
  p.causal = causal;
  p.window_left = wl;
  p.window_right = wr;
  return ffi::Error::Success();
}

// No exception may leave a handler (XLA calls it through C): the reference backend's threads
// or an allocation can throw.
ffi::Error run(flashcore::AttentionParams& p, void* stream) {
  flashcore::Status s;
  try {
    s = flashcore::run(p, nullptr, stream);
  } catch (const std::exception& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("flashcore: ") + e.what());
  } catch (...) {
    return ffi::Error(ffi::ErrorCode::kInternal, "flashcore: unknown exception");
  }
  if (s.ok()) return ffi::Error::Success();
  return ffi::Error(s.code == flashcore::StatusCode::kCudaError ? ffi::ErrorCode::kInternal
                    : s.code == flashcore::StatusCode::kNotSupported
                        ? ffi::ErrorCode::kUnimplemented
                        : ffi::ErrorCode::kInvalidArgument,
                    s.message);
}

ffi::Error fwd_cuda(void* stream, int32_t device, ffi::AnyBuffer q, ffi::AnyBuffer k,
                    ffi::AnyBuffer v, ffi::Result<ffi::AnyBuffer> out,
                    ffi::Result<ffi::Buffer<ffi::F32>> lse, float scale, bool causal, int64_t wl,
                    int64_t wr) {
  flashcore::AttentionParams p;
  if (ffi::Error e = fwd_params(q, k, v, *out, *lse, scale, causal, wl, wr, p); e.failure())
    return e;
  p.backend = flashcore::Backend::kCuda;
  p.device = device;
  return run(p, stream);
}

ffi::Error fwd_cpu(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                   ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::Buffer<ffi::F32>> lse,
                   float scale, bool causal, int64_t wl, int64_t wr) {
  flashcore::AttentionParams p;
  if (ffi::Error e = fwd_params(q, k, v, *out, *lse, scale, causal, wl, wr, p); e.failure())
    return e;
  p.backend = flashcore::Backend::kReference;
  return run(p, nullptr);
}

ffi::Error varlen_cuda(void* stream, int32_t device, ffi::AnyBuffer q, ffi::AnyBuffer k,
                       ffi::AnyBuffer v, ffi::Buffer<ffi::S32> cu_q, ffi::Buffer<ffi::S32> cu_k,
                       ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::Buffer<ffi::F32>> lse,
                       int64_t max_q, int64_t max_k, float scale, bool causal, int64_t wl,
                       int64_t wr) {
  flashcore::AttentionParams p;
  if (ffi::Error e = varlen_params(q, k, v, cu_q, cu_k, *out, *lse, max_q, max_k, scale, causal,
                                   wl, wr, p);
      e.failure())
    return e;
  p.backend = flashcore::Backend::kCuda;
  p.device = device;
  return run(p, stream);
}

ffi::Error varlen_cpu(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                      ffi::Buffer<ffi::S32> cu_q, ffi::Buffer<ffi::S32> cu_k,
                      ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::Buffer<ffi::F32>> lse,
                      int64_t max_q, int64_t max_k, float scale, bool causal, int64_t wl,
                      int64_t wr) {
  flashcore::AttentionParams p;
  if (ffi::Error e = varlen_params(q, k, v, cu_q, cu_k, *out, *lse, max_q, max_k, scale, causal,
                                   wl, wr, p);
      e.failure())
    return e;
  p.backend = flashcore::Backend::kReference;
  return run(p, nullptr);
}

// The varlen handlers' bindings: q, k, v, cu_seqlens_q, cu_seqlens_k -> out, lse.
template <class Binding>
auto varlen_binding(Binding b) {
  return with_attrs(std::move(b)
                        .template Arg<ffi::AnyBuffer>()
                        .template Arg<ffi::AnyBuffer>()
                        .template Arg<ffi::AnyBuffer>()
                        .template Arg<ffi::Buffer<ffi::S32>>()
                        .template Arg<ffi::Buffer<ffi::S32>>()
                        .template Ret<ffi::AnyBuffer>()
                        .template Ret<ffi::Buffer<ffi::F32>>()
                        .template Attr<int64_t>("max_seqlen_q")
                        .template Attr<int64_t>("max_seqlen_k"));
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(flashcore_jax_varlen_cuda, varlen_cuda,
                              varlen_binding(ffi::Ffi::Bind()
                                                 .Ctx<ffi::PlatformStream<void*>>()
                                                 .Ctx<ffi::DeviceOrdinal>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(flashcore_jax_varlen_cpu, varlen_cpu,
                              varlen_binding(ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(flashcore_jax_fwd_cuda, fwd_cuda,
                              with_attrs(ffi::Ffi::Bind()
                                             .Ctx<ffi::PlatformStream<void*>>()
                                             .Ctx<ffi::DeviceOrdinal>()
                                             .Arg<ffi::AnyBuffer>()
                                             .Arg<ffi::AnyBuffer>()
                                             .Arg<ffi::AnyBuffer>()
                                             .Ret<ffi::AnyBuffer>()
                                             .Ret<ffi::Buffer<ffi::F32>>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(flashcore_jax_fwd_cpu, fwd_cpu,
                              with_attrs(ffi::Ffi::Bind()
                                             .Arg<ffi::AnyBuffer>()
                                             .Arg<ffi::AnyBuffer>()
                                             .Arg<ffi::AnyBuffer>()
                                             .Ret<ffi::AnyBuffer>()
                                             .Ret<ffi::Buffer<ffi::F32>>()));

namespace flashcore::python {

// {name: {platform: capsule}} for jax.ffi.register_ffi_target.
void add_jax_ffi(nb::module_& m) {
  m.def("jax_ffi_targets", []() {
    nb::dict fwd;
    fwd["CUDA"] = nb::capsule(reinterpret_cast<void*>(&flashcore_jax_fwd_cuda));
    fwd["cpu"] = nb::capsule(reinterpret_cast<void*>(&flashcore_jax_fwd_cpu));
    nb::dict varlen;
    varlen["CUDA"] = nb::capsule(reinterpret_cast<void*>(&flashcore_jax_varlen_cuda));
    varlen["cpu"] = nb::capsule(reinterpret_cast<void*>(&flashcore_jax_varlen_cpu));
    nb::dict all;
    all["flashcore_fwd"] = fwd;
    all["flashcore_varlen_fwd"] = varlen;
    return all;
  });
}

}  // namespace flashcore::python
