// Device copies of a KvHost problem for the GPU tests (test_kvcache_gpu.cpp,
// test_kv_pdl_gpu.cu): buffers copied to the device, params pointing at them, a workspace, and
// the rule a GPU output is held to.
#pragma once

#include <cuda_runtime.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "common/workspace.h"
#include "kv_util.h"
#include "test_util.h"

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

inline bool gpu_present() { return cuda_device_count() > 0; }
#define SKIP_WITHOUT_GPU() \
  if (!gpu_present()) GTEST_SKIP() << "no CUDA device (driver or GPU missing)"

// A test name for a spec: every axis the KV grids vary.
inline std::string spec_name(const KvSpec& s) {
  std::ostringstream os;
  os << (s.dtype == DType::kBFloat16 ? "bf16" : "fp16") << "_b" << s.batch << "_h" << s.hq << "x"
     << s.hkv << "_d" << s.d << "_sq" << s.seqlen_q << "_len" << s.lens[0] << "_page"
     << s.page_size << (s.causal ? "_causal" : "") << (s.wl >= 0 ? "_window" : "")
     << (s.rotary_dim ? "_rope" : "") << (s.interleaved ? "i" : "")
     << (s.append ? "" : "_noappend") << (s.leftpad.empty() ? "" : "_leftpad");
  return os.str();
}

// The grids' lengths: entry 0 holds len keys, the others spread below it; the capacity leaves
// room for the new rows, and `slack` rows more.
inline void set_lengths(KvSpec& s, int len, int64_t slack) {
  s.lens.assign(s.batch, 0);
  for (int64_t b = 0; b < s.batch; ++b) s.lens[b] = b == 0 ? len : (len * (b + 1)) % (len + 1);
  s.capacity = len + s.seqlen_q + slack;
}

// LSE values outside 1e-3 of the reference's, NaN and infinities matched exactly; *worst: the
// largest finite difference.
inline int64_t lse_mismatches(const std::vector<float>& ref, const std::vector<float>& got,
                              double* worst) {
  int64_t bad = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double a = got[i], b = ref[i];
    if (std::isnan(b) || std::isinf(b)) {
      bad += !(std::isnan(b) ? std::isnan(a) : a == b);
      continue;
    }
    *worst = std::max(*worst, std::fabs(a - b));
    bad += !(std::fabs(a - b) <= 1e-3);
  }
  return bad;
}

// A compute capability 9.x GPU is present (sm_90a code runs).
inline bool have_sm90() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) return false;
  int major = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0);
  return major == 9;
}

// Outputs (rows of d values) outside the forward's rule: the kernels round P to the dtype
// relative to their own running maxima, not the row's final one as the reference with rounded
// P (`low`) does, so the same noise with other draws; the tolerance is twice the largest gap
// over the row between the exact reference and `low`, plus 2 ulp and a floor. Where the
// reference is NaN the output must be NaN. *worst: the largest error seen.
inline int64_t outside_row_rule(DType t, int64_t d, const std::vector<uint16_t>& ref,
                                const std::vector<uint16_t>& low,
                                const std::vector<uint16_t>& got, double* worst = nullptr) {
  int64_t bad = 0;
  for (size_t r0 = 0; r0 < ref.size(); r0 += size_t(d)) {
    double gap = 0;
    for (size_t i = r0; i < r0 + size_t(d); ++i)
      gap = std::max(gap, std::fabs(double(fd::to_float(t, low[i])) - fd::to_float(t, ref[i])));
    for (size_t i = r0; i < r0 + size_t(d); ++i) {
      const double a = fd::to_float(t, got[i]), b = fd::to_float(t, ref[i]);
      if (std::isnan(b)) {
        bad += !std::isnan(a);
        continue;
      }
      const double err = std::fabs(a - b);
      if (worst) *worst = std::max(*worst, err);
      bad += !(err <= 2 * gap + 2 * ulp(t, b) + 5e-4);  // NaN fails
    }
  }
  return bad;
}

}  // namespace flashcore::test
