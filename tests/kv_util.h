// Host-side KV-cache problems for the tests: random q, cache and new rows in host memory and
// KvCacheParams pointing into them, the header's rotary formula written out, and the check
// that an entry's output equals forward() over its keys (built independently of the
// reference's KV-cache code).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include "common/dtype.h"
#include "flashcore/kvcache.h"
#include "reference/reference.h"

namespace flashcore::test {

namespace fd = flashcore::detail;

struct KvSpec {
  DType dtype = DType::kBFloat16;
  int64_t batch = 3, seqlen_q = 1, hq = 8, hkv = 2, d = 64;
  std::vector<int> lens = {5, 0, 17};  // cache_seqlens
  int64_t capacity = 32;               // rows per entry (paged: rounded up to whole pages)
  bool append = true;
  int64_t page_size = 0;  // 0: contiguous
  bool causal = true;
  int64_t wl = -1, wr = -1;  // sliding window (kvcache.h), -1: unbounded
  int64_t rotary_dim = 0;
  bool interleaved = false;
  int64_t max_position = 64;
  bool nan_past_len = true;  // cache rows at or past cache_seqlens (and spare pages) hold NaN
  std::vector<int> leftpad;  // cache_leftpad per entry (empty: none); rows before it hold NaN
};

// A problem in host memory: random q, cache and new rows (no zeros), o and lse set to 7.
struct KvHost {
  KvSpec spec;
  std::vector<uint16_t> q, o, k_cache, v_cache, k_new, v_new, cos, sin;
  std::vector<float> lse;
  std::vector<int32_t> seqlens, leftpads, block_table;
  int32_t flag = 0;
  KvCacheParams p;
  int64_t max_pages = 0, num_pages = 0;

  explicit KvHost(const KvSpec& s, uint64_t seed = 1) : spec(s) {
    std::mt19937_64 rng(seed);
    // Each tensor in chunks of 2^20 values, each chunk its own generator seeded from (seed,
    // tensor, chunk), filled on every hardware thread: a 64k-token cache is 1e8 values, and
    // one generator took seconds of a GPU test run for it.
    uint64_t tensor = 0;
    auto fill = [&](std::vector<uint16_t>& v, size_t n) {
      v.resize(n);
      constexpr size_t kChunk = size_t(1) << 20;
      const size_t chunks = (n + kChunk - 1) / kChunk;
      const uint64_t base = seed * 0x9E3779B97F4A7C15ull + ++tensor * 0xBF58476D1CE4E5B9ull;
      std::atomic<size_t> next{0};
      auto work = [&] {
        for (size_t c; (c = next++) < chunks;) {
          std::mt19937_64 g(base + c);
          std::normal_distribution<float> dist(0.0f, 1.0f);
          for (size_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i) {
            v[i] = fd::from_float(s.dtype, dist(g));
            if (fd::to_float(s.dtype, v[i]) == 0.0f) v[i] = fd::from_float(s.dtype, 0.5f);
          }
        }
      };
      const size_t threads = std::min<size_t>(chunks, std::max(1u, std::thread::hardware_concurrency()));
      std::vector<std::thread> pool;
      for (size_t t = 1; t < threads; ++t) pool.emplace_back(work);
      work();
      for (auto& t : pool) t.join();
    };
    const int64_t B = s.batch, d = s.d;
    fill(q, B * s.seqlen_q * s.hq * d);
    // A finite sentinel, not NaN: the poisoned entries must be written NaN by the call.
    o.assign(q.size(), fd::from_float(s.dtype, 7.0f));
    lse.assign(B * s.hq * s.seqlen_q, 7.0f);
    fill(k_new, B * s.seqlen_q * s.hkv * d);
    fill(v_new, k_new.size());
    const int64_t row = s.hkv * d;
    if (s.page_size > 0) {
      max_pages = (s.capacity + s.page_size - 1) / s.page_size;
      num_pages = B * max_pages + 3;  // spare pages nobody maps
      fill(k_cache, num_pages * s.page_size * row);
      fill(v_cache, k_cache.size());
      std::vector<int32_t> pages(num_pages);
      std::iota(pages.begin(), pages.end(), 0);
      std::shuffle(pages.begin(), pages.end(), rng);
      block_table.assign(pages.begin(), pages.begin() + B * max_pages);
    } else {
      fill(k_cache, B * s.capacity * row);
      fill(v_cache, k_cache.size());
    }
    seqlens.assign(s.lens.begin(), s.lens.end());
    leftpads.assign(s.leftpad.begin(), s.leftpad.end());
    if (s.nan_past_len) {  // a kernel that reads them leaks NaN into its output
      const uint16_t nan = fd::from_float(s.dtype, std::numeric_limits<float>::quiet_NaN());
      std::vector<bool> used(k_cache.size() / d, false);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t r = s.leftpad.empty() ? 0 : std::max(s.leftpad[b], 0);
             r < std::max<int64_t>(s.lens[b], 0) && r < s.capacity; ++r)
          for (int64_t h = 0; h < s.hkv; ++h) used[cache_index(b, r, h) / d] = true;
      for (size_t rowi = 0; rowi < used.size(); ++rowi)
        if (!used[rowi])
          for (int64_t c = 0; c < d; ++c) k_cache[rowi * d + c] = v_cache[rowi * d + c] = nan;
    }
    if (s.rotary_dim > 0) {  // LLaMA's angles: pos * 10000^(-2i / rotary_dim)
      const int64_t half = s.rotary_dim / 2;
      for (int64_t pos = 0; pos < s.max_position; ++pos)
        for (int64_t i = 0; i < half; ++i) {
          const double a = pos * std::pow(10000.0, -2.0 * i / s.rotary_dim);
          cos.push_back(fd::from_float(s.dtype, static_cast<float>(std::cos(a))));
          sin.push_back(fd::from_float(s.dtype, static_cast<float>(std::sin(a))));
        }
    }
    rebuild();
  }
  // Pointers into the vectors (call again after copying the object).
  void rebuild() {
    const KvSpec& s = spec;
    const int64_t d = s.d;
    p = {};
    p.q = q.data();
    p.o = o.data();
    p.q_strides = p.o_strides = {s.seqlen_q * s.hq * d, s.hq * d, d};
    p.lse = lse.data();
    p.k_cache = k_cache.data();
    p.v_cache = v_cache.data();
    const int64_t outer_rows = s.page_size > 0 ? s.page_size : s.capacity;
    p.k_cache_strides = p.v_cache_strides = {outer_rows * s.hkv * d, s.hkv * d, d};
    if (s.page_size > 0) {
      p.block_table = block_table.data();
      p.block_table_stride = p.max_pages_per_seq = max_pages;
      p.num_pages = num_pages;
      p.page_size = s.page_size;
    } else {
      p.cache_capacity = s.capacity;
    }
    p.cache_seqlens = seqlens.data();
    p.cache_leftpad = leftpads.empty() ? nullptr : leftpads.data();
    if (s.append) {
      p.k_new = k_new.data();
      p.v_new = v_new.data();
      p.k_new_strides = p.v_new_strides = {s.seqlen_q * s.hkv * d, s.hkv * d, d};
    }
    p.error_flag = &flag;
    p.dtype = s.dtype;
    p.batch = s.batch;
    p.seqlen_q = s.seqlen_q;
    p.num_heads_q = s.hq;
    p.num_heads_kv = s.hkv;
    p.head_dim = d;
    p.causal = s.causal;
    p.window_left = s.wl;
    p.window_right = s.wr;
    if (s.rotary_dim > 0) {
      p.rotary = {cos.data(), sin.data(), s.rotary_dim, s.max_position, s.interleaved};
    }
  }
  // Element index of row r, head h of entry b's cache, through the block table when paged.
  int64_t cache_index(int64_t b, int64_t r, int64_t h) const {
    const KvSpec& s = spec;
    if (s.page_size == 0) return ((b * s.capacity + r) * s.hkv + h) * s.d;
    const int64_t page = block_table[b * max_pages + r / s.page_size];
    return ((page * s.page_size + r % s.page_size) * s.hkv + h) * s.d;
  }
};

// The header's rotary formula, written out here: pairs, angle index, rounding to the dtype.
inline std::vector<uint16_t> rotated(const KvHost& kh, const uint16_t* row, int64_t pos) {
  const KvSpec& s = kh.spec;
  std::vector<uint16_t> out(row, row + s.d);
  const int64_t half = s.rotary_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    const int64_t a = s.interleaved ? 2 * i : i, b = s.interleaved ? 2 * i + 1 : i + half;
    const double x = fd::to_float(s.dtype, row[a]), y = fd::to_float(s.dtype, row[b]);
    const double c = fd::to_float(s.dtype, kh.cos[pos * half + i]);
    const double sn = fd::to_float(s.dtype, kh.sin[pos * half + i]);
    out[a] = fd::from_float(s.dtype, static_cast<float>(x * c - y * sn));
    out[b] = fd::from_float(s.dtype, static_cast<float>(x * sn + y * c));
  }
  return out;
}

// What entry b's output must be: forward() on a dense one-entry problem whose keys are the
// cache rows the entry had before the call followed by its new rows (rotated where asked).
inline void expect_entry_matches_forward(const KvHost& before, const KvHost& after, int64_t b) {
  const KvSpec& s = before.spec;
  const int64_t len = s.lens[b], d = s.d;
  // Keys: cache rows from the left pad on, then the new rows; positions stay the rows'.
  const int64_t pad = s.leftpad.empty() ? 0 : s.leftpad[b];
  const int64_t sk = len + (s.append ? s.seqlen_q : 0) - pad;
  const bool masked = s.causal || s.wl >= 0 || s.wr >= 0;
  std::vector<uint16_t> q(s.seqlen_q * s.hq * d), k(sk * s.hkv * d), v(k.size());
  for (int64_t i = 0; i < s.seqlen_q; ++i)
    for (int64_t h = 0; h < s.hq; ++h) {
      const uint16_t* src = &before.q[((b * s.seqlen_q + i) * s.hq + h) * d];
      std::vector<uint16_t> row(src, src + d);
      if (s.rotary_dim > 0) row = rotated(before, src, masked ? len + i : len);
      std::copy(row.begin(), row.end(), &q[(i * s.hq + h) * d]);
    }
  for (int64_t rk = 0; rk < sk; ++rk)
    for (int64_t h = 0; h < s.hkv; ++h) {
      const int64_t r = pad + rk;
      std::vector<uint16_t> kr(d), vr(d);
      if (r < len) {
        const uint16_t* kc = &before.k_cache[before.cache_index(b, r, h)];
        const uint16_t* vc = &before.v_cache[before.cache_index(b, r, h)];
        kr.assign(kc, kc + d);
        vr.assign(vc, vc + d);
      } else {
        const int64_t i = r - len;
        const uint16_t* kn = &before.k_new[((b * s.seqlen_q + i) * s.hkv + h) * d];
        const uint16_t* vn = &before.v_new[((b * s.seqlen_q + i) * s.hkv + h) * d];
        kr = s.rotary_dim > 0 ? rotated(before, kn, r) : std::vector<uint16_t>(kn, kn + d);
        vr.assign(vn, vn + d);
      }
      std::copy(kr.begin(), kr.end(), &k[(rk * s.hkv + h) * d]);
      std::copy(vr.begin(), vr.end(), &v[(rk * s.hkv + h) * d]);
    }
  std::vector<uint16_t> o(q.size());
  std::vector<float> lse(s.hq * s.seqlen_q);
  AttentionParams fp;
  fp.q = q.data();
  fp.k = k.data();
  fp.v = v.data();
  fp.o = o.data();
  fp.q_strides = fp.o_strides = {s.seqlen_q * s.hq * d, s.hq * d, d};
  fp.k_strides = fp.v_strides = {sk * s.hkv * d, s.hkv * d, d};
  fp.lse = lse.data();
  fp.dtype = s.dtype;
  fp.batch = 1;
  fp.seqlen_q = s.seqlen_q;
  fp.seqlen_k = sk;
  fp.num_heads_q = s.hq;
  fp.num_heads_kv = s.hkv;
  fp.head_dim = d;
  fp.causal = s.causal;
  fp.window_left = s.wl;
  fp.window_right = s.wr;
  ASSERT_TRUE(ref::forward(fd::resolve(fp)).ok());
  for (int64_t i = 0; i < s.seqlen_q; ++i)
    for (int64_t h = 0; h < s.hq; ++h) {
      const int64_t at = ((b * s.seqlen_q + i) * s.hq + h) * d;
      EXPECT_EQ(0, std::memcmp(&after.o[at], &o[(i * s.hq + h) * d], d * 2))
          << "entry " << b << " row " << i << " head " << h;
      const float want = lse[h * s.seqlen_q + i], got = after.lse[(b * s.hq + h) * s.seqlen_q + i];
      EXPECT_TRUE(want == got || (std::isinf(want) && std::isinf(got)))
          << "lse of entry " << b << " row " << i << " head " << h << ": " << got << " vs "
          << want;
    }
}

inline bool is_nan_row(const KvHost& kh, int64_t b) {
  const KvSpec& s = kh.spec;
  for (int64_t i = 0; i < s.seqlen_q * s.hq * s.d; ++i)
    if (!std::isnan(fd::to_float(s.dtype, kh.o[b * s.seqlen_q * s.hq * s.d + i]))) return false;
  for (int64_t i = 0; i < s.hq * s.seqlen_q; ++i)
    if (!std::isnan(kh.lse[b * s.hq * s.seqlen_q + i])) return false;
  return true;
}

}  // namespace flashcore::test
