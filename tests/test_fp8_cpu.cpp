// The fp8 e4m3 KV cache on the CPU (label cpu): the codec against the format's definition and
// against cuda_fp8.h's host conversions (which the kernels use on the device), the reference's
// fp8 cache against a dtype cache holding what the bytes stand for, the bytes an append
// stores, the scale error, and the argument rules.
#include <cuda_fp8.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <utility>
#include <vector>

#include "common/fp8.h"
#include "kv_util.h"

namespace flashcore::test {
namespace {

using fd::e4m3_to_float;
using fd::float_to_e4m3;

uint32_t bits_of(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}
float float_of(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}
bool is_nan_byte(int x) { return (x & 0x7F) == 0x7F; }

uint8_t cuda_encode(float f) {
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(f, __NV_SATFINITE, __NV_E4M3));
}
uint32_t cuda_decode_bits(uint8_t x) {
  return bits_of(fd::fp16_to_float(__nv_cvt_fp8_to_halfraw(x, __NV_E4M3).x));
}

TEST(Fp8Codec, EveryByteDecodesToItsFormatValue) {
  for (int x = 0; x < 256; ++x) {
    const int sign = x >> 7, e = (x >> 3) & 15, m = x & 7;
    const float f = e4m3_to_float(static_cast<uint8_t>(x));
    if (is_nan_byte(x)) {
      EXPECT_TRUE(std::isnan(f)) << x;
      continue;
    }
    const double mag = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
    EXPECT_EQ(f, sign ? -mag : mag) << x;
    EXPECT_EQ(std::signbit(f), sign == 1) << x;
  }
  EXPECT_EQ(e4m3_to_float(0x7E), 448.0f);
  EXPECT_EQ(e4m3_to_float(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(e4m3_to_float(0x08), std::ldexp(1.0f, -6));
}

TEST(Fp8Codec, EncodeInvertsDecode) {
  for (int x = 0; x < 256; ++x) {
    if (is_nan_byte(x)) continue;
    EXPECT_EQ(float_to_e4m3(e4m3_to_float(static_cast<uint8_t>(x))), x) << x;
  }
}

// Between neighbours x and x + 1 (every exponent, subnormals and the subnormal/normal edge
// included) the midpoint goes to the even byte and the floats either side of it to the nearer.
TEST(Fp8Codec, RoundsToNearestTiesToEven) {
  for (int sign : {0, 0x80})
    for (int x = 0; x < 0x7E; ++x) {
      const uint8_t lo = static_cast<uint8_t>(sign | x), hi = static_cast<uint8_t>(lo + 1);
      const float mid = (e4m3_to_float(lo) + e4m3_to_float(hi)) / 2;
      EXPECT_EQ(float_to_e4m3(mid), (x & 1) ? hi : lo) << x;
      EXPECT_EQ(float_to_e4m3(std::nextafter(mid, 0.0f)), lo) << x;
      EXPECT_EQ(float_to_e4m3(std::nextafter(mid, sign ? -1e9f : 1e9f)), hi) << x;
    }
  EXPECT_EQ(float_to_e4m3(std::ldexp(1.0f, -10)), 0x00);  // half the least subnormal: to zero
  EXPECT_EQ(float_to_e4m3(std::ldexp(3.0f, -10)), 0x02);  // 1.5 steps: to 2 steps
  EXPECT_EQ(float_to_e4m3(17.0f), 0x58);                  // 16 + half an ulp of 2: to 16
  EXPECT_EQ(float_to_e4m3(19.0f), 0x5A);                  // 18 + half an ulp: to 20
}

TEST(Fp8Codec, SaturatesAtMaxAndKeepsNaNAndSignedZero) {
  const float inf = std::numeric_limits<float>::infinity();
  for (float f : {448.0f, 450.0f, 464.0f, std::nextafter(464.0f, inf), 480.0f, 1e30f,
                  std::numeric_limits<float>::max(), inf}) {
    EXPECT_EQ(float_to_e4m3(f), 0x7E) << f;
    EXPECT_EQ(float_to_e4m3(-f), 0xFE) << f;
  }
  EXPECT_EQ(float_to_e4m3(std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(float_to_e4m3(-std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(float_to_e4m3(std::numeric_limits<float>::signaling_NaN()), 0x7F);
  EXPECT_EQ(float_to_e4m3(0.0f), 0x00);
  EXPECT_EQ(float_to_e4m3(-0.0f), 0x80);
  EXPECT_EQ(float_to_e4m3(-1e-30f), 0x80);
  EXPECT_EQ(float_to_e4m3(-std::numeric_limits<float>::denorm_min()), 0x80);
}

// The kernels convert with cuda_fp8.h; its host path must give the same bytes and values.
// (All 2^32 floats agreed when this was written; the test keeps a fast sample.)
TEST(Fp8Codec, AgreesWithCudaFp8) {
  for (int x = 0; x < 256; ++x)
    EXPECT_EQ(bits_of(e4m3_to_float(static_cast<uint8_t>(x))), cuda_decode_bits(x)) << x;
  std::vector<float> cases;
  for (int x = 0; x < 256; ++x) {  // every value, the floats around it, the midpoints
    const float f = e4m3_to_float(static_cast<uint8_t>(x));
    for (float g : {f, std::nextafter(f, -1e9f), std::nextafter(f, 1e9f)}) cases.push_back(g);
    if (!is_nan_byte(x + 1) && (x & 0x7F) != 0x7F)
      cases.push_back((f + e4m3_to_float(static_cast<uint8_t>(x + 1))) / 2);
  }
  for (uint32_t b : {0x7F800000u, 0xFF800000u, 0x7FC00000u, 0xFFC00001u, 0x7F800001u, 0x00000001u,
                     0x80000001u, 0x7F7FFFFFu, 0xFF7FFFFFu})
    cases.push_back(float_of(b));
  std::mt19937 rng(11);
  for (int i = 0; i < 2000000; ++i) cases.push_back(float_of(rng()));  // every exponent
  for (int i = 0; i < 2000000; ++i) {  // exponents around e4m3's range, sign and mantissa random
    const uint32_t r = rng();
    const uint32_t exp = 127 - 13 + (r >> 8) % 24;
    cases.push_back(float_of((r & 0x80000000u) | (exp << 23) | (rng() & 0x7FFFFFu)));
  }
  int64_t bad = 0;
  for (float f : cases)
    if (float_to_e4m3(f) != cuda_encode(f) && ++bad <= 10)
      ADD_FAILURE() << std::hexfloat << f << ": " << int(float_to_e4m3(f)) << " vs cuda "
                    << int(cuda_encode(f));
  EXPECT_EQ(bad, 0);
}

// kv head of element i of a cache laid out [..., hkv, d] (contiguous or paged).
int64_t head_of(const KvSpec& s, size_t i) { return static_cast<int64_t>(i) / s.d % s.hkv; }

std::vector<uint8_t> quantize(const KvSpec& s, const std::vector<uint16_t>& x,
                              const std::vector<float>& scale) {
  std::vector<uint8_t> out(x.size());
  for (size_t i = 0; i < x.size(); ++i)
    out[i] = float_to_e4m3(fd::to_float(s.dtype, x[i]) / scale[head_of(s, i)]);
  return out;
}
// What the bytes stand for, as dtype values: exact for power-of-two scales.
std::vector<uint16_t> widen(const KvSpec& s, const std::vector<uint8_t>& x,
                            const std::vector<float>& scale) {
  std::vector<uint16_t> out(x.size());
  for (size_t i = 0; i < x.size(); ++i)
    out[i] = fd::from_float(s.dtype, e4m3_to_float(x[i]) * scale[head_of(s, i)]);
  return out;
}

// A KvHost problem on an fp8 cache: its caches quantized with the scales into k8/v8.
struct Fp8Host {
  KvHost h;
  std::vector<uint8_t> k8, v8;
  std::vector<float> ks, vs;
  Fp8Host(const KvSpec& s, uint64_t seed, std::vector<float> k_scale, std::vector<float> v_scale)
      : h(s, seed), ks(std::move(k_scale)), vs(std::move(v_scale)) {
    k8 = quantize(s, h.k_cache, ks);
    v8 = quantize(s, h.v_cache, vs);
    h.p.k_cache = k8.data();
    h.p.v_cache = v8.data();
    h.p.cache_fp8 = true;
    h.p.k_scale = ks.data();
    h.p.v_scale = vs.data();
    h.p.backend = Backend::kReference;
  }
};

// The dtype problem holding exactly what f's bytes stand for (power-of-two scales).
void widen_into(const Fp8Host& f, KvHost& wide) {
  wide.k_cache = widen(f.h.spec, f.k8, f.ks);
  wide.v_cache = widen(f.h.spec, f.v8, f.vs);
  wide.rebuild();
  wide.p.backend = Backend::kReference;
}

void expect_same_outputs(const KvHost& got, const KvHost& want) {
  EXPECT_EQ(got.flag, 0);
  EXPECT_EQ(want.flag, 0);
  EXPECT_EQ(got.o, want.o);
  for (size_t i = 0; i < got.lse.size(); ++i)
    EXPECT_TRUE(got.lse[i] == want.lse[i] || (std::isinf(got.lse[i]) && std::isinf(want.lse[i])))
        << i << ": " << got.lse[i] << " vs " << want.lse[i];
}

// With power-of-two scales (1 included; different per head) the fp8 cache gives exactly the
// dtype cache's outputs: every e4m3 value times the scale is a bf16 and an fp16 value. New rows
// that are such values too are stored exactly, so the caches agree after the append as well.
TEST(Fp8Cache, EqualsADtypeCacheHoldingTheDecodedValues) {
  struct Case {
    const char* what;
    std::vector<float> ks, vs;
  };
  const Case cases[] = {{"ones", {1, 1}, {1, 1}}, {"powers of two", {0.5f, 4}, {2, 0.125f}}};
  for (DType t : {DType::kBFloat16, DType::kFloat16})
    for (const Case& c : cases)
      for (int64_t page : {0, 16})
        for (bool append : {false, true}) {
          KvSpec s;
          s.dtype = t;
          s.seqlen_q = 3;
          s.capacity = 48;
          s.lens = {5, 0, 40};
          s.page_size = page;
          s.append = append;
          s.causal = page == 0;
          s.wl = page == 0 ? -1 : 9;
          s.leftpad = {2, 0, 7};
          SCOPED_TRACE(::testing::Message() << to_string(t) << " " << c.what << " page " << page
                                            << (append ? " append" : ""));
          Fp8Host f(s, 31, c.ks, c.vs);
          KvHost wide(s, 31);
          // New rows the cache can hold exactly (assigned in place: f.h.p points at them).
          const std::vector<uint16_t> k_new = widen(s, quantize(s, f.h.k_new, c.ks), c.ks);
          const std::vector<uint16_t> v_new = widen(s, quantize(s, f.h.v_new, c.vs), c.vs);
          std::copy(k_new.begin(), k_new.end(), f.h.k_new.begin());
          std::copy(v_new.begin(), v_new.end(), f.h.v_new.begin());
          wide.k_new = f.h.k_new;
          wide.v_new = f.h.v_new;
          widen_into(f, wide);
          ASSERT_TRUE(run(f.h.p).ok());
          ASSERT_TRUE(run(wide.p).ok());
          expect_same_outputs(f.h, wide);
          EXPECT_EQ(f.k8, quantize(s, wide.k_cache, c.ks));
          EXPECT_EQ(f.v8, quantize(s, wide.v_cache, c.vs));
        }
}

// An append stores e4m3(k / k_scale[h]) of the rotated key as rounded to dtype (what a dtype
// cache would hold) and e4m3(v / v_scale[h]); nothing else in the cache changes.
TEST(Fp8Cache, AppendStoresTheQuantizedRotatedRows) {
  for (bool interleaved : {false, true}) {
    KvSpec s;
    s.seqlen_q = 4;
    s.capacity = 64;
    s.lens = {9, 0, 30};
    s.page_size = 16;
    s.rotary_dim = 32;
    s.interleaved = interleaved;
    Fp8Host f(s, 17, {0.37f, 1.9f}, {3.1f, 0.07f});
    const Fp8Host before(s, 17, f.ks, f.vs);
    ASSERT_TRUE(run(f.h.p).ok());
    EXPECT_EQ(f.h.flag, 0);
    std::vector<uint8_t> k_want = before.k8, v_want = before.v8;
    for (int64_t b = 0; b < s.batch; ++b)
      for (int64_t i = 0; i < s.seqlen_q; ++i)
        for (int64_t h = 0; h < s.hkv; ++h) {
          const int64_t row = s.lens[b] + i, at = f.h.cache_index(b, row, h);
          const int64_t src = ((b * s.seqlen_q + i) * s.hkv + h) * s.d;
          const std::vector<uint16_t> k = rotated(before.h, &before.h.k_new[src], row);
          for (int64_t c = 0; c < s.d; ++c) {
            k_want[at + c] = float_to_e4m3(fd::to_float(s.dtype, k[c]) / f.ks[h]);
            v_want[at + c] =
                float_to_e4m3(fd::to_float(s.dtype, before.h.v_new[src + c]) / f.vs[h]);
          }
        }
    EXPECT_EQ(f.k8, k_want) << "interleaved " << interleaved;
    EXPECT_EQ(f.v8, v_want) << "interleaved " << interleaved;
  }
}

// The appended rows are attended as stored: the call equals one without append over a cache
// already holding the stored bytes (no rotary, so query positions do not depend on it).
TEST(Fp8Cache, AppendedRowsAreAttendedAsStored) {
  for (int64_t page : {0, 8})
    for (bool causal : {true, false}) {
      KvSpec s;
      s.seqlen_q = 5;
      s.capacity = 40;
      s.lens = {3, 0, 30};
      s.page_size = page;
      s.causal = causal;
      SCOPED_TRACE(::testing::Message() << "page " << page << (causal ? " causal" : ""));
      Fp8Host f(s, 23, {2, 0.25f}, {0.5f, 8});
      ASSERT_TRUE(run(f.h.p).ok());
      KvSpec grown = s;
      grown.append = false;
      for (int& n : grown.lens) n += static_cast<int>(s.seqlen_q);
      Fp8Host stored(grown, 23, f.ks, f.vs);
      stored.k8 = f.k8;
      stored.v8 = f.v8;
      stored.h.p.k_cache = stored.k8.data();
      stored.h.p.v_cache = stored.v8.data();
      ASSERT_TRUE(run(stored.h.p).ok());
      expect_same_outputs(f.h, stored.h);
    }
}

// k_scale[h] belongs to kv head h alone: each head's q heads get what a call with unit scales
// and softmax_scale * k_scale[h] gives them.
TEST(Fp8Cache, KeyScaleFoldsIntoEachKvHeadsSoftmaxScale) {
  KvSpec s;
  s.seqlen_q = 2;
  s.hkv = 3;
  s.hq = 6;
  s.append = false;
  const std::vector<float> ks = {0.3f, 1.7f, 0.011f}, ones(3, 1.0f);
  Fp8Host f(s, 5, ks, ones);
  ASSERT_TRUE(run(f.h.p).ok());
  for (int64_t h = 0; h < s.hkv; ++h) {
    Fp8Host unit(s, 5, ones, ones);
    unit.k8 = f.k8;
    unit.h.p.k_cache = unit.k8.data();
    unit.h.p.softmax_scale = (1.0f / std::sqrt(static_cast<float>(s.d))) * ks[h];
    ASSERT_TRUE(run(unit.h.p).ok());
    const int64_t group = s.hq / s.hkv;
    for (int64_t b = 0; b < s.batch; ++b)
      for (int64_t i = 0; i < s.seqlen_q; ++i)
        for (int64_t qh = h * group; qh < (h + 1) * group; ++qh) {
          const int64_t at = ((b * s.seqlen_q + i) * s.hq + qh) * s.d;
          EXPECT_EQ(0, std::memcmp(&f.h.o[at], &unit.h.o[at], s.d * 2))
              << b << " " << i << " " << qh;
          const int64_t l = (b * s.hq + qh) * s.seqlen_q + i;
          EXPECT_EQ(f.h.lse[l], unit.h.lse[l]);
        }
  }
}

// A scale that is not finite and > 0 poisons every entry and writes nothing; an entry with an
// error of its own reports that one (the first error, as for every other bit).
TEST(Fp8Cache, BadScaleFlagsEveryEntryAndWritesNothing) {
  const float inf = std::numeric_limits<float>::infinity();
  for (bool on_k : {true, false})
    for (float bad : {0.0f, -0.0f, -2.0f, inf, -inf, std::numeric_limits<float>::quiet_NaN()}) {
      KvSpec s;
      s.seqlen_q = 2;
      s.lens = {5, 31, 17};  // entry 1 overflows: 31 + 2 > 32
      SCOPED_TRACE(::testing::Message() << (on_k ? "k_scale " : "v_scale ") << bad);
      Fp8Host f(s, 9, {1, 1}, {1, 1});
      (on_k ? f.ks : f.vs)[1] = bad;
      const std::vector<uint8_t> k8 = f.k8, v8 = f.v8;
      ASSERT_TRUE(run(f.h.p).ok());
      EXPECT_EQ(f.h.flag, kKvScaleInvalid | kKvCacheOverflow);
      for (int64_t b = 0; b < s.batch; ++b) EXPECT_TRUE(is_nan_row(f.h, b)) << b;
      EXPECT_EQ(f.k8, k8);
      EXPECT_EQ(f.v8, v8);
    }
}

TEST(Fp8Cache, ArgumentRulesNameTheArgument) {
  struct Rule {
    const char* name;
    void (*breakit)(KvCacheParams&);
  };
  static const float scales[2] = {1, 1};
  const Rule rules[] = {
      {"k_scale: must not be null", [](KvCacheParams& p) { p.k_scale = nullptr; }},
      {"v_scale: must not be null", [](KvCacheParams& p) { p.v_scale = nullptr; }},
      {"k_scale: pointer must be 4-byte aligned",
       [](KvCacheParams& p) {
         p.k_scale = reinterpret_cast<const float*>(reinterpret_cast<const char*>(scales) + 2);
       }},
      {"k_scale: only meaningful with cache_fp8", [](KvCacheParams& p) { p.cache_fp8 = false; }},
      {"v_scale: only meaningful with cache_fp8",
       [](KvCacheParams& p) {
         p.cache_fp8 = false;
         p.k_scale = nullptr;
       }},
      // 16-byte vectors hold 16 fp8 elements: a stride of 8 is 8 bytes
      {"k_cache_strides.head: must be a multiple of 16",
       [](KvCacheParams& p) { p.k_cache_strides.head = 72; }},
      {"v_cache_strides.seq: must be a multiple of 16",
       [](KvCacheParams& p) { p.v_cache_strides.seq += 8; }},
  };
  for (const Rule& r : rules) {
    Fp8Host f(KvSpec{}, 2, {1, 1}, {1, 1});
    r.breakit(f.h.p);
    const Plan plan = query(f.h.p);
    EXPECT_EQ(plan.status.code, StatusCode::kInvalidArgument) << r.name;
    EXPECT_EQ(plan.status.message.rfind(r.name, 0), 0u) << r.name << ": " << plan.status.message;
  }
  Fp8Host f(KvSpec{}, 2, {1, 1}, {1, 1});
  const Plan plan = query(f.h.p);
  EXPECT_TRUE(plan.status.ok()) << plan.status.message;
  EXPECT_EQ(plan.backend, Backend::kReference);
}

}  // namespace
}  // namespace flashcore::test
