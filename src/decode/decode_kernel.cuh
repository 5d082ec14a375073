// KV-cache attention kernel, portable sm80+ (docs/decode-design.md). One CTA per (key split,
// kv head x row chunk, batch entry): its 16 rows are the GQA-packed query rows of that kv head,
// so K and V are read once per kv head. Keys stream through shared memory in blocks of
// 4 x kWarpKeys (cp.async, stages(D) deep), from contiguous caches dealt to the splits in turn
// (split s takes blocks s, s + S, ...), so a split's first block is known before the cache
// length lands; each warp takes its quarter of a block with mma.sync
// (S = Q K^T and O += P V on the tensor cores, the online softmax on the accumulators, as the
// portable forward kernel does), and the four warps' running results merge at the end. Splits
// merge in-kernel: the last split of a unit to finish merges all partials in split order.
#pragma once

#include <cuda_fp8.h>

#include <cstdint>

#include "common/device_math.cuh"
#include "common/dtype_tag.h"
#include "decode/decode_elem.cuh"
#include "decode/decode_epilogue.cuh"
#include "decode/decode_params.h"
#include "portable/elem.cuh"
#include "portable/sm80_ops.cuh"
#include "portable/smem_layout.cuh"
#include "portable/softmax.cuh"
#include "portable/warp_gemm.cuh"

namespace flashcore::decode {

// The portable kernels' cp.async wrappers (sm80_ops.cuh), taking a generic smem pointer.
using portable::cp_async_commit;
using portable::cp_async_wait;
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
  portable::cp_async_16(portable::smem_addr(dst), src, valid);
}


// The tile shapes the portable warp GEMMs (warp_gemm.cuh) take: one m16 tile of rows per warp,
// each warp a 16-key slice of a 64-key block.
template <int D>
struct MmaCfg {
  static_assert(D % 64 == 0, "the swizzle needs a multiple of 8 16-byte chunks per row");
  static constexpr int kHeadDim = D, kMTiles = 1, kWarpKeys = 16, kNTiles = kWarpKeys / 8;
  static constexpr int kDTiles = D / 8, kKSteps = D / 16, kChunksPerRow = D / 8;
  static constexpr int kBlockKeys = 4 * kWarpKeys;
  static_assert(kBlockKeys == decode::kBlockKeys, "four warps of 16 keys a block");
};

// Shared memory: the q tile and stages(D) K and V blocks, all swizzled as ldmatrix reads
// them (portable/smem_layout.cuh). An fp8 cache has one 16-bit K and V tile, and its blocks
// land as bytes in fp8_stages(D) byte stages (rows of D bytes, unswizzled: each thread widens
// the 16-byte chunks it copied). After the key loop the K and V region (the byte stages too)
// holds the four warps' results for their merge.
template <int D, class Cache>
struct Smem {
  static constexpr int kKeys = MmaCfg<D>::kBlockKeys;
  alignas(128) uint16_t q[kRows * D];
  alignas(128) uint16_t k[stages(D)][kKeys * D];
  alignas(128) uint16_t v[stages(D)][kKeys * D];
  int flag;
  static constexpr size_t kKvBytes = sizeof(k) + sizeof(v);  // what the merge may overlay
};
template <int D>
struct Smem<D, CacheE4m3> {
  static constexpr int kKeys = MmaCfg<D>::kBlockKeys;
  alignas(128) uint16_t q[kRows * D];
  alignas(128) uint16_t k[1][kKeys * D];
  alignas(128) uint16_t v[1][kKeys * D];
  alignas(128) uint8_t k8[fp8_stages(D)][kKeys * D];
  alignas(128) uint8_t v8[fp8_stages(D)][kKeys * D];
  int flag;
  static constexpr size_t kKvBytes = sizeof(k) + sizeof(v) + sizeof(k8) + sizeof(v8);
};

// 16 e4m3 bytes widened to 16 values of the dtype (exact: every e4m3 value is one).
template <class Tag>
__device__ __forceinline__ void widen_e4m3(const uint4& in, uint4 (&out)[2]) {
  const uint32_t w[4] = {in.x, in.y, in.z, in.w};
  uint32_t r[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const __nv_fp8x2_storage_t pair = static_cast<__nv_fp8x2_storage_t>(w[i / 2] >> (16 * (i % 2)));
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(pair, __NV_E4M3);
    if constexpr (std::is_same_v<Tag, detail::Bf16>) {
      const float2 f = __half22float2(__half2(h));
      const __nv_bfloat162 b = __float22bfloat162_rn(f);
      r[i] = *reinterpret_cast<const uint32_t*>(&b);
    } else {
      r[i] = uint32_t(h.x) | uint32_t(h.y) << 16;
    }
  }
  out[0] = make_uint4(r[0], r[1], r[2], r[3]);
  out[1] = make_uint4(r[4], r[5], r[6], r[7]);
}

// x quantized to an e4m3 byte: round to nearest even, saturated at +-448 (kvcache.h).
__device__ __forceinline__ uint8_t to_e4m3(float x) {
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3));
}

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
// Rotates rows [0, nrows) of a shared-memory tile in place: at(j, c) is row j's element c, and
// row j is at position pos(j), or left as it is where pos(j) < 0.
template <class Tag, class At, class Pos>
__device__ __forceinline__ void rotate_rows(const DecodeParams& p, int nrows, At at, Pos pos) {
  const int half = p.rotary_dim / 2;
  for (int idx = threadIdx.x; idx < nrows * half; idx += kThreads) {
    const int j = idx / half, pr = idx % half, n = pos(j);
    if (n < 0) continue;
    int a, bb;
    pair_of(p, pr, a, bb);
    float x = to_f<Tag>(at(j, a)), y = to_f<Tag>(at(j, bb));
    rotate_pair<Tag>(p, n, pr, x, y);
    at(j, a) = from_f<Tag>(x);
    at(j, bb) = from_f<Tag>(y);
  }
}

template <class Tag, int D, class Cache>
__global__ void __launch_bounds__(kThreads, min_blocks(D)) decode_kernel(const __grid_constant__ DecodeParams p) {
  extern __shared__ __align__(128) uint8_t smem_raw[];
  auto& sm = *reinterpret_cast<Smem<D, Cache>*>(smem_raw);
  using CT = typename Cache::T;  // a cache element
  constexpr bool kFp8 = Cache::kFp8;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // Launched as a programmatic dependent (decode_launch.cuh): everything below reads what the
  // stream's previous kernel may still be writing, so wait for it to complete first.
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
  FLASHCORE_DECODE_STAMP(0, 0);
  const int split = blockIdx.x, kvh = blockIdx.y / p.chunks, chunk = blockIdx.y % p.chunks;
  const int b = blockIdx.z, tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  using C = MmaCfg<D>;
  using Elem = typename portable::ElemOf<Tag>::type;
  constexpr int kBK = C::kBlockKeys;
  static_assert(sizeof(MergeSmem<D>) <= Smem<D, Cache>::kKvBytes, "the merge overlays the K/V region");

  // The entry's length and left pad are loaded first and used last: the q tile (its own
  // cp.async group, rows past the chunk's rows zero-filled) and the speculative first block
  // below are issued while they travel (perf-notes K6, K15).
  const int L = p.cache_seqlens[b];
  const int pad = p.cache_leftpad ? p.cache_leftpad[b] : 0;  // keys start at this row
  // fp8: this head's scales, and whether every head's are usable (so all CTAs of an entry
  // agree on its error, as below).
  float k_scale = 1.f, v_scale = 1.f;
  bool scales_bad = false;
  if constexpr (kFp8) {
    k_scale = p.k_scale[kvh], v_scale = p.v_scale[kvh];
    for (int h = tid; h < p.num_heads_kv; h += kThreads) {
      const float ks = p.k_scale[h], vs = p.v_scale[h];
      scales_bad |= !(ks > 0.f && isfinite(ks) && vs > 0.f && isfinite(vs));
    }
  }
  auto q_at = [&](int r, int c) -> uint16_t& {
    return *reinterpret_cast<uint16_t*>(reinterpret_cast<uint8_t*>(sm.q) +
                                        portable::swz<C>(r, c / 8) + (c % 8) * 2);
  };
  for (int idx = tid; idx < kRows * (D / 8); idx += kThreads) {
    const int rr = idx / (D / 8), c8 = idx % (D / 8), r = chunk * kRows + rr;
    const bool valid = r < p.rows;
    const auto* src = static_cast<const uint16_t*>(p.q);
    if (valid)
      src += b * p.q_b + int64_t(r / p.group) * p.q_s + (kvh * p.group + r % p.group) * p.q_h + 8 * c8;
    cp_async_16(reinterpret_cast<uint8_t*>(sm.q) + portable::swz<C>(rr, c8), src, valid);
  }
  cp_async_commit();

  // Contiguous caches deal key blocks to the splits in turn: split s takes blocks s, s + S,
  // s + 2S, ... of the range its rows see (S = splits), so whatever the length, its first
  // block is s unless a window or the left pad moves the range. That one is copied before the
  // length has landed and kept if it turns out a whole block of cache rows (perf-notes K15,
  // K19). Paged caches keep one contiguous share a split: dealt blocks there read a
  // block-table line a block instead of one per eight, and lost 2 % (K15).
  const bool dealt = !p.paged, speculate = dealt && p.window_left < 0;
  // Block copies: thread t copies the 16-byte column c8 = t % kCpr of rows j0 + i * kRowStep,
  // so a block of cache rows costs a pointer step per row instead of an address rebuilt per
  // chunk: the general form took ~190 instructions a copy (perf-notes K8).
  // An fp8 cache's chunks hold 16 elements (8 otherwise), and land unswizzled in byte stages.
  constexpr int kS = kFp8 ? fp8_stages(D) : stages(D);
  constexpr int kE = 16 / int(sizeof(CT));
  constexpr int kCpr = D / kE, kRowStep = kThreads / kCpr, kPerThread = kBK / kRowStep;
  static_assert(kThreads % kCpr == 0 && kBK % kRowStep == 0, "whole rows a pass");
  constexpr uint32_t kStageBytes = kBK * D * sizeof(CT);
  const int c8 = tid % kCpr, j0 = tid / kCpr, S = p.splits;
  const auto* kc = static_cast<const CT*>(p.k_cache) + int64_t(kvh) * p.kc_h + kE * c8;
  const auto* vc = static_cast<const CT*>(p.v_cache) + int64_t(kvh) * p.vc_h + kE * c8;
  uint32_t sK = portable::smem_addr(sm.k), sV = portable::smem_addr(sm.v);  // copies land here
  if constexpr (kFp8) sK = portable::smem_addr(sm.k8), sV = portable::smem_addr(sm.v8);
  auto soff = [&](int j) -> uint32_t {  // this thread's chunk of row j in a stage
    return kFp8 ? uint32_t(j * D + 16 * c8) : portable::swz<C>(j, c8);
  };
  // A block of cache rows (below the capacity).
  auto load_cache_block = [&](int blk, int st) {
    const int n0 = blk * kBK + j0;
    const uint32_t dk = sK + st * kStageBytes, dv = sV + st * kStageBytes;
    if (!p.paged) {
      const CT* ks = kc + b * p.kc_b + int64_t(n0) * p.kc_s;
      const CT* vs = vc + b * p.vc_b + int64_t(n0) * p.vc_s;
#pragma unroll
      for (int i = 0; i < kPerThread; ++i) {
        const uint32_t o = soff(j0 + i * kRowStep);
        portable::cp_async_16(dk + o, ks + int64_t(i) * kRowStep * p.kc_s, true);
        portable::cp_async_16(dv + o, vs + int64_t(i) * kRowStep * p.vc_s, true);
      }
      return;
    }
    const int32_t* table = p.block_table + b * p.bt_stride;  // the page and slot step with the row
    int pg = n0 / p.page_size, slot = n0 - pg * p.page_size;
    const int dpg = kRowStep / p.page_size, dslot = kRowStep - dpg * p.page_size;
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int64_t page = table[pg];
      const uint32_t o = soff(j0 + i * kRowStep);
      portable::cp_async_16(dk + o, kc + page * p.kc_b + int64_t(slot) * p.kc_s, true);
      portable::cp_async_16(dv + o, vc + page * p.vc_b + int64_t(slot) * p.vc_s, true);
      pg += dpg, slot += dslot;  // row + kRowStep: whole pages, then at most one more
      if (slot >= p.page_size) slot -= p.page_size, ++pg;
    }
  };
  // Not under a window: its range starts where only the length tells. Only the first slot: a
  // split with any keys needs block s whenever the length reaches S blocks, while its later
  // slots are needed only at S x (kS - 1) blocks or more; a cache longer than its keys (a
  // static cache early in a generation) would otherwise read a block a CTA in vain.
  if (speculate) {
    if ((split + 1) * kBK <= p.capacity) load_cache_block(split, 0);
    cp_async_commit();
  }
  FLASHCORE_DECODE_STAMP(1, L);
  const int n_new = p.append ? p.seqlen_q : 0;
  const int64_t lk64 = int64_t(L) + n_new;
  const int Lk = static_cast<int>(lk64);
  const int row0 = chunk * kRows;

  // Every CTA of entry b checks the whole entry the same way, so all of them agree on whether
  // it is bad; a bad entry reads none of its cache and writes nothing but its NaN output rows.
  int err = 0;
  if (L < 0 || lk64 > p.capacity) err = kKvCacheOverflow;
  if (!err && (pad < 0 || pad > L)) err = kKvLeftpadOutOfRange;
  if (!err && p.paged) {
    // The pages the entry reads (from the left pad's to the last with pg * page_size < Lk),
    // 16 bytes a load where the table row is aligned: a 64k cache of 16-row pages is 4,096
    // entries, one round of 8 int4 a thread instead of four of 8 scalars (perf-notes K10).
    const int32_t* row = p.block_table + int64_t(b) * p.bt_stride;
    const int npages = static_cast<int>((int64_t(Lk) + p.page_size - 1) / p.page_size);
    const int first = pad / p.page_size;
    auto out = [&](int e) { return e < 0 || e >= p.num_pages; };
    bool bad = false;
    int pg0 = first;
    if ((reinterpret_cast<uintptr_t>(row) & 15) == 0) {
      const int v0 = (first + 3) / 4, v1 = npages / 4;  // whole int4s: entries 4 v0 .. 4 v1
      for (int pg = first + tid; pg < min(4 * v0, npages); pg += kThreads) bad |= out(__ldg(row + pg));
#pragma unroll 8
      for (int i = v0 + tid; i < v1; i += kThreads) {
        const int4 e = __ldg(reinterpret_cast<const int4*>(row) + i);
        bad |= out(e.x) | out(e.y) | out(e.z) | out(e.w);
      }
      pg0 = max(4 * v1, min(4 * v0, npages));
    }
#pragma unroll 8
    for (int pg = pg0 + tid; pg < npages; pg += kThreads) bad |= out(__ldg(row + pg));
    if (__syncthreads_or(bad)) err = kKvBlockTableOutOfRange;
  }
  if (!err && p.rotary_dim > 0) {
    const int last_q = p.seqlen_q > 0 ? (p.masked ? L + p.seqlen_q - 1 : L) : 0;
    if (last_q >= p.max_position || (p.append && Lk - 1 >= p.max_position))
      err = kKvRotaryOutOfRange;
  }
  if constexpr (kFp8) {
    if (__syncthreads_or(scales_bad) && !err) err = kKvScaleInvalid;
  }
  if (err) {
    cp_async_wait<0>();  // q and any speculative blocks, before the shared memory goes away
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

  // This split's key blocks, narrowed to those any row of this CTA sees (bottom-right aligned
  // masks): dealt, every S-th from the first at or after the range's start that is s modulo
  // S; else its contiguous share. Block i of the split is first + i * stride.
  const int nblocks = (Lk + kBK - 1) / kBK, per = (nblocks + S - 1) / S;
  const int last_row = min(p.rows, row0 + kRows) - 1;
  const int i_first = row0 / p.group, i_last = max(last_row, row0) / p.group;
  const int off = Lk - p.seqlen_q;
  const int lo_all = p.window_left >= 0 ? max(pad, i_first + off - p.window_left) : pad;
  const int hi_all = p.window_right >= 0 ? min(Lk, i_last + off + p.window_right + 1) : Lk;
  const int lo_blk = min(nblocks, lo_all / kBK), hi_blk = min(nblocks, (hi_all + kBK - 1) / kBK);
  int first, stride, mine;
  if (dealt) {
    first = lo_blk + (split - lo_blk % S + S) % S, stride = S;
    mine = first < hi_blk ? (hi_blk - 1 - first) / S + 1 : 0;
  } else {
    const int kb0 = min(nblocks, split * per), kb1 = min(nblocks, kb0 + per);
    first = max(kb0, lo_blk), stride = 1;
    mine = max(0, min(kb1, hi_blk) - first);
  }
  auto owner = [&](int blk) { return dealt ? blk % S : blk / per; };  // whether or not seen

  // New key i's channel c as the cache stores it (dtype bits): rotated at its position L + i.
  auto new_key = [&](int i, int c) -> uint16_t {
    const auto* kn = static_cast<const uint16_t*>(p.k_new) + b * p.kn_b + i * p.kn_s + kvh * p.kn_h;
    if (c >= p.rotary_dim) return kn[c];
    const int pr = p.interleaved ? c / 2 : (c < p.rotary_dim / 2 ? c : c - p.rotary_dim / 2);
    int a, bb;
    pair_of(p, pr, a, bb);
    float x = to_f<Tag>(kn[a]), y = to_f<Tag>(kn[bb]);
    rotate_pair<Tag>(p, L + i, pr, x, y);
    return from_f<Tag>(c == a ? x : y);
  };
  auto new_val = [&](int i, int c) -> uint16_t {
    return static_cast<const uint16_t*>(p.v_new)[b * p.vn_b + i * p.vn_s + kvh * p.vn_h + c];
  };
  // fp8: new row i's channel c as stored, e4m3 of the value over the head's scale; the append
  // and the tail block's loader both take it from here, so the call attends what it stores.
  auto stored8 = [&](int i, int c, bool key) -> uint8_t {
    return key ? to_e4m3(to_f<Tag>(new_key(i, c)) / k_scale)
               : to_e4m3(to_f<Tag>(new_val(i, c)) / v_scale);
  };
  // The 16 channels from c0. Bytes shift in from the top, so the loop stays rolled (tail blocks
  // only) and needs no indexed array (which would live in local memory).
  auto quantized = [&](int i, int c0, bool key) {
    uint32_t w0 = 0, w1 = 0, w2 = 0, w3 = 0;
#pragma unroll 1
    for (int e = 0; e < 16; ++e) {
      w0 = (w0 >> 8) | (w1 << 24), w1 = (w1 >> 8) | (w2 << 24), w2 = (w2 >> 8) | (w3 << 24);
      w3 = (w3 >> 8) | uint32_t(stored8(i, c0 + e, key)) << 24;
    }
    return make_uint4(w0, w1, w2, w3);
  };

  // Block loader: cache rows below L, new rows below Lk (16-bit: raw, rotated in smem; fp8:
  // quantized here, as the append stores them), zeros after.
  auto full = [&](int blk) { return blk * kBK >= pad && (blk + 1) * kBK <= L; };
  auto load = [&](int blk, int st) {
    // Rows below the left pad are neither read nor attended: P is 0 there, but 0 x NaN (or
    // x Inf) is NaN on the tensor cores, so the block holding the pad zero-fills them.
    if (full(blk)) return load_cache_block(blk, st);
    const uint32_t dk = sK + st * kStageBytes, dv = sV + st * kStageBytes;
#pragma unroll 1  // the tail block's path: kept small (instruction cache)
    for (int i = 0; i < kPerThread; ++i) {
      const int j = j0 + i * kRowStep, n = blk * kBK + j;
      const bool valid = n >= pad && n < Lk;
      const uint32_t o = soff(j);
      if constexpr (kFp8) {
        if (valid && n >= L) {  // read back by this thread only (the widening), no barrier
          const uint4 qk = quantized(n - L, kE * c8, true), qv = quantized(n - L, kE * c8, false);
          asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};" ::"r"(dk + o), "r"(qk.x),
                       "r"(qk.y), "r"(qk.z), "r"(qk.w));
          asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};" ::"r"(dv + o), "r"(qv.x),
                       "r"(qv.y), "r"(qv.z), "r"(qv.w));
          continue;
        }
      }
      const void *ks = kc, *vs = vc;  // a zero-fill copy reads nothing: any valid address
      if (n < L) {
        ks = static_cast<const CT*>(p.k_cache) + cache_offset(p, p.kc_b, p.kc_s, p.kc_h, b, n, kvh) + kE * c8;
        vs = static_cast<const CT*>(p.v_cache) + cache_offset(p, p.vc_b, p.vc_s, p.vc_h, b, n, kvh) + kE * c8;
      }
      if constexpr (!kFp8) {
        if (n >= L && valid) {
          const int r = n - L;
          ks = static_cast<const uint16_t*>(p.k_new) + b * p.kn_b + r * p.kn_s + kvh * p.kn_h + 8 * c8;
          vs = static_cast<const uint16_t*>(p.v_new) + b * p.vn_b + r * p.vn_s + kvh * p.vn_h + 8 * c8;
        }
      }
      portable::cp_async_16(dk + o, ks, valid);
      portable::cp_async_16(dv + o, vs, valid);
    }
  };
  auto k_at = [&](int st, int j, int c) -> uint16_t& {
    return *reinterpret_cast<uint16_t*>(reinterpret_cast<uint8_t*>(sm.k[st]) +
                                        portable::swz<C>(j, c / 8) + (c % 8) * 2);
  };
  // The new keys of a landed block, rotated in place.
  auto rotate_new = [&](int blk, int st) {
    rotate_rows<Tag>(p, kBK, [&](int j, int c) -> uint16_t& { return k_at(st, j, c); },
                     [&](int j) { const int n = blk * kBK + j; return n < L || n >= Lk ? -1 : n; });
  };

  // Each warp: all 16 rows against its 16-key slice of every block.
  float o[1][C::kDTiles][4], row_max[1][2], row_sum[1][2];
#pragma unroll
  for (int dt = 0; dt < C::kDTiles; ++dt) o[0][dt][0] = o[0][dt][1] = o[0][dt][2] = o[0][dt][3] = 0.f;
  row_max[0][0] = row_max[0][1] = -INFINITY;
  row_sum[0][0] = row_sum[0][1] = 0.f;
  const int g = lane / 4, t4 = lane % 4;
  int lo[2], hi[2];  // visible keys of this thread's rows g and g + 8
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int r = row0 + g + 8 * hr, i = r / p.group;
    lo[hr] = p.window_left >= 0 ? max(pad, i + off - p.window_left) : pad;
    hi[hr] = r >= p.rows ? 0 : p.window_right >= 0 ? min(Lk, i + off + p.window_right + 1) : Lk;
  }
  const portable::LaneOffsets<C> lanes0(lane);
  const uint32_t sQ = portable::smem_addr(sm.q);
  const bool rotate = p.rotary_dim > 0 && n_new > 0;  // 16-bit only: fp8 rotates as it quantizes
  const float scale_log2 = kFp8 ? p.scale_log2 * k_scale : p.scale_log2;

  // One cp.async group per block slot, empty past the end, so waiting for all but the newest
  // kS - 2 groups always means the current block has landed. The speculative copy stands where
  // it is this split's first block and a whole block of cache rows; otherwise it is waited out
  // (its stage is refilled) and the first slot issued again.
  const bool kept = speculate && first == split && (mine == 0 || full(first));
  if (speculate && !kept) cp_async_wait<0>();
#pragma unroll 1  // one copy of the loader for the prologue, one for the loop
  for (int s = kept ? 1 : 0; s < kS - 1; ++s) {
    if (s < mine) load(first + s * stride, s);
    cp_async_commit();
  }
  // q rotated in place once landed, rounded to the dtype as the reference does; the key loop's
  // first barrier orders this before the tile is read.
  if (p.rotary_dim > 0) {
    cp_async_wait<kS - 1>();  // the q group; the K/V groups after it may still be in flight
    __syncthreads();
    rotate_rows<Tag>(p, kRows, q_at, [&](int rr) {
      const int r = row0 + rr;
      return r >= p.rows ? -1 : p.masked ? L + r / p.group : L;
    });
  }
  // The new rows of this split's blocks (owner: whether or not its rows see them) go into the
  // cache (the loads take them from k_new/v_new, so no ordering with them is needed). Each
  // split scans all n_new rows for its own: Sq is 1-17 in decode.
  if (chunk == 0 && n_new > 0) {
    for (int idx = tid; idx < n_new * D; idx += kThreads) {
      const int n = L + idx / D, c = idx % D, i = n - L;
      if (owner(n / kBK) != split) continue;
      CT* kd = static_cast<CT*>(p.k_cache) + cache_offset(p, p.kc_b, p.kc_s, p.kc_h, b, n, kvh) + c;
      CT* vd = static_cast<CT*>(p.v_cache) + cache_offset(p, p.vc_b, p.vc_s, p.vc_h, b, n, kvh) + c;
      if constexpr (kFp8) {
        *kd = stored8(i, c, true);
        *vd = stored8(i, c, false);
      } else {
        *kd = new_key(i, c);
        *vd = new_val(i, c);
      }
    }
  }
  for (int it = 0; it < mine; ++it) {
    const int blk = first + it * stride, st = it % kS;
    cp_async_wait<kS - 2>();
    // Block blk has landed for every thread, and every warp is done with the stage that the
    // previous block used, which the next load refills.
    __syncthreads();
    if (it == 0) FLASHCORE_DECODE_STAMP(2, 0);
    if (it + kS - 1 < mine) load(first + (it + kS - 1) * stride, (it + kS - 1) % kS);
    cp_async_commit();
    if constexpr (kFp8) {  // this thread's chunks of block blk, widened into the 16-bit tile
      // Byte chunk c8 of row j holds the tile's 16-byte chunks 2 c8 and 2 c8 + 1.
      auto widen = [&](const uint8_t* stage, uint16_t* tile, int j) {
        uint4 w[2];
        widen_e4m3<Tag>(*reinterpret_cast<const uint4*>(stage + soff(j)), w);
        auto* t = reinterpret_cast<uint8_t*>(tile);
        *reinterpret_cast<uint4*>(t + portable::swz<C>(j, 2 * c8)) = w[0];
        *reinterpret_cast<uint4*>(t + portable::swz<C>(j, 2 * c8 + 1)) = w[1];
      };
#pragma unroll
      for (int i = 0; i < kPerThread; ++i) {
        widen(sm.k8[st], sm.k[0], j0 + i * kRowStep);
        widen(sm.v8[st], sm.v[0], j0 + i * kRowStep);
      }
      __syncthreads();  // the tile is whole before any warp reads it
    }
    if constexpr (!kFp8) {
      if (rotate && (blk + 1) * kBK > L) {
        rotate_new(blk, st);
        __syncthreads();
      }
    }
    const int tl = kFp8 ? 0 : st;  // the 16-bit tile the warps read
    // Laundered per block, as the forward does: addresses recomputed, not hoisted.
    const portable::LaneOffsets<C> lanes = lanes0.laundered();
    const uint32_t slice = warp * C::kWarpKeys * D * 2;
    float s[1][C::kNTiles][4];
    portable::qk_gemm<C, Elem>(s, sQ, portable::smem_addr(sm.k[tl]) + slice, lanes);
    const int n0 = blk * kBK + warp * C::kWarpKeys;
#pragma unroll
    for (int nt = 0; nt < C::kNTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int hr = e / 2, n = n0 + nt * 8 + 2 * t4 + (e % 2);
        if (n < lo[hr] || n >= hi[hr]) s[0][nt][e] = -INFINITY;
      }
    portable::online_softmax<C>(s, row_max, row_sum, o, scale_log2);
    portable::pv_gemm<C, Elem>(o, s, portable::smem_addr(sm.v[tl]) + slice, lanes);
  }
  cp_async_wait<0>();  // only empty groups remain; the merge below overlays the stages
  __syncthreads();
  FLASHCORE_DECODE_STAMP(3, 0);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // The next kernel may launch now: it waits for this grid's completion before it reads.
  asm volatile("griddepcontrol.launch_dependents;");
#endif

  decode_epilogue<Tag, D>(p, *reinterpret_cast<MergeSmem<D>*>(sm.k), sm.flag, o[0], row_max[0],
                          row_sum[0], b, kvh, chunk, split, v_scale);
}

}  // namespace flashcore::decode
