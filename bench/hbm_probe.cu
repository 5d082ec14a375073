// flashcore-hbm-probe: how fast can a kernel shaped like the decode kernel stream the 16k row's
// cache (B1, Hkv 8, D128, bf16: K and V 33.5 MB each, rows of 256 bytes 2 KB apart), with no
// math at all? Each variant reads every byte into shared memory and does nothing else; all are
// timed as flashcore-bench --grid decode times a row (20 calls captured in a graph, caches
// rotated over sets larger than twice the L2, median of 20 replays / 20), so the figures are
// the floor under the decode kernel's own time for the same grid and copy method.
//   cp.async  : 16-byte cp.async, 128 threads, S stages of 64-key K+V blocks (32 KB), one CTA
//               per (split, kv head), blocks dealt to splits in turn (the decode kernel's way);
//   bulk      : the same grid, each 256-byte row a cp.async.bulk onto an mbarrier (warp 0);
//   tma       : the same grid, a block's K and V as four tensor copies of 128 B x 64 rows (a
//               3D map: channel, head, key);
//   flat      : a plain coalesced 16-byte load stream over both buffers, many CTAs (no grid
//               constraint): what the DRAM gives a simple read.
// --pdl launches every variant as a programmatic dependent (griddepcontrol.wait at entry,
// launch_dependents after the loop), as the decode kernel is launched. The cp.async variants
// also come with the wait moved (before the wait: the first S - 1 blocks, or everything), with
// blocks claimed from a ticket counter instead of dealt, and with the split handshake's
// arrival ticket taken early (perf-notes K23, K26).
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#define CK(x)                                                                     \
  do {                                                                            \
    cudaError_t e_ = (x);                                                         \
    if (e_ != cudaSuccess) {                                                      \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                               \
    }                                                                             \
  } while (0)

constexpr int kD = 128, kHkv = 8, kBK = 64, kThreads = 128;
constexpr int kRowBytes = kD * 2, kBlockBytes = kBK * kRowBytes;  // one of K or V: 16 KB
constexpr int kMergeSplits = 16;  // the handshake variants' grid: one merge round

struct Args {
  const uint8_t* k;
  const uint8_t* v;
  int keys, splits, sink_magic;
  int* sink;
  float* partials;     // per (kv head, split): 2 KB of values, then 4 (max, sum) pairs
  unsigned* counters;  // per kv head, zero between calls
  unsigned long long* tickets;  // per kv head, only ever incremented (zeroed per variant)
  unsigned* flags;              // per (kv head, split): the call whose partial is stored
  unsigned long long* counters64;  // End 8's arrival tickets, per kv head, only incremented
  uint2* out;          // per kv head: 4 rows x 128 bf16
  CUtensorMap km, vm;
};

__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;"); }
__device__ __forceinline__ uint32_t saddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// A value read from shared memory after the loop, stored only if it is the magic (never), so
// the copies cannot be dropped and nothing is written.
__device__ __forceinline__ void keep(const uint8_t* smem, const Args& a) {
  const int x = reinterpret_cast<const int*>(smem)[threadIdx.x];
  if (x == a.sink_magic) a.sink[blockIdx.x] = x;
}

// The decode kernel's split handshake with no math: End 1, every CTA stores a 2 KB partial
// (4 rows x 128 floats, the GQA-4 unit's real rows) and its 4 (max, sum) pairs; End 2, then
// one acq_rel atomic elects the last arriver; End 3, which loads every split's partial in one
// round, combines them by weight and stores the unit's 4 x 128 bf16 output. Apart, to tell
// the costs: End 4, the stores and thread 0's fence.acq_rel.gpu, no atomic; End 5, the stores
// and a relaxed atomic (no fence); End 6, no stores, the acq_rel atomic; End 7, End 3 with a
// relaxed atomic (racy: what a handshake without a release wait could cost at best).
template <int End>
__device__ __forceinline__ void split_end(const uint8_t* sm, const Args& a, unsigned long long ticket) {
  const int tid = threadIdx.x, h = blockIdx.y, split = blockIdx.x;
  const float4 mine = reinterpret_cast<const float4*>(sm)[tid];
  constexpr int kPart = 4 * kD + 8;  // floats a partial
  float* part = a.partials + (size_t(h) * a.splits + split) * kPart;
  __shared__ int last;
  if constexpr (End == 8) {
    // The ticket was taken before the last block (End 8's loop), so the last ticket-taker
    // waits only on CTAs that are already running: each stores its partial and then, after
    // the barrier, thread 0 releases a flag holding the call's number.
    __shared__ unsigned s_epoch;
    if (tid == 0) {
      last = int(ticket % unsigned(a.splits)) == a.splits - 1;
      s_epoch = unsigned(ticket / unsigned(a.splits)) + 1;
    }
    __syncthreads();
    const unsigned epoch = s_epoch;
    if (!last) {
      __stcg(reinterpret_cast<float4*>(part) + tid, mine);
      if (tid < 4) __stcg(reinterpret_cast<float2*>(part + 4 * kD) + tid, make_float2(mine.x, 1.f));
      __syncthreads();
      if (tid == 0)
        asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(a.flags + h * 64 + split), "r"(epoch) : "memory");
      return;
    }
    if (tid < a.splits && tid != split) {
      unsigned f = 0;
      do {
        asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(f) : "l"(a.flags + h * 64 + tid) : "memory");
      } while (f != epoch);
    }
    __syncthreads();
  } else {
  if (End != 6) {
    __stcg(reinterpret_cast<float4*>(part) + tid, mine);
    if (tid < 4) __stcg(reinterpret_cast<float2*>(part + 4 * kD) + tid, make_float2(mine.x, 1.f));
  }
  if (End < 2) return;
  __syncthreads();
  if (tid == 0) {
    unsigned old = 0;
    if (End == 4)
      asm volatile("fence.acq_rel.gpu;" ::: "memory");
    else if (End == 5 || End == 7)
      asm volatile("atom.relaxed.gpu.global.inc.u32 %0, [%1], %2;"
                   : "=r"(old) : "l"(a.counters + h), "r"(unsigned(a.splits - 1)) : "memory");
    else
      asm volatile("atom.acq_rel.gpu.global.inc.u32 %0, [%1], %2;"
                   : "=r"(old) : "l"(a.counters + h), "r"(unsigned(a.splits - 1)) : "memory");
    last = old == unsigned(a.splits - 1);
  }
  __syncthreads();
  if (End != 3 && End != 7) return;
  if (!last) return;
  }
  const int r = tid / 32;  // row of this thread's float4
  float2 ml[kMergeSplits];
  float4 x[kMergeSplits];
#pragma unroll
  for (int j = 0; j < kMergeSplits; ++j) {
    const float* pj = a.partials + (size_t(h) * a.splits + j) * kPart;
    ml[j] = j < a.splits ? __ldcg(reinterpret_cast<const float2*>(pj + 4 * kD) + r) : make_float2(-INFINITY, 0.f);
    x[j] = j < a.splits ? __ldcg(reinterpret_cast<const float4*>(pj) + tid) : make_float4(0, 0, 0, 0);
    if (End == 8 && j == split) ml[j] = make_float2(mine.x, 1.f), x[j] = mine;
  }
  float gm = -INFINITY, sum = 0.f;
  float4 acc = make_float4(0, 0, 0, 0);
#pragma unroll
  for (int j = 0; j < kMergeSplits; ++j) gm = fmaxf(gm, ml[j].x);
#pragma unroll
  for (int j = 0; j < kMergeSplits; ++j) {
    const float w = exp2f(ml[j].x - gm);
    acc.x = fmaf(w, x[j].x, acc.x), acc.y = fmaf(w, x[j].y, acc.y);
    acc.z = fmaf(w, x[j].z, acc.z), acc.w = fmaf(w, x[j].w, acc.w);
    sum = fmaf(w, ml[j].y, sum);
  }
  const float inv = 1.f / sum;
  const __nv_bfloat162 lo = __floats2bfloat162_rn(acc.x * inv, acc.y * inv);
  const __nv_bfloat162 hi = __floats2bfloat162_rn(acc.z * inv, acc.w * inv);
  a.out[size_t(h) * kThreads + tid] =
      make_uint2(*reinterpret_cast<const uint32_t*>(&lo), *reinterpret_cast<const uint32_t*>(&hi));
}

// Mode: 0, griddepcontrol.wait at entry (as the decode kernel); kPre, the first S - 1 blocks
// are requested before the wait (the overlap an opt-in "the previous kernel writes no cache"
// contract would allow); kAfter, the wait after the whole stream (no dependency at all: the
// bound); kDyn, after S - 1 dealt blocks each CTA claims its next blocks from a per-head
// ticket counter (balance; the order of a split's blocks is then not reproducible).
enum { kEntry = 0, kPre = 1, kAfter = 2, kDyn = 3 };
template <int S, int End = 0, int Mode = kEntry>
__global__ void __launch_bounds__(kThreads, 1) cpasync_kernel(const __grid_constant__ Args a) {
  extern __shared__ __align__(128) uint8_t sm[];
  if (Mode == kEntry || Mode == kDyn) pdl_wait();
  const int split = blockIdx.x, h = blockIdx.y, tid = threadIdx.x;
  const int nblk = a.keys / kBK, mine = (nblk - split + a.splits - 1) / a.splits;
  const int c = tid % 16, j0 = tid / 16;  // 16-byte column c of rows j0 + 8 i
  auto load = [&](int blk, int st) {
    const size_t row0 = size_t(blk) * kBK + j0;
    const uint8_t* ks = a.k + (row0 * kHkv + h) * kRowBytes + 16 * c;
    const uint8_t* vs = a.v + (row0 * kHkv + h) * kRowBytes + 16 * c;
    const uint32_t dk = saddr(sm) + st * 2 * kBlockBytes, dv = dk + kBlockBytes;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const uint32_t o = ((j0 + 8 * i) * 16 + (c ^ ((j0 + 8 * i) % 8))) * 16;
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dk + o),
                   "l"(ks + size_t(8 * i) * kHkv * kRowBytes));
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dv + o),
                   "l"(vs + size_t(8 * i) * kHkv * kRowBytes));
    }
  };
  unsigned long long ticket = 0;
  if constexpr (Mode == kDyn) {
    // Tickets per call: the pool's blocks plus one that fails per CTA, so ticket % T is the
    // pool index whatever the call (calls do not overlap: the wait is at entry).
    const int base = (S - 1) * a.splits, T = nblk - base + a.splits;
    __shared__ int next[2];
    int pending = -1;
    if (tid == 0) {
      const int t = int(atomicAdd(a.tickets + h, 1ull) % unsigned(T));
      pending = base + t < nblk ? base + t : -1;
    }
    int issued = 0;
    for (int s = 0; s < S - 1; ++s) {
      if (s < mine) load(split + s * a.splits, s), ++issued;
      asm volatile("cp.async.commit_group;");
    }
    bool more = true;
    for (int it = 0; it < issued; ++it) {
      if (tid == 0) next[it & 1] = pending;
      asm volatile("cp.async.wait_group %0;" ::"n"(S - 2));
      __syncthreads();
      const int b = more ? next[it & 1] : -1;
      if (b >= 0) {
        load(b, issued % S), ++issued;
      } else {
        if (End == 8 && tid == 0 && more) ticket = atomicAdd(a.counters64 + h, 1ull);
        more = false;
      }
      asm volatile("cp.async.commit_group;");
      if (tid == 0 && b >= 0) {
        const int t = int(atomicAdd(a.tickets + h, 1ull) % unsigned(T));
        pending = base + t < nblk ? base + t : -1;
      }
    }
  } else {
    for (int s = 0; s < S - 1; ++s) {
      if (s < mine) load(split + s * a.splits, s);
      asm volatile("cp.async.commit_group;");
    }
    if (Mode == kPre) pdl_wait();
    for (int it = 0; it < mine; ++it) {
      asm volatile("cp.async.wait_group %0;" ::"n"(S - 2));
      __syncthreads();
      if (it + S - 1 < mine) load(split + (it + S - 1) * a.splits, (it + S - 1) % S);
      asm volatile("cp.async.commit_group;");
      if (End == 8 && tid == 0 && it == (mine > S ? mine - S : 0))
        ticket = atomicAdd(a.counters64 + h, 1ull);  // with the last block's request
    }
  }
  asm volatile("cp.async.wait_group 0;");
  __syncthreads();
  if (Mode == kAfter) pdl_wait();
  pdl_trigger();
  if constexpr (End > 0) split_end<End>(sm, a, ticket);
  else keep(sm, a);
}

__device__ __forceinline__ void mbar_init(uint64_t* b, int n) {
  asm volatile("mbarrier.init.shared.b64 [%0], %1;" ::"r"(saddr(b)), "r"(n));
}
__device__ __forceinline__ void mbar_expect(uint64_t* b, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared.b64 _, [%0], %1;" ::"r"(saddr(b)), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* b, uint32_t parity) {
  asm volatile(
      "{\n .reg .pred p;\n W: mbarrier.try_wait.parity.shared.b64 p, [%0], %1;\n"
      " @!p bra W;\n}" ::"r"(saddr(b)),
      "r"(parity)
      : "memory");
}

// Bulk and TMA: stage st's full barrier is bar[st]; warp 0 (bulk) or thread 0 (tma) refills
// a stage after the barrier that follows every thread's wait for it.
template <int S, bool kTma>
__global__ void __launch_bounds__(kThreads, 1) async_kernel(const __grid_constant__ Args a) {
  extern __shared__ __align__(1024) uint8_t sm_raw[];
  __shared__ uint64_t bar[S];
  // 128-byte swizzled TMA boxes need 1024-byte aligned destinations (1 KB extra is asked).
  uint8_t* sm = sm_raw + ((1024 - (saddr(sm_raw) & 1023)) & 1023);
  const int split = blockIdx.x, h = blockIdx.y, tid = threadIdx.x;
  const int nblk = a.keys / kBK, mine = (nblk - split + a.splits - 1) / a.splits;
  if (tid == 0) {
    for (int s = 0; s < S; ++s) mbar_init(&bar[s], 1);
    asm volatile("fence.mbarrier_init.release.cluster;");
  }
  __syncthreads();
  pdl_wait();
  auto load = [&](int blk, int st) {
    uint8_t* dk = sm + st * 2 * kBlockBytes;
    uint8_t* dv = dk + kBlockBytes;
    if constexpr (kTma) {
      if (tid != 0) return;
      mbar_expect(&bar[st], 2 * kBlockBytes);
      for (int half = 0; half < 2; ++half)
        for (int t = 0; t < 2; ++t)
          asm volatile(
              "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
              " [%0], [%1, {%2, %3, %4}], [%5];" ::"r"(saddr((t ? dv : dk) + half * kBlockBytes / 2)),
              "l"(t ? &a.vm : &a.km), "r"(64 * half), "r"(h), "r"(blk * kBK), "r"(saddr(&bar[st]))
              : "memory");
    } else {
      if (tid >= 32) return;
      if (tid == 0) mbar_expect(&bar[st], 2 * kBlockBytes);
      __syncwarp();
      for (int r = tid; r < 2 * kBK; r += 32) {
        const int t = r / kBK, j = r % kBK;
        const uint8_t* src = (t ? a.v : a.k) + ((size_t(blk) * kBK + j) * kHkv + h) * kRowBytes;
        asm volatile(
            "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::
                "r"(saddr((t ? dv : dk) + j * kRowBytes)),
            "l"(src), "r"(kRowBytes), "r"(saddr(&bar[st]))
            : "memory");
      }
    }
  };
  for (int s = 0; s < S - 1 && s < mine; ++s) load(split + s * a.splits, s);
  for (int it = 0; it < mine; ++it) {
    mbar_wait(&bar[it % S], (it / S) & 1);
    __syncthreads();  // every thread is past stage (it - 1) % S's use: refill it
    if (it + S - 1 < mine) load(split + (it + S - 1) * a.splits, (it + S - 1) % S);
  }
  pdl_trigger();
  keep(sm, a);
}

__global__ void __launch_bounds__(512) flat_kernel(const __grid_constant__ Args a) {
  pdl_wait();
  const size_t n16 = size_t(a.keys) * kHkv * kRowBytes / 16;
  const uint4* k = reinterpret_cast<const uint4*>(a.k);
  const uint4* v = reinterpret_cast<const uint4*>(a.v);
  uint32_t acc = 0;
  const size_t step = size_t(gridDim.x) * blockDim.x;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < 2 * n16; i += 4 * step) {
    uint4 x[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const size_t e = i + u * step;
      x[u] = e < 2 * n16 ? __ldcs(e < n16 ? k + e : v + (e - n16)) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < 4; ++u) acc ^= x[u].x ^ x[u].y ^ x[u].z ^ x[u].w;
  }
  pdl_trigger();
  if (int(acc) == a.sink_magic) a.sink[blockIdx.x] = acc;
}

static void encode(CUtensorMap* m, const void* base, int keys) {
  static void* fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    CK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q));
    return f;
  }();
  const cuuint64_t dims[3] = {kD, kHkv, cuuint64_t(keys)};
  const cuuint64_t strides[2] = {kRowBytes, kHkv * kRowBytes};
  const cuuint32_t box[3] = {64, 1, kBK}, es[3] = {1, 1, 1};
  const CUresult r = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn)(
      m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<void*>(base), dims, strides, box, es,
      CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    std::fprintf(stderr, "cuTensorMapEncodeTiled: %d\n", int(r));
    std::exit(1);
  }
}

int main(int argc, char** argv) {
  int keys = 16384;
  bool pdl = false;
  bool one_cta = false;  // the grid variants ask for over half an SM's shared memory, as the
                         // decode kernel's one-wave grids do (so no next grid's CTA shares an SM)
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--keys") && i + 1 < argc) keys = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--pdl")) pdl = true;
    else if (!std::strcmp(argv[i], "--one-cta-an-sm")) one_cta = true;
  }
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  const size_t bytes = size_t(keys) * kHkv * kRowBytes;  // one of K, V
  const int nsets = std::min<int>(20, std::max<int>(2, 2 * prop.l2CacheSize / (2 * bytes) + 1));
  std::vector<Args> sets(nsets);
  int* sink;
  CK(cudaMalloc(&sink, 1 << 20));
  float* partials;
  unsigned* counters;
  uint2* out;
  CK(cudaMalloc(&partials, size_t(kHkv) * 64 * (4 * kD + 8) * 4));
  CK(cudaMalloc(&counters, kHkv * 4));
  CK(cudaMemset(counters, 0, kHkv * 4));
  unsigned long long* tickets;
  unsigned* flags;
  CK(cudaMalloc(&tickets, kHkv * 8));
  CK(cudaMalloc(&flags, kHkv * 64 * 4));
  unsigned long long* counters64;
  CK(cudaMalloc(&counters64, kHkv * 8));
  CK(cudaMalloc(&out, kHkv * kThreads * sizeof(uint2)));
  for (auto& a : sets) {
    uint8_t *k, *v;
    CK(cudaMalloc(&k, bytes));
    CK(cudaMalloc(&v, bytes));
    CK(cudaMemset(k, 0x3c, bytes));
    CK(cudaMemset(v, 0x3c, bytes));
    a = Args{k, v, keys, 0, 0x12345678, sink, partials, counters, tickets, flags, counters64, out, {}, {}};
    encode(&a.km, k, keys);
    encode(&a.vm, v, keys);
  }
  cudaStream_t stream;
  CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  struct Variant {
    std::string name;
    const void* fn;
    int splits, grid_x, threads, smem;
  };
  std::vector<Variant> vs;
  auto grid_variant = [&](const char* n, const void* fn, int splits, int stages) {
    const int smem = stages * 2 * kBlockBytes + 1024;
    vs.push_back({n, fn, splits, splits, kThreads,
                  one_cta ? std::max(smem, int(prop.sharedMemPerMultiprocessor / 2 + 1024)) : smem});
  };
  grid_variant("cpasync S3 16 splits", (const void*)cpasync_kernel<3>, 16, 3);
  grid_variant("cpasync S6 16 splits", (const void*)cpasync_kernel<6>, 16, 6);
  grid_variant("  + partial stores", (const void*)cpasync_kernel<3, 1>, kMergeSplits, 3);
  grid_variant("  + atomic election", (const void*)cpasync_kernel<3, 2>, kMergeSplits, 3);
  grid_variant("  + last-arriver merge", (const void*)cpasync_kernel<3, 3>, kMergeSplits, 3);
  grid_variant("  stores + fence only", (const void*)cpasync_kernel<3, 4>, kMergeSplits, 3);
  grid_variant("  stores + relaxed atom", (const void*)cpasync_kernel<3, 5>, kMergeSplits, 3);
  grid_variant("  acq_rel atom only", (const void*)cpasync_kernel<3, 6>, kMergeSplits, 3);
  grid_variant("  merge, relaxed atom", (const void*)cpasync_kernel<3, 7>, kMergeSplits, 3);
  grid_variant("  early ticket, flags", (const void*)cpasync_kernel<3, 8>, kMergeSplits, 3);
  grid_variant("cpasync S3 pre-wait", (const void*)cpasync_kernel<3, 0, kPre>, 16, 3);
  grid_variant("cpasync S6 pre-wait", (const void*)cpasync_kernel<6, 0, kPre>, 16, 6);
  grid_variant("cpasync S3 wait after", (const void*)cpasync_kernel<3, 0, kAfter>, 16, 3);
  grid_variant("  pre-wait + merge", (const void*)cpasync_kernel<3, 3, kPre>, kMergeSplits, 3);
  grid_variant("cpasync S3 claimed", (const void*)cpasync_kernel<3, 0, kDyn>, 16, 3);
  grid_variant("cpasync S4 claimed", (const void*)cpasync_kernel<4, 0, kDyn>, 16, 4);
  grid_variant("  claimed + merge", (const void*)cpasync_kernel<3, 3, kDyn>, kMergeSplits, 3);
  grid_variant("  claimed + early ticket", (const void*)cpasync_kernel<3, 8, kDyn>, kMergeSplits, 3);
  grid_variant("bulk S3 16 splits", (const void*)async_kernel<3, false>, 16, 3);
  grid_variant("bulk S6 16 splits", (const void*)async_kernel<6, false>, 16, 6);
  grid_variant("tma S3 16 splits", (const void*)async_kernel<3, true>, 16, 3);
  grid_variant("tma S6 16 splits", (const void*)async_kernel<6, true>, 16, 6);
  grid_variant("cpasync S6 8 splits", (const void*)cpasync_kernel<6>, 8, 6);
  grid_variant("tma S6 8 splits", (const void*)async_kernel<6, true>, 8, 6);
  grid_variant("cpasync S6 12 splits", (const void*)cpasync_kernel<6>, 12, 6);
  grid_variant("cpasync S3 33 splits", (const void*)cpasync_kernel<3>, 33, 3);
  grid_variant("tma S3 33 splits", (const void*)async_kernel<3, true>, 33, 3);
  vs.push_back({"flat 132x512", (const void*)flat_kernel, 0, prop.multiProcessorCount, 512, 0});
  vs.push_back({"flat 528x512", (const void*)flat_kernel, 0, 4 * prop.multiProcessorCount, 512, 0});
  vs.push_back({"flat 2112x512", (const void*)flat_kernel, 0, 16 * prop.multiProcessorCount, 512, 0});
  std::printf("%s, %d keys x %d heads x %d (bf16): %.1f MB a call, %d sets, %s%s\n", prop.name,
              keys, kHkv, kD, 2 * bytes / 1e6, nsets, pdl ? "PDL launches" : "plain launches",
              one_cta ? ", one CTA an SM" : "");
  std::printf("%-24s %10s %8s %10s\n", "variant", "median us", "TB/s", "single us");
  for (const Variant& v : vs) {
    if (v.smem > 48 * 1024)
      CK(cudaFuncSetAttribute(v.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, v.smem));
    auto launch = [&](int i) {
      Args a = sets[i % nsets];
      a.splits = v.splits;
      void* params[] = {&a};
      cudaLaunchConfig_t cfg{};
      cfg.gridDim = v.splits ? dim3(v.grid_x, kHkv) : dim3(v.grid_x);
      cfg.blockDim = dim3(v.threads);
      cfg.dynamicSmemBytes = v.smem;
      cfg.stream = stream;
      cudaLaunchAttribute at{};
      at.id = cudaLaunchAttributeProgrammaticStreamSerialization;
      at.val.programmaticStreamSerializationAllowed = 1;
      cfg.attrs = &at;
      cfg.numAttrs = pdl ? 1 : 0;
      CK(cudaLaunchKernelExC(&cfg, v.fn, params));
    };
    CK(cudaMemset(tickets, 0, kHkv * 8));
    CK(cudaMemset(flags, 0, kHkv * 64 * 4));
    CK(cudaMemset(counters64, 0, kHkv * 8));
    for (int i = 0; i < 3; ++i) launch(i);
    CK(cudaStreamSynchronize(stream));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    std::vector<float> single;
    for (int i = 0; i < 11; ++i) {
      CK(cudaEventRecord(e0, stream));
      launch(i);
      CK(cudaEventRecord(e1, stream));
      CK(cudaEventSynchronize(e1));
      float ms;
      CK(cudaEventElapsedTime(&ms, e0, e1));
      single.push_back(1e3f * ms);
    }
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    for (int i = 0; i < 20; ++i) launch(i);
    CK(cudaStreamEndCapture(stream, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    std::vector<float> us;
    for (int r = 0; r < 23; ++r) {
      CK(cudaEventRecord(e0, stream));
      CK(cudaGraphLaunch(ge, stream));
      CK(cudaEventRecord(e1, stream));
      CK(cudaEventSynchronize(e1));
      float ms;
      CK(cudaEventElapsedTime(&ms, e0, e1));
      if (r >= 3) us.push_back(1e3f * ms / 20);
    }
    std::sort(us.begin(), us.end());
    std::sort(single.begin(), single.end());
    const float med = us[us.size() / 2];
    std::printf("%-24s %10.2f %8.2f %10.2f\n", v.name.c_str(), med, 2 * bytes / med / 1e6,
                single[single.size() / 2]);
    CK(cudaGraphExecDestroy(ge));
    CK(cudaGraphDestroy(g));
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
  }
  CK(cudaGetLastError());
  return 0;
}
