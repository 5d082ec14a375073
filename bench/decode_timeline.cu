// flashcore-decode-timeline: where the decode kernel's time goes, phase by phase.
//
// The kernel (src/decode) marks six points with FLASHCORE_DECODE_STAMP, which the library's
// instances leave empty; this unit defines it before including the kernel, so its own instance
// records per CTA: clock64 at entry (0), once cache_seqlens has landed (1), once the first K/V
// block has landed (2), after the key loop (3), after the split counter (4) and at the end (5,
// after the last arriver's merge), plus globaltimer at entry and end. Each row is timed under
// graph replay (20 or more launches a graph, a multiple of the cache ring, so each launch finds
// its copy of the cache out of L2; median of 11), then one isolated launch gives the timeline.
// Plans and launches are the library's (decode::plan_for_device, decode::launch_decode_kernel:
// early launch on sm_90+) unless a row names its split count.
//
//   flashcore-decode-timeline [--row B:L:HKV:GROUP[:SPLITS]]...   (default: the ANCHORS rows)
//
// Decode with one query token, bf16, D128, contiguous cache, no mask; needs a GPU.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

// kSlots a CTA: clock64 at stamps 0-5, globaltimer at 0 and 5, a sink for stamp 1's value. In
// the constant bank: a __device__ pointer would be a global load ahead of the first stamp.
constexpr int kSlots = 9;
__constant__ unsigned long long* g_stamps;

__device__ __forceinline__ void decode_stamp(int i, int landed) {
  if (i == 5) __syncthreads();  // the end: every thread's work issued
  if (threadIdx.x != 0) return;
  unsigned long long* row =
      g_stamps + kSlots * (blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z));
  // Storing the awaited value first makes the clock read below issue only once it has landed
  // (a warp issues in order; the store waits on the load's scoreboard).
  if (i == 1) row[8] = static_cast<unsigned long long>(landed);
  unsigned long long c;
  asm volatile("mov.u64 %0, %%clock64;" : "=l"(c)::"memory");
  row[i] = c;
  if (i == 0 || i == 5) {
    unsigned long long g;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(g)::"memory");
    row[i == 0 ? 6 : 7] = g;
  }
}
#define FLASHCORE_DECODE_STAMP(i, landed) decode_stamp(i, static_cast<int>(landed))

#include "common/kv_problem.h"
#include "decode/decode_launch.cuh"

namespace {

using namespace flashcore;
constexpr int kD = 128;

#define CHECK(x)                                                                   \
  do {                                                                             \
    const cudaError_t e_ = (x);                                                    \
    if (e_ != cudaSuccess) {                                                       \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); \
      std::exit(1);                                                                \
    }                                                                              \
  } while (0)

__global__ void fill_random(uint16_t* x, size_t n, uint32_t seed) {  // bf16 in [-1, 1)
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ seed;
    h ^= h >> 15, h *= 2246822519u, h ^= h >> 13;
    x[i] = uint16_t(__float_as_uint((int(h & 0xffff) - 32768) / 32768.f) >> 16);
  }
}

struct Row {
  int batch, len, heads_kv, group, splits;  // splits 0: the library's plan
};

double quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[size_t(q * double(v.size() - 1) + 0.5)];
}

void run_row(const Row& r, int sms, int smem_per_sm) {
  const size_t cache_elems = size_t(r.batch) * r.len * r.heads_kv * kD;
  const size_t q_elems = size_t(r.batch) * r.heads_kv * r.group * kD;
  // Enough cache copies that consecutive launches never find their K/V in L2 (50 MB).
  const int ring = int(std::min<size_t>(16, (128ull << 20) / (4 * cache_elems) + 1));
  std::vector<uint16_t*> kc(ring), vc(ring);
  for (int i = 0; i < ring; ++i) {
    CHECK(cudaMalloc(&kc[i], cache_elems * 2));
    CHECK(cudaMalloc(&vc[i], cache_elems * 2));
    fill_random<<<1024, 256>>>(kc[i], cache_elems, 17 + i);
    fill_random<<<1024, 256>>>(vc[i], cache_elems, 91 + i);
  }
  uint16_t *q, *o;
  int32_t *lens, *flag;
  CHECK(cudaMalloc(&q, q_elems * 2));
  CHECK(cudaMalloc(&o, q_elems * 2));
  fill_random<<<64, 256>>>(q, q_elems, 5);
  CHECK(cudaMalloc(&lens, r.batch * 4));
  CHECK(cudaMalloc(&flag, 4));
  CHECK(cudaMemset(flag, 0, 4));
  const std::vector<int32_t> host_lens(r.batch, r.len);
  CHECK(cudaMemcpy(lens, host_lens.data(), r.batch * 4, cudaMemcpyHostToDevice));

  KvCacheParams p;
  p.q = q, p.o = o, p.k_cache = kc[0], p.v_cache = vc[0];
  p.q_strides = p.o_strides = {int64_t(r.heads_kv) * r.group * kD, int64_t(r.heads_kv) * r.group * kD, kD};
  p.k_cache_strides = p.v_cache_strides = {int64_t(r.len) * r.heads_kv * kD, int64_t(r.heads_kv) * kD, kD};
  p.cache_capacity = r.len, p.cache_seqlens = lens, p.error_flag = flag;
  p.dtype = DType::kBFloat16, p.batch = r.batch, p.seqlen_q = 1;
  p.num_heads_q = int64_t(r.heads_kv) * r.group, p.num_heads_kv = r.heads_kv, p.head_dim = kD;
  const detail::KvProblem f = detail::resolve(p);
  decode::DecodePlan plan = decode::plan_for_device(f, sms, smem_per_sm);
  if (r.splits > 0) {  // the same plan with another split count
    plan.splits = r.splits;
    const int64_t units = int64_t(r.batch) * r.heads_kv * plan.chunks;
    if (r.splits > 1 && units * 4 > detail::workspace_counter_bytes(sms)) {
      std::fprintf(stderr, "--row %d:%d:%d:%d:%d: %lld units split need more counters than the "
                   "counter area holds (%lld); fewer units, or no split\n", r.batch, r.len,
                   r.heads_kv, r.group, r.splits, static_cast<long long>(units),
                   static_cast<long long>(detail::workspace_counter_bytes(sms) / 4));
      std::exit(2);
    }
    plan.counter_bytes = r.splits > 1 ? detail::workspace_counter_bytes(sms) : 0;
    plan.workspace_bytes = r.splits > 1 ? plan.counter_bytes + units * r.splits * decode::kRows *
                                                                   (kD + 2) * int64_t(sizeof(float))
                                        : 0;
  }
  void* ws = nullptr;
  if (plan.workspace_bytes > 0) {
    CHECK(cudaMalloc(&ws, plan.workspace_bytes));
    CHECK(cudaMemset(ws, 0, plan.workspace_bytes));
  }
  decode::DecodeParams d = decode::make_decode_params(f, plan, ws);
  const dim3 grid(d.splits, d.num_heads_kv * d.chunks, d.batch);
  const int ctas = int(grid.x * grid.y * grid.z);
  unsigned long long* stamps;
  CHECK(cudaMalloc(&stamps, size_t(ctas) * kSlots * 8));
  CHECK(cudaMemcpyToSymbol(g_stamps, &stamps, sizeof(stamps)));

  auto kernel = decode::decode_kernel<detail::Bf16, kD, decode::CacheDtype>;
  static decode::LaunchState state(reinterpret_cast<const void*>(kernel));
  cudaStream_t s;
  CHECK(cudaStreamCreate(&s));
  auto launch = [&](int i) {
    d.k_cache = kc[i % ring], d.v_cache = vc[i % ring];
    CHECK((decode::launch_decode_kernel<kD, decode::CacheDtype>(kernel, d, state, s)));  // the library's launch
  };
  // A multiple of the ring: every launch of a replay finds its copy ring launches old.
  const int graph_launches = ring * ((20 + ring - 1) / ring);
  for (int i = 0; i < 30; ++i) launch(i);
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  for (int i = 0; i < graph_launches; ++i) launch(i);
  CHECK(cudaStreamEndCapture(s, &graph));
  CHECK(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t e0, e1;
  CHECK(cudaEventCreate(&e0));
  CHECK(cudaEventCreate(&e1));
  std::vector<double> per_kernel;
  for (int rep = 0; rep < 11; ++rep) {
    CHECK(cudaEventRecord(e0, s));
    CHECK(cudaGraphLaunch(exec, s));
    CHECK(cudaEventRecord(e1, s));
    CHECK(cudaEventSynchronize(e1));
    float ms;
    CHECK(cudaEventElapsedTime(&ms, e0, e1));
    per_kernel.push_back(ms * 1e3 / graph_launches);
  }
  CHECK(cudaMemset(stamps, 0, size_t(ctas) * kSlots * 8));
  launch(graph_launches);  // isolated (the stream idle), on the least recently used copy
  CHECK(cudaStreamSynchronize(s));
  std::vector<unsigned long long> t(size_t(ctas) * kSlots);
  CHECK(cudaMemcpy(t.data(), stamps, t.size() * 8, cudaMemcpyDeviceToHost));
  int err = 0;
  CHECK(cudaMemcpy(&err, flag, 4, cudaMemcpyDeviceToHost));

  // clock64 counts SM cycles; the SM clock is read off the CTAs' own lifetimes.
  std::vector<double> ratio;
  unsigned long long g_first = ~0ull, g_last = 0;
  for (int c = 0; c < ctas; ++c) {
    const unsigned long long* x = &t[size_t(c) * kSlots];
    g_first = std::min(g_first, x[6]), g_last = std::max(g_last, x[7]);
    if (x[7] > x[6] + 1000) ratio.push_back(double(x[5] - x[0]) / double(x[7] - x[6]));
  }
  int khz = 0;
  CHECK(cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, 0));
  const double ghz = ratio.empty() ? khz / 1e6 : quantile(ratio, 0.5);  // else the boost clock
  // Per CTA: the phases' lengths, and each stamp's time since the first CTA started (its own
  // globaltimer start plus its clock64 offset), which tells a late stream from a late epilogue.
  std::vector<double> phase[5], at[5];
  int idle = 0, last = -1;
  auto at_of = [&](const unsigned long long* x, int k) {
    return (x[6] - g_first) / 1e3 + (x[k] - x[0]) / ghz / 1e3;
  };
  for (int c = 0; c < ctas; ++c) {
    const unsigned long long* x = &t[size_t(c) * kSlots];
    if (x[2] == 0) {  // a split with no key block (the lengths leave it none)
      ++idle;
      continue;
    }
    for (int k = 0; k < 5; ++k) {
      phase[k].push_back((x[k + 1] - x[k]) / ghz / 1e3);
      at[k].push_back(at_of(x, k + 1));
    }
    if (last < 0 || x[7] > t[size_t(last) * kSlots + 7]) last = c;
  }
  std::printf("\nB%d L%d Hkv%d group%d: splits %d, %d CTAs (%d without keys), ring %d, error flag %d\n",
              r.batch, r.len, r.heads_kv, r.group, d.splits, ctas, idle, ring, err);
  std::printf("  graph replay          %8.2f us a kernel (median of 11 x %d)\n", quantile(per_kernel, 0.5),
              graph_launches);
  std::printf("  isolated launch       %8.2f us first CTA start to last CTA end; SM clock %.2f GHz\n",
              (g_last - g_first) / 1e3, ghz);
  const char* names[5] = {"entry -> seqlens", "seqlens -> block 1", "key loop", "epilogue+counter",
                          "counter -> end"};
  std::printf("  %-21s %-26s %-26s %s\n", "phase (CTAs with keys)", "length p50 / p90 / max us",
              "ends at p50 / p90 / max us", "the last CTA to end");
  for (int k = 0; k < 5; ++k) {
    const unsigned long long* x = last >= 0 ? &t[size_t(last) * kSlots] : nullptr;
    std::printf("  %-21s %7.2f %7.2f %8.2f   %7.2f %7.2f %8.2f   %7.2f\n", names[k],
                quantile(phase[k], 0.5), quantile(phase[k], 0.9), quantile(phase[k], 1),
                quantile(at[k], 0.5), quantile(at[k], 0.9), quantile(at[k], 1),
                x ? at_of(x, k + 1) : 0.0);
  }
  std::printf("  (counter -> end: the last arriver of a unit merges the splits' partials)\n");

  for (int i = 0; i < ring; ++i) {
    CHECK(cudaFree(kc[i]));
    CHECK(cudaFree(vc[i]));
  }
  for (void* x : {static_cast<void*>(q), static_cast<void*>(o), static_cast<void*>(lens),
                  static_cast<void*>(flag), static_cast<void*>(stamps), ws})
    CHECK(cudaFree(x));
  CHECK(cudaGraphExecDestroy(exec));
  CHECK(cudaGraphDestroy(graph));
  CHECK(cudaStreamDestroy(s));
}

bool parse_row(const std::string& a, Row& r) {
  r.splits = 0;
  const int n = std::sscanf(a.c_str(), "%d:%d:%d:%d:%d", &r.batch, &r.len, &r.heads_kv, &r.group, &r.splits);
  return (n == 4 || n == 5) && r.batch > 0 && r.len > 0 && r.heads_kv > 0 && r.group > 0 &&
         r.splits >= 0 && r.splits <= decode::kMaxSplits;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<Row> rows;
  for (int i = 1; i < argc; ++i) {
    const bool is_row = std::string(argv[i]) == "--row" && i + 1 < argc;
    Row r;
    if (is_row && parse_row(argv[i + 1], r)) {
      rows.push_back(r), ++i;
      continue;
    }
    std::fprintf(stderr,
                 "usage: flashcore-decode-timeline [--row B:L:HKV:GROUP[:SPLITS]]...\n"
                 "  bad argument '%s' (B, L, HKV, GROUP > 0; SPLITS 0 (the plan's) to %d)\n",
                 argv[is_row ? i + 1 : i], decode::kMaxSplits);
    return 2;
  }
  if (rows.empty())  // the ANCHORS decode rows: GQA 32/8
    rows = {{1, 1024, 8, 4, 0}, {1, 4096, 8, 4, 0}, {1, 16384, 8, 4, 0}, {1, 65536, 8, 4, 0},
            {16, 4096, 8, 4, 0}};
  int dev_count = 0;
  if (cudaGetDeviceCount(&dev_count) != cudaSuccess || dev_count == 0) {
    std::printf("flashcore-decode-timeline: no CUDA device; it times the decode kernel on a GPU\n");
    return 0;
  }
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  int smem_per_sm = 0;
  CHECK(cudaDeviceGetAttribute(&smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, 0));
  std::printf("flashcore-decode-timeline on %s (%d SMs): bf16, D128, one query token\n", prop.name,
              prop.multiProcessorCount);
  for (const Row& r : rows) run_row(r, prop.multiProcessorCount, smem_per_sm);
  return 0;
}
