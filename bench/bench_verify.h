// --verify for flashcore-bench: compares an output computed by run() with the CPU reference.
// Big problems are checked on slices that are exact sub-problems of the same data: a sequence,
// a contiguous set of whole GQA groups of heads, the last n query rows against all keys (the
// bottom-right mask alignment is unchanged) and, with a zero right window (causal), the first
// n rows against keys [0, n + sk - sq). The whole output is also scanned for NaN (poison).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "bench_common.h"
#include "reference/reference.h"

namespace flashcore::bench {

/// Reference work (visible pairs × heads × head_dim) above which only slices are verified.
#ifndef FLASHCORE_BENCH_VERIFY_BUDGET
#define FLASHCORE_BENCH_VERIFY_BUDGET 6e9
#endif
constexpr double kVerifyBudget = FLASHCORE_BENCH_VERIFY_BUDGET;

struct VerifyResult {
  bool pass = false;
  double max_err = 0;  // |run() - exact reference|
  double ref_err = 0;  // |same-precision reference (round_p) - exact reference|
  int64_t nan_count = 0;
  std::string scope;  // what was compared
  std::string error;  // a reference failure, if any
};

namespace verify_detail {

struct Slice {
  int64_t seq, kv_head0, num_kv_heads, row0, rows, keys;
};

inline int64_t q_len(const Case& c, const HostData& h, int64_t b) {
  return c.varlen ? h.cu_q[b + 1] - h.cu_q[b] : c.sq;
}
inline int64_t k_len(const Case& c, const HostData& h, int64_t b) {
  return c.varlen ? h.cu_k[b + 1] - h.cu_k[b] : c.sk;
}

// Runs both references on one slice and folds its errors into r.
inline void check_slice(const Case& c, const HostData& h, const Slice& s, VerifyResult& r) {
  const int64_t g = c.hq / c.hkv, nq = s.num_kv_heads * g, d = c.d;
  const int64_t q_tok = (c.varlen ? h.cu_q[s.seq] : s.seq * c.sq) + s.row0;
  const int64_t k_tok = c.varlen ? h.cu_k[s.seq] : s.seq * c.sk;
  const Strides qs{0, c.hq * d, d}, ks{0, c.hkv * d, d};
  AttentionParams p;
  p.q = h.q.data() + q_tok * qs.seq + s.kv_head0 * g * d;
  p.k = h.k.data() + k_tok * ks.seq + s.kv_head0 * d;
  p.v = h.v.data() + k_tok * ks.seq + s.kv_head0 * d;
  p.q_strides = qs;
  p.k_strides = p.v_strides = ks;
  p.o_strides = {s.rows * nq * d, nq * d, d};
  p.dtype = c.dtype;
  p.batch = 1;
  p.seqlen_q = s.rows;
  p.seqlen_k = s.keys;
  p.num_heads_q = nq;
  p.num_heads_kv = s.num_kv_heads;
  p.head_dim = d;
  p.causal = c.causal;
  p.window_left = c.wl;
  p.window_right = c.wr;
  p.backend = Backend::kReference;
  std::vector<uint16_t> exact(static_cast<size_t>(s.rows * nq * d));
  std::vector<uint16_t> rounded(exact.size());
  p.o = exact.data();
  Status st = ref::forward(detail::resolve(p));
  p.o = rounded.data();
  if (st.ok()) st = ref::forward(detail::resolve(p), ref::Options{true, 0});
  if (!st.ok()) {
    r.error = st.message;
    return;
  }
  for (int64_t i = 0; i < s.rows; ++i)
    for (int64_t hh = 0; hh < nq; ++hh)
      for (int64_t e = 0; e < d; ++e) {
        const size_t ro = static_cast<size_t>((i * nq + hh) * d + e);
        const size_t go = static_cast<size_t>((q_tok + i) * qs.seq + (s.kv_head0 * g + hh) * d + e);
        const double x = detail::to_float(c.dtype, exact[ro]);
        const double y = detail::to_float(c.dtype, rounded[ro]);
        const double z = detail::to_float(c.dtype, h.o[go]);
        r.ref_err = std::max(r.ref_err, std::fabs(y - x));
        if (!std::isnan(z)) r.max_err = std::max(r.max_err, std::fabs(z - x));
      }
}

}  // namespace verify_detail

/// Verifies h.o. Rule: no NaN anywhere in the output, and on the compared slices
/// max_err <= 2 * ref_err + 1e-3.
inline VerifyResult verify(const Case& c, const HostData& h) {
  using verify_detail::Slice;
  VerifyResult r;
  for (const uint16_t x : h.o) r.nan_count += std::isnan(detail::to_float(c.dtype, x)) ? 1 : 0;

  double total = 0;
  int64_t longest = 0;
  for (int64_t b = 0; b < c.b; ++b) {
    total += visible_pairs(c, verify_detail::q_len(c, h, b), verify_detail::k_len(c, h, b));
    if (verify_detail::q_len(c, h, b) > verify_detail::q_len(c, h, longest)) longest = b;
  }
  total *= static_cast<double>(c.hq * c.d);

  std::vector<Slice> slices;
  if (total <= kVerifyBudget) {
    for (int64_t b = 0; b < c.b; ++b)
      slices.push_back(
          {b, 0, c.hkv, 0, verify_detail::q_len(c, h, b), verify_detail::k_len(c, h, b)});
    r.scope = "all";
  } else {
    std::vector<int64_t> seqs = {0, c.b - 1, longest};
    std::sort(seqs.begin(), seqs.end());
    seqs.erase(std::unique(seqs.begin(), seqs.end()), seqs.end());
    const int64_t g = c.hq / c.hkv;
    const int64_t nkv = std::max<int64_t>(1, std::min<int64_t>(c.hkv, 16 / g));
    const bool zero_right = c.causal || c.wr == 0;
    r.scope = "heads " + std::to_string(nkv * g) + "/" + std::to_string(c.hq) + " of seqs";
    for (const int64_t b : seqs) {
      const int64_t lq = verify_detail::q_len(c, h, b), lk = verify_detail::k_len(c, h, b);
      const int64_t h0 = b == 0 ? 0 : c.hkv - nkv;  // first heads of seq 0, last heads elsewhere
      const double per_row = std::max<double>(1.0, static_cast<double>(nkv * g * lk * c.d));
      const double budget = kVerifyBudget / static_cast<double>(2 * seqs.size());
      const int64_t n =
          std::min<int64_t>(lq, std::max<int64_t>(16, static_cast<int64_t>(budget / per_row)));
      if (n == lq || (zero_right && 2 * n >= lq)) {
        slices.push_back({b, h0, nkv, 0, lq, lk});
        r.scope += " " + std::to_string(b) + " (all rows)";
      } else if (!zero_right) {
        slices.push_back({b, h0, nkv, lq - n, n, lk});
        r.scope += " " + std::to_string(b) + " (last " + std::to_string(n) + " rows)";
      } else {
        slices.push_back({b, h0, nkv, lq - n, n, lk});
        slices.push_back({b, h0, nkv, 0, n, std::max<int64_t>(0, n + lk - lq)});
        r.scope += " " + std::to_string(b) + " (first and last " + std::to_string(n) + " rows)";
      }
    }
  }
  for (const Slice& s : slices) {
    if (s.rows > 0) verify_detail::check_slice(c, h, s, r);
    if (!r.error.empty()) return r;
  }
  r.pass = r.nan_count == 0 && r.max_err <= 2.0 * r.ref_err + 1e-3;
  return r;
}

}  // namespace flashcore::bench
