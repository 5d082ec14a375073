// CPU reference forward: the executable spec. Logits, softmax and P·V are accumulated in double
// from inputs converted to float, so its own error is far below any kernel's; one task per
// (batch, query head, block of query rows), each task writing a disjoint set of O rows and LSE
// entries.
#include "reference/reference.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <thread>
#include <vector>

#include "common/dtype.h"

namespace flashcore::ref {
namespace {

using detail::FwdProblem;

// Where sequence b starts and how long it is. Varlen sequences start at packed token cu[b]
// (element offset cu[b] * seq stride); padded batches at b * batch stride.
struct SeqView {
  int64_t q_token0 = 0, k_token0 = 0;  // first packed token (varlen), else 0
  int64_t sq = 0, sk = 0;
};

SeqView seq_view(const FwdProblem& f, int64_t b) {
  const AttentionParams& p = f.p;
  if (!f.varlen) return {0, 0, p.seqlen_q, p.seqlen_k};
  return {p.cu_seqlens_q[b], p.cu_seqlens_k[b], p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b],
          p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b]};
}

// Element offset of row i of head h in sequence b of a tensor with strides s.
int64_t row_offset(const FwdProblem& f, const Strides& s, int64_t b, int64_t token0, int64_t i,
                   int64_t h) {
  const int64_t base = f.varlen ? token0 * s.seq : b * s.batch;
  return base + i * s.seq + h * s.head;
}

// Converts rows [row0, row0 + n) of head h into a dense float [n, d] buffer, so the
// O(sq * sk * d) loops below do not convert each element sq times.
void load_rows(const FwdProblem& f, const void* ptr, const Strides& s, int64_t b, int64_t token0,
               int64_t row0, int64_t n, int64_t h, std::vector<float>& out) {
  const int64_t d = f.p.head_dim;
  const auto* src = static_cast<const uint16_t*>(ptr);
  out.resize(static_cast<size_t>(n * d));
  for (int64_t j = 0; j < n; ++j) {
    const uint16_t* row = src + row_offset(f, s, b, token0, row0 + j, h);
    for (int64_t c = 0; c < d; ++c) out[j * d + c] = detail::to_float(f.p.dtype, row[c]);
  }
}

// Rows per task: small enough that one long sequence still spreads over every core.
constexpr int64_t kRowsPerTask = 64;

// Four independent partial sums: one serial chain of d dependent adds is latency bound.
double dot(const float* a, const float* b, int64_t d) {
  double acc[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t c = 0;
  for (; c + 4 <= d; c += 4)
    for (int u = 0; u < 4; ++u) acc[u] += static_cast<double>(a[c + u]) * b[c + u];
  for (; c < d; ++c) acc[0] += static_cast<double>(a[c]) * b[c];
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

// Query rows [i0, i1) of head h in sequence b.
void run_rows(const FwdProblem& f, const Options& opt, int64_t b, int64_t h, int64_t i0,
              int64_t i1) {
  const AttentionParams& p = f.p;
  const SeqView sv = seq_view(f, b);
  i1 = std::min(i1, sv.sq);
  if (i0 >= i1) return;
  const int64_t d = p.head_dim;
  const int64_t hkv = h / f.group;
  std::vector<float> q, k, v;
  load_rows(f, p.q, p.q_strides, b, sv.q_token0, i0, i1 - i0, h, q);
  load_rows(f, p.k, p.k_strides, b, sv.k_token0, 0, sv.sk, hkv, k);
  load_rows(f, p.v, p.v_strides, b, sv.k_token0, 0, sv.sk, hkv, v);

  // LSE is [B, Hq, Sq] padded, or [Hq, total_q] packed, with total_q the caller's where given
  // (rows past the last sequence are padding), else cu_seqlens_q[batch].
  float* lse_row = nullptr;
  if (p.lse != nullptr) {
    if (!f.varlen) {
      lse_row = p.lse + (b * p.num_heads_q + h) * p.seqlen_q;
    } else {
      const int64_t total_q = p.total_q > 0 ? p.total_q : p.cu_seqlens_q[p.batch];
      lse_row = p.lse + h * total_q + sv.q_token0;
    }
  }

  std::vector<double> s, acc(static_cast<size_t>(d));
  auto* o = static_cast<uint16_t*>(p.o);
  for (int64_t i = i0; i < i1; ++i) {
    const detail::KeyRange r = detail::visible_keys(i, sv.sq, sv.sk, f.window_left, f.window_right);
    uint16_t* o_row = o + row_offset(f, p.o_strides, b, sv.q_token0, i, h);
    if (r.hi <= r.lo) {  // no visible key: O = 0, LSE = -inf by definition
      for (int64_t c = 0; c < d; ++c) o_row[c] = detail::from_float(p.dtype, 0.0f);
      if (lse_row) lse_row[i] = -std::numeric_limits<float>::infinity();
      continue;
    }
    const float* qi = &q[(i - i0) * d];
    s.assign(static_cast<size_t>(r.hi - r.lo), 0.0);
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t j = r.lo; j < r.hi; ++j) {
      s[j - r.lo] = static_cast<double>(f.scale) * dot(qi, &k[j * d], d);
      m = std::max(m, s[j - r.lo]);
    }
    std::fill(acc.begin(), acc.end(), 0.0);
    double l = 0.0;
    for (int64_t j = r.lo; j < r.hi; ++j) {
      const double pj = std::exp(s[j - r.lo] - m);
      l += pj;
      // Kernels sum fp32 P for the normaliser but feed P rounded to the dtype into the MMA.
      const double pv = opt.round_p ? detail::round_to(p.dtype, static_cast<float>(pj)) : pj;
      const float* vj = &v[j * d];
      for (int64_t c = 0; c < d; ++c) acc[c] += pv * vj[c];
    }
    for (int64_t c = 0; c < d; ++c)
      o_row[c] = detail::from_float(p.dtype, static_cast<float>(acc[c] / l * opt.o_scale));
    if (lse_row) lse_row[i] = static_cast<float>(m + std::log(l));
  }
}

}  // namespace

Status forward(const FwdProblem& f, const Options& opt) {
  const int64_t row_blocks = (f.p.seqlen_q + kRowsPerTask - 1) / kRowsPerTask;
  const int64_t tasks = f.p.batch * f.p.num_heads_q * row_blocks;
  if (tasks <= 0) return {};
  int64_t threads = opt.num_threads > 0 ? opt.num_threads : std::thread::hardware_concurrency();
  threads = std::clamp<int64_t>(threads, 1, tasks);

  // Tasks are handed out dynamically: with causal masks or varlen batches their costs differ.
  std::atomic<int64_t> next{0};
  auto worker = [&] {
    for (int64_t t; (t = next.fetch_add(1)) < tasks;) {
      const int64_t blk = t % row_blocks, bh = t / row_blocks;
      run_rows(f, opt, bh / f.p.num_heads_q, bh % f.p.num_heads_q, blk * kRowsPerTask,
               (blk + 1) * kRowsPerTask);
    }
  };
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& th : pool) th.join();
  return {};
}

}  // namespace flashcore::ref
