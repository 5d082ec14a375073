// The fp8 (e4m3) KV cache on the GPU against the CPU reference on the same inputs (label gpu):
// output (poisoned first), LSE, the cache bytes after the append, and the error flag. Cache
// rows past cache_seqlens hold e4m3 NaN (0x7F), so a kernel that reads them fails. The scales
// differ per kv head and are not powers of two. Skips without a GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "common/fp8.h"
#include "kv_device.h"
#include "kv_util.h"
#include "test_util.h"

namespace flashcore::test {
namespace {

// A KvHost problem whose caches are e4m3 bytes: values ~N(0, 1) quantized by each head's scale
// (NaN where the 16-bit problem has NaN, i.e. rows the call must not read).
struct Fp8Host {
  KvHost h;
  std::vector<uint8_t> kc, vc;
  std::vector<float> ks, vs;
  Fp8Host(const KvSpec& s, uint64_t seed) : h(s, seed) {
    for (int64_t i = 0; i < s.hkv; ++i) {
      ks.push_back(0.011f + 0.0037f * float(i % 7));
      vs.push_back(0.013f + 0.0029f * float((i + 3) % 5));
    }
    std::mt19937_64 g(seed + 99);
    std::normal_distribution<float> dist(0.f, 1.f);
    kc.resize(h.k_cache.size());
    vc.resize(h.v_cache.size());
    for (size_t i = 0; i < kc.size(); ++i) {
      const int64_t head = int64_t(i / s.d) % s.hkv;
      const bool nan = std::isnan(fd::to_float(s.dtype, h.k_cache[i]));
      kc[i] = nan ? 0x7F : fd::float_to_e4m3(dist(g) / ks[head]);
      vc[i] = nan ? 0x7F : fd::float_to_e4m3(dist(g) / vs[head]);
    }
    rebuild();
  }
  Fp8Host(const Fp8Host& o) : h(o.h), kc(o.kc), vc(o.vc), ks(o.ks), vs(o.vs) { rebuild(); }
  void rebuild() {
    h.rebuild();
    h.p.cache_fp8 = true;
    h.p.k_cache = kc.data();
    h.p.v_cache = vc.data();
    h.p.k_scale = ks.data();
    h.p.v_scale = vs.data();
  }
};

// The device side: KvDevice for the 16-bit buffers, the byte caches and scales beside it.
struct Fp8Device {
  KvDevice d;
  Dev<uint8_t> kc, vc;
  Dev<float> ks, vs;
  KvCacheParams p;
  explicit Fp8Device(const Fp8Host& x) : d(x.h), kc(x.kc), vc(x.vc), ks(x.ks), vs(x.vs) {
    p = d.p;
    p.cache_fp8 = true;
    p.k_cache = kc.ptr;
    p.v_cache = vc.ptr;
    p.k_scale = ks.ptr;
    p.v_scale = vs.ptr;
  }
};

// edit: changes the problem before it is copied (a bad input); want_flag: the error bits the
// reference must then report (0: none), so the edit is known to bite.
void expect_fp8_matches_reference(const KvSpec& s, uint64_t seed,
                                  const std::function<void(Fp8Host&)>& edit = nullptr,
                                  int32_t want_flag = 0) {
  Fp8Host ref(s, seed);
  if (edit) edit(ref);
  Fp8Host low(ref), gpu(ref);
  ref.h.p.backend = Backend::kReference;
  ASSERT_TRUE(run(ref.h.p).ok());
  ASSERT_TRUE(ref::kvcache(fd::resolve(low.h.p), {/*round_p=*/true, 0}).ok());
  Fp8Device dev(gpu);
  const Plan plan = query(dev.p);
  ASSERT_TRUE(plan.status.ok()) << plan.status.message;
  EXPECT_EQ(plan.kernel.rfind("portable.decode.", 0), 0u) << plan.kernel;
  EXPECT_NE(plan.kernel.find(".e4m3."), std::string::npos) << plan.kernel;
  Workspace ws(plan.workspace_bytes);
  ASSERT_TRUE(ws.ok());
  const Status st = run(dev.p, ws.ptr, nullptr);
  ASSERT_TRUE(st.ok()) << st.message;
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  dev.d.o.to_host(gpu.h.o);
  dev.d.lse.to_host(gpu.h.lse);
  dev.kc.to_host(gpu.kc);
  dev.vc.to_host(gpu.vc);
  std::vector<int32_t> flag(1);
  dev.d.flag.to_host(flag);
  EXPECT_EQ(flag[0], ref.h.flag);
  EXPECT_EQ(ref.h.flag, want_flag);

  double worst = 0, worst_lse = 0;
  int64_t bad = outside_row_rule(s.dtype, s.d, ref.h.o, low.h.o, gpu.h.o, &worst);
  bad += lse_mismatches(ref.h.lse, gpu.h.lse, &worst_lse);
  EXPECT_EQ(bad, 0) << "max |O err| " << worst << ", max |LSE err| " << worst_lse;
  EXPECT_EQ(ref.vc, gpu.vc) << "v cache bytes after the append";
  // Rotated keys: fp32 on the GPU, float64 in the reference, so the dtype-rounded key can be one
  // ulp apart and its e4m3 byte one code apart.
  int64_t k_off = 0;
  for (size_t i = 0; i < ref.kc.size(); ++i)
    if (ref.kc[i] != gpu.kc[i])
      k_off += !(s.rotary_dim > 0 && (ref.kc[i] & 0x80) == (gpu.kc[i] & 0x80) &&
                 std::abs(int(ref.kc[i] & 0x7F) - int(gpu.kc[i] & 0x7F)) <= 1);
  EXPECT_EQ(k_off, 0) << "k cache bytes after the append";
}

// Every head dim, both dtypes, contiguous and paged (16, 64, 256), decode and chunked rows with
// and without append, rotary both forms, a window, split and unsplit plans, GQA and MHA.
std::vector<KvSpec> grid() {
  std::vector<KvSpec> out;
  struct Row {
    int64_t batch, hq, hkv, d, sq, page;
    int len;
    bool causal, append;
    int64_t rotary;  // 0, d or d / 2
  };
  const Row rows[] = {
      {1, 32, 8, 128, 1, 0, 4096, true, true, 128},   {1, 32, 8, 128, 1, 16, 1000, true, true, 0},
      {3, 32, 32, 64, 4, 64, 1000, true, true, 32},   {3, 8, 1, 256, 17, 0, 7, false, true, 256},
      {1, 64, 8, 128, 17, 256, 4096, true, true, 64}, {64, 32, 8, 128, 1, 0, 1000, true, true, 128},
      {1, 32, 8, 64, 1, 0, 65536, true, false, 0},    {3, 32, 8, 256, 4, 16, 1, true, true, 0},
      {1, 8, 1, 128, 4, 0, 1000, false, false, 0},    {1, 32, 8, 128, 17, 64, 4096, true, true, 128},
  };
  int n = 0;
  for (const Row& r : rows) {
    KvSpec s;
    s.dtype = n % 2 ? DType::kFloat16 : DType::kBFloat16;
    s.batch = r.batch, s.hq = r.hq, s.hkv = r.hkv, s.d = r.d, s.seqlen_q = r.sq;
    s.page_size = r.page, s.causal = r.causal, s.append = r.append;
    s.rotary_dim = r.rotary;
    s.interleaved = n % 3 == 0;
    if (n == 4) s.wl = 300, s.wr = -1;
    s.max_position = r.len + r.sq + 8;
    set_lengths(s, r.len, n % 2 ? 0 : 19);
    if (n == 1) s.leftpad = {300};  // rows below the pad hold NaN: read, they would show
    if (n == 2) s.leftpad = {100, 7, 998};
    out.push_back(s);
    ++n;
  }
  return out;
}

class KvFp8Grid : public ::testing::TestWithParam<KvSpec> {};
TEST_P(KvFp8Grid, MatchesReference) {
  SKIP_WITHOUT_GPU();
  expect_fp8_matches_reference(GetParam(), 23);
}
INSTANTIATE_TEST_SUITE_P(KvFp8, KvFp8Grid, ::testing::ValuesIn(grid()),
                         [](const auto& info) { return spec_name(info.param); });

// A zero value scale: every entry flagged, NaN rows, nothing appended (as the reference).
TEST(KvFp8Gpu, BadScaleIsFlagged) {
  SKIP_WITHOUT_GPU();
  KvSpec s;
  s.batch = 2, s.hq = 8, s.hkv = 2, s.d = 128, s.seqlen_q = 2;
  s.lens = {40, 3};
  s.capacity = 64;
  expect_fp8_matches_reference(s, 5, [&](Fp8Host& x) { x.vs[s.hkv - 1] = 0.f; },
                               kKvScaleInvalid);
}

// A block-table entry past the pages, in a split call: that entry flagged and left alone, the
// others served (as the reference).
TEST(KvFp8Gpu, BadPageIsFlagged) {
  SKIP_WITHOUT_GPU();
  KvSpec s;
  s.batch = 2, s.hq = 32, s.hkv = 8, s.d = 128, s.seqlen_q = 1, s.page_size = 16;
  s.lens = {2000, 1500};
  s.capacity = 2048;
  expect_fp8_matches_reference(
      s, 9, [](Fp8Host& x) { x.h.block_table[x.h.max_pages + 40] = int32_t(x.h.num_pages) + 3; },
      kKvBlockTableOutOfRange);
}

}  // namespace
}  // namespace flashcore::test
