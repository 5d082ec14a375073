// flashcore-bench helpers with no CUDA in them: the benchmark case, its host data (random
// inputs, varlen lengths), FLOP counting, timing statistics and small output utilities.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "common/dtype.h"
#include "common/fwd_problem.h"
#include "flashcore/flashcore.h"

namespace flashcore::bench {

/// One benchmark row: a shape and a mask. Tensors are contiguous (B, S, H, D), or packed
/// (total, H, D) when varlen.
struct Case {
  std::string name;
  int64_t b = 1, hq = 4, hkv = 4, sq = 256, sk = 256, d = 64;
  DType dtype = DType::kBFloat16;
  bool causal = false;
  int64_t wl = -1, wr = -1;
  bool varlen = false;
  bool halved_flops = false;  // the ANCHORS convention: 4·b·h·s²·d / 2 for causal, sq == sk
};

inline std::string short_len(int64_t s) {
  return s >= 1024 && s % 1024 == 0 ? std::to_string(s / 1024) + "k" : std::to_string(s);
}

inline std::string default_name(const Case& c) {
  std::string n = "b" + std::to_string(c.b) + "_hq" + std::to_string(c.hq) + "_hkv" +
                  std::to_string(c.hkv) + "_sq" + std::to_string(c.sq) + "_sk" +
                  std::to_string(c.sk) + "_d" + std::to_string(c.d) + "_" + to_string(c.dtype);
  if (c.causal) n += "_causal";
  if (c.wl >= 0 || c.wr >= 0) n += "_w" + std::to_string(c.wl) + "," + std::to_string(c.wr);
  if (c.varlen) n += "_varlen";
  return n;
}

inline std::string shape_str(const Case& c) {
  char buf[128];
  std::snprintf(buf, sizeof buf, "b%lld hq%lld/%lld sq%lld sk%lld d%lld %s%s", (long long)c.b,
                (long long)c.hq, (long long)c.hkv, (long long)c.sq, (long long)c.sk, (long long)c.d,
                to_string(c.dtype), c.varlen ? " varlen" : "");
  return buf;
}

/// The prefill grid of /work/shared/ANCHORS.md: 16k tokens per batch, hidden 2048.
inline std::vector<Case> prefill_grid(DType dtype) {
  const struct {
    int d, s;
    bool causal;
  } rows[] = {{64, 512, false},    {64, 1024, false},  {64, 1024, true},   {64, 4096, false},
              {64, 16384, false},  {64, 16384, true},  {128, 512, false},  {128, 512, true},
              {128, 1024, false},  {128, 1024, true},  {128, 4096, false}, {128, 4096, true},
              {128, 16384, false}, {128, 16384, true}, {256, 1024, false}, {256, 4096, false},
              {256, 16384, false}, {256, 16384, true}};
  std::vector<Case> out;
  for (const auto& r : rows) {
    Case c;
    c.b = 16384 / r.s;
    c.hq = c.hkv = 2048 / r.d;
    c.sq = c.sk = r.s;
    c.d = r.d;
    c.dtype = dtype;
    c.causal = r.causal;
    c.halved_flops = r.causal;
    c.name =
        "prefill_d" + std::to_string(r.d) + "_s" + short_len(r.s) + (r.causal ? "_causal" : "");
    out.push_back(c);
  }
  return out;
}

/// splitmix64: a fast, seedable generator; good enough for benchmark inputs.
inline uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/// Fills dst with approximately standard-normal values (sum of four 16-bit uniforms, scaled)
/// rounded to dtype. Chunks of fixed size get their own seed, so the result does not depend on
/// the number of threads.
inline void fill_random(std::vector<uint16_t>& dst, DType dtype, uint64_t seed) {
  constexpr size_t kChunk = size_t{1} << 20;
  const size_t n = dst.size(), chunks = (n + kChunk - 1) / kChunk;
  const size_t nthreads =
      std::max<size_t>(1, std::min<size_t>(chunks, std::thread::hardware_concurrency()));
  auto work = [&](size_t t) {
    for (size_t c = t; c < chunks; c += nthreads) {
      uint64_t s = seed * 0x100000001B3ull + c;
      for (size_t i = c * kChunk, e = std::min(n, i + kChunk); i < e; ++i) {
        const uint64_t r = splitmix64(s);
        const float u = static_cast<float>((r & 0xFFFF) + ((r >> 16) & 0xFFFF) +
                                           ((r >> 32) & 0xFFFF) + (r >> 48)) /
                        65536.0f;
        dst[i] = detail::from_float(dtype, (u - 2.0f) * 1.7320508f);  // var(sum of 4 U) = 1/3
      }
    }
  };
  std::vector<std::thread> pool;
  for (size_t t = 1; t < nthreads; ++t) pool.emplace_back(work, t);
  work(0);
  for (auto& th : pool) th.join();
}

/// Random per-sequence lengths in [0, max] with a fixed seed; when b >= 2 sequence 1 has no
/// queries and when b >= 3 sequence 2 has no keys, so empty sequences are always exercised.
inline void varlen_offsets(const Case& c, std::vector<int32_t>& cu_q, std::vector<int32_t>& cu_k) {
  uint64_t s = 0xF1A5C0DEull;
  cu_q.assign(c.b + 1, 0);
  cu_k.assign(c.b + 1, 0);
  for (int64_t i = 0; i < c.b; ++i) {
    int64_t lq = static_cast<int64_t>(splitmix64(s) % static_cast<uint64_t>(c.sq + 1));
    int64_t lk = static_cast<int64_t>(splitmix64(s) % static_cast<uint64_t>(c.sk + 1));
    if (i == 1) lq = 0;
    if (i == 2) lk = 0;
    cu_q[i + 1] = static_cast<int32_t>(cu_q[i] + lq);
    cu_k[i + 1] = static_cast<int32_t>(cu_k[i] + lk);
  }
}

/// (query, key) pairs one head of one sequence computes under the case's mask.
inline double visible_pairs(const Case& c, int64_t sq, int64_t sk) {
  const int64_t wr = c.causal ? 0 : c.wr;
  if (c.wl < 0 && wr < 0) return static_cast<double>(sq) * static_cast<double>(sk);
  double n = 0;
  for (int64_t i = 0; i < sq; ++i) {
    const detail::KeyRange r = detail::visible_keys(i, sq, sk, c.wl, wr);
    if (r.hi > r.lo) n += static_cast<double>(r.hi - r.lo);
  }
  return n;
}

/// FLOPs of the forward pass: 4·d per visible (query, key) pair per query head (two GEMMs).
inline double flops(const Case& c, const std::vector<int32_t>& cu_q,
                    const std::vector<int32_t>& cu_k) {
  const double per_pair = 4.0 * static_cast<double>(c.d) * static_cast<double>(c.hq);
  if (c.halved_flops)
    return per_pair * static_cast<double>(c.b) * static_cast<double>(c.sq) * c.sk / 2.0;
  double pairs = 0;
  if (c.varlen) {
    for (int64_t i = 0; i < c.b; ++i)
      pairs += visible_pairs(c, cu_q[i + 1] - cu_q[i], cu_k[i + 1] - cu_k[i]);
  } else {
    pairs = static_cast<double>(c.b) * visible_pairs(c, c.sq, c.sk);
  }
  return per_pair * pairs;
}

/// Host copies of the case's inputs and of the output under test. Layout: contiguous
/// (B, S, H, D), or packed (total, H, D) with cu_q/cu_k when varlen.
struct HostData {
  std::vector<uint16_t> q, k, v, o;
  std::vector<int32_t> cu_q, cu_k;
};

struct Sizes {
  int64_t q_elems, k_elems;  // per tensor; o is like q, v like k
};

// Random inputs (fixed seeds) and, when varlen, the sequence offsets, in host memory.
inline Sizes make_host_data(const Case& c, HostData& h) {
  int64_t tq = c.b * c.sq, tk = c.b * c.sk;
  if (c.varlen) {
    varlen_offsets(c, h.cu_q, h.cu_k);
    tq = h.cu_q.back();
    tk = h.cu_k.back();
  }
  const Sizes s{tq * c.hq * c.d, tk * c.hkv * c.d};
  h.q.resize(s.q_elems);
  h.k.resize(s.k_elems);
  h.v.resize(s.k_elems);
  h.o.assign(s.q_elems, 0xFFFF);  // NaN in both fp16 and bf16: the poison
  fill_random(h.q, c.dtype, 1);
  fill_random(h.k, c.dtype, 2);
  fill_random(h.v, c.dtype, 3);
  return s;
}

/// cu_q / cu_k: where the kernel reads the offsets; h: their host copy (the totals).
inline AttentionParams make_params(const Case& c, const HostData& h, const void* q, const void* k,
                                   const void* v, void* o, const int32_t* cu_q, const int32_t* cu_k,
                                   Backend backend) {
  AttentionParams p;
  p.q = q, p.k = k, p.v = v, p.o = o;
  const int64_t qb = c.varlen ? 0 : c.sq * c.hq * c.d, kb = c.varlen ? 0 : c.sk * c.hkv * c.d;
  p.q_strides = p.o_strides = {qb, c.hq * c.d, c.d};
  p.k_strides = p.v_strides = {kb, c.hkv * c.d, c.d};
  p.dtype = c.dtype;
  p.batch = c.b, p.seqlen_q = c.sq, p.seqlen_k = c.sk;
  p.num_heads_q = c.hq, p.num_heads_kv = c.hkv, p.head_dim = c.d;
  p.cu_seqlens_q = c.varlen ? cu_q : nullptr;
  p.cu_seqlens_k = c.varlen ? cu_k : nullptr;
  if (c.varlen) p.total_q = h.cu_q.back(), p.total_k = h.cu_k.back();
  p.causal = c.causal;
  p.window_left = c.wl, p.window_right = c.wr;
  p.backend = backend;
  return p;
}

struct Stats {
  double median = 0, p10 = 0, p90 = 0;
};

/// Percentiles by linear interpolation between order statistics.
inline Stats summarize(std::vector<double> us) {
  Stats st;
  if (us.empty()) return st;
  std::sort(us.begin(), us.end());
  auto pct = [&](double p) {
    const double x = p * static_cast<double>(us.size() - 1);
    const size_t i = static_cast<size_t>(x);
    const size_t j = std::min(i + 1, us.size() - 1);
    return us[i] + (us[j] - us[i]) * (x - static_cast<double>(i));
  };
  st.median = pct(0.5);
  st.p10 = pct(0.1);
  st.p90 = pct(0.9);
  return st;
}

/// The git revision written at build time into FLASHCORE_GIT_REV_FILE, read at run time.
inline std::string git_revision() {
#ifdef FLASHCORE_GIT_REV_FILE
  std::ifstream in(FLASHCORE_GIT_REV_FILE);
  std::string rev;
  if (in && std::getline(in, rev) && !rev.empty()) return rev;
#endif
  return "unknown";
}

inline std::string utc_now_iso8601() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

inline std::string json_escape(const std::string& s) {
  std::string out;
  for (const char ch : s) {
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (static_cast<unsigned char>(ch) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", ch);
      out += buf;
    } else {
      out += ch;
    }
  }
  return out;
}

}  // namespace flashcore::bench
