// The public API on host memory: query picks the CPU reference, run computes what
// ref::forward computes, empty problems succeed without writing, and the small helpers work.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <set>
#include <string>

#include "reference/reference.h"
#include "test_util.h"

namespace flashcore::test {
namespace {

Case causal_gqa() {
  Case c{DType::kBFloat16, 2, 4, 2, 17, 29, 128};
  c.causal = true;
  return c;
}

TEST(Api, QueryOnHostMemoryPlansTheReference) {
  HostProblem hp = make_problem(causal_gqa(), 1);
  for (Backend b : {Backend::kAuto, Backend::kReference}) {
    hp.params.backend = b;
    const Plan plan = query(hp.params);
    EXPECT_TRUE(plan.status.ok()) << plan.status.message;
    EXPECT_EQ(plan.backend, Backend::kReference);
    EXPECT_EQ(plan.kernel, "reference");
    EXPECT_EQ(plan.workspace_bytes, 0);
  }
  EXPECT_EQ(workspace_size(hp.params), 0);
}

TEST(Api, RunOnHostMemoryMatchesReference) {
  Case padded = causal_gqa();
  Case varlen{DType::kFloat16, 0, 4, 1, 0, 0, 64};
  varlen.varlen_q = {4, 0, 9}, varlen.varlen_k = {6, 2, 9}, varlen.wl = 3, varlen.strided = true;
  for (const Case& c : {padded, varlen}) {
    HostProblem want = make_problem(c, 4), got = make_problem(c, 4);
    ASSERT_TRUE(ref::forward(detail::resolve(want.params)).ok());
    got.params.backend = Backend::kAuto;
    const Status s = run(got.params);
    ASSERT_TRUE(s.ok()) << s.message;
    EXPECT_EQ(got.o, want.o) << c.name();
    EXPECT_EQ(std::memcmp(got.lse.data(), want.lse.data(), got.lse.size() * sizeof(float)), 0);
    const Check chk = compare_output(c, got, 4);
    EXPECT_TRUE(chk.ok) << chk.msg;
  }
}

bool all_poisoned(const HostProblem& hp) {
  for (uint16_t x : hp.o)
    if (x != poison(hp.params.dtype)) return false;
  for (float x : hp.lse)
    if (!std::isnan(x)) return false;
  return true;
}

// No batch or no queries: nothing to write, and nothing is written.
TEST(Api, EmptyProblemsSucceedWithoutWriting) {
  Case no_batch{DType::kBFloat16, 0, 2, 2, 8, 8, 64};
  Case no_queries{DType::kFloat16, 2, 2, 1, 0, 8, 64};
  Case empty_varlen{DType::kBFloat16, 0, 2, 2, 4, 4, 64};
  empty_varlen.varlen_q = {0, 0}, empty_varlen.varlen_k = {3, 0};
  for (const Case& c : {no_batch, no_queries, empty_varlen}) {
    HostProblem hp = make_problem(c, 1);
    hp.params.backend = Backend::kAuto;
    const Status s = run(hp.params);
    EXPECT_TRUE(s.ok()) << c.name() << ": " << s.message;
    EXPECT_TRUE(all_poisoned(hp)) << c.name();
  }
}

// No keys: every row is empty, so O = 0 and LSE = -inf (written, unlike the cases above).
TEST(Api, NoKeysGivesZeroOutput) {
  const Case c{DType::kBFloat16, 2, 2, 2, 5, 0, 64};
  HostProblem hp = make_problem(c, 1);
  hp.params.k = hp.params.v = nullptr;
  ASSERT_TRUE(run(hp.params).ok());
  for_each_row(hp, [&](int64_t, int64_t, int64_t, int64_t off, int64_t li) {
    EXPECT_EQ(hp.o[off], 0);
    EXPECT_TRUE(std::isinf(hp.lse[li]) && hp.lse[li] < 0);
  });
}

TEST(Api, CudaBackendRefusesHostMemory) {
  HostProblem hp = make_problem(causal_gqa(), 1);
  hp.params.backend = Backend::kCuda;
  const Status s = run(hp.params);
  EXPECT_FALSE(s.ok());
  EXPECT_FALSE(s.message.empty());
  EXPECT_TRUE(all_poisoned(hp));
}

TEST(Api, ToStringNamesEveryValue) {
  std::set<std::string> names;
  for (DType t : {DType::kFloat16, DType::kBFloat16}) names.insert(to_string(t));
  for (Backend b : {Backend::kAuto, Backend::kReference, Backend::kCuda})
    names.insert(to_string(b));
  EXPECT_EQ(names.size(), 5u);
  EXPECT_EQ(names.count(""), 0u);
}

// No driver (error 35 on the CI machine) must read as "no GPU", never as an error.
TEST(Api, CudaDeviceCountMatchesTheRuntime) {
  int n = 0;
  const int expected = cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
  cudaGetLastError();
  EXPECT_EQ(cuda_device_count(), expected);
}

}  // namespace
}  // namespace flashcore::test
