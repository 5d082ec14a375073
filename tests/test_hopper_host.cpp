// Host-side pieces of the Hopper path (label cpu): TMA tensor-map rules and encoding, the
// forward call's maps, wgmma descriptor bits, the 128-byte swizzle, the persistent schedule.
// Device-side behaviour is the GPU suite's job.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "decode/decode_launch.h"
#include "decode/decode_params.h"
#include "flashcore/flashcore.h"
#include "hopper/fwd_launch.h"
#include "hopper/smem_desc.h"
#include "hopper/tensor_map.h"
#include "hopper/tile_scheduler.h"

namespace flashcore::hopper {
namespace {

alignas(128) uint16_t g_buffer[64];

// A (batch 2, seqlen 1000, heads 8, head_dim 128) bf16 tensor, contiguous.
TensorMapSpec valid_spec() {
  const Strides s{1000 * 8 * 128, 8 * 128, 128};
  return bshd_tile_map(g_buffer, DType::kBFloat16, s, 2, 1000, 8, 128, 128);
}

TEST(TensorMap, BshdViewIsInnermostFirstInBytes) {
  const TensorMapSpec m = valid_spec();
  EXPECT_EQ(m.rank, 4);
  EXPECT_EQ(m.dims[0], 128u);
  EXPECT_EQ(m.dims[1], 8u);
  EXPECT_EQ(m.dims[2], 1000u);
  EXPECT_EQ(m.dims[3], 2u);
  EXPECT_EQ(m.strides[0], 256u);
  EXPECT_EQ(m.strides[1], 8u * 128 * 2);
  EXPECT_EQ(m.strides[2], 1000u * 8 * 128 * 2);
  EXPECT_EQ(m.box[0], 64u);  // 128 bytes: one swizzle strip
  EXPECT_EQ(m.box[2], 128u);
  EXPECT_TRUE(check_tensor_map(m).ok()) << check_tensor_map(m).message;
}

struct Broken {
  const char* name;
  const char* field;
  void (*edit)(TensorMapSpec&);
};

class TensorMapRule : public ::testing::TestWithParam<Broken> {};

TEST_P(TensorMapRule, NamesTheField) {
  TensorMapSpec m = valid_spec();
  GetParam().edit(m);
  const Status s = check_tensor_map(m);
  EXPECT_EQ(s.code, StatusCode::kInvalidArgument);
  EXPECT_NE(s.message.find(GetParam().field), std::string::npos) << s.message;
}

INSTANTIATE_TEST_SUITE_P(
    Rules, TensorMapRule,
    ::testing::Values(
        Broken{"null_base", "base", [](TensorMapSpec& m) { m.base = nullptr; }},
        Broken{"misaligned_base", "base",
               [](TensorMapSpec& m) { m.base = reinterpret_cast<const char*>(g_buffer) + 8; }},
        Broken{"rank_0", "rank", [](TensorMapSpec& m) { m.rank = 0; }},
        Broken{"rank_6", "rank", [](TensorMapSpec& m) { m.rank = 6; }},
        Broken{"dim_0", "dims[2]", [](TensorMapSpec& m) { m.dims[2] = 0; }},
        Broken{"dim_huge", "dims[3]",
               [](TensorMapSpec& m) { m.dims[3] = (uint64_t{1} << 32) + 1; }},
        Broken{"stride_120", "strides[0]", [](TensorMapSpec& m) { m.strides[0] = 120; }},
        Broken{"stride_2pow40", "strides[2]",
               [](TensorMapSpec& m) { m.strides[2] = uint64_t{1} << 40; }},
        Broken{"box_300", "box[2]", [](TensorMapSpec& m) { m.box[2] = 300; }},
        Broken{"box_0", "box[1]", [](TensorMapSpec& m) { m.box[1] = 0; }},
        Broken{"inner_box_not_16B", "box[0]", [](TensorMapSpec& m) { m.box[0] = 60; }},
        Broken{"inner_box_over_swizzle", "box[0]", [](TensorMapSpec& m) { m.box[0] = 128; }},
        Broken{"swizzle_96", "swizzle", [](TensorMapSpec& m) { m.swizzle_bytes = 96; }}),
    [](const ::testing::TestParamInfo<Broken>& info) { return std::string(info.param.name); });

TEST(TensorMap, InnerBoxOver128BytesIsFineWithoutSwizzle) {
  TensorMapSpec m = valid_spec();
  m.box[0] = 128;
  m.swizzle_bytes = 0;
  EXPECT_TRUE(check_tensor_map(m).ok());
}

TEST(TensorMap, EncodeWithoutDriverIsNotSupported) {
  if (cuda_device_count() > 0) GTEST_SKIP() << "a GPU is present: encoding is the GPU suite's";
  alignas(64) CUtensorMap map;
  const Status s = encode_tensor_map(valid_spec(), &map);
  EXPECT_EQ(s.code, StatusCode::kNotSupported) << s.message;
}

TEST(WgmmaDesc, FieldsLandWhereThePtxTableSays) {
  // Start 0x2400, LBO 16 (ignored for swizzled K-major), SBO 1024, 128B swizzle.
  const uint64_t d = wgmma_desc(0x2400, 16, 1024, DescSwizzle::k128B);
  EXPECT_EQ(d & 0x3FFF, 0x2400u >> 4);
  EXPECT_EQ((d >> 16) & 0x3FFF, 1u);
  EXPECT_EQ((d >> 32) & 0x3FFF, 64u);
  EXPECT_EQ((d >> 49) & 0x7, 0u);  // base offset
  EXPECT_EQ(d >> 62, 1u);
  // The shared window is 18 bits wide: higher address bits do not leak into other fields.
  EXPECT_EQ(wgmma_desc(0x42400, 0, 0, DescSwizzle::kNone), 0x2400u >> 4);
  // A k16 step inside a 128-byte row is +32 bytes: +2 in the start field.
  EXPECT_EQ(wgmma_desc(0x2420, 16, 1024, DescSwizzle::k128B) - d, 2u);
}

TEST(Sw128, ChunkXorRowAndStrips) {
  EXPECT_EQ(sw128_offset(0, 0, 64), 0u);
  EXPECT_EQ(sw128_offset(1, 0, 64), 128u + 16u);         // chunk 0 of row 1 sits at chunk 1
  EXPECT_EQ(sw128_offset(7, 8, 64), 7u * 128 + 6 * 16);  // chunk 1 ^ 7 = 6
  EXPECT_EQ(sw128_offset(8, 3, 64), 8u * 128 + 6);       // row 8 starts a new 1024 B atom
  EXPECT_EQ(sw128_offset(0, 64, 64), 64u * 128);         // second strip after 64 rows
}

TEST(Sw128, IsABijectionOntoTheTile) {
  for (uint32_t rows : {64u, 128u}) {
    for (uint32_t cols : {64u, 128u, 256u}) {
      std::set<uint32_t> seen;
      for (uint32_t r = 0; r < rows; ++r)
        for (uint32_t k = 0; k < cols; k += 1) {
          const uint32_t off = sw128_offset(r, k, rows);
          EXPECT_LT(off, rows * cols * 2);
          EXPECT_EQ(off % 2, 0u);
          seen.insert(off);
        }
      EXPECT_EQ(seen.size(), static_cast<size_t>(rows) * cols) << rows << "x" << cols;
    }
  }
}

// Every (batch, head, m-block) tile appears exactly once; paired units (causal/window) hold a
// head's m-blocks i and n-1-i, so each costs n+1 key blocks under causal with square tiles.
TEST(TileScheduler, CoversEveryTileOnceAndPairsBalance) {
  for (bool paired : {false, true})
    for (int nmb : {1, 2, 5, 6, 7, 128}) {
      const TileScheduler sched{nmb, 3, 2, paired};
      std::map<std::tuple<int, int, int>, int> seen;
      for (int u = 0; u < sched.num_units(); ++u) {
        int cost = 0, tiles = 0;
        for (int j = 0; j < sched.tiles_per_unit(); ++j) {
          TileScheduler::Tile t;
          if (!sched.tile(u, j, &t)) continue;
          ++seen[{t.b, t.h, t.m_block}];
          cost += t.m_block + 1;
          ++tiles;
        }
        ASSERT_GE(tiles, 1);
        if (paired && tiles == 2) EXPECT_EQ(cost, nmb + 1) << "unit " << u << " of " << nmb;
      }
      EXPECT_EQ(seen.size(), size_t(2 * 3 * nmb)) << "paired " << paired << ", " << nmb;
      for (const auto& [tile, n] : seen) EXPECT_EQ(n, 1);
    }
}

// The split tail: every key block of every tail tile is in exactly one piece, a tile's pieces
// tile it in key order, and the slots the merge reads are the ones the pieces wrote, each
// written once.
TEST(TileScheduler, SplitTailPiecesTileEveryTailTileOnce) {
  struct Shape {
    int units, blocks, ctas;
  };
  for (const Shape sh : {Shape{2048, 8, 132}, Shape{2048, 128, 132}, Shape{64, 8, 132},
                         Shape{17, 8, 132}, Shape{200, 33, 114}, Shape{131, 2, 132},
                         Shape{5, 27, 132}, Shape{1, 132, 132}}) {
    TileScheduler s{sh.units, 1, 1, false};
    s.split_tiles = sh.units % sh.ctas;
    s.blocks = sh.blocks;
    s.ctas = sh.ctas;
    ASSERT_GE(int64_t(s.split_tiles) * s.blocks, s.ctas) << "every range must be non-empty";
    std::vector<std::vector<TileScheduler::Piece>> by_tile(s.split_tiles);
    std::vector<int> slot_writes(s.num_slots(), 0);
    for (int c = 0; c < s.ctas; ++c) {
      TileScheduler::Piece p0, p1;
      ASSERT_TRUE(s.piece(c, 0, &p0)) << "CTA " << c;
      int covered = p0.hi - p0.lo;
      by_tile[p0.k].push_back(p0);
      ++slot_writes[p0.slot];
      if (s.piece(c, 1, &p1)) {
        EXPECT_EQ(p1.k, p0.k + 1);
        EXPECT_EQ(p0.hi, s.blocks) << "piece 0 runs to its tile's end when a piece 1 follows";
        EXPECT_EQ(p1.lo, 0);
        covered += p1.hi - p1.lo;
        by_tile[p1.k].push_back(p1);
        ++slot_writes[p1.slot];
      }
      EXPECT_EQ(covered, s.split_start(c + 1) - s.split_start(c));
      EXPECT_LE(covered, s.blocks);
    }
    for (int k = 0; k < s.split_tiles; ++k) {
      auto& ps = by_tile[k];
      ASSERT_EQ(int(ps.size()), s.pieces(k)) << "tile " << k;
      std::sort(ps.begin(), ps.end(), [](auto& a, auto& b) { return a.lo < b.lo; });
      int next = 0;
      for (int j = 0; j < int(ps.size()); ++j) {
        EXPECT_EQ(ps[j].lo, next) << "tile " << k << " piece " << j;
        EXPECT_LT(ps[j].lo, ps[j].hi);
        EXPECT_EQ(ps[j].slot, s.piece_slot(k, j)) << "tile " << k << " piece " << j;
        next = ps[j].hi;
      }
      EXPECT_EQ(next, s.blocks) << "tile " << k;
    }
    for (int n : slot_writes) EXPECT_LE(n, 1);
  }
}

// One workspace serves problems of every shape and both entry points on a device: the counter
// area (zero between calls) is the same for the forward split tail and split decode, so no
// call's partials overlap another's counters.
TEST(Workspace, CounterAreaIsSharedByEveryEntryPoint) {
  for (int sms : {108, 114, 132}) {
    TileScheduler fwd{200, 1, 1, false};
    fwd.split_tiles = 68, fwd.blocks = 128, fwd.ctas = sms;
    KvCacheParams kp;
    kp.batch = 1, kp.num_heads_q = 32, kp.num_heads_kv = 8, kp.seqlen_q = 1, kp.head_dim = 128;
    kp.cache_capacity = 65536;
    const decode::DecodePlan dp = decode::plan_decode(detail::resolve(kp), sms, 2);
    ASSERT_GT(dp.splits, 1);
    EXPECT_EQ(split_counter_bytes(fwd), dp.counter_bytes) << sms << " SMs";
    // Every split plan's units (one counter each) fit the area, whatever the occupancy and
    // the cache format (fp8 plans split more).
    for (bool fp8 : {false, true})
      for (int ctas = 1; ctas <= 8; ++ctas)
        for (int64_t batch = 1; batch <= 4 * sms; ++batch) {
          kp.batch = batch, kp.cache_fp8 = fp8;
          const decode::DecodePlan pl = decode::plan_decode(detail::resolve(kp), sms, ctas);
          if (pl.splits > 1)
            EXPECT_LE(batch * kp.num_heads_kv * pl.chunks * 4, pl.counter_bytes)
                << sms << " SMs, " << ctas << " CTAs an SM, batch " << batch << ", fp8 " << fp8;
        }
    kp.cache_fp8 = false;
  }
}

// The decode split count: the fewest splits within 5 % of the least modelled time (the most
// CTAs an SM streams at once, times each one's share of a unit's keys), one wave at most.
TEST(DecodePlan, FewestSplitsThatBalanceTheSms) {
  KvCacheParams kp;
  kp.num_heads_q = 32, kp.seqlen_q = 1, kp.head_dim = 128;
  auto splits = [&](int64_t batch, int64_t heads_kv, int64_t capacity) {
    kp.batch = batch, kp.num_heads_kv = heads_kv, kp.cache_capacity = capacity;
    return decode::plan_decode(detail::resolve(kp), 132, 2).splits;
  };
  EXPECT_EQ(splits(1, 8, 16384), 16);  // one CTA an SM; 33 (two an SM) models 3 % faster only
  EXPECT_EQ(splits(1, 8, 1024), 16);   // 16 blocks: one each
  EXPECT_EQ(splits(16, 8, 4096), 1);   // 128 units: one wave either way, no merge
  EXPECT_EQ(splits(9, 8, 4096), 3);    // 72 units: 216 CTAs, at most 2 an SM, a third each
  EXPECT_EQ(splits(1, 32, 4096), 4);   // MHA: 128 CTAs
  EXPECT_EQ(splits(64, 8, 4096), 1);   // more units than CTA slots
  // An fp8 cache fills the slots up to two CTAs an SM (its math, not its bytes, bounds it).
  kp.cache_fp8 = true;
  EXPECT_EQ(splits(1, 8, 16384), 33);
  EXPECT_EQ(splits(1, 8, 1024), 16);  // one block each already
  EXPECT_EQ(splits(16, 8, 4096), 2);  // 256 CTAs
  EXPECT_EQ(splits(64, 8, 4096), 1);
  EXPECT_EQ(decode::plan_decode(detail::resolve(kp), 132, 4).splits, 1);  // 64 x 8 units
  kp.batch = 1;
  EXPECT_EQ(decode::plan_decode(detail::resolve(kp), 132, 4).splits, 33);  // at most two an SM
}

// One wave of at most one CTA an SM launches with over half an SM's shared memory, so a next
// grid launched early cannot put two CTAs on one SM; other plans launch with what they need.
TEST(DecodePlan, OneCtaAnSmTakesOverHalfAnSmsSharedMemory) {
  KvCacheParams kp;
  kp.num_heads_q = 32, kp.seqlen_q = 1, kp.head_dim = 128;
  constexpr int kH100 = 228 * 1024, kA100 = 164 * 1024;
  auto smem = [&](int64_t batch, int64_t capacity, int smem_per_sm) {
    kp.batch = batch, kp.num_heads_kv = 8, kp.cache_capacity = capacity;
    return decode::plan_for_device(detail::resolve(kp), 132, smem_per_sm).launch_smem;
  };
  for (int64_t cap : {1024, 16384, 65536}) {
    const int s = smem(1, cap, kH100);  // 16 splits x 8 kv heads: 128 CTAs
    EXPECT_GT(s, decode::smem_bytes(128));
    EXPECT_EQ(kH100 / (s + 1024), 1) << cap;
    EXPECT_LE(s, kH100 - 1024);
  }
  EXPECT_GT(smem(16, 4096, kH100), 0);  // 128 CTAs, unsplit
  EXPECT_EQ(smem(9, 4096, kH100), 0);   // 216 CTAs: two an SM
  EXPECT_EQ(smem(64, 4096, kH100), 0);  // several waves
  EXPECT_EQ(smem(1, 16384, kA100), 0);  // one CTA an SM already
}

// The forward call's maps: varlen tensors become one packed batch of total rows, and a dim of
// extent 1 gets a stride TMA accepts even where the caller's is 0.
TEST(FwdMapSpecs, VarlenIsOnePackedBatchAndEveryMapIsValid) {
  detail::FwdParams p{};
  p.q = p.k = p.v = g_buffer;
  p.o = g_buffer;
  p.q_batch = p.k_batch = p.v_batch = 0;  // unused by varlen
  p.q_seq = p.o_seq = 8 * 64, p.q_head = p.o_head = 64;
  p.k_seq = p.v_seq = 64, p.k_head = p.v_head = 0;  // one kv head: stride unused
  int32_t cu[3] = {0, 5, 9};
  p.cu_seqlens_q = p.cu_seqlens_k = cu;
  p.batch = 2, p.seqlen_q = 5, p.seqlen_k = 5, p.total_q = 9, p.total_k = 9;
  p.num_heads_q = 8, p.group = 8;
  TensorMapSpec spec[4];
  fwd_map_specs(p, DType::kBFloat16, 64, 128, 128, spec);
  for (const TensorMapSpec& m : spec) {
    EXPECT_EQ(m.dims[3], 1u);  // one packed batch
    EXPECT_EQ(m.dims[2], 9u);  // total rows
    EXPECT_TRUE(check_tensor_map(m).ok()) << check_tensor_map(m).message;
  }
  EXPECT_EQ(spec[0].dims[1], 8u);
  EXPECT_EQ(spec[1].dims[1], 1u);
  EXPECT_EQ(spec[0].box[2], 128u);
  EXPECT_EQ(spec[3].box[2], 64u);  // o: one warpgroup's rows per store
}

// O's staging boxes (fwd_epilogue.cuh): within one pass every (warpgroup, strip) box is
// 1024-byte aligned for the 128-byte swizzle, lies inside its staging area (O's own tile or a V
// buffer) and overlaps no other; the passes cover every strip.
template <class Cfg>
void ExpectStagingBoxesFit() {
  const int area = Cfg::kOInV ? int(Cfg::kKVBytes) : int(Cfg::kQBytes);
  EXPECT_EQ(Cfg::kOPasses * Cfg::kOStripsPerPass, Cfg::kStrips);
  std::vector<int> starts;
  for (int w = 0; w < Cfg::kConsumers; ++w)
    for (int st = 0; st < Cfg::kOStripsPerPass; ++st)
      starts.push_back(w * Cfg::kOBoxWgStride + st * Cfg::kOBoxStripStride);
  std::sort(starts.begin(), starts.end());
  for (size_t i = 0; i < starts.size(); ++i) {
    EXPECT_EQ(starts[i] % 1024, 0);
    EXPECT_LE(starts[i] + Cfg::kOBoxBytes, area);
    if (i > 0) EXPECT_GE(starts[i], starts[i - 1] + Cfg::kOBoxBytes);
  }
}
TEST(FwdConfig, StagingBoxesFitTheirArea) {
  ExpectStagingBoxesFit<FwdConfig<64>>();
  ExpectStagingBoxesFit<FwdConfig<64, true>>();
  ExpectStagingBoxesFit<FwdConfig<64, true, true>>();
  ExpectStagingBoxesFit<FwdConfig<128>>();
  ExpectStagingBoxesFit<FwdConfig<256>>();
  EXPECT_TRUE(FwdConfig<256>::kOInV);  // else D256 would not exercise the passes
  EXPECT_EQ(FwdConfig<256>::kOPasses, 2);
}

// The mask changes only the ring depth, and only of a row that declares a local depth (the
// short row); select() reserves the largest configuration's shared memory.
TEST(FwdConfig, LocalDepthOnlyWhereDeclared) {
  EXPECT_EQ((FwdConfig<64, true, true>::kStagesK), (FwdTileRow<64, true>::kStagesLocal));
  EXPECT_EQ((FwdConfig<64, true, false>::kStagesK), (FwdTileRow<64, true>::kStagesK));
  EXPECT_EQ((FwdConfig<128, false, true>::kSmemBytes), FwdConfig<128>::kSmemBytes);
  EXPECT_EQ((FwdConfig<64, true, true>::kBlockM), (FwdConfig<64, true>::kBlockM));
  EXPECT_GE(max_smem_bytes<64>(), int(FwdConfig<64, true, true>::kSmemBytes));
  EXPECT_GE(max_smem_bytes<64>(), int(FwdConfig<64>::kSmemBytes));
  EXPECT_EQ(max_smem_bytes<256>(), int(FwdConfig<256>::kSmemBytes));
}

// The tile row a problem runs with, whose TMA boxes select() checks: D64's short row up to
// kShortRowMaxSeqlenQ queries with a causal/window mask and kShortRowMaxSeqlenQUnmasked
// without, the general row everywhere else.
TEST(TileRows, ShortRowOnlyForShortD64) {
  using Short = FwdConfig<64, true>;
  using General = FwdConfig<64>;
  const int64_t max_q = kShortRowMaxSeqlenQ, max_q_unmasked = kShortRowMaxSeqlenQUnmasked;
  EXPECT_EQ(tile_rows<64>(true, 1).q, Short::kBlockM);
  EXPECT_EQ(tile_rows<64>(true, max_q).q, Short::kBlockM);
  EXPECT_EQ(tile_rows<64>(true, max_q).kv, Short::kBlockN);
  EXPECT_EQ(tile_rows<64>(true, max_q + 1).q, General::kBlockM);
  EXPECT_EQ(tile_rows<64>(false, 1).q, Short::kBlockM);
  EXPECT_EQ(tile_rows<64>(false, max_q_unmasked).q, Short::kBlockM);
  EXPECT_EQ(tile_rows<64>(false, max_q_unmasked).kv, Short::kBlockN);
  EXPECT_EQ(tile_rows<64>(false, max_q_unmasked + 1).q, General::kBlockM);
  EXPECT_EQ(tile_rows<64>(false, max_q_unmasked + 1).kv, General::kBlockN);
  EXPECT_EQ(tile_rows<128>(true, 1024).q, FwdConfig<128>::kBlockM);
  EXPECT_EQ(tile_rows<128>(false, 512).q, FwdConfig<128>::kBlockM);
  EXPECT_EQ(tile_rows<256>(true, 1024).kv, FwdConfig<256>::kBlockN);
  EXPECT_NE(Short::kBlockM, General::kBlockM);  // else the rule would not be observable here
}

}  // namespace
}  // namespace flashcore::hopper
