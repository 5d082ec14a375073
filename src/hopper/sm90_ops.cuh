// sm_90a primitives of the Hopper kernels: mbarriers, TMA bulk tensor copies, proxy fences,
// wgmma fence/commit/wait, setmaxnreg, named barriers. CCCL's cuda::ptx where it covers the
// instruction (HOPPER-PRIMER section 9); inline PTX for the rest. Compile for sm_90a only.
#pragma once

#include <cuda.h>

#include <cstdint>
#include <cuda/ptx>

#include "common/device_math.cuh"
#include "hopper/wgmma_ops.cuh"

namespace flashcore::hopper {

namespace ptx = cuda::ptx;

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---- mbarrier (PTX "mbarrier"; primer section 6) ----------------------------------------

// One thread initialises; the fence makes the init visible to the async proxy (TMA) before
// the __syncthreads that must follow.
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  ptx::mbarrier_init(bar, count);
}
__device__ __forceinline__ void mbar_init_fence() {
  ptx::fence_mbarrier_init(ptx::sem_release, ptx::scope_cluster);
}

__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  (void)ptx::mbarrier_arrive(ptx::sem_release, ptx::scope_cta, ptx::space_shared, bar);
}

// One arrival plus `bytes` of expected transaction count (retired by TMA's complete_tx).
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  (void)ptx::mbarrier_arrive_expect_tx(ptx::sem_release, ptx::scope_cta, ptx::space_shared, bar,
                                       bytes);
}

// Blocks until the phase with this parity has completed. A fresh barrier is in phase 0:
// parity 1 passes at once, parity 0 waits for the first completion.
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  while (!ptx::mbarrier_try_wait_parity(bar, parity)) {
  }
}

__device__ __forceinline__ bool mbar_test(uint64_t* bar, uint32_t parity) {
  return ptx::mbarrier_test_wait_parity(bar, parity);
}

// ---- TMA (PTX "cp.async.bulk.tensor"; primer section 2) -----------------------------------

__device__ __forceinline__ void tma_prefetch(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// Loads one box at coordinates c (innermost first) into smem, completing bytes on bar.
__device__ __forceinline__ void tma_load_4d(void* dst, const CUtensorMap* map, int c0, int c1,
                                            int c2, int c3, uint64_t* bar) {
  const int32_t coords[4] = {c0, c1, c2, c3};
  ptx::cp_async_bulk_tensor(ptx::space_cluster, ptx::space_global, dst, map, coords, bar);
}

__device__ __forceinline__ void tma_store_4d(const CUtensorMap* map, int c0, int c1, int c2, int c3,
                                             const void* src) {
  const int32_t coords[4] = {c0, c1, c2, c3};
  ptx::cp_async_bulk_tensor(ptx::space_global, ptx::space_shared, map, coords, src);
}

__device__ __forceinline__ void tma_store_commit() { ptx::cp_async_bulk_commit_group(); }
__device__ __forceinline__ void tma_store_wait_read() {
  ptx::cp_async_bulk_wait_group_read(ptx::n32_t<0>{});
}
__device__ __forceinline__ void tma_store_wait_all() {
  ptx::cp_async_bulk_wait_group(ptx::n32_t<0>{});
}

// Generic-proxy shared-memory accesses made visible to (or ordered before) the async proxy:
// TMA and wgmma read smem through it.
__device__ __forceinline__ void fence_proxy_async_smem() {
  ptx::fence_proxy_async(ptx::space_shared);
}

// ---- wgmma sequencing (PTX "wgmma.fence", "commit_group", "wait_group"; primer section 5) --

__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Keeps the compiler from moving accesses of an accumulator across the asm wgmma sequence:
// the asm statements name the registers, but not the asynchronous completion.
template <int M>
__device__ __forceinline__ void fence_regs(float (&r)[M]) {
#pragma unroll
  for (int i = 0; i < M; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int M, int K>
__device__ __forceinline__ void fence_regs(uint32_t (&r)[M][K]) {
#pragma unroll
  for (int i = 0; i < M; ++i)
#pragma unroll
    for (int k = 0; k < K; ++k) asm volatile("" : "+r"(r[i][k])::"memory");
}

// ---- registers and barriers ---------------------------------------------------------------

// setmaxnreg needs a register count at kernel entry: __launch_bounds__(threads, 1) (primer 7).
template <int N>
__device__ __forceinline__ void regs_dealloc() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void regs_alloc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}

// Hardware barrier ids: 0 is __syncthreads. Consumer warpgroup c (0..3) uses kSched + c (its
// ping-pong turn) and kEpilogue + c (its 128 threads' epilogue); kConsumers joins every
// consumer thread.
enum class NamedBarrier : uint32_t {
  kConsumers = 7,
  kSched = 8,
  kEpilogue = 12,
};
__device__ __forceinline__ uint32_t barrier_id(NamedBarrier base, int consumer) {
  return static_cast<uint32_t>(base) + static_cast<uint32_t>(consumer);
}

__device__ __forceinline__ void named_sync(uint32_t id, uint32_t threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_arrive(uint32_t id, uint32_t threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// bar.sync that also returns whether pred was true in any of the participating threads.
__device__ __forceinline__ bool named_sync_or(uint32_t id, uint32_t threads, bool pred) {
  uint32_t any;
  asm volatile(
      "{\n .reg .pred p, q;\n setp.ne.u32 p, %1, 0;\n bar.red.or.pred q, %2, %3, p;\n"
      " selp.u32 %0, 1, 0, q;\n}\n"
      : "=r"(any)
      : "r"(static_cast<uint32_t>(pred)), "r"(id), "r"(threads)
      : "memory");
  return any != 0;
}

// True in exactly one lane of the (fully active) warp.
__device__ __forceinline__ bool elect_one() {
  uint32_t pred = 0;
  asm volatile("{\n.reg .pred p;\nelect.sync _|p, 0xffffffff;\nselp.u32 %0, 1, 0, p;\n}\n"
               : "=r"(pred));
  return pred != 0;
}

using detail::ex2;

// 2^x for x <= 0 on the FMA/ALU pipes (FA4's split of the exponentials): x = j + f with
// j = round(x) (adding 1.5 * 2^23 rounds into the low mantissa bits), 2^f on [-0.5, 0.5] by a
// degree-3 polynomial (relative error 1.0e-4, fitted for minimax relative error; under the
// bf16/fp16 rounding of P), j added to the exponent field. The clamp at -126 keeps the
// exponent field non-negative: -inf gives a denormal, flushed like ex2.approx.ftz does.
__device__ __forceinline__ float ex2_poly(float x) {
  x = fmaxf(x, -126.f);
  const float t = x + 12582912.f;
  const float f = x - (t - 12582912.f);
  const float p = fmaf(fmaf(fmaf(0.05496438f, f, 0.24221113f), f, 0.6932921f), f, 1.f);
  return __int_as_float(__float_as_int(p) + (__float_as_int(t) << 23));
}

}  // namespace flashcore::hopper
