// The KV-cache entry point on the CPU reference (label cpu): appends land where kvcache.h says,
// attention equals forward() over the entry's keys built independently here, paged equals
// contiguous, rotary follows the header's formula and positions, and every bad entry is flagged
// and poisoned without touching the cache. Plus the argument rules.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "kv_util.h"

namespace flashcore::test {
namespace {

Status run_ref(KvHost& kh) {
  kh.p.backend = Backend::kReference;
  return run(kh.p);
}

// Runs s from fresh inputs (seed) on the reference, expects no error bit and every entry equal
// to forward() over its keys; `more` checks what else the test needs on (before, after).
template <class More>
void expect_every_entry_matches_forward(const KvSpec& s, uint64_t seed, More&& more) {
  const KvHost before(s, seed);
  KvHost kh(s, seed);
  ASSERT_TRUE(run_ref(kh).ok());
  EXPECT_EQ(kh.flag, 0);
  for (int64_t b = 0; b < s.batch; ++b) expect_entry_matches_forward(before, kh, b);
  more(before, kh);
}
void expect_every_entry_matches_forward(const KvSpec& s, uint64_t seed) {
  expect_every_entry_matches_forward(s, seed, [](const KvHost&, const KvHost&) {});
}

TEST(KvCache, AppendThenAttendEqualsForwardOverTheEntrysKeys) {
  for (int64_t sq : {1, 4, 17})
    for (bool causal : {true, false})
      for (int64_t d : {64, 128}) {
        KvSpec s;
        s.seqlen_q = sq;
        s.causal = causal;
        s.d = d;
        s.capacity = 40;
        expect_every_entry_matches_forward(s, 3 + sq, [&](const KvHost& before, const KvHost& kh) {
          // The new rows landed at cache_seqlens[b] + i; nothing else in the cache changed.
          KvHost want(s, 3 + sq);
          for (int64_t b = 0; b < s.batch; ++b)
            for (int64_t i = 0; i < sq; ++i)
              for (int64_t h = 0; h < s.hkv; ++h) {
                std::memcpy(&want.k_cache[want.cache_index(b, s.lens[b] + i, h)],
                            &before.k_new[((b * sq + i) * s.hkv + h) * d], d * 2);
                std::memcpy(&want.v_cache[want.cache_index(b, s.lens[b] + i, h)],
                            &before.v_new[((b * sq + i) * s.hkv + h) * d], d * 2);
              }
          EXPECT_EQ(want.k_cache, kh.k_cache) << "sq " << sq;
          EXPECT_EQ(want.v_cache, kh.v_cache) << "sq " << sq;
        });
      }
}

TEST(KvCache, SlidingWindowsAlignBottomRight) {
  struct W {
    int64_t wl, wr;
    bool causal;
  };
  for (const W w : {W{5, -1, true}, W{3, 2, false}, W{-1, 0, false}, W{0, 0, false}}) {
    KvSpec s;
    s.seqlen_q = 4;
    s.wl = w.wl;
    s.wr = w.wr;
    s.causal = w.causal;
    s.rotary_dim = 32;  // a window makes query i sit at position cache_seqlens + i
    expect_every_entry_matches_forward(s, 12);
  }
}

TEST(KvCache, NoQueryRowsReadOrWriteNothing) {
  KvSpec s;
  s.seqlen_q = 0;
  s.lens = {5, 40, 3};  // entry 1 would overflow a 32-row cache if anything were appended
  const KvHost before(s, 13);
  KvHost kh(s, 13);
  ASSERT_TRUE(run_ref(kh).ok());
  EXPECT_EQ(kh.flag, 0);
  EXPECT_EQ(before.k_cache, kh.k_cache);
}

TEST(KvCache, DecodeWithoutAppendReadsOnlyTheCache) {
  KvSpec s;
  s.append = false;
  s.seqlen_q = 2;
  s.lens = {7, 1, 32};  // the last entry fills its capacity exactly
  s.hq = 32;
  s.hkv = 8;
  expect_every_entry_matches_forward(s, 9, [](const KvHost& before, const KvHost& kh) {
    EXPECT_EQ(before.k_cache, kh.k_cache);
    EXPECT_EQ(before.v_cache, kh.v_cache);
  });
}

TEST(KvCache, PagedEqualsContiguousWithAShuffledBlockTable) {
  for (int64_t page : {16, 64}) {
    KvSpec s;
    s.seqlen_q = 4;
    s.capacity = 128;
    s.lens = {0, 70, 124};
    s.page_size = page;
    expect_every_entry_matches_forward(s, 21);
  }
}

TEST(KvCache, RotaryFollowsTheHeaderFormulaAndPositions) {
  for (bool interleaved : {false, true})
    for (bool causal : {true, false})
      for (int64_t rd : {32, 64}) {
        KvSpec s;
        s.seqlen_q = 3;
        s.rotary_dim = rd;
        s.interleaved = interleaved;
        s.causal = causal;
        SCOPED_TRACE(::testing::Message() << "interleaved " << interleaved << " causal " << causal
                                          << " rotary_dim " << rd);
        expect_every_entry_matches_forward(s, 5, [&](const KvHost& before, const KvHost& kh) {
          for (int64_t b = 0; b < s.batch; ++b) {  // the first new key, rotated, in the cache
            const int64_t len = s.lens[b];
            const std::vector<uint16_t> k0 =
                rotated(before, &before.k_new[b * 3 * s.hkv * s.d], len);
            EXPECT_EQ(0, std::memcmp(&kh.k_cache[kh.cache_index(b, len, 0)], k0.data(), s.d * 2));
          }
        });
      }
}

// Entry 1 is bad in each way; entries 0 and 2 must come out right and the cache of entry 1
// must be untouched.
TEST(KvCache, BadEntriesAreFlaggedPoisonedAndWriteNothing) {
  struct Bad {
    const char* what;
    int32_t bit;
  };
  for (const Bad bad : {Bad{"overflow", kKvCacheOverflow}, Bad{"negative length", kKvCacheOverflow},
                        Bad{"block table", kKvBlockTableOutOfRange},
                        Bad{"rotary position", kKvRotaryOutOfRange},
                        Bad{"left pad past the length", kKvLeftpadOutOfRange},
                        Bad{"negative left pad", kKvLeftpadOutOfRange}}) {
    SCOPED_TRACE(bad.what);
    KvSpec s;
    s.seqlen_q = 4;
    s.capacity = 32;
    s.lens = {5, 10, 17};
    const std::string w = bad.what;
    if (w == "overflow") s.lens[1] = 29;  // 29 + 4 > 32
    if (w == "negative length") s.lens[1] = -1;
    if (w == "block table") s.page_size = 16;
    if (w == "left pad past the length") s.leftpad = {2, 11, 0};  // 11 > 10
    if (w == "negative left pad") s.leftpad = {2, -1, 0};
    if (w == "rotary position") {
      s.rotary_dim = 64;
      s.max_position = 14;
      s.lens = {5, 11, 5};  // entry 1's last new key sits at 11 + 3 = 14: past the table
    }
    KvHost before(s, 7);
    if (w == "block table") before.block_table[1 * before.max_pages + 0] = before.num_pages;
    KvHost kh(s, 7);
    kh.block_table = before.block_table;
    kh.rebuild();
    before.rebuild();
    ASSERT_TRUE(run_ref(kh).ok());
    EXPECT_EQ(kh.flag, bad.bit);
    EXPECT_TRUE(is_nan_row(kh, 1));
    expect_entry_matches_forward(before, kh, 0);
    expect_entry_matches_forward(before, kh, 2);
    if (s.page_size == 0) {  // entry 1's rows of the contiguous cache are untouched
      const int64_t n = s.capacity * s.hkv * s.d;
      EXPECT_TRUE(std::equal(&kh.k_cache[n], &kh.k_cache[2 * n], &before.k_cache[n]));
    }
  }
}

// FlashAttention-2's cache_leftpad: entry b's keys start at row cache_leftpad[b] (the rows
// before hold NaN here, so reading them fails), positions and masks stay the rows'; contiguous
// and paged, with append, rotary and windows.
TEST(KvCache, LeftPadHidesTheRowsBeforeIt) {
  for (int64_t page : {0, 4})
    for (bool causal : {true, false}) {
      KvSpec s;
      s.seqlen_q = 3;
      s.capacity = 40;
      s.page_size = page;
      s.causal = causal;
      s.lens = {20, 9, 30};
      s.leftpad = {5, 9, 0};  // entry 1: only the new rows
      s.rotary_dim = 64;
      SCOPED_TRACE("page " + std::to_string(page) + (causal ? " causal" : ""));
      expect_every_entry_matches_forward(s, 21);
      s.wl = 6;  // a window reaching below the pad sees nothing there
      expect_every_entry_matches_forward(s, 22);
    }
}

TEST(KvCache, UnusedBlockTableEntriesAreNotChecked) {
  KvSpec s;
  s.page_size = 16;
  s.capacity = 64;
  s.lens = {3, 20, 0};
  KvHost kh(s, 8);
  kh.block_table[0 * kh.max_pages + 3] = -5;  // entry 0 needs one page of four
  ASSERT_TRUE(run_ref(kh).ok());
  EXPECT_EQ(kh.flag, 0);
}

TEST(KvCache, ArgumentRulesNameTheArgument) {
  struct Rule {
    const char* name;
    void (*breakit)(KvCacheParams&);
  };
  const Rule rules[] = {
      {"error_flag", [](KvCacheParams& p) { p.error_flag = nullptr; }},
      {"v_new", [](KvCacheParams& p) { p.v_new = nullptr; }},
      {"cache_seqlens", [](KvCacheParams& p) { p.cache_seqlens = nullptr; }},
      {"head_dim", [](KvCacheParams& p) { p.head_dim = 96; }},
      {"num_heads_q", [](KvCacheParams& p) { p.num_heads_q = 3; }},
      {"cache_capacity", [](KvCacheParams& p) { p.cache_capacity = -1; }},
      {"page_size", [](KvCacheParams& p) { p.page_size = 16; }},
      {"rotary.rotary_dim", [](KvCacheParams& p) { p.rotary = {p.q, p.q, 7, 8, false}; }},
      {"rotary.sin", [](KvCacheParams& p) { p.rotary = {p.q, nullptr, 8, 8, false}; }},
      {"rotary.cos", [](KvCacheParams& p) { p.rotary.max_position = 4; }},
      {"k_cache_strides.seq", [](KvCacheParams& p) { p.k_cache_strides.seq = 12; }},
      {"o_strides.head", [](KvCacheParams& p) { p.o_strides.head = 8; }},
      {"k_cache_strides.head", [](KvCacheParams& p) { p.k_cache_strides.head = 0; }},
      {"v_cache_strides.seq", [](KvCacheParams& p) { p.v_cache_strides.seq = 64; }},
      {"seqlen_q", [](KvCacheParams& p) { p.cache_capacity = INT32_MAX; }},
  };
  for (const Rule& r : rules) {
    KvHost kh(KvSpec{}, 2);
    r.breakit(kh.p);
    const Plan plan = query(kh.p);
    EXPECT_EQ(plan.status.code, StatusCode::kInvalidArgument) << r.name;
    EXPECT_EQ(plan.status.message.rfind(r.name, 0), 0u) << r.name << ": " << plan.status.message;
    EXPECT_EQ(run(kh.p).code, StatusCode::kInvalidArgument) << r.name;
  }
  KvSpec paged;
  paged.page_size = 16;
  KvHost kh(paged, 2);
  kh.p.cache_capacity = 32;
  EXPECT_EQ(query(kh.p).status.message.rfind("cache_capacity", 0), 0u)
      << query(kh.p).status.message;
  kh.rebuild();
  kh.p.block_table_stride = 1;
  EXPECT_EQ(query(kh.p).status.message.rfind("block_table_stride", 0), 0u)
      << query(kh.p).status.message;
}

TEST(KvCache, HostMemoryPlansTheReferenceWithoutWorkspace) {
  KvHost kh(KvSpec{}, 4);
  const Plan plan = query(kh.p);
  ASSERT_TRUE(plan.status.ok()) << plan.status.message;
  EXPECT_EQ(plan.backend, Backend::kReference);
  EXPECT_EQ(plan.kernel, "reference");
  EXPECT_EQ(workspace_size(kh.p), 0);
}

}  // namespace
}  // namespace flashcore::test
