// flashcore-bench --grid decode: the ANCHORS decode rows (one query token, GQA 32/8, D128, bf16,
// contiguous cache) timed as ANCHORS times them: 20 calls captured in a CUDA graph, caches
// rotated over a ring larger than twice the L2 so every call reads from HBM, µs = replay / 20
// (median of 20 replays). TB/s counts the K and V bytes the call must read. The _page rows
// are the same problems on a paged cache (pages of that many rows, a shuffled block table):
// flashcore's paged cost next to its contiguous one (SDPA has no paged cache to compare). The
// _cap rows hold the keys in a longer buffer (a static cache early in a generation): what
// reading only the valid keys costs when the split plan is made for the capacity. The _e4m3
// rows hold the cache as fp8 bytes (kvcache.h, cache_fp8): half the bytes of the same rows;
// _fp16 ones take fp16 q and o (bf16 otherwise), whose widening is one conversion a pair.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench_common.h"
#include "flashcore/kvcache.h"

namespace flashcore::bench {

inline void cuda_check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) + " failed: " + cudaGetErrorString(err));
}
#define DECODE_CUDA(expr) cuda_check((expr), #expr)

// filter: only rows whose name contains it (all when empty).
inline int run_decode_grid(cudaStream_t stream, const cudaDeviceProp& prop,
                           const std::string& filter) {
  struct Row {
    const char* name;
    int64_t b, len, page;  // page 0: contiguous
    int64_t cap = 0;       // the cache's rows; 0: len
    bool fp8 = false;      // e4m3 cache
    bool fp16 = false;     // fp16 q/o (bf16 otherwise)
  };
  const Row rows[] = {{"decode_b1_1k", 1, 1024, 0},
                      {"decode_b1_4k", 1, 4096, 0},
                      {"decode_b1_16k", 1, 16384, 0},
                      {"decode_b1_64k", 1, 65536, 0},
                      {"decode_b16_4k", 16, 4096, 0},
                      {"decode_b1_16k_page16", 1, 16384, 16},
                      {"decode_b1_64k_page256", 1, 65536, 256},
                      {"decode_b16_4k_page64", 16, 4096, 64},
                      {"decode_b1_128_cap4k", 1, 128, 0, 4096},
                      {"decode_b1_1k_cap4k", 1, 1024, 0, 4096},
                      {"decode_b1_1k_e4m3", 1, 1024, 0, 0, true},
                      {"decode_b1_16k_e4m3", 1, 16384, 0, 0, true},
                      {"decode_b1_64k_e4m3", 1, 65536, 0, 0, true},
                      {"decode_b16_4k_e4m3", 16, 4096, 0, 0, true},
                      {"decode_b1_16k_page16_e4m3", 1, 16384, 16, 0, true},
                      {"decode_b1_16k_e4m3_fp16", 1, 16384, 0, 0, true, true},
                      {"decode_b1_64k_e4m3_fp16", 1, 65536, 0, 0, true, true}};
  constexpr int64_t kHq = 32, kHkv = 8, kD = 128, kCalls = 20, kReplays = 20;
  std::printf("%-22s %10s %8s %6s %6s  %s\n", "name", "median us", "TB/s", "sets", "splits",
              "kernel");
  int failed = 0;
  int matched = 0;
  for (const Row& r : rows) {
    if (std::string(r.name).find(filter) == std::string::npos) continue;
    ++matched;
    const int64_t cap = r.cap > 0 ? r.cap : r.len;
    const size_t cache_elems = size_t(r.b) * cap * kHkv * kD, esize = r.fp8 ? 1 : 2;
    const size_t set_bytes = 2 * cache_elems * esize;  // a ring entry's allocation
    const size_t read_bytes = 2 * size_t(r.b) * r.len * kHkv * kD * esize;  // what a call reads
    size_t free_b = 0, total_b = 0;
    DECODE_CUDA(cudaMemGetInfo(&free_b, &total_b));
    // Enough sets that the calls' reads (not the buffers' size) pass twice the L2, but no more
    // than the graph's calls use: call i reads set i % sets. Where the 20 calls are fewer, a
    // set's lines were last read 19 calls earlier (80 MB of reads at 1k, more than the L2).
    const size_t want = std::max<size_t>(2, 2 * size_t(prop.l2CacheSize) / read_bytes + 1);
    const size_t nsets = std::min<size_t>({want, size_t(0.8 * free_b) / set_bytes, size_t(kCalls)});
    std::vector<void*> bufs;
    auto alloc = [&](size_t bytes) {
      void* p = nullptr;
      DECODE_CUDA(cudaMalloc(&p, bytes));
      bufs.push_back(p);
      return p;
    };
    void* q = alloc(r.b * kHq * kD * 2);
    void* o = alloc(r.b * kHq * kD * 2);
    auto* seqlens = static_cast<int32_t*>(alloc(r.b * 4));
    auto* flag = static_cast<int32_t*>(alloc(4));
    DECODE_CUDA(cudaMemset(q, 0x3c, r.b * kHq * kD * 2));  // bf16 0x3c3c ~0.0115, fp16 ~1.06
    DECODE_CUDA(cudaMemset(flag, 0, 4));
    std::vector<int32_t> lens(r.b, static_cast<int32_t>(r.len));
    DECODE_CUDA(cudaMemcpy(seqlens, lens.data(), r.b * 4, cudaMemcpyHostToDevice));
    auto* scales = static_cast<float*>(alloc(kHkv * 4));  // e4m3 0x3c is 1.5: values 1.5 / 64
    const std::vector<float> scale_h(kHkv, 1.f / 64);
    DECODE_CUDA(cudaMemcpy(scales, scale_h.data(), kHkv * 4, cudaMemcpyHostToDevice));
    const int64_t pages_per_seq = r.page > 0 ? r.len / r.page : 0;
    int32_t* table = nullptr;
    if (r.page > 0) {  // one shuffled table for every set: the pages of all entries, permuted
      std::vector<int32_t> t(r.b * pages_per_seq);
      std::iota(t.begin(), t.end(), 0);
      std::shuffle(t.begin(), t.end(), std::mt19937(1));
      table = static_cast<int32_t*>(alloc(t.size() * 4));
      DECODE_CUDA(cudaMemcpy(table, t.data(), t.size() * 4, cudaMemcpyHostToDevice));
    }
    std::vector<KvCacheParams> ps;
    for (size_t s = 0; s < nsets; ++s) {
      KvCacheParams p;
      p.q = q;
      p.o = o;
      p.q_strides = p.o_strides = {kHq * kD, kHq * kD, kD};
      p.k_cache = alloc(cache_elems * esize);
      p.v_cache = alloc(cache_elems * esize);
      DECODE_CUDA(cudaMemset(p.k_cache, 0x3c, cache_elems * esize));
      DECODE_CUDA(cudaMemset(p.v_cache, 0x3c, cache_elems * esize));
      if (r.fp8) p.cache_fp8 = true, p.k_scale = p.v_scale = scales;
      if (r.page > 0) {
        p.k_cache_strides = p.v_cache_strides = {r.page * kHkv * kD, kHkv * kD, kD};
        p.block_table = table;
        p.block_table_stride = p.max_pages_per_seq = pages_per_seq;
        p.num_pages = r.b * pages_per_seq;
        p.page_size = r.page;
      } else {
        p.k_cache_strides = p.v_cache_strides = {cap * kHkv * kD, kHkv * kD, kD};
        p.cache_capacity = cap;
      }
      p.cache_seqlens = seqlens;
      p.error_flag = flag;
      p.dtype = r.fp16 ? DType::kFloat16 : DType::kBFloat16;
      p.batch = r.b;
      p.seqlen_q = 1;
      p.num_heads_q = kHq;
      p.num_heads_kv = kHkv;
      p.head_dim = kD;
      p.backend = Backend::kCuda;
      ps.push_back(p);
    }
    const Plan plan = query(ps[0]);
    if (!plan.status.ok()) {
      std::printf("%-22s %s\n", r.name, plan.status.message.c_str());
      ++failed;
      for (void* p : bufs) cudaFree(p);
      continue;
    }
    void* ws = plan.workspace_bytes > 0 ? alloc(plan.workspace_bytes) : nullptr;
    if (ws) DECODE_CUDA(cudaMemset(ws, 0, plan.workspace_bytes));
    for (int i = 0; i < 3; ++i) run(ps[i % nsets], ws, stream);
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    DECODE_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    Status st;
    for (int64_t i = 0; i < kCalls && st.ok(); ++i) st = run(ps[i % nsets], ws, stream);
    DECODE_CUDA(cudaStreamEndCapture(stream, &graph));
    DECODE_CUDA(cudaGraphInstantiate(&exec, graph, 0));
    cudaEvent_t e0, e1;
    DECODE_CUDA(cudaEventCreate(&e0));
    DECODE_CUDA(cudaEventCreate(&e1));
    std::vector<double> us;
    for (int64_t rep = 0; rep < kReplays + 3; ++rep) {
      DECODE_CUDA(cudaEventRecord(e0, stream));
      DECODE_CUDA(cudaGraphLaunch(exec, stream));
      DECODE_CUDA(cudaEventRecord(e1, stream));
      DECODE_CUDA(cudaEventSynchronize(e1));
      float ms = 0;
      DECODE_CUDA(cudaEventElapsedTime(&ms, e0, e1));
      if (rep >= 3) us.push_back(1e3 * ms / kCalls);
    }
    std::sort(us.begin(), us.end());
    const double med = us[us.size() / 2];
    int32_t flag_h = 0;
    DECODE_CUDA(cudaMemcpy(&flag_h, flag, 4, cudaMemcpyDeviceToHost));
    std::printf("%-22s %10.2f %8.2f %6zu %6lld  %s%s%s\n", r.name, med, read_bytes / med / 1e6,
                nsets, static_cast<long long>(plan.kv_splits), plan.kernel.c_str(),
                st.ok() ? "" : "  error: ", st.message.c_str());
    failed += !st.ok() || flag_h != 0;
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    for (void* p : bufs) cudaFree(p);
  }
  if (matched == 0) {
    std::printf("--filter %s: no decode row matches\n", filter.c_str());
    return 1;
  }
  return failed ? 1 : 0;
}

#undef DECODE_CUDA

}  // namespace flashcore::bench
