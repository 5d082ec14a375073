// The decode kernel's epilogue (decode_kernel.cuh): the four warps' running results merge
// through shared memory; a CTA then stores its rows, or leaves its split's partial, and the
// last split of a unit to arrive merges every partial in split order. Each step gives a thread
// a few independent loads: a merge written as a loop of dependent L2 round trips per element
// cost 20-75 µs per call at 8-33 splits (perf-notes K3).
#pragma once

#include <cstdint>

#include "common/device_math.cuh"
#include "decode/decode_params.h"

namespace flashcore::decode {

// Overlays the K/V stages, free once the key loop has ended with a barrier.
template <int D>
struct MergeSmem {
  // Floats per row: D + 8 keeps each half-warp's float2 fragment writes on distinct banks
  // and rows 16-byte aligned for the float4 reads.
  static constexpr int kPitch = D + 8;
  float o[4][kRows][kPitch];  // each warp's O, scaled to the CTA's row max
  float m[4][kRows], l[4][kRows];
  float row_m[kRows], row_l[kRows];
};

// Split s's partial of a unit: kRows x D floats of O (relative to its row max), then
// kRows x (max in log2 units, sum).
template <int D>
__device__ __forceinline__ float* partial_of(const DecodeParams& p, int unit, int s) {
  return p.partials + (int64_t(unit) * p.splits + s) * kRows * (D + 2);
}

// v_scale: an fp8 cache's value scale of this kv head (1 otherwise), applied with the 1 / sum.
template <class Tag, int D>
__device__ __forceinline__ void store_rows(const DecodeParams& p, int b, int kvh, int row0,
                                           int r, int c, float4 acc, float m, float l,
                                           float v_scale) {
  if (row0 + r >= p.rows) return;
  const int i = (row0 + r) / p.group, h = kvh * p.group + (row0 + r) % p.group;
  const float inv = l > 0.f ? v_scale / l : 0.f;  // a row that saw no key: O = 0
  auto* orow = static_cast<uint16_t*>(p.o) + b * p.o_b + int64_t(i) * p.o_s + h * p.o_h + c;
  const uint2 packed = make_uint2(from_f<Tag>(acc.x * inv) | uint32_t(from_f<Tag>(acc.y * inv)) << 16,
                                  from_f<Tag>(acc.z * inv) | uint32_t(from_f<Tag>(acc.w * inv)) << 16);
  *reinterpret_cast<uint2*>(orow) = packed;  // o is 16-byte aligned, strides multiples of 8
  if (p.lse && c == 0)
    p.lse[(int64_t(b) * p.num_heads_kv * p.group + h) * p.seqlen_q + i] =
        l > 0.f ? (m + __log2f(l)) * 0.6931471805599453f : -INFINITY;
}

// o: this thread's accumulator fragment (rows g and g + 8 of the warp's m16 tile, columns
// 8 dt + 2 t4 + {0, 1}); m: its rows' running max (log2 units); l: its share of their sums.
// Only the chunk's real rows (GQA decode fills 4-8 of the 16) are merged, stored and passed
// between splits.
template <class Tag, int D>
__device__ void decode_epilogue(const DecodeParams& p, MergeSmem<D>& ms, int& flag,
                                const float (&o)[D / 8][4], const float (&m)[2], const float (&l)[2],
                                int b, int kvh, int chunk, int split, float v_scale) {
  static_assert(kThreads == 4 * 32 && kThreads == kRows * 8, "four warps; 8 threads a row");
  constexpr int kCols4 = D / 4;  // float4 columns a row
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
  const int row0 = chunk * kRows;
  const int nrows = min(kRows, p.rows - row0), elems = nrows * kCols4;
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const float ls = detail::quad_sum(l[hr]);
    if (t4 == 0) ms.m[warp][g + 8 * hr] = m[hr], ms.l[warp][g + 8 * hr] = ls;
  }
  __syncthreads();
  if (tid < nrows) {  // the CTA's max and sum per row
    float mx = -INFINITY, sum = 0.f;
    for (int w = 0; w < 4; ++w) mx = fmaxf(mx, ms.m[w][tid]);
    for (int w = 0; w < 4; ++w)
      if (ms.m[w][tid] != -INFINITY) sum += ms.l[w][tid] * detail::ex2(ms.m[w][tid] - mx);
    ms.row_m[tid] = mx, ms.row_l[tid] = sum;
  }
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int r = g + 8 * hr;
    if (r >= nrows) continue;
    float mx = -INFINITY;
    for (int w = 0; w < 4; ++w) mx = fmaxf(mx, ms.m[w][r]);
    // A warp whose keys this row does not see holds zeros: weight 0.
    const float f = m[hr] == -INFINITY ? 0.f : detail::ex2(m[hr] - mx);
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
      *reinterpret_cast<float2*>(&ms.o[warp][r][8 * dt + 2 * t4]) =
          f == 0.f ? make_float2(0.f, 0.f) : make_float2(o[dt][2 * hr] * f, o[dt][2 * hr + 1] * f);
  }
  __syncthreads();
  const int unit = (b * p.num_heads_kv + kvh) * p.chunks + chunk;
  float* mine = p.splits > 1 ? partial_of<D>(p, unit, split) : nullptr;
  for (int idx = tid; idx < elems; idx += kThreads) {
    const int r = idx / kCols4, c = idx % kCols4 * 4;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const float4 x = *reinterpret_cast<const float4*>(&ms.o[w][r][c]);
      acc.x += x.x, acc.y += x.y, acc.z += x.z, acc.w += x.w;
    }
    if (mine)
      __stcg(reinterpret_cast<float4*>(mine + r * D + c), acc);
    else
      store_rows<Tag, D>(p, b, kvh, row0, r, c, acc, ms.row_m[r], ms.row_l[r], v_scale);
  }
  if (!mine) {
    FLASHCORE_DECODE_STAMP(4, 0);
    FLASHCORE_DECODE_STAMP(5, 0);
    return;
  }
  if (tid < nrows)
    __stcg(reinterpret_cast<float2*>(mine + kRows * D + 2 * tid),
           make_float2(ms.row_m[tid], ms.row_l[tid]));
  // The barrier orders every thread's partial stores before thread 0's release (PTX release is
  // cumulative); its acquire and the next barrier order the last arriver's loads after every
  // other split's release. One acq_rel atomic instead of two sequentially consistent fences
  // (MEMBAR.SC) around a relaxed one (perf-notes K11). inc wraps to 0 at splits - 1, so the
  // last arrival leaves the counter zero for the next call.
  __syncthreads();
  if (tid == 0) {
    uint32_t old;
    asm volatile("atom.acq_rel.gpu.global.inc.u32 %0, [%1], %2;"
                 : "=r"(old)
                 : "l"(p.counters + unit), "r"(uint32_t(p.splits - 1))
                 : "memory");
    flag = old == uint32_t(p.splits - 1);
  }
  __syncthreads();
  FLASHCORE_DECODE_STAMP(4, 0);
  if (!flag) {
    FLASHCORE_DECODE_STAMP(5, 0);
    return;
  }

  // Each thread merges its elements over every split, kGroup splits a round: their (max, sum)
  // and partial values are loaded together (one round of independent loads), then combined
  // online in split order, the same order whoever arrives last (perf-notes K9).
  constexpr int kGroup = 16;
  for (int idx = tid; idx < elems; idx += kThreads) {
    const int r = idx / kCols4, c = idx % kCols4 * 4;
    float mx = -INFINITY, sum = 0.f;
    float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int s0 = 0; s0 < p.splits; s0 += kGroup) {
      float2 ml[kGroup];
      float4 x[kGroup];
#pragma unroll
      for (int j = 0; j < kGroup; ++j) {
        const int s = s0 + j;  // past the last split: no load, no pointer formed
        ml[j] = s < p.splits
                    ? __ldcg(reinterpret_cast<const float2*>(partial_of<D>(p, unit, s) + kRows * D + 2 * r))
                    : make_float2(-INFINITY, 0.f);
        x[j] = s < p.splits ? __ldcg(reinterpret_cast<const float4*>(partial_of<D>(p, unit, s) + r * D + c))
                            : make_float4(0.f, 0.f, 0.f, 0.f);
      }
      float gm = mx;
#pragma unroll
      for (int j = 0; j < kGroup; ++j) gm = fmaxf(gm, ml[j].x);
      if (gm == -INFINITY) continue;  // no split so far saw a key of this row
      const float cor = mx == -INFINITY ? 0.f : detail::ex2(mx - gm);
      a.x *= cor, a.y *= cor, a.z *= cor, a.w *= cor, sum *= cor;
#pragma unroll
      for (int j = 0; j < kGroup; ++j) {
        const float w = ml[j].x == -INFINITY ? 0.f : detail::ex2(ml[j].x - gm);
        a.x = fmaf(w, x[j].x, a.x), a.y = fmaf(w, x[j].y, a.y);
        a.z = fmaf(w, x[j].z, a.z), a.w = fmaf(w, x[j].w, a.w);
        sum = fmaf(w, ml[j].y, sum);
      }
      mx = gm;
    }
    store_rows<Tag, D>(p, b, kvh, row0, r, c, a, mx, sum, v_scale);
  }
  FLASHCORE_DECODE_STAMP(5, 0);
}

}  // namespace flashcore::decode
