// Warp-level GEMMs of the portable forward kernel on swizzled smem tiles (smem_layout.cuh):
// S = Q K^T for the warp's kMTiles*16 query rows against one key tile, and O += P V with P
// taken straight from the S accumulators (no smem round trip).
#pragma once

#include <cstdint>

#include "portable/sm80_ops.cuh"

namespace flashcore::portable {

// ldmatrix lane offsets. Every fragment starts on a multiple of 8 rows, so the swizzle term of
// lane l is l % 8 and chunk (2k + b) lands at byte 16 * ((2k) ^ (b ^ l % 8)): one per-lane
// offset XOR 32k, instead of a table of addresses held in registers.
template <class Cfg>
struct LaneOffsets {
  static constexpr int kRowBytes = Cfg::kHeadDim * 2;
  uint32_t q, k, v;
  __device__ __forceinline__ explicit LaneOffsets(int lane)
      : q((lane % 16) * kRowBytes + 16 * ((lane / 16) ^ (lane % 8))),
        k((lane % 8 + 8 * (lane / 16)) * kRowBytes + 16 * (((lane / 8) % 2) ^ (lane % 8))),
        v((lane % 8 + 8 * ((lane / 8) % 2)) * kRowBytes + 16 * ((lane / 16) ^ (lane % 8))) {}
  // Laundered copy for use inside the main loop: the XOR-derived addresses are then recomputed
  // per use (one integer op) rather than hoisted into dozens of live registers.
  __device__ __forceinline__ LaneOffsets laundered() const {
    LaneOffsets r = *this;
    r.q = opaque(q), r.k = opaque(k), r.v = opaque(v);
    return r;
  }
};

// s = Q K^T. sQ_warp: the warp's first Q row; sK: the key tile's stage.
template <class Cfg, class Elem>
__device__ __forceinline__ void qk_gemm(float (&s)[Cfg::kMTiles][Cfg::kNTiles][4], uint32_t sQ_warp,
                                        uint32_t sK, const LaneOffsets<Cfg>& lo) {
  constexpr int kRowBytes = LaneOffsets<Cfg>::kRowBytes;
#pragma unroll
  for (int mt = 0; mt < Cfg::kMTiles; ++mt)
#pragma unroll
    for (int nt = 0; nt < Cfg::kNTiles; ++nt)
      s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.f;
#pragma unroll
  for (int ks = 0; ks < Cfg::kKSteps; ++ks) {
    uint32_t a[Cfg::kMTiles][4];
#pragma unroll
    for (int mt = 0; mt < Cfg::kMTiles; ++mt)
      ldmatrix_x4(a[mt], sQ_warp + mt * 16 * kRowBytes + (lo.q ^ (32 * ks)));
#pragma unroll
    for (int np = 0; np < Cfg::kNTiles / 2; ++np) {
      uint32_t b[4];
      ldmatrix_x4(b, sK + np * 16 * kRowBytes + (lo.k ^ (32 * ks)));
#pragma unroll
      for (int mt = 0; mt < Cfg::kMTiles; ++mt) {
        Mma<Elem>::run(s[mt][2 * np], a[mt], b[0], b[1]);
        Mma<Elem>::run(s[mt][2 * np + 1], a[mt], b[2], b[3]);
      }
    }
  }
}

// o += P V, P = s (already exponentiated). The accumulators of n-tiles 2kk, 2kk+1 are exactly
// the A fragment of k16 step kk, rounded to Elem.
template <class Cfg, class Elem>
__device__ __forceinline__ void pv_gemm(float (&o)[Cfg::kMTiles][Cfg::kDTiles][4],
                                        const float (&s)[Cfg::kMTiles][Cfg::kNTiles][4],
                                        uint32_t sV, const LaneOffsets<Cfg>& lo) {
  constexpr int kRowBytes = LaneOffsets<Cfg>::kRowBytes;
#pragma unroll
  for (int kk = 0; kk < Cfg::kNTiles / 2; ++kk) {
    uint32_t a[Cfg::kMTiles][4];
#pragma unroll
    for (int mt = 0; mt < Cfg::kMTiles; ++mt) {
      a[mt][0] = Mma<Elem>::pack(s[mt][2 * kk][0], s[mt][2 * kk][1]);
      a[mt][1] = Mma<Elem>::pack(s[mt][2 * kk][2], s[mt][2 * kk][3]);
      a[mt][2] = Mma<Elem>::pack(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
      a[mt][3] = Mma<Elem>::pack(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
    }
#pragma unroll
    for (int dp = 0; dp < Cfg::kDTiles / 2; ++dp) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, sV + kk * 16 * kRowBytes + (lo.v ^ (32 * dp)));
#pragma unroll
      for (int mt = 0; mt < Cfg::kMTiles; ++mt) {
        Mma<Elem>::run(o[mt][2 * dp], a[mt], b[0], b[1]);
        Mma<Elem>::run(o[mt][2 * dp + 1], a[mt], b[2], b[3]);
      }
    }
  }
}

}  // namespace flashcore::portable
