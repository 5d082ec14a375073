// CPU reference of attention against a KV cache: the executable spec of kvcache.h. Every entry
// is checked before anything is written; the attention itself is forward() over the entries'
// cache rows gathered into one packed variable-length problem, so the two entry points cannot
// disagree on masking or softmax. An fp8 cache (cache_fp8) enters forward() as dtype values of
// its decoded bytes, which is exact: every e4m3 value is a bf16 and an fp16 value.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "common/dtype.h"
#include "common/fp8.h"
#include "reference/reference.h"

namespace flashcore::ref {
namespace {

using detail::KvProblem;

int64_t offset(const Strides& s, int64_t b, int64_t row, int64_t h) {
  return b * s.batch + row * s.seq + h * s.head;
}
const uint16_t* at(const void* base, const Strides& s, int64_t b, int64_t row, int64_t h) {
  return static_cast<const uint16_t*>(base) + offset(s, b, row, h);
}
uint16_t* at(void* base, const Strides& s, int64_t b, int64_t row, int64_t h) {
  return static_cast<uint16_t*>(base) + offset(s, b, row, h);
}

// Where row r of entry b lives in a cache: (outer index, row in it), outer = page or entry.
struct CacheRow {
  int64_t outer, row;
};
CacheRow cache_row(const KvProblem& f, int64_t b, int64_t r) {
  if (!f.paged) return {b, r};
  const KvCacheParams& p = f.p;
  return {p.block_table[b * p.block_table_stride + r / p.page_size], r % p.page_size};
}

// kKvScaleInvalid when the fp8 cache has a k_scale or v_scale that is not finite and > 0.
int32_t scale_error(const KvCacheParams& p) {
  if (!p.cache_fp8) return 0;
  for (int64_t h = 0; h < p.num_heads_kv; ++h)
    for (const float s : {p.k_scale[h], p.v_scale[h]})
      if (!(std::isfinite(s) && s > 0.0f)) return kKvScaleInvalid;
  return 0;
}

// The first KvCacheError bit of entry b (0: fine), in the kernels' order. len:
// cache_seqlens[b]; pad: cache_leftpad[b] (0 without it): rows [pad, len + new keys) are the
// entry's keys.
int32_t entry_error(const KvProblem& f, int64_t b, int64_t len, int64_t pad) {
  const KvCacheParams& p = f.p;
  const int64_t total = len + f.new_keys();
  if (len < 0 || total > f.capacity) return kKvCacheOverflow;
  if (pad < 0 || pad > len) return kKvLeftpadOutOfRange;
  if (f.paged) {
    for (int64_t pg = pad / p.page_size; pg * p.page_size < total; ++pg) {
      const int32_t e = p.block_table[b * p.block_table_stride + pg];
      if (e < 0 || e >= p.num_pages) return kKvBlockTableOutOfRange;
    }
  }
  if (p.rotary.rotary_dim > 0) {
    const int64_t last_q = p.seqlen_q > 0 ? f.query_position(len, p.seqlen_q - 1) : 0;
    const int64_t last_k = total - 1;
    if (last_q >= p.rotary.max_position || (f.append && last_k >= p.rotary.max_position))
      return kKvRotaryOutOfRange;
  }
  return scale_error(p);  // every entry uses every kv head's scales
}

// Cache row (cr, h) as dtype values into dst.
void read_cache_row(const KvProblem& f, const void* cache, const Strides& s, const CacheRow& cr,
                    int64_t h, uint16_t* dst) {
  const KvCacheParams& p = f.p;
  if (!p.cache_fp8) {
    std::memcpy(dst, at(cache, s, cr.outer, cr.row, h), static_cast<size_t>(p.head_dim) * 2);
    return;
  }
  const uint8_t* src = static_cast<const uint8_t*>(cache) + offset(s, cr.outer, cr.row, h);
  for (int64_t c = 0; c < p.head_dim; ++c)
    dst[c] = detail::from_float(p.dtype, detail::e4m3_to_float(src[c]));
}

// A dtype row into cache row (cr, h); an fp8 cache stores e4m3(x / scale[h]), the quotient a
// correctly rounded fp32 division (a kernel must divide, not multiply by a reciprocal).
void write_cache_row(const KvProblem& f, void* cache, const Strides& s, const CacheRow& cr,
                     int64_t h, const uint16_t* src, const float* scale) {
  const KvCacheParams& p = f.p;
  if (!p.cache_fp8) {
    std::memcpy(at(cache, s, cr.outer, cr.row, h), src, static_cast<size_t>(p.head_dim) * 2);
    return;
  }
  uint8_t* dst = static_cast<uint8_t*>(cache) + offset(s, cr.outer, cr.row, h);
  for (int64_t c = 0; c < p.head_dim; ++c)
    dst[c] = detail::float_to_e4m3(detail::to_float(p.dtype, src[c]) / scale[h]);
}

// One head row rotated at `pos` (kvcache.h: Rotary), rounded to the dtype, into dst.
void rotate_row(const KvProblem& f, const uint16_t* src, int64_t pos, uint16_t* dst) {
  const KvCacheParams& p = f.p;
  const Rotary& r = p.rotary;
  const DType t = p.dtype;
  std::memcpy(dst, src, static_cast<size_t>(p.head_dim) * 2);
  const int64_t half = r.rotary_dim / 2;
  const auto* cs = static_cast<const uint16_t*>(r.cos) + pos * half;
  const auto* sn = static_cast<const uint16_t*>(r.sin) + pos * half;
  for (int64_t i = 0; i < half; ++i) {
    const int64_t a = r.interleaved ? 2 * i : i, b = r.interleaved ? 2 * i + 1 : i + half;
    const double x = detail::to_float(t, src[a]), y = detail::to_float(t, src[b]);
    const double c = detail::to_float(t, cs[i]), s = detail::to_float(t, sn[i]);
    dst[a] = detail::from_float(t, static_cast<float>(x * c - y * s));
    dst[b] = detail::from_float(t, static_cast<float>(x * s + y * c));
  }
}

// A q or k_new row into dst, rotated at pos when the call has rotary.
void copy_row(const KvProblem& f, const uint16_t* src, int64_t pos, uint16_t* dst) {
  if (f.p.rotary.rotary_dim > 0)
    rotate_row(f, src, pos, dst);
  else
    std::memcpy(dst, src, static_cast<size_t>(f.p.head_dim) * 2);
}

}  // namespace

Status kvcache(const KvProblem& f, const Options& opt) {
  const KvCacheParams& p = f.p;
  const int64_t B = p.batch, sq = p.seqlen_q, hq = p.num_heads_q, hkv = p.num_heads_kv;
  const int64_t d = p.head_dim;
  const uint16_t nan = detail::from_float(p.dtype, std::numeric_limits<float>::quiet_NaN());
  if (sq == 0) return {};  // no rows and no new keys: nothing is read or written (kvcache.h)

  // Checks first: an entry with an error writes nothing and gets NaN rows.
  std::vector<int64_t> len(static_cast<size_t>(B)), pad(static_cast<size_t>(B), 0);
  std::vector<bool> ok(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    len[b] = p.cache_seqlens[b];
    if (p.cache_leftpad) pad[b] = p.cache_leftpad[b];
    const int32_t err = entry_error(f, b, len[b], pad[b]);
    ok[b] = err == 0;
    *p.error_flag |= err;
    if (ok[b]) continue;
    for (int64_t i = 0; i < sq; ++i)
      for (int64_t h = 0; h < hq; ++h) {
        uint16_t* o = at(p.o, p.o_strides, b, i, h);
        for (int64_t c = 0; c < d; ++c) o[c] = nan;
        if (p.lse) p.lse[(b * hq + h) * sq + i] = std::numeric_limits<float>::quiet_NaN();
      }
  }

  // Append: new key i of entry b goes to cache row len[b] + i, rotated at that position. An fp8
  // cache quantizes the rotated key as rounded to dtype, the value a dtype cache would hold.
  std::vector<uint16_t> key(static_cast<size_t>(d));
  for (int64_t b = 0; b < B && f.append; ++b) {
    if (!ok[b]) continue;
    for (int64_t i = 0; i < sq; ++i) {
      const CacheRow cr = cache_row(f, b, len[b] + i);
      for (int64_t h = 0; h < hkv; ++h) {
        copy_row(f, at(p.k_new, p.k_new_strides, b, i, h), len[b] + i, key.data());
        write_cache_row(f, p.k_cache, p.k_cache_strides, cr, h, key.data(), p.k_scale);
        write_cache_row(f, p.v_cache, p.v_cache_strides, cr, h,
                        at(p.v_new, p.v_new_strides, b, i, h), p.v_scale);
      }
    }
  }

  // Gather every good entry into one packed problem: q rotated, keys = the entry's cache rows
  // from its left pad on. Dropping leading keys keeps the bottom-right alignment in positions.
  std::vector<int> lens_q, lens_k;
  std::vector<int64_t> entries;
  for (int64_t b = 0; b < B; ++b)
    if (ok[b]) {
      entries.push_back(b);
      lens_q.push_back(static_cast<int>(sq));
      lens_k.push_back(static_cast<int>(len[b] + f.new_keys() - pad[b]));
    }
  if (entries.empty() || sq == 0) return {};
  std::vector<int32_t> cu_q(1, 0), cu_k(1, 0);
  for (size_t e = 0; e < entries.size(); ++e) {
    cu_q.push_back(cu_q.back() + lens_q[e]);
    cu_k.push_back(cu_k.back() + lens_k[e]);
  }
  const int64_t tq = cu_q.back(), tk = cu_k.back();
  std::vector<uint16_t> q(static_cast<size_t>(tq * hq * d)), o(q.size());
  std::vector<uint16_t> k(static_cast<size_t>(tk * hkv * d)), v(k.size());
  std::vector<float> lse(static_cast<size_t>(hq * tq));
  for (size_t e = 0; e < entries.size(); ++e) {
    const int64_t b = entries[e];
    for (int64_t i = 0; i < sq; ++i)
      for (int64_t h = 0; h < hq; ++h)
        copy_row(f, at(p.q, p.q_strides, b, i, h), f.query_position(len[b], i),
                 &q[((cu_q[e] + i) * hq + h) * d]);
    for (int64_t r = 0; r < lens_k[e]; ++r) {  // keys from row pad on: positions pad + r
      const CacheRow cr = cache_row(f, b, pad[b] + r);
      for (int64_t h = 0; h < hkv; ++h) {
        read_cache_row(f, p.k_cache, p.k_cache_strides, cr, h, &k[((cu_k[e] + r) * hkv + h) * d]);
        read_cache_row(f, p.v_cache, p.v_cache_strides, cr, h, &v[((cu_k[e] + r) * hkv + h) * d]);
      }
    }
  }
  // forward() has one softmax scale, but an fp8 cache's k_scale is per kv head: it then runs
  // once per kv head and its q heads, with k_scale[h] folded into the scale as one fp32 product.
  const int64_t calls = p.cache_fp8 ? hkv : 1, kv_heads = hkv / calls;
  const int64_t q_heads = kv_heads * f.group;
  AttentionParams fp;
  fp.q_strides = fp.o_strides = {0, hq * d, d};
  fp.k_strides = fp.v_strides = {0, hkv * d, d};
  fp.dtype = p.dtype;
  fp.batch = static_cast<int64_t>(entries.size());
  fp.seqlen_q = sq;
  for (int n : lens_k) fp.seqlen_k = std::max<int64_t>(fp.seqlen_k, n);
  fp.num_heads_q = q_heads;
  fp.num_heads_kv = kv_heads;
  fp.head_dim = d;
  fp.cu_seqlens_q = cu_q.data();
  fp.cu_seqlens_k = cu_k.data();
  fp.total_q = tq;
  fp.total_k = tk;
  fp.softmax_scale = f.scale;
  fp.window_left = f.window_left;
  fp.window_right = f.window_right;
  for (int64_t c = 0; c < calls; ++c) {
    fp.q = &q[c * q_heads * d];
    fp.k = &k[c * kv_heads * d];
    fp.v = &v[c * kv_heads * d];
    fp.o = &o[c * q_heads * d];
    fp.lse = p.lse ? &lse[c * q_heads * tq] : nullptr;  // lse is [hq, tq]
    detail::FwdProblem fw = detail::resolve(fp);
    Options head_opt = opt;
    if (p.cache_fp8) fw.scale = f.scale * p.k_scale[c], head_opt.o_scale = p.v_scale[c];
    const Status st = forward(fw, head_opt);
    if (!st.ok()) return st;
  }
  for (size_t e = 0; e < entries.size(); ++e) {
    const int64_t b = entries[e];
    for (int64_t i = 0; i < sq; ++i)
      for (int64_t h = 0; h < hq; ++h) {
        std::memcpy(at(p.o, p.o_strides, b, i, h), &o[((cu_q[e] + i) * hq + h) * d], d * 2);
        if (p.lse) p.lse[(b * hq + h) * sq + i] = lse[h * tq + cu_q[e] + i];
      }
  }
  return {};
}

}  // namespace flashcore::ref
