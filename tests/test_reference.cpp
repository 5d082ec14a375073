// The CPU reference against the header's formula written out naively in float64, against
// closed-form answers, and a self-check that compare_output (the GPU tests' pass rule) can fail.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "reference/reference.h"
#include "test_util.h"

namespace flashcore::test {
namespace {

namespace fd = flashcore::detail;
constexpr double kInf = std::numeric_limits<double>::infinity();

void run_reference(HostProblem& hp, bool round_p = false, int threads = 0) {
  ASSERT_TRUE(ref::forward(fd::resolve(hp.params), {round_p, threads}).ok());
}

// Element offset of row i of head h of sequence b, straight from the header's layout rules.
int64_t offset(const HostProblem& hp, const void* base, const void* ptr, const Strides& s,
               const std::vector<int32_t>& cu, int64_t b, int64_t i, int64_t h) {
  const int64_t origin = static_cast<const uint16_t*>(ptr) - static_cast<const uint16_t*>(base);
  const int64_t row = hp.cu_q.empty() ? b * s.batch + i * s.seq : (cu[b] + i) * s.seq;
  return origin + row + h * s.head;
}

// O and LSE of one query row by the header's definition, without visible_keys or reference.cpp.
void naive_row(const HostProblem& hp, bool round_p, int64_t b, int64_t h, int64_t i,
               std::vector<double>& o, double& lse) {
  const AttentionParams& p = hp.params;
  const bool varlen = !hp.cu_q.empty();
  const int64_t sq = varlen ? hp.cu_q[b + 1] - hp.cu_q[b] : p.seqlen_q;
  const int64_t sk = varlen ? hp.cu_k[b + 1] - hp.cu_k[b] : p.seqlen_k;
  const int64_t g = p.num_heads_q / p.num_heads_kv, d = p.head_dim, off = sk - sq;
  const int64_t wr = p.causal ? 0 : p.window_right, wl = p.window_left;
  const double scale = p.softmax_scale != 0 ? p.softmax_scale : 1.0f / std::sqrt(float(d));
  auto at = [&](const std::vector<uint16_t>& buf, int64_t idx) {
    return static_cast<double>(fd::to_float(p.dtype, buf[idx]));
  };
  const int64_t qo = offset(hp, hp.q.data(), p.q, p.q_strides, hp.cu_q, b, i, h);
  std::vector<double> s;
  std::vector<int64_t> keys;
  for (int64_t j = 0; j < sk; ++j) {
    if ((wr >= 0 && j > i + off + wr) || (wl >= 0 && j < i + off - wl)) continue;
    const int64_t ko = offset(hp, hp.k.data(), p.k, p.k_strides, hp.cu_k, b, j, h / g);
    double dot = 0;
    for (int64_t c = 0; c < d; ++c) dot += at(hp.q, qo + c) * at(hp.k, ko + c);
    s.push_back(scale * dot);
    keys.push_back(j);
  }
  o.assign(d, 0.0);
  lse = -kInf;
  if (keys.empty()) return;
  double m = -kInf, l = 0;
  for (double x : s) m = std::max(m, x);
  for (size_t n = 0; n < keys.size(); ++n) {
    const double e = std::exp(s[n] - m);
    l += e;
    const double w = round_p ? fd::round_to(p.dtype, float(e)) : e;
    const int64_t vo = offset(hp, hp.v.data(), p.v, p.v_strides, hp.cu_k, b, keys[n], h / g);
    for (int64_t c = 0; c < d; ++c) o[c] += w * at(hp.v, vo + c);
  }
  for (double& x : o) x /= l;
  lse = m + std::log(l);
}

class ReferenceVsNaive : public ::testing::TestWithParam<Case> {};

TEST_P(ReferenceVsNaive, MatchesFormula) {
  const Case& c = GetParam();
  for (bool round_p : {false, true}) {
    HostProblem hp = make_problem(c, 7);
    run_reference(hp, round_p);
    std::vector<double> o;
    double lse;
    for_each_row(hp, [&](int64_t b, int64_t h, int64_t i, int64_t off, int64_t li) {
      naive_row(hp, round_p, b, h, i, o, lse);
      for (int64_t j = 0; j < c.d; ++j) {
        // O is rounded once to float, then to the dtype: half an ulp plus a float's rounding.
        const double got = fd::to_float(c.dtype, hp.o[off + j]);
        ASSERT_LE(std::fabs(got - o[j]), 0.5 * ulp(c.dtype, o[j]) + 1e-7 * std::fabs(o[j]))
            << "round_p " << round_p << " b " << b << " h " << h << " i " << i << " c " << j;
      }
      if (!c.with_lse) return;
      if (std::isinf(lse)) {
        ASSERT_EQ(hp.lse[li], lse);
      } else {
        ASSERT_NEAR(hp.lse[li], lse, 1e-6 * std::max(1.0, std::fabs(lse)));
      }
    });
    const Check chk = compare_output(c, hp, 7);  // also: nothing outside the rows was written
    EXPECT_EQ(chk.clobbered, 0) << chk.msg;
  }
}

Case with(Case c, void (*edit)(Case&)) {
  edit(c);
  return c;
}
const DType kBf = DType::kBFloat16, kFp = DType::kFloat16;

INSTANTIATE_TEST_SUITE_P(
    Shapes, ReferenceVsNaive,
    ::testing::Values(
        Case{kBf, 2, 4, 4, 17, 33, 64}, Case{kFp, 1, 1, 1, 1, 1, 128},
        with({kFp, 1, 4, 2, 33, 17, 128}, [](Case& c) { c.causal = true; }),
        with({kBf, 2, 8, 2, 16, 40, 256}, [](Case& c) { c.causal = true; }),
        with({kFp, 1, 4, 1, 30, 30, 64}, [](Case& c) { c.wl = 5, c.wr = 3; }),
        with({kBf, 1, 4, 2, 20, 10, 64}, [](Case& c) { c.wl = 0, c.wr = 0; }),
        with({kBf, 2, 6, 3, 9, 12, 128}, [](Case& c) { c.strided = true, c.with_lse = false; }),
        with({kFp, 1, 2, 2, 8, 24, 64}, [](Case& c) { c.scale = 0.3f, c.causal = true; }),
        with({kBf, 0, 4, 2, 0, 0, 64},
             [](Case& c) {
               c.varlen_q = {5, 0, 13, 2}, c.varlen_k = {7, 3, 0, 2}, c.causal = true;
             }),
        with({kFp, 0, 4, 4, 20, 0, 128},
             [](Case& c) {
               c.varlen_q = {1, 17, 0}, c.varlen_k = {17, 1, 4}, c.strided = true, c.wl = 4;
             }),
        with({kBf, 0, 4, 2, 0, 0, 64},
             [](Case& c) {
               c.varlen_q = {6, 3}, c.varlen_k = {6, 9}, c.pad_q = 5, c.causal = true;
             })),
    [](const ::testing::TestParamInfo<Case>& info) { return info.param.name(); });

TEST(Reference, ThreadCountDoesNotChangeResult) {
  Case c{kBf, 3, 4, 2, 21, 13, 64};
  c.causal = true;
  HostProblem one = make_problem(c, 3), many = make_problem(c, 3);
  run_reference(one, false, 1);
  run_reference(many, false, 5);
  EXPECT_EQ(one.o, many.o);
  // Bitwise: the NaN-poisoned slack compares unequal to itself as floats.
  EXPECT_EQ(std::memcmp(one.lse.data(), many.lse.data(), one.lse.size() * sizeof(float)), 0);
}

// Query 0,..,0 with a 1 at column 0 meets one key whose column 0 is 1000: its logit exceeds the
// others by ~125, so every other weight underflows and O is exactly that key's V row.
TEST(Reference, OneHotLogitSelectsValueRow) {
  for (DType t : {kBf, kFp}) {
    for (bool round_p : {false, true}) {
      Case c{t, 1, 2, 1, 8, 16, 64};
      HostProblem hp = make_problem(c, 11);
      const int64_t key = 5;
      const Strides& qs = hp.params.q_strides;
      for (int64_t i = 0; i < c.sq; ++i)
        for (int64_t h = 0; h < c.hq; ++h)
          for (int64_t j = 0; j < c.d; ++j)
            hp.q[i * qs.seq + h * qs.head + j] = fd::from_float(t, j == 0 ? 1.0f : 0.0f);
      hp.k[key * hp.params.k_strides.seq] = fd::from_float(t, 1000.0f);
      run_reference(hp, round_p);
      const int64_t v_row = key * hp.params.v_strides.seq;
      for_each_row(hp, [&](int64_t, int64_t, int64_t i, int64_t off, int64_t li) {
        for (int64_t j = 0; j < c.d; ++j) ASSERT_EQ(hp.o[off + j], hp.v[v_row + j]) << i;
        EXPECT_FLOAT_EQ(hp.lse[li], 1000.0f / 8.0f);
      });
    }
  }
}

// Softmax weights sum to one, so equal V rows come out unchanged whatever the logits.
TEST(Reference, UniformValuesComeOutUnchanged) {
  Case c{kFp, 2, 4, 2, 19, 23, 128};
  c.causal = true;
  HostProblem hp = make_problem(c, 5);
  const Strides& vs = hp.params.v_strides;
  for (int64_t b = 0; b < c.b; ++b)
    for (int64_t j = 0; j < c.sk; ++j)
      for (int64_t h = 0; h < c.hkv; ++h)
        for (int64_t e = 0; e < c.d; ++e)
          hp.v[b * vs.batch + j * vs.seq + h * vs.head + e] = hp.v[h * vs.head + e];
  run_reference(hp);
  for_each_row(hp, [&](int64_t, int64_t h, int64_t, int64_t off, int64_t) {
    for (int64_t e = 0; e < c.d; ++e) ASSERT_EQ(hp.o[off + e], hp.v[(h / 2) * vs.head + e]);
  });
}

// Causal with sq = 6 > sk = 3: rows 0..2 end before key 0; with sk = 0 every row is empty.
TEST(Reference, RowsWithoutKeysGiveZeroAndMinusInf) {
  for (int64_t sk : {3, 0}) {
    Case c{kBf, 1, 2, 2, 6, sk, 64};
    c.causal = true;
    HostProblem hp = make_problem(c, 9);
    run_reference(hp);
    for_each_row(hp, [&](int64_t, int64_t, int64_t i, int64_t off, int64_t li) {
      const bool empty = i < 6 - sk;
      EXPECT_EQ(std::isinf(hp.lse[li]) && hp.lse[li] < 0, empty) << "i " << i;
      for (int64_t e = 0; e < c.d && empty; ++e)
        EXPECT_EQ(fd::to_float(c.dtype, hp.o[off + e]), 0.0f);
    });
    EXPECT_TRUE(compare_output(c, hp, 9).ok);
  }
}

// Zero queries make every logit 0: causal row i sees i + 1 keys, so LSE = log(i + 1).
TEST(Reference, LseOfZeroLogitsIsLogOfKeyCount) {
  Case c{kBf, 1, 1, 1, 40, 40, 64};
  c.causal = true;
  HostProblem hp = make_problem(c, 2);
  std::fill(hp.q.begin(), hp.q.end(), 0);
  run_reference(hp);
  for_each_row(hp, [&](int64_t, int64_t, int64_t i, int64_t, int64_t li) {
    EXPECT_NEAR(hp.lse[li], std::log(double(i + 1)), 1e-6) << i;
  });
}

class CompareOutput : public ::testing::Test {
 protected:
  CompareOutput() : c_{kBf, 2, 4, 2, 33, 47, 64} {
    c_.causal = true;
    c_.strided = true;
    hp_ = make_problem(c_, kSeed);
    run_reference(hp_);
    for_each_row(hp_, [&](int64_t, int64_t, int64_t, int64_t off, int64_t li) {
      if (first_ < 0) first_ = off, first_lse_ = li;
    });
  }
  static constexpr uint64_t kSeed = 42;
  Case c_;
  HostProblem hp_;
  int64_t first_ = -1, first_lse_ = -1;
};

TEST_F(CompareOutput, ExactAndSamePrecisionResultsPass) {
  Check chk = compare_output(c_, hp_, kSeed);
  EXPECT_TRUE(chk.ok) << chk.msg;
  EXPECT_EQ(chk.max_abs_err, 0.0);
  EXPECT_GT(chk.ref_lowp_max_abs_err, 0.0);
  run_reference(hp_, /*round_p=*/true);
  chk = compare_output(c_, hp_, kSeed);
  EXPECT_TRUE(chk.ok) << chk.msg;
}

TEST_F(CompareOutput, PerturbedElementFails) {
  const DType t = c_.dtype;
  hp_.o[first_ + 3] = fd::from_float(t, fd::to_float(t, hp_.o[first_ + 3]) + 0.5f);
  const Check chk = compare_output(c_, hp_, kSeed);
  EXPECT_FALSE(chk.ok);
  EXPECT_EQ(chk.bad, 1) << chk.msg;
}

TEST_F(CompareOutput, UnwrittenOutputFails) {
  hp_.o[first_ + 1] = poison(c_.dtype);
  Check chk = compare_output(c_, hp_, kSeed);
  EXPECT_FALSE(chk.ok);
  EXPECT_EQ(chk.unwritten, 1) << chk.msg;
  run_reference(hp_);
  hp_.lse[first_lse_] = NAN;
  chk = compare_output(c_, hp_, kSeed);
  EXPECT_FALSE(chk.ok);
  EXPECT_EQ(chk.unwritten, 1) << chk.msg;
}

TEST_F(CompareOutput, WrongLseFails) {
  hp_.lse[first_lse_ + 2] += 0.01f;
  EXPECT_FALSE(compare_output(c_, hp_, kSeed).ok);
}

TEST_F(CompareOutput, WriteOutsideRowsFails) {
  hp_.o[first_ - 1] = 0;  // the strided view's leading slack
  Check chk = compare_output(c_, hp_, kSeed);
  EXPECT_EQ(chk.clobbered, 1) << chk.msg;
  EXPECT_FALSE(chk.ok);
}

TEST_F(CompareOutput, WrongSeedFails) { EXPECT_FALSE(compare_output(c_, hp_, kSeed + 1).ok); }

TEST(HostProblem, RebasedKeepsOffsets) {
  Case c{kBf, 0, 2, 1, 0, 0, 64};
  c.varlen_q = {3, 4}, c.varlen_k = {5, 6}, c.strided = true;
  const HostProblem hp = make_problem(c, 1);
  std::vector<uint16_t> q(hp.q.size()), k(hp.k.size()), v(hp.v.size()), o(hp.o.size());
  std::vector<float> lse(hp.lse.size());
  std::vector<int32_t> cq(hp.cu_q), ck(hp.cu_k);
  const AttentionParams p =
      hp.rebased(q.data(), k.data(), v.data(), o.data(), lse.data(), cq.data(), ck.data());
  EXPECT_EQ(static_cast<const uint16_t*>(p.q), q.data() + 8);
  EXPECT_EQ(static_cast<const uint16_t*>(p.v), v.data() + 8);
  EXPECT_EQ(static_cast<uint16_t*>(p.o), o.data() + 8);
  EXPECT_EQ(p.lse, lse.data());
  EXPECT_EQ(p.cu_seqlens_k, ck.data());
  EXPECT_EQ(p.q_strides.seq, hp.params.q_strides.seq);
}

}  // namespace
}  // namespace flashcore::test
