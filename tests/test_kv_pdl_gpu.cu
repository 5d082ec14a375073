// The decode kernel launched as a programmatic dependent (sm_90, decode_launch.cuh) must wait
// for the kernel before it: a predecessor that lets its dependents launch at once and writes
// cache_seqlens 200 µs later, then a decode call on the same stream. Had the kernel read the
// length before its griddepcontrol.wait, it would see the old one (100 keys, not 3000) and the
// output would differ from the reference. KvGpu.SecondCallSeesTheFirstCallsAppend cannot tell:
// there the first call writes before it triggers. A second test does the same with the cache
// rows themselves. Compiled for sm_90a only (label gpu); skips without a compute capability 9.x
// GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "kv_device.h"
#include "kv_util.h"
#include "test_util.h"

namespace flashcore::test {
namespace {

struct Stream {
  cudaStream_t s = nullptr;
  Stream() { cudaStreamCreate(&s); }
  ~Stream() { cudaStreamDestroy(s); }
  bool ok() const { return s != nullptr; }
};
struct Graph {
  cudaGraph_t g = nullptr;
  cudaGraphExec_t exec = nullptr;
  ~Graph() {
    if (exec) cudaGraphExecDestroy(exec);
    if (g) cudaGraphDestroy(g);
  }
};

// Lets the next kernel launch now, then spins for delay_ns.
__device__ void trigger_then_wait(unsigned long long delay_ns) {
  asm volatile("griddepcontrol.launch_dependents;");
  unsigned long long t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < delay_ns);
}

// Lets the next kernel launch now, then writes *at = value after delay_ns.
__global__ void late_writer(int32_t* at, int32_t value, unsigned long long delay_ns) {
  trigger_then_wait(delay_ns);
  *at = value;
}

// Lets the next kernel launch now, then after delay_ns copies n 16-byte words from each src
// to its dst (one CTA: the copy outlasts the decode call's launch and its prefetches).
__global__ void late_copier(uint4* dst0, const uint4* src0, uint4* dst1, const uint4* src1,
                            size_t n, unsigned long long delay_ns) {
  trigger_then_wait(delay_ns);
  for (size_t i = threadIdx.x; i < n; i += blockDim.x) dst0[i] = src0[i], dst1[i] = src1[i];
}

using Predecessor = std::function<void(KvDevice&, cudaStream_t)>;

// Both tests: B1, GQA 32/8, D128, 3000 keys in a 4096-row cache, no append (a split plan of one
// wave). prepare(gpu) changes what the device holds until the predecessor has written, and
// returns the predecessor's launch (a kernel that lets its dependents launch at once and writes
// 200 µs later); then one decode call on the same stream, eagerly and captured in a graph, must
// answer as the reference does for what the predecessor leaves.
void expect_decode_after(uint64_t seed, const std::function<Predecessor(KvHost&)>& prepare,
                         const char* what) {
  KvSpec s;
  s.batch = 1, s.hq = 32, s.hkv = 8, s.d = 128, s.lens = {3000}, s.capacity = 4096;
  s.append = false;
  s.nan_past_len = false;  // what the device holds before is finite: only a wrong answer shows
  for (bool in_graph : {false, true}) {
    KvHost ref(s, seed + in_graph), low(ref), gpu(ref);
    low.rebuild();
    ref.p.backend = Backend::kReference;
    ASSERT_TRUE(run(ref.p).ok());
    ASSERT_TRUE(ref::kvcache(fd::resolve(low.p), {/*round_p=*/true, 0}).ok());
    const Predecessor predecessor = prepare(gpu);
    gpu.rebuild();
    KvDevice dev(gpu);
    const Plan plan = query(dev.p);
    ASSERT_TRUE(plan.status.ok()) << plan.status.message;
    EXPECT_GT(plan.kv_splits, 1);
    Workspace ws(plan.workspace_bytes);
    ASSERT_TRUE(ws.ok());
    Stream stream;
    ASSERT_TRUE(stream.ok());
    // A first call sets the launch up (once a process), so that below the decode launch comes
    // well within the predecessor's delay.
    ASSERT_TRUE(run(dev.p, ws.ptr, stream.s).ok());
    ASSERT_EQ(cudaStreamSynchronize(stream.s), cudaSuccess);
    Graph graph;
    if (in_graph)
      ASSERT_EQ(cudaStreamBeginCapture(stream.s, cudaStreamCaptureModeGlobal), cudaSuccess);
    predecessor(dev, stream.s);
    const Status st = run(dev.p, ws.ptr, stream.s);
    if (in_graph) {
      ASSERT_EQ(cudaStreamEndCapture(stream.s, &graph.g), cudaSuccess);
      ASSERT_EQ(cudaGraphInstantiate(&graph.exec, graph.g, 0), cudaSuccess);
      ASSERT_EQ(cudaGraphLaunch(graph.exec, stream.s), cudaSuccess);
    }
    ASSERT_TRUE(st.ok()) << st.message;
    ASSERT_EQ(cudaStreamSynchronize(stream.s), cudaSuccess);
    dev.o.to_host(gpu.o);
    const int64_t bad = outside_row_rule(s.dtype, s.d, ref.o, low.o, gpu.o);
    EXPECT_EQ(bad, 0) << (in_graph ? "in a graph: " : "eagerly: ") << what;
  }
}

TEST(KvPdl, DecodeWaitsForAKernelThatTriggersEarlyAndWritesLate) {
  if (!have_sm90()) GTEST_SKIP() << "needs a compute capability 9.x GPU";
  expect_decode_after(60, [](KvHost& gpu) -> Predecessor {
    gpu.seqlens[0] = 100;  // on the device until the predecessor writes 3000
    return [](KvDevice& dev, cudaStream_t st) {
      late_writer<<<1, 32, 0, st>>>(dev.seqlens.ptr, 3000, 200'000);
    };
  }, "the decode call read cache_seqlens before the predecessor wrote it");
}

// The same with the cache itself: the device starts with another problem's K and V (finite,
// different), and the predecessor writes this problem's after it has let the decode call
// launch. Copying cache rows before the wait (the XQA overlap) fails this; prefetching them
// into L2 there does not (perf-notes K26).
TEST(KvPdl, DecodeSeesCacheRowsAKernelWritesLate) {
  if (!have_sm90()) GTEST_SKIP() << "needs a compute capability 9.x GPU";
  expect_decode_after(70, [](KvHost& gpu) -> Predecessor {
    const KvHost stale(gpu.spec, 80);
    EXPECT_NE(stale.k_cache, gpu.k_cache);
    auto good_k = std::make_shared<Dev<uint16_t>>(gpu.k_cache);
    auto good_v = std::make_shared<Dev<uint16_t>>(gpu.v_cache);
    EXPECT_TRUE(good_k->ptr && good_v->ptr) << "device allocation failed";
    gpu.k_cache = stale.k_cache, gpu.v_cache = stale.v_cache;
    return [good_k, good_v](KvDevice& dev, cudaStream_t st) {
      if (!good_k->ptr || !good_v->ptr) return;  // failed above; the decode then fails too
      late_copier<<<1, 1024, 0, st>>>(reinterpret_cast<uint4*>(dev.kc.ptr),
                                      reinterpret_cast<const uint4*>(good_k->ptr),
                                      reinterpret_cast<uint4*>(dev.vc.ptr),
                                      reinterpret_cast<const uint4*>(good_v->ptr),
                                      good_k->n * 2 / 16, 200'000);
    };
  }, "the decode call attended cache rows written before the predecessor's");
}

}  // namespace
}  // namespace flashcore::test
