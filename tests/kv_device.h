// Device copies of a KvHost problem for the GPU tests (test_kvcache_gpu.cpp,
// test_kv_pdl_gpu.cu): buffers copied to the device, params pointing at them, and a workspace.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/workspace.h"
#include "kv_util.h"

namespace flashcore::test {

template <class T>
struct Dev {
  T* ptr = nullptr;
  size_t n = 0;
  explicit Dev(const std::vector<T>& h) : n(h.size()) {
    if (n == 0) return;
    if (cudaMalloc(&ptr, n * sizeof(T)) != cudaSuccess) ptr = nullptr;
    if (ptr) cudaMemcpy(ptr, h.data(), n * sizeof(T), cudaMemcpyHostToDevice);
  }
  ~Dev() { cudaFree(ptr); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  void to_host(std::vector<T>& h) const {
    if (ptr) cudaMemcpy(h.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost);
  }
};

// The same problem on the device: every buffer copied, params pointing at the copies.
struct KvDevice {
  Dev<uint16_t> q, o, kc, vc, kn, vn, cos, sin;
  Dev<float> lse;
  Dev<int32_t> seqlens, leftpads, table, flag;
  KvCacheParams p;
  explicit KvDevice(const KvHost& h)
      : q(h.q), o(h.o), kc(h.k_cache), vc(h.v_cache), kn(h.k_new), vn(h.v_new), cos(h.cos),
        sin(h.sin), lse(h.lse), seqlens(h.seqlens), leftpads(h.leftpads), table(h.block_table),
        flag(std::vector<int32_t>{0}) {
    p = h.p;
    auto shift = [](auto* dev, const auto* host_ptr, const auto* host_base) {
      return host_ptr == nullptr ? nullptr : dev + (host_ptr - host_base);
    };
    p.q = shift(q.ptr, static_cast<const uint16_t*>(h.p.q), h.q.data());
    p.o = shift(o.ptr, static_cast<const uint16_t*>(h.p.o), h.o.data());
    p.lse = shift(lse.ptr, h.p.lse, h.lse.data());
    p.k_cache = shift(kc.ptr, static_cast<const uint16_t*>(h.p.k_cache), h.k_cache.data());
    p.v_cache = shift(vc.ptr, static_cast<const uint16_t*>(h.p.v_cache), h.v_cache.data());
    p.k_new = shift(kn.ptr, static_cast<const uint16_t*>(h.p.k_new), h.k_new.data());
    p.v_new = shift(vn.ptr, static_cast<const uint16_t*>(h.p.v_new), h.v_new.data());
    p.block_table = shift(table.ptr, h.p.block_table, h.block_table.data());
    p.cache_seqlens = seqlens.ptr;
    p.cache_leftpad = shift(leftpads.ptr, h.p.cache_leftpad, h.leftpads.data());
    p.error_flag = flag.ptr;
    p.rotary.cos = shift(cos.ptr, static_cast<const uint16_t*>(h.p.rotary.cos), h.cos.data());
    p.rotary.sin = shift(sin.ptr, static_cast<const uint16_t*>(h.p.rotary.sin), h.sin.data());
    p.backend = Backend::kCuda;
  }
};

// junk: 0 zero-fills the buffer, as the API asks before its first use; otherwise only the
// counter area is zero and every word after it holds junk, as another call's partials would.
// A failed allocation leaves ptr null (the call would then run unsplit): tests check ok().
struct Workspace {
  void* ptr = nullptr;
  bool failed = false;
  explicit Workspace(int64_t bytes, uint32_t junk = 0) {
    if (bytes <= 0) return;
    failed = cudaMalloc(&ptr, size_t(bytes)) != cudaSuccess ||
             cudaMemset(ptr, 0, size_t(bytes)) != cudaSuccess;
    if (failed || !junk) return;
    int dev = 0, sms = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    const int64_t counters = std::min(bytes, detail::workspace_counter_bytes(sms));
    const std::vector<uint32_t> words(size_t((bytes - counters) / 4), junk);
    failed = cudaMemcpy(static_cast<uint8_t*>(ptr) + counters, words.data(), words.size() * 4,
                        cudaMemcpyHostToDevice) != cudaSuccess;
  }
  bool ok() const { return !failed; }
  ~Workspace() { cudaFree(ptr); }
};

}  // namespace flashcore::test
