// Argument rules one at a time: a valid problem with exactly one thing broken must come back
// kInvalidArgument, naming the argument, from validate and from the public API (o untouched).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>

#include "api/validate.h"
#include "test_util.h"

namespace flashcore::test {
namespace {

namespace fd = flashcore::detail;

// A name for the test, the argument the message must name, and the one edit that breaks it.
struct Broken {
  const char* test;
  const char* arg;
  std::function<void(AttentionParams&)> edit;
};

template <typename T>
T* misalign(T* ptr, int bytes) {
  return reinterpret_cast<T*>(reinterpret_cast<uintptr_t>(ptr) + bytes);
}

const Case kPadded{DType::kBFloat16, 2, 4, 2, 16, 16, 64};

Case varlen_case() {
  Case c{DType::kFloat16, 0, 4, 4, 8, 8, 128};
  c.varlen_q = {3, 8}, c.varlen_k = {8, 0};
  return c;
}

void expect_invalid(const Status& s, const std::string& arg) {
  EXPECT_EQ(s.code, StatusCode::kInvalidArgument) << s.message;
  EXPECT_NE(s.message.find(arg), std::string::npos) << "message: " << s.message;
}

TEST(Validate, BaseProblemsAreValid) {
  EXPECT_TRUE(fd::validate_args(make_problem(kPadded, 1).params).ok());
  const HostProblem vl = make_problem(varlen_case(), 1);
  EXPECT_TRUE(fd::validate_args(vl.params).ok());
  EXPECT_TRUE(fd::validate_cu_seqlens_host(vl.params).ok());
}

class ValidateRule : public ::testing::TestWithParam<Broken> {};

TEST_P(ValidateRule, NamesTheArgument) {
  HostProblem hp = make_problem(kPadded, 1);
  GetParam().edit(hp.params);
  expect_invalid(fd::validate_args(hp.params), GetParam().arg);
}

INSTANTIATE_TEST_SUITE_P(
    Rules, ValidateRule,
    ::testing::Values(
        Broken{"dtype", "dtype", [](auto& p) { p.dtype = static_cast<DType>(7); }},
        Broken{"backend", "backend", [](auto& p) { p.backend = static_cast<Backend>(9); }},
        Broken{"batch", "batch", [](auto& p) { p.batch = -1; }},
        Broken{"seqlen_q", "seqlen_q", [](auto& p) { p.seqlen_q = -1; }},
        Broken{"seqlen_k", "seqlen_k", [](auto& p) { p.seqlen_k = -1; }},
        Broken{"seqlen_q_2pow31", "seqlen_q", [](auto& p) { p.seqlen_q = int64_t{1} << 31; }},
        Broken{"num_heads_q", "num_heads_q", [](auto& p) { p.num_heads_q = 0; }},
        Broken{"num_heads_kv", "num_heads_kv", [](auto& p) { p.num_heads_kv = 0; }},
        Broken{"gqa_ratio", "num_heads_q", [](auto& p) { p.num_heads_kv = 3; }},
        Broken{"head_dim", "head_dim", [](auto& p) { p.head_dim = 96; }},
        Broken{"scale_nan", "softmax_scale", [](auto& p) { p.softmax_scale = NAN; }},
        Broken{"scale_inf", "softmax_scale", [](auto& p) { p.softmax_scale = INFINITY; }},
        Broken{"window_left", "window_left", [](auto& p) { p.window_left = -2; }},
        Broken{"window_right", "window_right", [](auto& p) { p.window_right = -2; }},
        Broken{"device", "device", [](auto& p) { p.device = -2; }},
        Broken{"q_null", "q: must not be null", [](auto& p) { p.q = nullptr; }},
        Broken{"k_null", "k: must not be null", [](auto& p) { p.k = nullptr; }},
        Broken{"v_null", "v: must not be null", [](auto& p) { p.v = nullptr; }},
        Broken{"o_null", "o: must not be null", [](auto& p) { p.o = nullptr; }},
        Broken{"q_align", "q: pointer must be 16-byte aligned",
               [](auto& p) { p.q = misalign(p.q, 2); }},
        Broken{"o_align", "o: pointer must be 16-byte aligned",
               [](auto& p) { p.o = misalign(p.o, 8); }},
        Broken{"q_seq_stride", "q_strides.seq", [](auto& p) { p.q_strides.seq += 4; }},
        Broken{"k_head_stride", "k_strides.head", [](auto& p) { p.k_strides.head = -8; }},
        Broken{"v_batch_stride", "v_strides.batch", [](auto& p) { p.v_strides.batch += 1; }},
        Broken{"o_head_stride", "o_strides.head", [](auto& p) { p.o_strides.head = 12; }},
        Broken{"lse_align", "lse", [](auto& p) { p.lse = misalign(p.lse, 2); }},
        Broken{"scale_negative", "softmax_scale", [](auto& p) { p.softmax_scale = -0.5f; }},
        Broken{"o_rows_overlap", "o_strides.seq", [](auto& p) { p.o_strides.seq = 0; }},
        Broken{"o_heads_overlap", "o_strides.head", [](auto& p) { p.o_strides.head = 32; }}),
    [](const ::testing::TestParamInfo<Broken>& info) { return std::string(info.param.test); });

TEST(Validate, CuSeqlensPointerRules) {
  HostProblem hp = make_problem(varlen_case(), 1);
  AttentionParams p = hp.params;
  p.cu_seqlens_k = nullptr;
  expect_invalid(fd::validate_args(p), "cu_seqlens_k");
  p = hp.params;
  p.cu_seqlens_q = nullptr;
  expect_invalid(fd::validate_args(p), "cu_seqlens_q");
  p = hp.params;
  p.cu_seqlens_q = misalign(p.cu_seqlens_q, 2);
  expect_invalid(fd::validate_args(p), "cu_seqlens_q");
  p = hp.params;
  p.cu_seqlens_k = misalign(p.cu_seqlens_k, 1);
  expect_invalid(fd::validate_args(p), "cu_seqlens_k");
}

// Varlen tensors are packed: their batch stride is unused and not checked.
TEST(Validate, VarlenIgnoresBatchStride) {
  HostProblem hp = make_problem(varlen_case(), 1);
  hp.params.q_strides.batch = 3;
  hp.params.k_strides.batch = -5;
  EXPECT_TRUE(fd::validate_args(hp.params).ok());
}

// Tensors without elements may be null: no batch, no queries, or no keys.
TEST(Validate, EmptyTensorsMayBeNull) {
  AttentionParams p = make_problem(kPadded, 1).params;
  p.q = p.k = p.v = p.o = nullptr;
  p.batch = 0;
  EXPECT_TRUE(fd::validate_args(p).ok());
  p = make_problem(kPadded, 1).params;
  p.k = p.v = nullptr;
  p.seqlen_k = 0;
  EXPECT_TRUE(fd::validate_args(p).ok());
  p.seqlen_k = 1;
  expect_invalid(fd::validate_args(p), "k: must not be null");
}

TEST(Validate, CuSeqlensContents) {
  HostProblem hp = make_problem(varlen_case(), 1);  // cu_q = {0, 3, 11}, cu_k = {0, 8, 8}
  hp.cu_q[0] = 1;
  expect_invalid(fd::validate_cu_seqlens_host(hp.params), "cu_seqlens_q: must start at 0");
  hp.cu_q[0] = 0;
  hp.cu_k = {0, 8, 7};
  hp.params.cu_seqlens_k = hp.cu_k.data();
  expect_invalid(fd::validate_cu_seqlens_host(hp.params), "cu_seqlens_k: must be non-decreasing");
  hp.cu_k = {0, 9, 9};
  hp.params.cu_seqlens_k = hp.cu_k.data();
  expect_invalid(fd::validate_cu_seqlens_host(hp.params), "more than seqlen_k");
  hp.cu_k = {0, 8, 8};
  hp.params.cu_seqlens_k = hp.cu_k.data();
  hp.params.seqlen_q = 7;  // sequence 1 has 8 queries
  expect_invalid(fd::validate_cu_seqlens_host(hp.params), "cu_seqlens_q: sequence 1");
  hp.params.seqlen_q = 8;
  hp.params.total_k = 7;
  expect_invalid(fd::validate_cu_seqlens_host(hp.params),
                 "cu_seqlens_k: last entry 8 exceeds total_k");
}

TEST(Validate, TotalsAndFamily) {
  HostProblem hp = make_problem(varlen_case(), 1);
  hp.params.total_q = -1;
  expect_invalid(fd::validate_args(hp.params), "total_q/total_k: must be >= 0");
  hp.params.total_q = 0;
  EXPECT_TRUE(fd::validate_args(hp.params).ok());  // 0: unknown
  HostProblem fixed = make_problem(kPadded, 1);
  fixed.params.total_k = 5;
  expect_invalid(fd::validate_args(fixed.params), "only meaningful with cu_seqlens");
  fixed.params.total_k = 0;
  fixed.params.family = static_cast<KernelFamily>(7);
  expect_invalid(fd::validate_args(fixed.params), "family: unknown value 7");
}

bool all_poisoned(const HostProblem& hp) {
  for (uint16_t x : hp.o)
    if (x != poison(hp.params.dtype)) return false;
  return true;
}

// The public API refuses the same inputs, from query and from run, and writes nothing.
TEST(Validate, ApiReturnsTheErrorWithoutWriting) {
  HostProblem hp = make_problem(kPadded, 1);
  hp.params.head_dim = 96;
  for (Backend b : {Backend::kAuto, Backend::kReference}) {
    hp.params.backend = b;
    expect_invalid(query(hp.params).status, "head_dim");
    expect_invalid(run(hp.params), "head_dim");
    EXPECT_TRUE(all_poisoned(hp));
  }
  HostProblem vl = make_problem(varlen_case(), 1);
  vl.cu_k[2] = 7;  // not monotone: caught on the host path before anything runs
  expect_invalid(run(vl.params), "cu_seqlens_k");
  EXPECT_TRUE(all_poisoned(vl));
}

}  // namespace
}  // namespace flashcore::test
