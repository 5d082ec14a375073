// The decode kernel launched as a programmatic dependent (sm_90, decode_launch.cuh) must wait
// for the kernel before it: a predecessor that lets its dependents launch at once and writes
// cache_seqlens 200 µs later, then a decode call on the same stream. Had the kernel read the
// length before its griddepcontrol.wait, it would see the old one (100 keys, not 3000) and the
// output would differ from the reference. KvGpu.SecondCallSeesTheFirstCallsAppend cannot tell:
// there the first call writes before it triggers. Compiled for sm_90a only (label gpu); skips
// without a compute capability 9.x GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
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

// Lets the next kernel launch now, then writes *at = value after delay_ns.
__global__ void late_writer(int32_t* at, int32_t value, unsigned long long delay_ns) {
  asm volatile("griddepcontrol.launch_dependents;");
  unsigned long long t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < delay_ns);
  *at = value;
}

TEST(KvPdl, DecodeWaitsForAKernelThatTriggersEarlyAndWritesLate) {
  if (!have_sm90()) GTEST_SKIP() << "needs a compute capability 9.x GPU";
  KvSpec s;
  s.batch = 1, s.hq = 32, s.hkv = 8, s.d = 128, s.lens = {3000}, s.capacity = 4096;
  s.append = false;
  s.nan_past_len = false;  // the old length's keys are finite: only a wrong answer shows
  for (bool in_graph : {false, true}) {
    KvHost ref(s, 60 + in_graph), low(ref), gpu(ref);
    low.rebuild();
    gpu.rebuild();
    ref.p.backend = Backend::kReference;
    ASSERT_TRUE(run(ref.p).ok());
    ASSERT_TRUE(ref::kvcache(fd::resolve(low.p), {/*round_p=*/true, 0}).ok());
    gpu.seqlens[0] = 100;  // on the device until the predecessor writes 3000
    KvDevice dev(gpu);
    const Plan plan = query(dev.p);
    ASSERT_TRUE(plan.status.ok()) << plan.status.message;
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
    late_writer<<<1, 32, 0, stream.s>>>(dev.seqlens.ptr, 3000, 200'000);
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
    EXPECT_EQ(bad, 0) << (in_graph ? "in a graph" : "eagerly")
                      << ": the decode call read cache_seqlens before the predecessor wrote it";
  }
}

}  // namespace
}  // namespace flashcore::test
