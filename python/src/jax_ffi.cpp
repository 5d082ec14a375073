// XLA FFI handlers: flash_attn_func and flash_attn_varlen_func on JAX arrays as XLA custom
// calls (jax.ffi.ffi_call), so JAX's own buffers and stream are used, on the GPU and the host,
// eagerly and under jax.jit; the cache read of flash_attn_with_kvcache is in
// jax_ffi_kvcache.cpp. Built only where jaxlib's FFI headers were found at configure time
// (python/CMakeLists.txt); the Python side is flashcore/_jax.py. XLA hands over dense
// row-major buffers and allocates the outputs; nothing here allocates. No workspace: the
// Hopper kernels then run without a split tail (the same result up to rounding).
#include <nanobind/nanobind.h>

#include <cstdint>
#include <string>
#include <utility>

#include "flashcore/flashcore.h"
#include "jax_ffi.h"

namespace nb = nanobind;
namespace ffi = xla::ffi;

namespace {
using flashcore::python::check_four;
using flashcore::python::guarded;
using flashcore::python::invalid;

// The attributes flashcore/_jax.py passes, in one place for both platforms' bindings.
template <class Binding>
auto with_attrs(Binding b) {
  return std::move(b)
      .template Attr<float>("softmax_scale")
      .template Attr<bool>("causal")
      .template Attr<int64_t>("window_left")
      .template Attr<int64_t>("window_right");
}

// What both forwards share: q, k, v and out of `rank` dimensions (`dims` names them; the last
// two are heads and head_dim), one 16-bit float dtype, v shaped as k and out as q, XLA's dense
// row-major strides (rank 3: packed tokens, no batch stride); pointers, scale, masks.
ffi::Error common_params(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v, ffi::AnyBuffer out,
                         ffi::Buffer<ffi::F32> lse, size_t rank, const char* dims, float scale,
                         bool causal, int64_t wl, int64_t wr, flashcore::AttentionParams& p) {
  if (ffi::Error e = check_four({&q, &k, &v, &out}, {"q", "k", "v", "out"}, rank, dims);
      e.failure())
    return e;
  const ffi::DataType t = q.element_type();
  const auto qd = q.dimensions(), kd = k.dimensions();
  if (kd[rank - 1] != qd[rank - 1]) return invalid("k: head_dim must match q's");
  auto strides = [rank](const ffi::AnyBuffer& b) {
    const auto d = b.dimensions();
    const int64_t h = d[rank - 2], hd = d[rank - 1];
    return flashcore::Strides{rank == 4 ? d[1] * h * hd : 0, h * hd, hd};
  };
  p.dtype = t == ffi::DataType::F16 ? flashcore::DType::kFloat16 : flashcore::DType::kBFloat16;
  p.q = q.untyped_data();
  p.k = k.untyped_data();
  p.v = v.untyped_data();
  p.o = out.untyped_data();
  p.lse = lse.typed_data();
  p.q_strides = strides(q), p.k_strides = strides(k), p.v_strides = strides(v);
  p.o_strides = strides(out);
  p.num_heads_q = qd[rank - 2], p.num_heads_kv = kd[rank - 2], p.head_dim = qd[rank - 1];
  p.softmax_scale = scale;
  p.causal = causal;
  p.window_left = wl;
  p.window_right = wr;
  return ffi::Error::Success();
}

// A (B, S, H, D) forward; softmax_scale 0 means 1/sqrt(head_dim), as in the core.
ffi::Error fwd_params(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v, ffi::AnyBuffer out,
                      ffi::Buffer<ffi::F32> lse, float scale, bool causal, int64_t wl,
                      int64_t wr, flashcore::AttentionParams& p) {
  if (ffi::Error e = common_params(q, k, v, out, lse, 4, " (batch, seqlen, heads, head_dim)",
                                   scale, causal, wl, wr, p);
      e.failure())
    return e;
  const auto qd = q.dimensions(), kd = k.dimensions(), ld = lse.dimensions();
  if (kd[0] != qd[0]) return invalid("k: batch must match q's");
  if (ld.size() != 3 || ld[0] != qd[0] || ld[1] != qd[2] || ld[2] != qd[1])
    return invalid("softmax_lse: shape must be (batch, heads, seqlen_q)");
  p.batch = qd[0], p.seqlen_q = qd[1], p.seqlen_k = kd[1];
  return ffi::Error::Success();
}

// A packed varlen forward: q/out (total_q, Hq, D), k/v (total_k, Hkv, D), int32 cu_seqlens
// (B + 1), lse (Hq, total_q).
ffi::Error varlen_params(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                         ffi::Buffer<ffi::S32> cu_q, ffi::Buffer<ffi::S32> cu_k, ffi::AnyBuffer out,
                         ffi::Buffer<ffi::F32> lse, int64_t max_q, int64_t max_k, float scale,
                         bool causal, int64_t wl, int64_t wr, flashcore::AttentionParams& p) {
  if (ffi::Error e = common_params(q, k, v, out, lse, 3, " (total, heads, head_dim)", scale,
                                   causal, wl, wr, p);
      e.failure())
    return e;
  const auto cq = cu_q.dimensions(), ck = cu_k.dimensions(), ld = lse.dimensions();
  if (cq.size() != 1 || ck.size() != 1 || cq[0] != ck[0] || cq[0] < 1)
    return invalid("cu_seqlens_q/cu_seqlens_k: must be 1-d of the same length (batch + 1)");
  if (ld.size() != 2 || ld[0] != q.dimensions()[1] || ld[1] != q.dimensions()[0])
    return invalid("softmax_lse: shape must be (heads, total_q)");
  p.cu_seqlens_q = cu_q.typed_data();
  p.cu_seqlens_k = cu_k.typed_data();
  p.batch = cq[0] - 1;
  p.seqlen_q = max_q, p.seqlen_k = max_k;
  p.total_q = q.dimensions()[0], p.total_k = k.dimensions()[0];
  return ffi::Error::Success();
}

ffi::Error run(flashcore::AttentionParams& p, void* stream) {
  return guarded([&] { return flashcore::run(p, nullptr, stream); });
}

// A handler's params, once built, run on its platform: the CUDA backend on XLA's stream and
// device ordinal, or, for the cpu handlers (which pass -1), the reference backend.
ffi::Error launch(ffi::Error built, flashcore::AttentionParams& p, void* stream, int32_t device) {
  if (built.failure()) return built;
  p.backend = device >= 0 ? flashcore::Backend::kCuda : flashcore::Backend::kReference;
  p.device = device;
  return run(p, stream);
}

ffi::Error fwd_cuda(void* stream, int32_t device, ffi::AnyBuffer q, ffi::AnyBuffer k,
                    ffi::AnyBuffer v, ffi::Result<ffi::AnyBuffer> out,
                    ffi::Result<ffi::Buffer<ffi::F32>> lse, float scale, bool causal, int64_t wl,
                    int64_t wr) {
  flashcore::AttentionParams p;
  return launch(fwd_params(q, k, v, *out, *lse, scale, causal, wl, wr, p), p, stream, device);
}

ffi::Error fwd_cpu(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                   ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::Buffer<ffi::F32>> lse,
                   float scale, bool causal, int64_t wl, int64_t wr) {
  return fwd_cuda(nullptr, -1, q, k, v, out, lse, scale, causal, wl, wr);
}

ffi::Error varlen_cuda(void* stream, int32_t device, ffi::AnyBuffer q, ffi::AnyBuffer k,
                       ffi::AnyBuffer v, ffi::Buffer<ffi::S32> cu_q, ffi::Buffer<ffi::S32> cu_k,
                       ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::Buffer<ffi::F32>> lse,
                       int64_t max_q, int64_t max_k, float scale, bool causal, int64_t wl,
                       int64_t wr) {
  flashcore::AttentionParams p;
  return launch(varlen_params(q, k, v, cu_q, cu_k, *out, *lse, max_q, max_k, scale, causal, wl,
                              wr, p),
                p, stream, device);
}

ffi::Error varlen_cpu(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                      ffi::Buffer<ffi::S32> cu_q, ffi::Buffer<ffi::S32> cu_k,
                      ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::Buffer<ffi::F32>> lse,
                      int64_t max_q, int64_t max_k, float scale, bool causal, int64_t wl,
                      int64_t wr) {
  return varlen_cuda(nullptr, -1, q, k, v, cu_q, cu_k, out, lse, max_q, max_k, scale, causal, wl,
                     wr);
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
    nb::dict kv;
    kv["CUDA"] = nb::capsule(reinterpret_cast<void*>(&flashcore_jax_kvcache_cuda));
    kv["cpu"] = nb::capsule(reinterpret_cast<void*>(&flashcore_jax_kvcache_cpu));
    nb::dict all;
    all["flashcore_fwd"] = fwd;
    all["flashcore_varlen_fwd"] = varlen;
    all["flashcore_kvcache"] = kv;
    return all;
  });
}

}  // namespace flashcore::python
