// KV-cache attention on the GPU (label gpu) against the CPU reference on the same inputs: output
// (poisoned first), LSE, the cache after the append, and the error flag. Cache rows past
// cache_seqlens hold NaN, so a kernel that reads them fails. Skips without a GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "kv_device.h"
#include "kv_util.h"
#include "test_util.h"

namespace flashcore::test {
namespace {

// Runs spec on the GPU and on the reference; compares everything the call writes (outputs by
// outside_row_rule, kv_device.h).
void expect_gpu_matches_reference(const KvSpec& s, uint64_t seed, bool with_workspace = true,
                                  const std::vector<int32_t>& block_table = {}, uint32_t junk = 0) {
  KvHost ref(s, seed);
  if (!block_table.empty()) ref.block_table = block_table;  // entries the call must not read
  ref.rebuild();
  KvHost lowp(ref), gpu(ref);  // one random fill (slow for 64k caches), copied
  lowp.rebuild();
  gpu.rebuild();
  ref.p.backend = Backend::kReference;
  ASSERT_TRUE(run(ref.p).ok());
  ASSERT_TRUE(ref::kvcache(fd::resolve(lowp.p), {/*round_p=*/true, 0}).ok());
  KvDevice dev(gpu);
  const Plan plan = query(dev.p);
  ASSERT_TRUE(plan.status.ok()) << plan.status.message;
  EXPECT_EQ(plan.kernel.rfind("portable.decode.", 0), 0u) << plan.kernel;
  if (junk) EXPECT_GT(plan.kv_splits, 1) << "the junk is in the partials only a split call uses";
  Workspace ws(with_workspace ? plan.workspace_bytes : 0, junk);
  ASSERT_TRUE(ws.ok()) << "workspace of " << plan.workspace_bytes << " bytes";
  const Status st = run(dev.p, ws.ptr, nullptr);
  ASSERT_TRUE(st.ok()) << st.message;
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  dev.o.to_host(gpu.o);
  dev.lse.to_host(gpu.lse);
  dev.kc.to_host(gpu.k_cache);
  dev.vc.to_host(gpu.v_cache);
  std::vector<int32_t> flag(1);
  dev.flag.to_host(flag);
  EXPECT_EQ(flag[0], ref.flag);

  double worst = 0, worst_lse = 0;
  int64_t bad = outside_row_rule(s.dtype, s.d, ref.o, lowp.o, gpu.o, &worst);
  bad += lse_mismatches(ref.lse, gpu.lse, &worst_lse);
  EXPECT_EQ(bad, 0) << "max |O err| " << worst << ", max |LSE err| " << worst_lse;
  EXPECT_EQ(ref.v_cache, gpu.v_cache) << "v cache after the append";
  int64_t k_off = 0;  // rotated keys: fp32 on the GPU, float64 in the reference: 1 ulp apart
  for (size_t i = 0; i < ref.k_cache.size(); ++i) {
    if (ref.k_cache[i] == gpu.k_cache[i]) continue;
    const double a = fd::to_float(s.dtype, gpu.k_cache[i]), b = fd::to_float(s.dtype, ref.k_cache[i]);
    k_off += !(s.rotary_dim > 0 && std::fabs(a - b) <= ulp(s.dtype, b));
  }
  EXPECT_EQ(k_off, 0) << "k cache after the append";
}

// Issue 4's grid, sampled: every value of every axis appears, cycling the others.
std::vector<KvSpec> grid() {
  std::vector<KvSpec> out;
  const int64_t batches[] = {1, 3, 64};
  const int64_t heads[][2] = {{32, 8}, {32, 32}, {64, 8}, {8, 1}};
  const int lens[] = {1, 7, 1000, 4096, 65536};
  const int64_t pages[] = {0, 16, 64, 256};
  const int64_t sqs[] = {1, 4, 17};
  int n = 0;
  for (int len : lens)
    for (int64_t sq : sqs)
      for (bool causal : {true, false}) {
        KvSpec s;
        s.batch = len >= 4096 ? 1 : batches[n % 3];
        s.hq = heads[n % 4][0];
        s.hkv = heads[n % 4][1];
        if (len == 65536) s.hq = 32, s.hkv = 8;
        s.d = n % 5 == 4 ? 64 : n % 5 == 2 ? 256 : 128;
        // 64 entries x 32 kv heads at D256 is a 2 GB cache on the host and ~40 s of a GPU
        // run (reference and fill); D256 is covered at batch 1 and 3.
        if (s.batch == 64 && s.hkv == 32) s.d = std::min<int64_t>(s.d, 128);
        s.dtype = (n / 2) % 2 ? DType::kFloat16 : DType::kBFloat16;  // not in step with causal
        s.seqlen_q = sq;
        s.causal = causal;
        s.append = n % 7 != 6;
        s.page_size = pages[(n / 3) % 4];
        s.rotary_dim = n % 3 == 1 ? s.d : n % 3 == 2 ? s.d / 2 : 0;
        s.interleaved = (n / 4) % 2 == 0;
        if (n % 5 == 3) s.wl = 300, s.wr = causal ? -1 : 2;  // sliding windows
        s.max_position = len + sq + 8;
        set_lengths(s, len, n % 2 ? 0 : 19);
        out.push_back(s);
        ++n;
      }
  return out;
}

class KvGrid : public ::testing::TestWithParam<KvSpec> {};
TEST_P(KvGrid, MatchesReference) {
  SKIP_WITHOUT_GPU();
  expect_gpu_matches_reference(GetParam(), 17);
}
INSTANTIATE_TEST_SUITE_P(Kv, KvGrid, ::testing::ValuesIn(grid()),
                         [](const auto& info) { return spec_name(info.param); });

// query reports the split plan: a B = 1 cache is split across many CTAs, a batch that fills
// the GPU is not, and the workspace follows the split.
TEST(KvGpu, PlanReportsSplits) {
  SKIP_WITHOUT_GPU();
  auto plan_for = [](int64_t batch, int64_t capacity) {
    const int64_t hq = 32, hkv = 8, d = 128;
    void *q = nullptr, *o = nullptr, *kc = nullptr, *vc = nullptr, *lens = nullptr, *flag = nullptr;
    const size_t cache = size_t(batch * capacity * hkv * d * 2);
    if (cudaMalloc(&q, batch * hq * d * 2) || cudaMalloc(&o, batch * hq * d * 2) ||
        cudaMalloc(&kc, cache) || cudaMalloc(&vc, cache) || cudaMalloc(&lens, batch * 4) ||
        cudaMalloc(&flag, 4))
      ADD_FAILURE() << "cudaMalloc";
    KvCacheParams p;
    p.q = q, p.o = o, p.k_cache = kc, p.v_cache = vc;
    p.q_strides = p.o_strides = {hq * d, hq * d, d};
    p.k_cache_strides = p.v_cache_strides = {capacity * hkv * d, hkv * d, d};
    p.cache_capacity = capacity;
    p.cache_seqlens = static_cast<const int32_t*>(lens);
    p.error_flag = static_cast<int32_t*>(flag);
    p.batch = batch, p.seqlen_q = 1, p.num_heads_q = hq, p.num_heads_kv = hkv, p.head_dim = d;
    p.backend = Backend::kCuda;
    const Plan plan = query(p);
    for (void* ptr : {q, o, kc, vc, lens, flag}) cudaFree(ptr);
    return plan;
  };
  const Plan one = plan_for(1, 16384), many = plan_for(64, 1024);
  ASSERT_TRUE(one.status.ok()) << one.status.message;
  ASSERT_TRUE(many.status.ok()) << many.status.message;
  EXPECT_GT(one.kv_splits, 8) << "8 kv heads on a whole GPU";
  EXPECT_GT(one.workspace_bytes, 0);
  EXPECT_EQ(many.kv_splits, 1) << "512 units fill the GPU";
  EXPECT_EQ(many.workspace_bytes, 0);
}

// Page sizes below a loader pass's row step (16 rows at D64, 8 at D128) and not powers of
// two: every row of a block on another page, pages straddling blocks.
TEST(KvGpu, OddPageSizes) {
  SKIP_WITHOUT_GPU();
  for (int64_t page : {1, 3, 17})
    for (int64_t d : {64, 128}) {
      KvSpec s;
      s.batch = 2;
      s.hq = 8, s.hkv = 2, s.d = d;
      s.seqlen_q = 4;
      s.lens = {1000, 333};
      s.capacity = 1100;
      s.page_size = page;
      SCOPED_TRACE("page " + std::to_string(page) + ", d " + std::to_string(d));
      expect_gpu_matches_reference(s, 9);
    }
}

// cache_leftpad: keys from the pad on (rows before it hold NaN, and block-table entries of
// pages wholly below it are -1: neither may be read), contiguous and paged, a cache long enough
// to split, pads inside a block, on a page and a block boundary, 0, and equal to the length;
// append, rotary, windows.
TEST(KvGpu, LeftPadMatchesTheReference) {
  SKIP_WITHOUT_GPU();
  for (int64_t page : {0, 16, 64})
    for (int64_t wl : {-1, 100}) {
      KvSpec s;
      s.batch = 6;
      s.hq = 32, s.hkv = 8, s.d = 128;
      s.seqlen_q = 2;
      s.lens = {3000, 700, 50, 3000, 2000, 900};
      s.leftpad = {1234, 700, 3, 1216, 1232, 0};
      s.capacity = 3072;
      s.page_size = page;
      s.wl = wl;
      s.rotary_dim = 128;
      s.max_position = 3100;
      SCOPED_TRACE("page " + std::to_string(page) + ", window " + std::to_string(wl));
      KvHost host(s, 31);
      if (page > 0)
        for (int64_t b = 0; b < s.batch; ++b)
          for (int64_t pg = 0; (pg + 1) * page <= s.leftpad[b]; ++pg)
            host.block_table[b * host.max_pages + pg] = -1;
      expect_gpu_matches_reference(s, 31, true, host.block_table);
    }
}

TEST(KvGpu, WithoutWorkspaceRunsUnsplit) {
  SKIP_WITHOUT_GPU();
  KvSpec s;
  s.batch = 1;
  s.lens = {3000};
  s.capacity = 4096;
  expect_gpu_matches_reference(s, 3, /*with_workspace=*/false);
}

// A split call reads only the partials its own splits wrote in this call: the API asks for a
// zero-filled buffer before its first use, but afterwards only the counter area is zero (the
// partials hold whatever the last call, decode or forward, left). Junk past the counters
// (1.0f, a NaN, -0.0f's bits) at one block a split (1k) and at 16k.
TEST(KvGpu, StaleWorkspaceIsNeverRead) {
  SKIP_WITHOUT_GPU();
  for (uint32_t junk : {0x3f800000u, 0x7fc00000u, 0x80000000u})
    for (int len : {1000, 16384}) {
      KvSpec s;
      s.batch = 1;
      s.hq = 32, s.hkv = 8, s.d = 128;
      s.lens = {len};
      s.capacity = len + 1;
      SCOPED_TRACE("junk " + std::to_string(junk) + ", length " + std::to_string(len));
      expect_gpu_matches_reference(s, 41 + len, true, {}, junk);
    }
}

// A static cache early in a generation: few keys in a long buffer, so most of the 16 splits
// have no block (their speculative first block is read in vain, perf-notes K21) and the last
// arriver may be one of them. Decode and append, a window, junk in the workspace.
TEST(KvGpu, FewKeysInALongCache) {
  SKIP_WITHOUT_GPU();
  for (int len : {0, 5, 128, 1000})
    for (int64_t sq : {1, 4})
      for (int64_t wl : {-1, 40}) {
        KvSpec s;
        s.batch = 1;
        s.hq = 32, s.hkv = 8, s.d = 128;
        s.seqlen_q = sq;
        s.lens = {len};
        s.capacity = 4096;
        s.wl = wl;
        SCOPED_TRACE("length " + std::to_string(len) + ", sq " + std::to_string(sq) +
                     ", window " + std::to_string(wl));
        expect_gpu_matches_reference(s, 50 + len + sq, true, {}, 0x3f800000u);
      }
}

TEST(KvGpu, BadEntriesAreFlaggedLikeTheReference) {
  SKIP_WITHOUT_GPU();
  KvSpec s;
  s.seqlen_q = 4;
  s.lens = {5, 29, 17};  // entry 1: 29 + 4 > 32
  s.capacity = 32;
  expect_gpu_matches_reference(s, 4);
  s.lens = {5, -3, 17};
  expect_gpu_matches_reference(s, 4);
  s.lens = {5, 11, 5};
  s.rotary_dim = 64;
  s.max_position = 14;
  expect_gpu_matches_reference(s, 4);
}

// A bad block-table entry in a cache long enough to split: the bad entry's splits must all stop
// before the merge counter, the good ones merge.
TEST(KvGpu, BadBlockTableEntryWithSplits) {
  SKIP_WITHOUT_GPU();
  KvSpec s;
  s.batch = 2;
  s.lens = {3000, 2000};
  s.capacity = 4096;
  s.page_size = 64;
  KvHost ref(s, 6), gpu(s, 6);
  ref.block_table[1 * ref.max_pages + 20] = -1;  // entry 1 needs pages 0..31
  gpu.block_table = ref.block_table;
  ref.rebuild();
  gpu.rebuild();
  ref.p.backend = Backend::kReference;
  ASSERT_TRUE(run(ref.p).ok());
  EXPECT_EQ(ref.flag, kKvBlockTableOutOfRange);
  KvDevice dev(gpu);
  const Plan plan = query(dev.p);
  ASSERT_TRUE(plan.status.ok()) << plan.status.message;
  ASSERT_GT(plan.workspace_bytes, 0) << "the cache should split";
  ASSERT_GT(plan.kv_splits, 1);
  Workspace ws(plan.workspace_bytes);
  ASSERT_TRUE(ws.ok() && ws.ptr);
  for (int call = 0; call < 2; ++call) {  // the second call finds the counters at zero again
    ASSERT_TRUE(run(dev.p, ws.ptr, nullptr).ok());
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  }
  dev.o.to_host(gpu.o);
  dev.lse.to_host(gpu.lse);
  std::vector<int32_t> flag(1);
  dev.flag.to_host(flag);
  EXPECT_EQ(flag[0], kKvBlockTableOutOfRange);
  EXPECT_TRUE(is_nan_row(gpu, 1));
  int64_t bad = 0;
  const int64_t per_entry = s.seqlen_q * s.hq * s.d;
  for (int64_t i = 0; i < per_entry; ++i) {
    const double a = fd::to_float(s.dtype, gpu.o[i]), b = fd::to_float(s.dtype, ref.o[i]);
    bad += !(std::fabs(a - b) <= 2 * ulp(s.dtype, b) + 5e-4);
  }
  EXPECT_EQ(bad, 0) << "entry 0";
}

// Two calls back to back on one stream, the second reading the row the first appends: launched
// as a programmatic dependent (sm_90+), the second may start before the first ends and must
// still see its writes (and the shared workspace's counters left at zero). Eagerly and in one
// captured graph. The row holds NaN before the append, so reading it early fails loudly.
TEST(KvGpu, SecondCallSeesTheFirstCallsAppend) {
  SKIP_WITHOUT_GPU();
  KvSpec s;
  s.batch = 1, s.hq = 32, s.hkv = 8, s.d = 128, s.lens = {4000}, s.capacity = 4096;
  for (bool in_graph : {false, true}) {
    KvHost a(s, 40 + in_graph), a_gpu(a);
    a_gpu.rebuild();
    a.p.backend = Backend::kReference;
    ASSERT_TRUE(run(a.p).ok());
    KvHost b(a);  // the cache after the append, one row longer, no new rows
    b.spec.append = false;
    b.seqlens[0] += 1;
    b.rebuild();
    KvHost b_low(b);
    b_low.rebuild();
    b.p.backend = Backend::kReference;
    ASSERT_TRUE(run(b.p).ok());
    ASSERT_TRUE(ref::kvcache(fd::resolve(b_low.p), {/*round_p=*/true, 0}).ok());

    KvDevice dev(a_gpu);
    Dev<int32_t> b_seqlens(b.seqlens);
    Dev<uint16_t> b_out(std::vector<uint16_t>(b.o.size(), 0x7fc0));  // NaN until written
    KvCacheParams pb = dev.p;
    pb.k_new = pb.v_new = nullptr;
    pb.cache_seqlens = b_seqlens.ptr;
    pb.o = b_out.ptr;
    pb.lse = nullptr;
    const Plan plan_a = query(dev.p), plan_b = query(pb);
    ASSERT_TRUE(plan_a.status.ok() && plan_b.status.ok());
    ASSERT_GT(plan_b.kv_splits, 1);  // the second call merges through the shared counters
    Workspace ws(std::max(plan_a.workspace_bytes, plan_b.workspace_bytes));
    ASSERT_TRUE(ws.ok() && ws.ptr);
    cudaStream_t stream;
    ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    if (in_graph) ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
    const Status sa = run(dev.p, ws.ptr, stream), sb = run(pb, ws.ptr, stream);
    if (in_graph) {
      ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
      ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
      ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    }
    ASSERT_TRUE(sa.ok() && sb.ok()) << sa.message << sb.message;
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    std::vector<uint16_t> got(b.o.size());
    b_out.to_host(got);
    int64_t bad = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      const double x = fd::to_float(s.dtype, got[i]), want = fd::to_float(s.dtype, b.o[i]);
      const double lp = fd::to_float(s.dtype, b_low.o[i]);
      bad += !(std::fabs(x - want) <= 2 * std::fabs(lp - want) + 2 * ulp(s.dtype, want) + 5e-4);
    }
    EXPECT_EQ(bad, 0) << (in_graph ? "in a graph" : "eagerly");
    std::vector<int32_t> flag(1);
    dev.flag.to_host(flag);
    EXPECT_EQ(flag[0], 0);
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
    cudaStreamDestroy(stream);
  }
}

// Captured once, replayed while cache_seqlens grows by one token per step, as a decode loop
// does; each replay must match the reference run on the same state.
TEST(KvGpu, GraphReplaysWhileCacheSeqlensChange) {
  SKIP_WITHOUT_GPU();
  KvSpec s;
  s.batch = 2;
  s.hq = 32;
  s.hkv = 8;
  s.d = 128;
  s.lens = {1000, 37};
  s.capacity = 1100;
  s.page_size = 16;
  KvHost ref(s, 30), lowp(s, 30), gpu(s, 30);
  KvDevice dev(gpu);
  const Plan plan = query(dev.p);
  ASSERT_TRUE(plan.status.ok()) << plan.status.message;
  Workspace ws(plan.workspace_bytes);
  ASSERT_TRUE(ws.ok());
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  cudaGraph_t graph;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
  const Status st = run(dev.p, ws.ptr, stream);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  ASSERT_TRUE(st.ok()) << st.message;
  cudaGraphExec_t exec;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ref.p.backend = Backend::kReference;
  for (int step = 0; step < 3; ++step) {
    ASSERT_TRUE(run(ref.p).ok());
    ASSERT_TRUE(ref::kvcache(fd::resolve(lowp.p), {/*round_p=*/true, 0}).ok());
    ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    dev.o.to_host(gpu.o);
    int64_t bad = 0;
    for (size_t i = 0; i < ref.o.size(); ++i) {
      const double a = fd::to_float(s.dtype, gpu.o[i]), b = fd::to_float(s.dtype, ref.o[i]);
      const double lp = fd::to_float(s.dtype, lowp.o[i]);
      bad += !(std::fabs(a - b) <= 2 * std::fabs(lp - b) + 2 * ulp(s.dtype, b) + 5e-4);
    }
    EXPECT_EQ(bad, 0) << "step " << step;
    for (auto& n : ref.seqlens) ++n;  // the next token: one longer cache, same graph
    for (auto& n : lowp.seqlens) ++n;
    ASSERT_EQ(cudaMemcpy(dev.seqlens.ptr, ref.seqlens.data(), ref.seqlens.size() * 4,
                         cudaMemcpyHostToDevice),
              cudaSuccess);
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

}  // namespace
}  // namespace flashcore::test
