// Shared by the CPU and GPU suites (host code only): test cases, random host problems with
// poisoned outputs, and compare_output, the pass rule every backend is held to.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/fwd_problem.h"
#include "flashcore/flashcore.h"
#include "reference/reference.h"

namespace flashcore::test {

/// One attention problem shape. Non-empty varlen_q/varlen_k (same size) make it varlen with
/// those per-sequence lengths; b is then their count and sq/sk the max of c.sq/c.sk and them.
struct Case {
  DType dtype = DType::kBFloat16;
  int64_t b = 1, hq = 1, hkv = 1, sq = 0, sk = 0, d = 64;
  bool causal = false;
  int64_t wl = -1, wr = -1;
  bool with_lse = true;
  bool strided = false;  // padded heads, rows and batches and a non-zero start offset
  std::vector<int> varlen_q, varlen_k;
  int pad_q = 0;  // varlen: packed q/o/lse rows past the last sequence (total_q = sum + pad_q)
  float scale = 0.0f;

  Case() = default;
  Case(DType t, int64_t b_, int64_t hq_, int64_t hkv_, int64_t sq_, int64_t sk_, int64_t d_)
      : dtype(t), b(b_), hq(hq_), hkv(hkv_), sq(sq_), sk(sk_), d(d_) {}
  bool varlen() const { return !varlen_q.empty(); }
  std::string name() const;  // only [A-Za-z0-9_], usable as a GoogleTest parameter name
};

inline std::string Case::name() const {
  std::ostringstream os;
  os << (dtype == DType::kBFloat16 ? "bf16" : "fp16") << "_h" << hq << "x" << hkv << "_d" << d;
  if (varlen()) {
    os << "_vq";
    for (int n : varlen_q) os << "_" << n;
    os << "_vk";
    for (int n : varlen_k) os << "_" << n;
    if (pad_q > 0) os << "_padq" << pad_q;
  } else {
    os << "_b" << b << "_q" << sq << "_k" << sk;
  }
  if (causal) os << "_causal";
  if (wl >= 0) os << "_wl" << wl;
  if (wr >= 0) os << "_wr" << wr;
  if (!with_lse) os << "_nolse";
  if (strided) os << "_strided";
  if (scale != 0.0f) os << "_scale" << std::lround(scale * 1000.0f) << "m";
  return os.str();
}

/// GoogleTest prints parameters with this instead of a byte dump.
inline void PrintTo(const Case& c, std::ostream* os) { *os << c.name(); }

/// Quiet-NaN bit patterns: an output element still holding one was never written.
inline uint16_t poison(DType t) { return t == DType::kBFloat16 ? 0x7FC0 : 0x7E00; }

/// Distance between adjacent values of t at magnitude |x| (the subnormal step near 0).
inline double ulp(DType t, double x) {
  const int mantissa_bits = t == DType::kBFloat16 ? 7 : 10;
  const int min_exp = t == DType::kBFloat16 ? -126 : -14;
  const int e = std::ilogb(std::max(std::fabs(x), std::ldexp(1.0, min_exp)));
  return std::ldexp(1.0, e - mantissa_bits);
}

/// Host buffers of one problem and params pointing into them (backend kReference). Buffers
/// carry slack around the tensors so out-of-bounds writes show up. Movable, not copyable: a
/// copy would keep pointing at the original's buffers.
struct HostProblem {
  std::vector<uint16_t> q, k, v, o;
  std::vector<float> lse;  // empty when the case asks for no LSE
  std::vector<int32_t> cu_q, cu_k;
  AttentionParams params;

  HostProblem() = default;
  HostProblem(HostProblem&&) = default;
  HostProblem& operator=(HostProblem&&) = default;
  HostProblem(const HostProblem&) = delete;
  HostProblem& operator=(const HostProblem&) = delete;

  /// params moved onto other buffers of identical size and layout (say, device copies of these
  /// vectors). Null stays null.
  AttentionParams rebased(const void* q_base, const void* k_base, const void* v_base, void* o_base,
                          float* lse_base, const int32_t* cu_q_base,
                          const int32_t* cu_k_base) const {
    auto shift = [](auto* base, const auto* old, const auto* old_base) {
      return old == nullptr ? nullptr : base + (old - old_base);
    };
    AttentionParams p = params;
    p.q = shift(static_cast<const uint16_t*>(q_base), static_cast<const uint16_t*>(params.q),
                q.data());
    p.k = shift(static_cast<const uint16_t*>(k_base), static_cast<const uint16_t*>(params.k),
                k.data());
    p.v = shift(static_cast<const uint16_t*>(v_base), static_cast<const uint16_t*>(params.v),
                v.data());
    p.o = shift(static_cast<uint16_t*>(o_base), static_cast<const uint16_t*>(params.o), o.data());
    p.lse = shift(lse_base, params.lse, lse.data());
    p.cu_seqlens_q = shift(cu_q_base, params.cu_seqlens_q, cu_q.data());
    p.cu_seqlens_k = shift(cu_k_base, params.cu_seqlens_k, cu_k.data());
    return p;
  }
};

namespace detail_ {

constexpr int64_t kSlack = 64;  // poisoned elements after every tensor (and before strided ones)

struct Layout {
  int64_t offset = 0;  // element offset of the view in its buffer
  Strides strides;
  int64_t size = 0;  // buffer size in elements
};

// rows: tokens per sequence (padded) or in total (varlen). Strided views pad each head by 8
// elements, each row by one head and each sequence by 3 rows, keeping strides multiples of 8.
inline Layout layout(const Case& c, int64_t heads, int64_t rows, int64_t batch) {
  Layout l;
  const int64_t head = c.strided ? c.d + 8 : c.d;
  l.offset = c.strided ? 8 : 0;
  l.strides.head = head;
  l.strides.seq = c.strided ? (heads + 1) * head : heads * head;
  l.strides.batch = c.varlen() ? 0 : (c.strided ? rows + 3 : rows) * l.strides.seq;
  const int64_t extent = c.varlen() ? rows * l.strides.seq : batch * l.strides.batch;
  l.size = l.offset + extent + kSlack;
  return l;
}

inline void fill_random(std::vector<uint16_t>& buf, DType t, std::mt19937_64& rng) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (auto& x : buf) {
    x = flashcore::detail::from_float(t, dist(rng));
    // No zeros: an all-zero row would hide a kernel that skips loading it.
    if (flashcore::detail::to_float(t, x) == 0.0f) x = flashcore::detail::from_float(t, 0.5f);
  }
}

inline std::vector<int32_t> prefix_sums(const std::vector<int>& lens) {
  std::vector<int32_t> cu(1, 0);
  for (int n : lens) cu.push_back(cu.back() + n);
  return cu;
}

}  // namespace detail_

/// Random inputs (normal, stddev 1, drawn from seed in the order q, k, v over whole buffers,
/// padding included), o poisoned with NaN, lse with NaN.
inline HostProblem make_problem(const Case& c, uint64_t seed) {
  if (c.varlen_q.size() != c.varlen_k.size())
    throw std::invalid_argument("Case: varlen_q and varlen_k must have the same size");
  HostProblem hp;
  AttentionParams& p = hp.params;
  p.dtype = c.dtype;
  p.batch = c.varlen() ? static_cast<int64_t>(c.varlen_q.size()) : c.b;
  p.seqlen_q = c.sq;
  p.seqlen_k = c.sk;
  int64_t rows_q = c.sq, rows_k = c.sk;
  if (c.varlen()) {
    hp.cu_q = detail_::prefix_sums(c.varlen_q);
    hp.cu_k = detail_::prefix_sums(c.varlen_k);
    for (int n : c.varlen_q) p.seqlen_q = std::max<int64_t>(p.seqlen_q, n);
    for (int n : c.varlen_k) p.seqlen_k = std::max<int64_t>(p.seqlen_k, n);
    rows_q = hp.cu_q.back() + c.pad_q;
    rows_k = hp.cu_k.back();
    p.cu_seqlens_q = hp.cu_q.data();
    p.cu_seqlens_k = hp.cu_k.data();
    p.total_q = rows_q;
    p.total_k = rows_k;
  }
  const auto lq = detail_::layout(c, c.hq, rows_q, p.batch);
  const auto lk = detail_::layout(c, c.hkv, rows_k, p.batch);
  std::mt19937_64 rng(seed);
  hp.q.resize(lq.size);
  hp.k.resize(lk.size);
  hp.v.resize(lk.size);
  detail_::fill_random(hp.q, c.dtype, rng);
  detail_::fill_random(hp.k, c.dtype, rng);
  detail_::fill_random(hp.v, c.dtype, rng);
  hp.o.assign(lq.size, poison(c.dtype));
  if (c.with_lse) {
    const int64_t n = c.hq * (c.varlen() ? rows_q : p.batch * p.seqlen_q);
    hp.lse.assign(n + detail_::kSlack, std::numeric_limits<float>::quiet_NaN());
    p.lse = hp.lse.data();
  }
  p.q = hp.q.data() + lq.offset;
  p.k = hp.k.data() + lk.offset;
  p.v = hp.v.data() + lk.offset;
  p.o = hp.o.data() + lq.offset;
  p.q_strides = p.o_strides = lq.strides;
  p.k_strides = p.v_strides = lk.strides;
  p.num_heads_q = c.hq;
  p.num_heads_kv = c.hkv;
  p.head_dim = c.d;
  p.softmax_scale = c.scale;
  p.causal = c.causal;
  p.window_left = c.wl;
  p.window_right = c.wr;
  p.backend = Backend::kReference;
  return hp;
}

/// Calls fn(b, h, i, o_offset, lse_index) for every real query row: o_offset indexes hp.o,
/// lse_index the LSE layout ([B, Hq, Sq] or [Hq, total_q]) whether or not hp has an LSE.
template <typename Fn>
void for_each_row(const HostProblem& hp, Fn&& fn) {
  const AttentionParams& p = hp.params;
  const Strides& s = p.o_strides;
  const bool varlen = !hp.cu_q.empty();
  const int64_t o0 = static_cast<const uint16_t*>(p.o) - hp.o.data();
  const int64_t total_q = !varlen ? 0 : p.total_q > 0 ? p.total_q : hp.cu_q.back();
  for (int64_t b = 0; b < p.batch; ++b) {
    const int64_t t0 = varlen ? hp.cu_q[b] : 0;
    const int64_t sq = varlen ? hp.cu_q[b + 1] - t0 : p.seqlen_q;
    for (int64_t h = 0; h < p.num_heads_q; ++h) {
      for (int64_t i = 0; i < sq; ++i) {
        const int64_t row = varlen ? (t0 + i) * s.seq : b * s.batch + i * s.seq;
        const int64_t lse =
            varlen ? h * total_q + t0 + i : (b * p.num_heads_q + h) * p.seqlen_q + i;
        fn(b, h, i, o0 + row + h * s.head, lse);
      }
    }
  }
}

struct Check {
  double max_abs_err = 0, rel_l2_err = 0, ref_lowp_max_abs_err = 0, tol = 0, max_lse_err = 0;
  int64_t bad = 0;        // O elements over tolerance, nonzero O in empty rows, LSE misses
  int64_t unwritten = 0;  // O or LSE entries of real rows still NaN
  int64_t clobbered = 0;  // padding / slack elements no longer poisoned
  bool ok = false;
  std::string msg;
};

/// Per-dtype bounds. The kernel's error is compared to that of a same-precision reference (P
/// rounded to the dtype) because that rounding dominates a correct kernel's error. But a kernel
/// rounds P relative to running maxima (online softmax), so its rounding errors are other draws
/// from the same distribution, and a max over few elements estimates their spread poorly:
/// atol, about 1/8 (bf16) and 1/2 (fp16) of an ulp at 1.0, absorbs that on small problems.
/// rel_l2 bounds sit 4-7x above what a simulated fp32 online-softmax kernel shows (~2.3e-3 bf16,
/// ~3e-4 fp16, mostly the final rounding of O), so they catch systematic bias, not noise.
struct Tolerance {
  double atol, rel_l2, lse_atol;
};
inline Tolerance tolerance(DType t) {
  return t == DType::kBFloat16 ? Tolerance{1e-3, 1e-2, 1e-3} : Tolerance{5e-4, 2e-3, 1e-3};
}

/// Checks result.o / result.lse (written by the backend under test into a problem built by
/// make_problem(c, seed)) against references recomputed from the same seed. Passes when every
/// real output is written and no padding is; |O - O_exact| <= 2 * max|O_lowp - O_exact| + atol
/// + 1 ulp of O_exact per element (both sides round O to the dtype, so a value near a rounding
/// boundary may land either way); empty rows are exactly 0; rel_l2 is within its bound; and the
/// LSE is within lse_atol (-inf where the exact one is).
inline Check compare_output(const Case& c, const HostProblem& result, uint64_t seed) {
  namespace fd = flashcore::detail;
  Check r;
  std::ostringstream msg;
  Case rc = c;
  rc.with_lse = true;  // the exact LSE also marks the empty rows
  HostProblem exact = make_problem(rc, seed);
  if (exact.q != result.q || exact.k != result.k || exact.v != result.v) {
    r.msg = "inputs differ from those of make_problem(c, seed): modified, or the wrong seed";
    return r;
  }
  const fd::FwdProblem f = fd::resolve(exact.params);
  ref::forward(f, {/*round_p=*/true});
  const std::vector<uint16_t> lowp = exact.o;
  ref::forward(f, {/*round_p=*/false});

  const DType t = c.dtype;
  const Tolerance tl = tolerance(t);
  const int64_t d = c.d;
  std::vector<char> real(result.o.size(), 0), real_lse(result.lse.size(), 0);
  for_each_row(result, [&](int64_t, int64_t, int64_t, int64_t off, int64_t li) {
    if (c.with_lse) real_lse[li] = 1;
    for (int64_t j = 0; j < d; ++j) {
      real[off + j] = 1;
      const double e = fd::to_float(t, exact.o[off + j]);
      r.ref_lowp_max_abs_err =
          std::max(r.ref_lowp_max_abs_err, std::fabs(fd::to_float(t, lowp[off + j]) - e));
    }
  });
  r.tol = 2 * r.ref_lowp_max_abs_err + tl.atol;

  double err_sq = 0, ref_sq = 0;
  auto note_bad = [&](int64_t b, int64_t h, int64_t i, const char* what, double got, double want) {
    if (r.bad++ == 0)
      msg << " first bad: " << what << " at b=" << b << " h=" << h << " i=" << i << " got " << got
          << " want " << want << ";";
  };
  for_each_row(result, [&](int64_t b, int64_t h, int64_t i, int64_t off, int64_t li) {
    const bool empty = std::isinf(exact.lse[li]);
    for (int64_t j = 0; j < d; ++j) {
      const double x = fd::to_float(t, result.o[off + j]);
      const double e = fd::to_float(t, exact.o[off + j]);
      if (std::isnan(x)) {
        ++r.unwritten;
        continue;
      }
      const double err = std::fabs(x - e);
      r.max_abs_err = std::max(r.max_abs_err, err);
      err_sq += err * err;
      ref_sq += e * e;
      if (empty ? x != 0.0 : !(err <= r.tol + ulp(t, e))) note_bad(b, h, i, "O", x, e);
    }
    if (!c.with_lse) return;
    const double x = result.lse[li], e = exact.lse[li];
    if (std::isnan(x)) {
      ++r.unwritten;
    } else if (!(x == e)) {  // equal covers both -inf
      const double err = std::fabs(x - e);
      r.max_lse_err = std::max(r.max_lse_err, err);
      if (!(err <= tl.lse_atol)) note_bad(b, h, i, "LSE", x, e);
    }
  });
  // All-masked problems have ||O_exact|| = 0: then any error at all is infinitely wrong.
  r.rel_l2_err = ref_sq > 0 ? std::sqrt(err_sq / ref_sq) : (err_sq > 0 ? INFINITY : 0.0);

  for (size_t j = 0; j < result.o.size(); ++j) r.clobbered += !real[j] && result.o[j] != poison(t);
  for (size_t j = 0; j < result.lse.size(); ++j)
    r.clobbered += !real_lse[j] && !std::isnan(result.lse[j]);

  r.ok = r.bad == 0 && r.unwritten == 0 && r.clobbered == 0 && r.rel_l2_err <= tl.rel_l2;
  std::ostringstream head;
  head << c.name() << ": max_abs_err " << r.max_abs_err << " (tol " << r.tol << " = 2 x lowp "
       << r.ref_lowp_max_abs_err << " + " << tl.atol << "), rel_l2 " << r.rel_l2_err << " (bound "
       << tl.rel_l2 << "), max_lse_err " << r.max_lse_err << ", bad " << r.bad << ", unwritten "
       << r.unwritten << ", clobbered " << r.clobbered << ";";
  r.msg = head.str() + msg.str();
  return r;
}

}  // namespace flashcore::test
