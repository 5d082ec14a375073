// KV-cache attention kernel, portable sm80+ (docs/decode-design.md). One CTA per (key split,
// kv head x row chunk, batch entry): its rows are the GQA-packed query rows of that kv head, so
// K and V are read once per kv head. Keys stream through shared memory in blocks of 32 (one
// per lane, cp.async double buffering); scores and P V run on the CUDA cores in fp32, which
// keeps up with HBM for decode (a few rows per kv head). Splits merge in-kernel: the last split
// of a unit to finish merges all partials in split order.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "common/device_math.cuh"
#include "common/dtype_tag.h"
#include "decode/decode_params.h"
#include "portable/sm80_ops.cuh"

namespace flashcore::decode {

template <class Tag>
__device__ __forceinline__ float to_f(uint16_t x) {
  if constexpr (std::is_same_v<Tag, detail::Bf16>)
    return __bfloat162float(__ushort_as_bfloat16(x));
  else
    return __half2float(__ushort_as_half(x));
}
template <class Tag>
__device__ __forceinline__ uint16_t from_f(float x) {
  if constexpr (std::is_same_v<Tag, detail::Bf16>)
    return __bfloat16_as_ushort(__float2bfloat16_rn(x));
  else
    return __half_as_ushort(__float2half_rn(x));
}

// The portable kernels' cp.async wrappers (sm80_ops.cuh), taking a generic smem pointer.
using portable::cp_async_commit;
using portable::cp_async_wait;
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
  portable::cp_async_16(portable::smem_addr(dst), src, valid);
}

__device__ __forceinline__ float warp_max(float x) {
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Shared memory: q rows (fp32, rotated, pre-scaled), two stages of K and V blocks (rows padded
// by 16 bytes so the lanes' rows fall in different banks).
template <int D>
struct Smem {
  static constexpr int kPitch = D + 8;  // elements per smem row
  float q[kRows][D];
  uint16_t k[2][kBlockN][kPitch];
  uint16_t v[2][kBlockN][kPitch];
  int flag;
};

// Element offset of key row n (< cache_seqlens) of entry b, kv head h, in a cache.
__device__ __forceinline__ int64_t cache_offset(const DecodeParams& p, int64_t sb, int64_t ss,
                                                int64_t sh, int b, int n, int h) {
  if (!p.paged) return b * sb + int64_t(n) * ss + h * sh;
  const int page = p.block_table[b * p.bt_stride + n / p.page_size];
  return int64_t(page) * sb + int64_t(n % p.page_size) * ss + h * sh;
}

// Rotates the pair (x[a], x[b]) of a row at position pos (kvcache.h: Rotary).
template <class Tag>
__device__ __forceinline__ void rotate_pair(const DecodeParams& p, int pos, int i, float& x,
                                            float& y) {
  const int half = p.rotary_dim / 2;
  const float c = to_f<Tag>(static_cast<const uint16_t*>(p.rot_cos)[int64_t(pos) * half + i]);
  const float s = to_f<Tag>(static_cast<const uint16_t*>(p.rot_sin)[int64_t(pos) * half + i]);
  const float x0 = x, y0 = y;
  x = x0 * c - y0 * s;
  y = x0 * s + y0 * c;
}
__device__ __forceinline__ void pair_of(const DecodeParams& p, int i, int& a, int& b) {
  a = p.interleaved ? 2 * i : i;
  b = p.interleaved ? 2 * i + 1 : i + p.rotary_dim / 2;
}

template <class Tag, int D>
__global__ void __launch_bounds__(kThreads, D >= 256 ? 3 : 4) decode_kernel(const __grid_constant__ DecodeParams p) {
  extern __shared__ uint8_t smem_raw[];
  auto& sm = *reinterpret_cast<Smem<D>*>(smem_raw);
  const int split = blockIdx.x, kvh = blockIdx.y / p.chunks, chunk = blockIdx.y % p.chunks;
  const int b = blockIdx.z, tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int L = p.cache_seqlens[b];
  const int n_new = p.append ? p.seqlen_q : 0;
  const int64_t lk64 = int64_t(L) + n_new;
  const int Lk = static_cast<int>(lk64);
  const int row0 = chunk * kRows;

  // Every CTA of entry b checks the whole entry the same way, so all of them agree on whether
  // it is bad; a bad entry reads and writes nothing but its NaN output rows.
  int err = 0;
  if (L < 0 || lk64 > p.capacity) err = kKvCacheOverflow;
  if (!err && p.paged) {
    bool bad = false;
    for (int pg = tid; int64_t(pg) * p.page_size < Lk; pg += kThreads) {
      const int e = p.block_table[b * p.bt_stride + pg];
      bad |= e < 0 || e >= p.num_pages;
    }
    if (__syncthreads_or(bad)) err = kKvBlockTableOutOfRange;
  }
  if (!err && p.rotary_dim > 0) {
    const int last_q = p.seqlen_q > 0 ? (p.masked ? L + p.seqlen_q - 1 : L) : 0;
    if (last_q >= p.max_position || (p.append && Lk - 1 >= p.max_position))
      err = kKvRotaryOutOfRange;
  }
  if (err) {
    if (tid == 0) atomicOr(p.error_flag, err);
    if (split != 0) return;
    const uint16_t nan = from_f<Tag>(__int_as_float(0x7fc00000));
    for (int idx = tid; idx < kRows * D; idx += kThreads) {
      const int r = row0 + idx / D, c = idx % D;
      if (r >= p.rows) continue;
      const int i = r / p.group, h = kvh * p.group + r % p.group;
      static_cast<uint16_t*>(p.o)[b * p.o_b + int64_t(i) * p.o_s + h * p.o_h + c] = nan;
      if (p.lse && c == 0)
        p.lse[(int64_t(b) * p.num_heads_kv * p.group + h) * p.seqlen_q + i] =
            __int_as_float(0x7fc00000);
    }
    return;
  }

  // This split's key blocks (of the entry's length, known only here).
  const int nblocks = (Lk + kBlockN - 1) / kBlockN;
  const int per = (nblocks + p.splits - 1) / p.splits;
  const int kb0 = min(nblocks, split * per), kb1 = min(nblocks, kb0 + per);

  // Append: the new rows of this split's range go into the cache (chunk 0 writes them), rotated.
  if (chunk == 0 && n_new > 0) {
    const int n0 = max(L, kb0 * kBlockN), n1 = min(Lk, kb1 * kBlockN);
    for (int idx = tid; idx < (n1 - n0) * D; idx += kThreads) {
      const int n = n0 + idx / D, c = idx % D, i = n - L;
      const auto* kn = static_cast<const uint16_t*>(p.k_new) + b * p.kn_b + i * p.kn_s + kvh * p.kn_h;
      const auto* vn = static_cast<const uint16_t*>(p.v_new) + b * p.vn_b + i * p.vn_s + kvh * p.vn_h;
      uint16_t kval = kn[c];
      if (c < p.rotary_dim) {
        int pr, a, bb;
        pr = p.interleaved ? c / 2 : (c < p.rotary_dim / 2 ? c : c - p.rotary_dim / 2);
        pair_of(p, pr, a, bb);
        float x = to_f<Tag>(kn[a]), y = to_f<Tag>(kn[bb]);
        rotate_pair<Tag>(p, n, pr, x, y);
        kval = from_f<Tag>(c == a ? x : y);
      }
      auto* kc = static_cast<uint16_t*>(p.k_cache);
      auto* vc = static_cast<uint16_t*>(p.v_cache);
      kc[cache_offset(p, p.kc_b, p.kc_s, p.kc_h, b, n, kvh) + c] = kval;
      vc[cache_offset(p, p.vc_b, p.vc_s, p.vc_h, b, n, kvh) + c] = vn[c];
    }
  }

  // q rows: rotated (rounded to the dtype, as the reference does), then scaled into log2 units.
  for (int idx = tid; idx < kRows * D; idx += kThreads) {
    const int rr = idx / D, c = idx % D, r = row0 + rr;
    float val = 0.f;
    if (r < p.rows) {
      const int i = r / p.group, h = kvh * p.group + r % p.group;
      const auto* qr = static_cast<const uint16_t*>(p.q) + b * p.q_b + int64_t(i) * p.q_s + h * p.q_h;
      val = to_f<Tag>(qr[c]);
      if (c < p.rotary_dim) {
        const int pr = p.interleaved ? c / 2 : (c < p.rotary_dim / 2 ? c : c - p.rotary_dim / 2);
        int a, bb;
        pair_of(p, pr, a, bb);
        float x = to_f<Tag>(qr[a]), y = to_f<Tag>(qr[bb]);
        rotate_pair<Tag>(p, p.masked ? L + i : L, pr, x, y);
        val = to_f<Tag>(from_f<Tag>(c == a ? x : y));
      }
    }
    sm.q[rr][c] = val * p.scale_log2;
  }

  // Keys any row of this CTA sees (bottom-right aligned masks), within the split.
  const int last_row = min(p.rows, row0 + kRows) - 1;
  const int i_first = row0 / p.group, i_last = max(last_row, row0) / p.group;
  const int off = Lk - p.seqlen_q;
  const int lo_all = p.window_left >= 0 ? max(0, i_first + off - p.window_left) : 0;
  const int hi_all = p.window_right >= 0 ? min(Lk, i_last + off + p.window_right + 1) : Lk;
  const int jb0 = max(kb0, lo_all / kBlockN);
  const int jb1 = min(kb1, (hi_all + kBlockN - 1) / kBlockN);

  // Block loader: cache rows below L, new rows (raw; rotated in smem) below Lk, zeros after.
  auto load = [&](int blk, int st) {
    constexpr int kChunks = D / 8;
    for (int idx = tid; idx < kBlockN * kChunks; idx += kThreads) {
      const int j = idx / kChunks, c = (idx % kChunks) * 8, n = blk * kBlockN + j;
      const uint16_t *ks, *vs;
      if (n < L) {
        ks = static_cast<const uint16_t*>(p.k_cache) + cache_offset(p, p.kc_b, p.kc_s, p.kc_h, b, n, kvh);
        vs = static_cast<const uint16_t*>(p.v_cache) + cache_offset(p, p.vc_b, p.vc_s, p.vc_h, b, n, kvh);
      } else {
        const int i = min(n - L, max(n_new - 1, 0));
        ks = static_cast<const uint16_t*>(n_new > 0 ? p.k_new : p.q) + b * p.kn_b + i * p.kn_s + kvh * p.kn_h;
        vs = static_cast<const uint16_t*>(n_new > 0 ? p.v_new : p.q) + b * p.vn_b + i * p.vn_s + kvh * p.vn_h;
      }
      const bool valid = n < Lk;
      cp_async_16(&sm.k[st][j][c], valid ? ks + c : static_cast<const uint16_t*>(p.q), valid);
      cp_async_16(&sm.v[st][j][c], valid ? vs + c : static_cast<const uint16_t*>(p.q), valid);
    }
    cp_async_commit();
  };
  // The new keys of a landed block, rotated in place (pairs may straddle 16-byte chunks).
  auto rotate_new = [&](int blk, int st) {
    if (p.rotary_dim == 0 || n_new == 0) return;
    const int half = p.rotary_dim / 2;
    for (int idx = tid; idx < kBlockN * half; idx += kThreads) {
      const int j = idx / half, pr = idx % half, n = blk * kBlockN + j;
      if (n < L || n >= Lk) continue;
      int a, bb;
      pair_of(p, pr, a, bb);
      float x = to_f<Tag>(sm.k[st][j][a]), y = to_f<Tag>(sm.k[st][j][bb]);
      rotate_pair<Tag>(p, n, pr, x, y);
      sm.k[st][j][a] = from_f<Tag>(x);
      sm.k[st][j][bb] = from_f<Tag>(y);
    }
  };

  constexpr int kCols = D / 32;  // O columns per lane
  float o[4][kCols], m[4], l[4];
  int lo[4], hi[4];
#pragma unroll
  for (int rw = 0; rw < 4; ++rw) {
    m[rw] = -INFINITY;
    l[rw] = 0.f;
#pragma unroll
    for (int c = 0; c < kCols; ++c) o[rw][c] = 0.f;
    const int r = row0 + warp * 4 + rw;
    const int i = r / p.group;
    lo[rw] = r < p.rows && p.window_left >= 0 ? i + off - p.window_left : 0;
    hi[rw] = r >= p.rows ? 0 : p.window_right >= 0 ? min(Lk, i + off + p.window_right + 1) : Lk;
  }

  if (jb0 < jb1) load(jb0, 0);
  for (int blk = jb0; blk < jb1; ++blk) {
    const int st = (blk - jb0) & 1;
    if (blk + 1 < jb1) {
      load(blk + 1, st ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    rotate_new(blk, st);
    __syncthreads();

    // Scores of this lane's key for the warp's four rows.
    float s[4] = {0.f, 0.f, 0.f, 0.f};
    const uint16_t* krow = sm.k[st][lane];
#pragma unroll 4
    for (int c = 0; c < D; c += 8) {
      const uint4 kv = *reinterpret_cast<const uint4*>(krow + c);
      const uint16_t* ke = reinterpret_cast<const uint16_t*>(&kv);
      float kf[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) kf[e] = to_f<Tag>(ke[e]);
#pragma unroll
      for (int rw = 0; rw < 4; ++rw) {
        const float* qr = &sm.q[warp * 4 + rw][c];
#pragma unroll
        for (int e = 0; e < 8; ++e) s[rw] = fmaf(qr[e], kf[e], s[rw]);
      }
    }
    const int n = blk * kBlockN + lane;
#pragma unroll
    for (int rw = 0; rw < 4; ++rw) {
      const float sv = (n >= lo[rw] && n < hi[rw]) ? s[rw] : -INFINITY;
      const float m_new = fmaxf(m[rw], warp_max(sv));
      if (m_new == -INFINITY) continue;  // nothing visible to this row yet
      const float alpha = m[rw] == -INFINITY ? 0.f : detail::ex2(m[rw] - m_new);
      const float pj = sv == -INFINITY ? 0.f : detail::ex2(sv - m_new);
      l[rw] = l[rw] * alpha + warp_sum(pj);
      m[rw] = m_new;
#pragma unroll
      for (int c = 0; c < kCols; ++c) o[rw][c] *= alpha;
      for (int j = 0; j < kBlockN; ++j) {
        const float pb = __shfl_sync(0xffffffffu, pj, j);
        const uint16_t* vr = &sm.v[st][j][lane * kCols];
#pragma unroll
        for (int c = 0; c < kCols; ++c) o[rw][c] = fmaf(pb, to_f<Tag>(vr[c]), o[rw][c]);
      }
    }
    __syncthreads();  // the stage is reloaded two blocks on
  }

  // Epilogue: one split writes O and LSE; several leave partials for the last one to merge.
  auto store = [&](int rw, const float* oc, float mm, float ll) {
    const int r = row0 + warp * 4 + rw;
    if (r >= p.rows) return;
    const int i = r / p.group, h = kvh * p.group + r % p.group;
    const float inv = ll > 0.f ? 1.f / ll : 0.f;
    auto* orow = static_cast<uint16_t*>(p.o) + b * p.o_b + int64_t(i) * p.o_s + h * p.o_h;
#pragma unroll
    for (int c = 0; c < kCols; ++c) orow[lane * kCols + c] = from_f<Tag>(oc[c] * inv);
    if (p.lse && lane == 0)
      p.lse[(int64_t(b) * p.num_heads_kv * p.group + h) * p.seqlen_q + i] =
          ll > 0.f ? (mm + __log2f(ll)) * 0.6931471805599453f : -INFINITY;
  };
  if (p.splits == 1) {
#pragma unroll
    for (int rw = 0; rw < 4; ++rw) store(rw, o[rw], m[rw], l[rw]);
    return;
  }
  const int unit = (b * p.num_heads_kv + kvh) * p.chunks + chunk;
  const int64_t pitch = D + 2;
  float* mine = p.partials + (int64_t(unit) * p.splits + split) * kRows * pitch;
#pragma unroll
  for (int rw = 0; rw < 4; ++rw) {
    float* pr = mine + (warp * 4 + rw) * pitch;
#pragma unroll
    for (int c = 0; c < kCols; ++c) __stcg(pr + lane * kCols + c, o[rw][c]);
    if (lane == 0) {
      __stcg(pr + D, m[rw]);
      __stcg(pr + D + 1, l[rw]);
    }
  }
  __threadfence();
  __syncthreads();
  if (tid == 0) {
    const bool last = atomicAdd(p.counters + unit, 1) == p.splits - 1;
    if (last) p.counters[unit] = 0;  // every split has counted: the next call starts at 0
    sm.flag = last;
  }
  __syncthreads();
  if (!sm.flag) return;
  __threadfence();
  // Merge in split order, so the result does not depend on which split came last.
  for (int rw = 0; rw < 4; ++rw) {
    float acc[kCols], mm = -INFINITY, ll = 0.f;
#pragma unroll
    for (int c = 0; c < kCols; ++c) acc[c] = 0.f;
    for (int sp = 0; sp < p.splits; ++sp) {
      const float* pr =
          p.partials + ((int64_t(unit) * p.splits + sp) * kRows + warp * 4 + rw) * pitch;
      const float ms = __ldcg(pr + D), ls = __ldcg(pr + D + 1);
      if (ms == -INFINITY) continue;
      const float mx = fmaxf(mm, ms);
      const float a = mm == -INFINITY ? 0.f : detail::ex2(mm - mx), bs = detail::ex2(ms - mx);
#pragma unroll
      for (int c = 0; c < kCols; ++c) acc[c] = acc[c] * a + __ldcg(pr + lane * kCols + c) * bs;
      ll = ll * a + ls * bs;
      mm = mx;
    }
    store(rw, acc, mm, ll);
  }
}

}  // namespace flashcore::decode
