// flash_attn_with_kvcache's cache read (no k/v to append: JAX arrays are immutable) on JAX
// arrays as an XLA custom call, on the GPU and the host, eagerly and under jax.jit; the Python
// side is flashcore/_jax.py. q/out (B, Sq, Hq, D); caches (B, capacity, Hkv, D), or pages
// (num_pages, page_size, Hkv, D) with block_table (B, max_pages); cache_seqlens and the
// optional cache_leftpad int32 (B); lse (B, Hq, Sq). An absent cache_leftpad or block_table
// comes as an empty array with its attribute false. With `fp8` the caches are float8_e4m3fn
// and k_scale/v_scale float32 (Hkv) (kvcache.h cache_fp8); otherwise the scales are empty.
//
// On the GPU the split workspace and the error flag live in one block of device memory per
// (device, stream) that this file keeps for the process (kvcache.h: one workspace a stream).
// kvcache.h wants the workspace zero-filled before its first use, and every call leaves it so,
// which a buffer fresh from XLA is not (XLA's scratch allocator, the first choice, was refused
// on the H100 with jax 0.11.2). A call that needs more gets a new zeroed block; the old one is
// kept, not freed, since calls queued before may still use it. The flag collects bits nobody
// reads: a JAX array cannot be OR-ed into across calls, so it is not returned, and an entry
// with an error gets NaN output rows anyway.
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "flashcore/kvcache.h"
#include "jax_ffi.h"

namespace ffi = xla::ffi;
using flashcore::python::check_four;
using flashcore::python::guarded;
using flashcore::python::invalid;

namespace {

constexpr size_t kFlagBytes = 256;  // the flag, then the workspace, 256-byte aligned

ffi::Error cuda_failed(cudaError_t e) {
  cudaGetLastError();
  return ffi::Error(ffi::ErrorCode::kInternal, std::string("flashcore: ") + cudaGetErrorString(e));
}

struct Block {
  void* ptr = nullptr;
  size_t bytes = 0;
};

// Makes b at least `bytes`, zero-filled on `stream`; a smaller one it replaces is retired.
ffi::Error grow(Block& b, std::vector<void*>& retired, int32_t device, size_t bytes,
                cudaStream_t stream) {
  if (b.bytes >= bytes) return ffi::Error::Success();
  int current = 0;
  cudaError_t e = cudaGetDevice(&current);
  if (e != cudaSuccess) return cuda_failed(e);
  void* ptr = nullptr;
  e = cudaSetDevice(device);
  if (e == cudaSuccess) e = cudaMalloc(&ptr, bytes);
  if (e == cudaSuccess) e = cudaMemsetAsync(ptr, 0, bytes, stream);
  cudaSetDevice(current);
  if (e != cudaSuccess) {
    if (ptr != nullptr) cudaFree(ptr);
    return cuda_failed(e);
  }
  if (b.ptr != nullptr) retired.push_back(b.ptr);
  b = {ptr, bytes};
  return ffi::Error::Success();
}

// The call's buffers: q's dtype for every one of q, the caches and out (fp8: the caches
// float8_e4m3fn, q and out 16-bit).
struct KvBuffers {
  ffi::AnyBuffer q, kc, vc;
  ffi::Buffer<ffi::S32> seqlens, leftpad, block_table;
  ffi::Buffer<ffi::F32> k_scale, v_scale;
};

ffi::Error check_dtypes(const KvBuffers& in, ffi::AnyBuffer out, bool fp8) {
  if (!fp8)
    return check_four({&in.q, &in.kc, &in.vc, &out}, {"q", "k_cache", "v_cache", "out"}, 4, "");
  // The 16-bit rules on q/out (twice), then the caches' own.
  if (ffi::Error e = check_four({&in.q, &in.q, &in.q, &out}, {"q", "q", "q", "out"}, 4, "");
      e.failure())
    return e;
  for (const ffi::AnyBuffer* c : {&in.kc, &in.vc}) {
    if (c->dimensions().size() != 4) return invalid("k_cache/v_cache: must have 4 dimensions");
    if (c->element_type() != ffi::DataType::F8E4M3FN)
      return invalid("k_cache/v_cache: with k_scale/v_scale the caches must be float8_e4m3fn");
  }
  for (size_t i = 0; i < 4; ++i)
    if (in.vc.dimensions()[i] != in.kc.dimensions()[i])
      return invalid("v_cache: shape must match k_cache's");
  const int64_t hkv = in.kc.dimensions()[2];
  for (const auto* s : {&in.k_scale, &in.v_scale})
    if (s->dimensions().size() != 1 || s->dimensions()[0] != hkv)
      return invalid("k_scale/v_scale: must be float32 (num_heads_kv,)");
  return ffi::Error::Success();
}

ffi::Error kv_params(const KvBuffers& in, ffi::AnyBuffer out, ffi::Buffer<ffi::F32> lse,
                     float scale, bool causal, int64_t wl, int64_t wr, bool has_leftpad,
                     bool paged, bool fp8, flashcore::KvCacheParams& p) {
  if (ffi::Error e = check_dtypes(in, out, fp8); e.failure()) return e;
  const ffi::AnyBuffer &q = in.q, &kc = in.kc, &vc = in.vc;
  const ffi::Buffer<ffi::S32>& seqlens = in.seqlens;
  const ffi::Buffer<ffi::S32>& leftpad = in.leftpad;
  const ffi::Buffer<ffi::S32>& block_table = in.block_table;
  const ffi::DataType t = q.element_type();
  const auto qd = q.dimensions(), kd = kc.dimensions();
  if (kd[3] != qd[3]) return invalid("k_cache: head_dim must match q's");
  const int64_t b = qd[0], sq = qd[1], hq = qd[2], d = qd[3], hkv = kd[2];
  const auto ld = lse.dimensions();
  if (ld.size() != 3 || ld[0] != b || ld[1] != hq || ld[2] != sq)
    return invalid("softmax_lse: shape must be (batch, heads, seqlen_q)");
  if (seqlens.dimensions().size() != 1 || seqlens.dimensions()[0] != b)
    return invalid("cache_seqlens: must be int32 (batch,)");
  auto dense = [](int64_t s, int64_t h, int64_t hd) {
    return flashcore::Strides{s * h * hd, h * hd, hd};
  };
  p.dtype = t == ffi::DataType::F16 ? flashcore::DType::kFloat16 : flashcore::DType::kBFloat16;
  p.q = q.untyped_data();
  p.o = out.untyped_data();
  p.q_strides = p.o_strides = dense(sq, hq, d);
  p.k_cache = kc.untyped_data();
  p.v_cache = vc.untyped_data();
  p.k_cache_strides = p.v_cache_strides = dense(kd[1], hkv, kd[3]);
  if (paged) {
    const auto bt = block_table.dimensions();
    if (bt.size() != 2 || bt[0] != b)
      return invalid("block_table: must be int32 (batch, max_pages)");
    p.block_table = block_table.typed_data();
    p.block_table_stride = p.max_pages_per_seq = bt[1];
    p.num_pages = kd[0];
    p.page_size = kd[1];
  } else {
    if (kd[0] != b) return invalid("k_cache: batch must match q's");
    p.cache_capacity = kd[1];
  }
  p.cache_seqlens = seqlens.typed_data();
  if (has_leftpad) {
    if (leftpad.dimensions().size() != 1 || leftpad.dimensions()[0] != b)
      return invalid("cache_leftpad: must be int32 (batch,)");
    p.cache_leftpad = leftpad.typed_data();
  }
  p.lse = lse.typed_data();
  p.batch = b, p.seqlen_q = sq, p.num_heads_q = hq, p.num_heads_kv = hkv, p.head_dim = d;
  p.softmax_scale = scale;
  p.causal = causal;
  p.window_left = wl;
  p.window_right = wr;
  if (fp8) {
    p.cache_fp8 = true;
    p.k_scale = in.k_scale.typed_data();
    p.v_scale = in.v_scale.typed_data();
  }
  return ffi::Error::Success();
}

ffi::Error kv_cuda(cudaStream_t stream, int32_t device, ffi::AnyBuffer q, ffi::AnyBuffer kc,
                   ffi::AnyBuffer vc, ffi::Buffer<ffi::S32> seqlens, ffi::Buffer<ffi::S32> leftpad,
                   ffi::Buffer<ffi::S32> block_table, ffi::Buffer<ffi::F32> k_scale,
                   ffi::Buffer<ffi::F32> v_scale, ffi::Result<ffi::AnyBuffer> out,
                   ffi::Result<ffi::Buffer<ffi::F32>> lse, float scale, bool causal, int64_t wl,
                   int64_t wr, bool has_leftpad, bool paged, bool split, bool fp8) {
  flashcore::KvCacheParams p;
  if (ffi::Error e = kv_params({q, kc, vc, seqlens, leftpad, block_table, k_scale, v_scale}, *out,
                               *lse, scale, causal, wl, wr, has_leftpad, paged, fp8, p);
      e.failure())
    return e;
  p.backend = flashcore::Backend::kCuda;
  p.device = device;
  static std::mutex mu;
  static std::map<std::pair<int32_t, cudaStream_t>, Block> blocks;
  static std::vector<void*> retired;
  // Held until the call is queued: another thread could otherwise retire the block under it.
  std::lock_guard<std::mutex> lock(mu);
  Block& block = blocks[{device, stream}];
  if (ffi::Error e = grow(block, retired, device, kFlagBytes, stream); e.failure()) return e;
  p.error_flag = static_cast<int32_t*>(block.ptr);  // query wants one; it reads no pointee
  int64_t ws_bytes = 0;
  if (ffi::Error e = guarded([&] {
        const flashcore::Plan plan = flashcore::query(p);
        ws_bytes = split ? plan.workspace_bytes : 0;  // num_splits=1: none, so unsplit
        return plan.status;
      });
      e.failure())
    return e;
  if (ffi::Error e = grow(block, retired, device, kFlagBytes + size_t(ws_bytes), stream);
      e.failure())
    return e;
  p.error_flag = static_cast<int32_t*>(block.ptr);
  void* ws = ws_bytes > 0 ? static_cast<char*>(block.ptr) + kFlagBytes : nullptr;
  return guarded([&] { return flashcore::run(p, ws, stream); });
}

ffi::Error kv_cpu(ffi::AnyBuffer q, ffi::AnyBuffer kc, ffi::AnyBuffer vc,
                  ffi::Buffer<ffi::S32> seqlens, ffi::Buffer<ffi::S32> leftpad,
                  ffi::Buffer<ffi::S32> block_table, ffi::Buffer<ffi::F32> k_scale,
                  ffi::Buffer<ffi::F32> v_scale, ffi::Result<ffi::AnyBuffer> out,
                  ffi::Result<ffi::Buffer<ffi::F32>> lse, float scale, bool causal, int64_t wl,
                  int64_t wr, bool has_leftpad, bool paged, bool /*split*/, bool fp8) {
  flashcore::KvCacheParams p;
  if (ffi::Error e = kv_params({q, kc, vc, seqlens, leftpad, block_table, k_scale, v_scale}, *out,
                               *lse, scale, causal, wl, wr, has_leftpad, paged, fp8, p);
      e.failure())
    return e;
  int32_t flag = 0;
  p.error_flag = &flag;
  p.backend = flashcore::Backend::kReference;
  return guarded([&] { return flashcore::run(p); });
}

// q, k_cache, v_cache, cache_seqlens, cache_leftpad, block_table, k_scale, v_scale -> out,
// lse; attributes.
template <class Binding>
auto kv_binding(Binding b) {
  return std::move(b)
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::Buffer<ffi::S32>>()
      .template Arg<ffi::Buffer<ffi::S32>>()
      .template Arg<ffi::Buffer<ffi::S32>>()
      .template Arg<ffi::Buffer<ffi::F32>>()
      .template Arg<ffi::Buffer<ffi::F32>>()
      .template Ret<ffi::AnyBuffer>()
      .template Ret<ffi::Buffer<ffi::F32>>()
      .template Attr<float>("softmax_scale")
      .template Attr<bool>("causal")
      .template Attr<int64_t>("window_left")
      .template Attr<int64_t>("window_right")
      .template Attr<bool>("has_leftpad")
      .template Attr<bool>("paged")
      .template Attr<bool>("split")
      .template Attr<bool>("fp8");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(flashcore_jax_kvcache_cuda, kv_cuda,
                              kv_binding(ffi::Ffi::Bind()
                                             .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                             .Ctx<ffi::DeviceOrdinal>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(flashcore_jax_kvcache_cpu, kv_cpu, kv_binding(ffi::Ffi::Bind()));
