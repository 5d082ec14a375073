// GPU suite (label gpu): the CUDA backend against the CPU reference on fresh random inputs,
// outputs poisoned first, for each kernel family (Hopper on sm_90, portable everywhere).
// Every test skips, with the reason, when no GPU (or no GPU of the family) is present.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "flashcore/flashcore.h"
#include "test_util.h"

namespace flashcore::test {
namespace {

#define SKIP_WITHOUT_GPU() \
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (driver or GPU missing)"

// The Hopper family runs on compute capability 9.x only.
bool family_runs_here(KernelFamily f) {
  if (f != KernelFamily::kHopper) return true;
  int dev = 0, major = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  return major == 9;
}
const char* family_name(KernelFamily f) {
  return f == KernelFamily::kHopper ? "Hopper" : f == KernelFamily::kPortable ? "Portable" : "Auto";
}
const char* family_prefix(KernelFamily f) {
  return f == KernelFamily::kHopper ? "hopper.fwd." : "portable.fwd.";
}

#define SKIP_UNLESS_FAMILY(f) \
  SKIP_WITHOUT_GPU();         \
  if (!family_runs_here(f)) GTEST_SKIP() << family_name(f) << " kernels need another GPU generation"

#define CUDA_OK(expr) ASSERT_EQ((expr), cudaSuccess) << #expr << ": " << cudaGetErrorString(expr)

template <class T>
struct DeviceBuffer {
  T* ptr = nullptr;
  explicit DeviceBuffer(const std::vector<T>& host) {
    if (host.empty()) return;
    if (cudaMalloc(&ptr, host.size() * sizeof(T)) != cudaSuccess) ptr = nullptr;
    if (ptr) cudaMemcpy(ptr, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
  }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void to_host(std::vector<T>& host) const {
    if (ptr) cudaMemcpy(host.data(), ptr, host.size() * sizeof(T), cudaMemcpyDeviceToHost);
  }
};

// A zero-filled device workspace, as run() wants one (flashcore.h).
struct Workspace {
  void* ptr = nullptr;
  explicit Workspace(int64_t bytes) {
    if (bytes > 0 && cudaMalloc(&ptr, size_t(bytes)) == cudaSuccess) cudaMemset(ptr, 0, size_t(bytes));
  }
  ~Workspace() { cudaFree(ptr); }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
};

// Runs case c on the GPU with fresh inputs (seed) and returns the host copy of the result.
// The call gets the workspace query() asks for, unless `shared` names one (or kNoWorkspace).
struct GpuRun {
  Plan plan;
  Status status;
  HostProblem hp;
};
void* const kNoWorkspace = reinterpret_cast<void*>(~uintptr_t{0});
// device_lists: cu_seqlens to put in device memory instead of the case's (same length).
struct Lists {
  std::vector<int32_t> q, k;
};
GpuRun run_on_gpu(const Case& c, uint64_t seed, KernelFamily family = KernelFamily::kAuto,
                  int repeats = 1, void* shared = nullptr, const Lists* device_lists = nullptr) {
  GpuRun r;
  r.hp = make_problem(c, seed);
  DeviceBuffer<uint16_t> q(r.hp.q), k(r.hp.k), v(r.hp.v), o(r.hp.o);
  DeviceBuffer<float> lse(r.hp.lse);
  DeviceBuffer<int32_t> cu_q(device_lists ? device_lists->q : r.hp.cu_q),
      cu_k(device_lists ? device_lists->k : r.hp.cu_k);
  AttentionParams p = r.hp.rebased(q.ptr, k.ptr, v.ptr, o.ptr, lse.ptr, cu_q.ptr, cu_k.ptr);
  p.backend = Backend::kAuto;
  p.family = family;
  r.plan = query(p);
  Workspace own(shared == nullptr ? r.plan.workspace_bytes : 0);
  void* ws = shared == kNoWorkspace ? nullptr : shared != nullptr ? shared : own.ptr;
  cudaStream_t stream = nullptr;
  cudaStreamCreate(&stream);
  for (int i = 0; i < repeats && r.status.ok(); ++i) r.status = run(p, ws, stream);
  const cudaError_t err = cudaStreamSynchronize(stream);
  if (r.status.ok() && err != cudaSuccess)
    r.status = {StatusCode::kCudaError, cudaGetErrorString(err)};
  cudaStreamDestroy(stream);
  o.to_host(r.hp.o);
  lse.to_host(r.hp.lse);
  return r;
}

void expect_matches_reference(const Case& c, uint64_t seed, KernelFamily family,
                              void* shared_workspace = nullptr) {
  GpuRun r = run_on_gpu(c, seed, family, 1, shared_workspace);
  ASSERT_TRUE(r.plan.status.ok()) << r.plan.status.message;
  EXPECT_EQ(r.plan.backend, Backend::kCuda);
  EXPECT_EQ(r.plan.kernel.rfind(family_prefix(family), 0), 0u) << r.plan.kernel;
  ASSERT_TRUE(r.status.ok()) << r.status.message;
  const Check chk = compare_output(c, r.hp, seed);
  EXPECT_TRUE(chk.ok) << chk.msg;
}

// The grid of the foundation issue, sampled so every value of every axis appears with every
// dtype x head dim x mask: lengths {1, 17, 128, 1013, 1024, 4097} with sq != sk, GQA
// {1, 4, 8, 32}, strided views on alternate cases.
std::vector<Case> grid_cases() {
  struct Len {
    int64_t sq, sk;
  };
  const Len lens[] = {{1, 1024},   {17, 1013},   {128, 17},   {1013, 1024},
                      {1024, 128}, {4097, 1013}, {128, 4097}, {1, 1}};
  const int64_t groups[] = {1, 4, 8, 32};
  struct Mask {
    bool causal;
    int64_t wl, wr;
  };
  const Mask masks[] = {{false, -1, -1}, {true, -1, -1}, {false, 100, 7}, {true, 300, -1}};
  std::vector<Case> cases;
  int n = 0;
  for (DType t : {DType::kBFloat16, DType::kFloat16})
    for (int64_t d : {64, 128, 256})
      for (const Mask& m : masks)
        for (const Len& l : lens) {
          const int64_t g = groups[n % 4];
          // Keep the reference's work bounded: long sequences with few heads.
          const int64_t hkv = (l.sq * l.sk > 1'000'000 || g == 32) ? 1 : 2;
          Case c(t, /*b=*/(n % 3 == 0) ? 2 : 1, g * hkv, hkv, l.sq, l.sk, d);
          c.causal = m.causal;
          c.wl = m.wl;
          c.wr = m.wr;
          c.strided = n % 2 == 1;
          c.with_lse = n % 5 != 4;
          cases.push_back(c);
          ++n;
        }
  return cases;
}

using FamilyCase = std::tuple<KernelFamily, Case>;
const KernelFamily kFamilies[] = {KernelFamily::kHopper, KernelFamily::kPortable};
std::string family_case_name(const ::testing::TestParamInfo<FamilyCase>& info) {
  return std::string(family_name(std::get<0>(info.param))) + "_" + std::get<1>(info.param).name();
}

class FwdGrid : public ::testing::TestWithParam<FamilyCase> {};

TEST_P(FwdGrid, MatchesReference) {
  const auto& [family, c] = GetParam();
  SKIP_UNLESS_FAMILY(family);
  expect_matches_reference(c, 1234 + std::hash<std::string>{}(c.name()) % 1000, family);
}

INSTANTIATE_TEST_SUITE_P(Grid, FwdGrid,
                         ::testing::Combine(::testing::ValuesIn(kFamilies),
                                            ::testing::ValuesIn(grid_cases())),
                         family_case_name);

std::vector<Case> varlen_cases() {
  std::vector<Case> cases;
  for (DType t : {DType::kBFloat16, DType::kFloat16})
    for (int64_t d : {64, 128, 256})
      for (int mask = 0; mask < 3; ++mask) {
        Case c(t, 0, 8, 2, 0, 0, d);
        c.varlen_q = {17, 0, 1013, 1, 128, 300};
        c.varlen_k = {40, 5, 1024, 0, 128, 200};
        c.causal = mask == 1;
        if (mask == 2) c.wl = 64, c.wr = 0;
        c.strided = d == 128;
        c.pad_q = d == 64 ? 0 : 29;  // packed rows past the last sequence: lse's head stride
        cases.push_back(c);
      }
  return cases;
}

class FwdVarlen : public ::testing::TestWithParam<FamilyCase> {};

TEST_P(FwdVarlen, MatchesReference) {
  const auto& [family, c] = GetParam();
  SKIP_UNLESS_FAMILY(family);
  expect_matches_reference(c, 99, family);
}

INSTANTIATE_TEST_SUITE_P(Varlen, FwdVarlen,
                         ::testing::Combine(::testing::ValuesIn(kFamilies),
                                            ::testing::ValuesIn(varlen_cases())),
                         family_case_name);

// Tests below that take a family run once per family.
class FwdFamily : public ::testing::TestWithParam<KernelFamily> {};
INSTANTIATE_TEST_SUITE_P(Family, FwdFamily, ::testing::ValuesIn(kFamilies),
                         [](const auto& info) { return std::string(family_name(info.param)); });

TEST_P(FwdFamily, SmallTilesGqaAndLse) {
  SKIP_UNLESS_FAMILY(GetParam());
  for (int64_t d : {64, 128, 256}) {
    Case c(DType::kBFloat16, 3, 8, 2, 200, 333, d);
    c.causal = true;
    expect_matches_reference(c, 5 + d, GetParam());
  }
}

TEST_P(FwdFamily, CustomScaleAndLargeBatch) {
  SKIP_UNLESS_FAMILY(GetParam());
  Case c(DType::kBFloat16, 37, 4, 4, 65, 130, 128);
  c.scale = 0.3f;
  expect_matches_reference(c, 7, GetParam());
}

TEST(Fwd, EmptyProblemsWriteNothing) {
  SKIP_WITHOUT_GPU();
  for (auto [sq, sk] : {std::pair<int64_t, int64_t>{0, 16}, {16, 0}, {0, 0}}) {
    Case c(DType::kFloat16, 2, 4, 2, sq, sk, 64);
    GpuRun r = run_on_gpu(c, 3);
    ASSERT_TRUE(r.status.ok()) << r.status.message;
    const Check chk = compare_output(c, r.hp, 3);  // sk == 0: every row is empty, O = 0
    EXPECT_TRUE(chk.ok) << chk.msg;
  }
}

// Device-resident cu_seqlens are not checked on the host (graph safety). Whatever they say, the
// kernels stay inside the packed tensors (the sanitize step runs this test under memcheck): an
// entry reaching outside them writes nothing, and the intact entries keep their exact result.
TEST_P(FwdFamily, MalformedDeviceCuSeqlensStayInBounds) {
  SKIP_UNLESS_FAMILY(GetParam());
  Case c(DType::kBFloat16, 1, 8, 2, 0, 0, 128);
  c.causal = true;
  c.varlen_q = {5, 40, 9};  // q rows 0, 5, 45, 54 (total_q); keys 0, 30, 100, 120 (total_k)
  c.varlen_k = {30, 70, 20};
  const GpuRun good = run_on_gpu(c, 13, GetParam());
  ASSERT_TRUE(good.status.ok()) << good.status.message;
  EXPECT_EQ(good.plan.kernel.rfind(family_prefix(GetParam()), 0), 0u) << good.plan.kernel;
  const Check chk = compare_output(c, good.hp, 13);  // the baseline itself is right
  ASSERT_TRUE(chk.ok) << chk.msg;
  constexpr int32_t kBig = 1 << 30;
  struct Bad {
    Lists lists;
    std::vector<int> intact, untouched;  // entries, by the good lists' rows
  };
  const Bad bads[] = {
      {{{0, 5, 45, 54}, {0, 30, kBig, 120}}, {0}, {1}},  // entry 1's keys run past total_k
      {{{0, 5, 45, kBig}, {0, 30, 100, 120}}, {0, 1}, {2}},  // entry 2's rows past total_q
      {{{0, 5, -kBig, 54}, {0, 30, 100, 120}}, {0}, {1, 2}},  // entry 2 starts before row 0
      {{{0, 5, 45, 54}, {0, 30, -7, 120}}, {0}, {2}},  // entry 2's keys start before key 0
      {{{0, 5, kBig, -kBig - 1}, {0, 30, 100, 120}}, {0}, {1, 2}},  // entry 2: q1 - q0 wraps
      {{{0, 5, 45, 54}, {0, 30, kBig, -kBig - 1}}, {0}, {1, 2}},  // entry 2: k1 - k0 wraps
  };
  const int64_t d = c.d;
  for (const Bad& bad : bads) {
    const GpuRun r = run_on_gpu(c, 13, GetParam(), 1, nullptr, &bad.lists);
    ASSERT_TRUE(r.status.ok()) << r.status.message;
    auto in = [](const std::vector<int>& v, int64_t b) {
      return std::find(v.begin(), v.end(), b) != v.end();
    };
    int64_t changed = 0, written = 0;
    for_each_row(good.hp, [&](int64_t b, int64_t, int64_t, int64_t o, int64_t l) {
      if (in(bad.intact, b))
        changed += std::memcmp(&r.hp.o[o], &good.hp.o[o], d * 2) != 0 ||
                   std::memcmp(&r.hp.lse[l], &good.hp.lse[l], 4) != 0;
      if (in(bad.untouched, b))
        for (int64_t j = 0; j < d; ++j) written += r.hp.o[o + j] != poison(c.dtype);
      if (in(bad.untouched, b)) written += !std::isnan(r.hp.lse[l]);
    });
    EXPECT_EQ(changed, 0) << "rows of intact entries differ; cu_q[3] " << bad.lists.q[3];
    EXPECT_EQ(written, 0) << "elements of malformed entries written; cu_q[3] " << bad.lists.q[3];
  }
}

// Same inputs twice must give bit-identical outputs: a data race would show up as a difference.
TEST_P(FwdFamily, Deterministic) {
  SKIP_UNLESS_FAMILY(GetParam());
  Case c(DType::kBFloat16, 2, 8, 2, 777, 1500, 128);
  c.causal = true;
  GpuRun a = run_on_gpu(c, 11, GetParam()), b = run_on_gpu(c, 11, GetParam(), /*repeats=*/3);
  ASSERT_TRUE(a.status.ok() && b.status.ok());
  EXPECT_EQ(a.plan.kernel.rfind(family_prefix(GetParam()), 0), 0u) << a.plan.kernel;
  EXPECT_EQ(0, std::memcmp(a.hp.o.data(), b.hp.o.data(), a.hp.o.size() * 2));
  EXPECT_EQ(0, std::memcmp(a.hp.lse.data(), b.hp.lse.data(), a.hp.lse.size() * 4));
}

// The Hopper split tail (unmasked problems whose last round of tiles would leave SMs idle; D128
// only so far): right with its workspace and without it; the other head dims ask for none.
// 64 tiles of 16 key blocks: fewer tiles than SMs, each CTA's share well under a tile.
Case split_case(int64_t d) { return Case(DType::kBFloat16, 1, 8, 2, 1024, 2048, d); }

TEST(FwdSplitTail, MatchesReferenceWithAndWithoutWorkspace) {
  SKIP_UNLESS_FAMILY(KernelFamily::kHopper);
  for (int64_t d : {64, 128, 256}) {
    const Case c = split_case(d);
    GpuRun with = run_on_gpu(c, 41, KernelFamily::kHopper);
    ASSERT_TRUE(with.status.ok()) << with.status.message;
    EXPECT_EQ(with.plan.workspace_bytes > 0, d == 128) << "d" << d;
    Check chk = compare_output(c, with.hp, 41);
    EXPECT_TRUE(chk.ok) << "d" << d << " with workspace: " << chk.msg;
    GpuRun without = run_on_gpu(c, 41, KernelFamily::kHopper, 1, kNoWorkspace);
    ASSERT_TRUE(without.status.ok()) << without.status.message;
    chk = compare_output(c, without.hp, 41);
    EXPECT_TRUE(chk.ok) << "d" << d << " without workspace: " << chk.msg;
  }
}

// Whichever CTA merges a split tile, the merge reads the pieces in key order: repeated calls are
// bit-identical. One buffer serves calls of other shapes in between, so every call must leave
// its counters at zero (a stale count would leave tiles unwritten, still NaN).
TEST(FwdSplitTail, DeterministicAndItsWorkspaceReusable) {
  SKIP_UNLESS_FAMILY(KernelFamily::kHopper);
  const Case a = split_case(128);
  Case b(DType::kFloat16, 2, 6, 3, 1013, 3000, 128);  // 48 tiles of 24 key blocks: splits too
  b.strided = true;
  Workspace ws(int64_t{64} << 20);
  ASSERT_NE(ws.ptr, nullptr);
  GpuRun first = run_on_gpu(a, 43, KernelFamily::kHopper, 1, ws.ptr);
  ASSERT_TRUE(first.status.ok()) << first.status.message;
  ASSERT_LE(first.plan.workspace_bytes, int64_t{64} << 20);
  EXPECT_TRUE(compare_output(a, first.hp, 43).ok);
  expect_matches_reference(b, 44, KernelFamily::kHopper, ws.ptr);
  GpuRun again = run_on_gpu(a, 43, KernelFamily::kHopper, 3, ws.ptr);
  ASSERT_TRUE(again.status.ok()) << again.status.message;
  EXPECT_EQ(0, std::memcmp(first.hp.o.data(), again.hp.o.data(), first.hp.o.size() * 2));
  EXPECT_EQ(0, std::memcmp(first.hp.lse.data(), again.hp.lse.data(), first.hp.lse.size() * 4));
}

TEST(FwdSplitTail, HostWorkspaceRejected) {
  SKIP_UNLESS_FAMILY(KernelFamily::kHopper);
  const Case c = split_case(128);
  std::vector<uint8_t> host(1 << 20);
  const GpuRun r = run_on_gpu(c, 45, KernelFamily::kHopper, 1, host.data());
  ASSERT_GT(r.plan.workspace_bytes, 0);
  EXPECT_EQ(r.status.code, StatusCode::kInvalidArgument);
  EXPECT_NE(r.status.message.find("workspace"), std::string::npos) << r.status.message;
}

TEST(Fwd, DeviceMemoryRejectedByReferenceBackend) {
  SKIP_WITHOUT_GPU();
  Case c(DType::kBFloat16, 1, 2, 2, 8, 8, 64);
  HostProblem hp = make_problem(c, 5);
  DeviceBuffer<uint16_t> q(hp.q), k(hp.k), v(hp.v), o(hp.o);
  AttentionParams p = hp.rebased(q.ptr, k.ptr, v.ptr, o.ptr, nullptr, nullptr, nullptr);
  p.lse = nullptr;
  p.backend = Backend::kReference;
  const Status s = run(p);
  EXPECT_EQ(s.code, StatusCode::kInvalidArgument);
  EXPECT_NE(s.message.find("q:"), std::string::npos) << s.message;
}

TEST(Fwd, HostMemoryRejectedByCudaBackend) {
  SKIP_WITHOUT_GPU();
  Case c(DType::kBFloat16, 1, 2, 2, 8, 8, 64);
  HostProblem hp = make_problem(c, 5);
  hp.params.backend = Backend::kCuda;
  const Status s = run(hp.params);
  EXPECT_EQ(s.code, StatusCode::kInvalidArgument);
  EXPECT_NE(s.message.find("device memory"), std::string::npos) << s.message;
}

// run() is graph safe: captured once, the graph replays correctly on new inputs written into the
// same buffers (no host sync, allocation or host read of device memory inside the call).
void expect_graph_replays(const Case& c, KernelFamily family) {
  HostProblem first = make_problem(c, 31);
  DeviceBuffer<uint16_t> q(first.q), k(first.k), v(first.v), o(first.o);
  DeviceBuffer<float> lse(first.lse);
  AttentionParams p = first.rebased(q.ptr, k.ptr, v.ptr, o.ptr, lse.ptr, nullptr, nullptr);
  p.backend = Backend::kCuda;
  p.family = family;
  const Plan plan = query(p);
  ASSERT_TRUE(plan.status.ok()) << plan.status.message;
  Workspace ws(plan.workspace_bytes);
  cudaStream_t stream;
  CUDA_OK(cudaStreamCreate(&stream));
  cudaGraph_t graph;
  CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  const Status st = run(p, ws.ptr, stream);
  CUDA_OK(cudaStreamEndCapture(stream, &graph));
  ASSERT_TRUE(st.ok()) << st.message;
  cudaGraphExec_t exec;
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  for (uint64_t seed : {32, 33}) {
    HostProblem hp = make_problem(c, seed);  // same layout, new values, o and lse poisoned
    auto up = [&](void* dst, const auto& src) {
      return cudaMemcpy(dst, src.data(), src.size() * sizeof(src[0]), cudaMemcpyHostToDevice);
    };
    CUDA_OK(up(q.ptr, hp.q));
    CUDA_OK(up(k.ptr, hp.k));
    CUDA_OK(up(v.ptr, hp.v));
    CUDA_OK(up(o.ptr, hp.o));
    CUDA_OK(up(lse.ptr, hp.lse));
    CUDA_OK(cudaGraphLaunch(exec, stream));
    CUDA_OK(cudaStreamSynchronize(stream));
    o.to_host(hp.o);
    lse.to_host(hp.lse);
    const Check chk = compare_output(c, hp, seed);
    EXPECT_TRUE(chk.ok) << "seed " << seed << ": " << chk.msg;
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

// The unmasked case splits its tail on the Hopper kernels: its counters must be back at zero
// for every replay.
TEST_P(FwdFamily, CapturedInCudaGraphReplaysOnNewInputs) {
  SKIP_UNLESS_FAMILY(GetParam());
  Case causal(DType::kBFloat16, 2, 4, 2, 300, 500, 128);
  causal.causal = true;
  for (const Case& c : {causal, split_case(128)}) {
    SCOPED_TRACE(c.name());
    expect_graph_replays(c, GetParam());
  }
}

// Batch strides past 2^31 elements: every tensor's batch 1 starts beyond int32 range, so any
// 32-bit offset arithmetic in the kernel reads or writes the wrong place.
TEST_P(FwdFamily, OffsetsPast2Pow31Elements) {
  SKIP_UNLESS_FAMILY(GetParam());
  const int64_t big = (int64_t{1} << 31) + 4096;  // elements; a multiple of 8
  size_t free_bytes = 0, total = 0;
  CUDA_OK(cudaMemGetInfo(&free_bytes, &total));
  if (free_bytes < size_t{4} * 2 * (big + 65536) + (size_t{1} << 30))
    GTEST_SKIP() << "needs about 18 GB of free GPU memory";
  Case c(DType::kBFloat16, 2, 2, 1, 80, 96, 64);
  c.causal = true;
  HostProblem hp = make_problem(c, 21);  // compact: each batch is one contiguous block
  const AttentionParams& hpp = hp.params;
  struct Tensor {
    std::vector<uint16_t>* host;
    Strides strides;
    void* dev = nullptr;
  } t[4] = {{&hp.q, hpp.q_strides},
            {&hp.k, hpp.k_strides},
            {&hp.v, hpp.v_strides},
            {&hp.o, hpp.o_strides}};
  for (Tensor& x : t) {
    CUDA_OK(cudaMalloc(&x.dev, (big + x.strides.batch) * 2));
    for (int b = 0; b < 2; ++b)
      CUDA_OK(cudaMemcpy(static_cast<uint16_t*>(x.dev) + b * big,
                         x.host->data() + b * x.strides.batch, x.strides.batch * 2,
                         cudaMemcpyHostToDevice));
  }
  DeviceBuffer<float> lse(hp.lse);
  AttentionParams p = hpp;
  p.q = t[0].dev, p.k = t[1].dev, p.v = t[2].dev, p.o = t[3].dev, p.lse = lse.ptr;
  p.q_strides.batch = p.k_strides.batch = p.v_strides.batch = p.o_strides.batch = big;
  p.backend = Backend::kCuda;
  p.family = GetParam();
  const Status st = run(p);
  ASSERT_TRUE(st.ok()) << st.message;
  CUDA_OK(cudaDeviceSynchronize());
  for (int b = 0; b < 2; ++b)
    CUDA_OK(cudaMemcpy(hp.o.data() + b * t[3].strides.batch,
                       static_cast<uint16_t*>(t[3].dev) + b * big, t[3].strides.batch * 2,
                       cudaMemcpyDeviceToHost));
  lse.to_host(hp.lse);
  for (Tensor& x : t) cudaFree(x.dev);
  const Check chk = compare_output(c, hp, 21);
  EXPECT_TRUE(chk.ok) << chk.msg;
}

// kAuto takes the Hopper kernel on sm_90 when it supports the problem and the portable kernel
// otherwise (here: varlen without total_q/total_k); naming the Hopper family then says why.
TEST(Fwd, AutoPicksHopperElsePortable) {
  SKIP_UNLESS_FAMILY(KernelFamily::kHopper);
  Case c(DType::kFloat16, 0, 4, 4, 0, 0, 64);
  c.varlen_q = {5, 70};
  c.varlen_k = {9, 33};
  HostProblem hp = make_problem(c, 3);
  DeviceBuffer<uint16_t> q(hp.q), k(hp.k), v(hp.v), o(hp.o);
  DeviceBuffer<int32_t> cu_q(hp.cu_q), cu_k(hp.cu_k);
  AttentionParams p = hp.rebased(q.ptr, k.ptr, v.ptr, o.ptr, nullptr, cu_q.ptr, cu_k.ptr);
  p.lse = nullptr;
  p.backend = Backend::kAuto;
  EXPECT_EQ(query(p).kernel, "hopper.fwd.fp16.d64");
  p.total_q = p.total_k = 0;
  EXPECT_EQ(query(p).kernel, "portable.fwd.fp16.d64");
  p.family = KernelFamily::kHopper;
  const Plan plan = query(p);
  EXPECT_EQ(plan.status.code, StatusCode::kNotSupported);
  EXPECT_NE(plan.status.message.find("total_q/total_k"), std::string::npos) << plan.status.message;
}

}  // namespace
}  // namespace flashcore::test
