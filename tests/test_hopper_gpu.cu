// GPU unit tests of the sm_90a primitives in src/hopper (label gpu): mbarrier phases, TMA
// loads (with a partly out-of-bounds box) and stores, wgmma SS and RS against a CPU GEMM,
// setmaxnreg with the named-barrier ping-pong. Integer-valued inputs make the GEMMs exact.
// Compiled for sm_90a only; every test skips without a compute capability 9.x GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "hopper/fwd_mainloop.cuh"
#include "hopper/smem_desc.h"
#include "hopper/tensor_map.h"
#include "kv_device.h"

namespace flashcore::hopper {
namespace {

using test::have_sm90;
#define SKIP_WITHOUT_SM90() \
  if (!have_sm90()) GTEST_SKIP() << "needs a compute capability 9.x GPU"
#define CUDA_OK(expr) ASSERT_EQ((expr), cudaSuccess) << #expr

template <class T>
struct Dev {
  T* ptr = nullptr;
  size_t n;
  explicit Dev(size_t count) : n(count) { cudaMalloc(&ptr, n * sizeof(T)); }
  explicit Dev(const std::vector<T>& h) : Dev(h.size()) {
    cudaMemcpy(ptr, h.data(), n * sizeof(T), cudaMemcpyHostToDevice);
  }
  ~Dev() { cudaFree(ptr); }
  std::vector<T> host() const {
    std::vector<T> h(n);
    cudaMemcpy(h.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost);
    return h;
  }
};

// ---- mbarrier ------------------------------------------------------------------------------

__global__ void mbarrier_phases(int* out) {
  __shared__ uint64_t bar;
  mbar_init(&bar, 1);
  mbar_init_fence();
  int k = 0;
  out[k++] = mbar_test(&bar, 0);  // fresh: phase 0 running
  out[k++] = mbar_test(&bar, 1);
  mbar_arrive(&bar);  // completes phase 0
  out[k++] = mbar_test(&bar, 0);
  out[k++] = mbar_test(&bar, 1);
  mbar_arrive(&bar);  // completes phase 1
  out[k++] = mbar_test(&bar, 0);
  out[k++] = mbar_test(&bar, 1);
}

TEST(HopperPrimitives, MbarrierParityFollowsPhases) {
  SKIP_WITHOUT_SM90();
  Dev<int> out(6);
  mbarrier_phases<<<1, 1>>>(out.ptr);
  CUDA_OK(cudaDeviceSynchronize());
  EXPECT_EQ(out.host(), (std::vector<int>{0, 1, 1, 0, 0, 1}));
}

// ---- TMA -----------------------------------------------------------------------------------

constexpr int kB = 2, kS = 200, kH = 3, kD = 128, kRows = 128;

uint16_t pattern(int b, int s, int h, int d) {  // a distinct finite bf16 per element
  return static_cast<uint16_t>((b * 7919 + s * 131 + h * 17 + d) % 16000 + 1);
}

std::vector<uint16_t> bshd_pattern() {
  std::vector<uint16_t> t(size_t(kB) * kS * kH * kD);
  for (int b = 0; b < kB; ++b)
    for (int s = 0; s < kS; ++s)
      for (int h = 0; h < kH; ++h)
        for (int d = 0; d < kD; ++d)
          t[((size_t(b) * kS + s) * kH + h) * kD + d] = pattern(b, s, h, d);
  return t;
}

CUtensorMap make_map(void* base) {
  alignas(64) CUtensorMap map;
  const Strides st{int64_t(kS) * kH * kD, kH * kD, kD};
  const Status s =
      encode_tensor_map(bshd_tile_map(base, DType::kBFloat16, st, kB, kS, kH, kD, kRows), &map);
  EXPECT_TRUE(s.ok()) << s.message;
  return map;
}

__global__ void tma_load(const __grid_constant__ CUtensorMap map, int row0, int h, int b,
                         uint8_t* out) {
  extern __shared__ __align__(1024) uint8_t tile[];
  __shared__ uint64_t bar;
  if (threadIdx.x == 0) {
    mbar_init(&bar, 1);
    mbar_init_fence();
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    tma_prefetch(&map);
    // The full box is expected even where it lies past the tensor: TMA zero-fills it.
    mbar_arrive_expect_tx(&bar, kRows * kD * 2);
    for (int s = 0; s < kD / 64; ++s)
      tma_load_4d(tile + s * kRows * 128, &map, 64 * s, h, row0, b, &bar);
  }
  mbar_wait(&bar, 0);
  for (int i = threadIdx.x; i < kRows * kD * 2; i += blockDim.x) out[i] = tile[i];
}

TEST(HopperPrimitives, TmaLoadWritesSwizzledTileAndZeroFillsPastTheEnd) {
  SKIP_WITHOUT_SM90();
  Dev<uint16_t> src(bshd_pattern());
  Dev<uint8_t> out(kRows * kD * 2);
  const CUtensorMap map = make_map(src.ptr);
  const int row0 = 150, h = 2, b = 1;  // rows 150..277: 200.. are out of bounds
  tma_load<<<1, 128, kRows * kD * 2>>>(map, row0, h, b, out.ptr);
  CUDA_OK(cudaDeviceSynchronize());
  const std::vector<uint8_t> bytes = out.host();
  int bad = 0;
  for (int r = 0; r < kRows; ++r)
    for (int d = 0; d < kD; ++d) {
      uint16_t got;
      std::memcpy(&got, &bytes[sw128_offset(r, d, kRows)], 2);
      const uint16_t want = row0 + r < kS ? pattern(b, row0 + r, h, d) : 0;
      bad += got != want;
    }
  EXPECT_EQ(bad, 0);
}

__global__ void tma_store(const __grid_constant__ CUtensorMap map, int row0, int h, int b) {
  extern __shared__ __align__(1024) uint8_t tile[];
  for (int i = threadIdx.x; i < kRows * kD; i += blockDim.x) {
    const int r = i / kD, d = i % kD;
    *reinterpret_cast<uint16_t*>(tile + sw128_offset(r, d, kRows)) =
        static_cast<uint16_t>(r * kD + d + 1);
  }
  fence_proxy_async_smem();  // generic writes -> the TMA engine's reads
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int s = 0; s < kD / 64; ++s)
      tma_store_4d(&map, 64 * s, h, row0, b, tile + s * kRows * 128);
    tma_store_commit();
    tma_store_wait_all();
  }
}

TEST(HopperPrimitives, TmaStoreWritesTileAndDropsRowsPastTheEnd) {
  SKIP_WITHOUT_SM90();
  std::vector<uint16_t> init(size_t(kB) * kS * kH * kD, 0xFFFF);
  Dev<uint16_t> dst(init);
  const CUtensorMap map = make_map(dst.ptr);
  const int row0 = 100, h = 1, b = 0;
  tma_store<<<1, 128, kRows * kD * 2>>>(map, row0, h, b);
  CUDA_OK(cudaDeviceSynchronize());
  const std::vector<uint16_t> got = dst.host();
  int bad = 0;
  for (int bb = 0; bb < kB; ++bb)
    for (int s = 0; s < kS; ++s)
      for (int hh = 0; hh < kH; ++hh)
        for (int d = 0; d < kD; ++d) {
          const bool inside = bb == b && hh == h && s >= row0 && s < row0 + kRows;
          const uint16_t want = inside ? static_cast<uint16_t>((s - row0) * kD + d + 1) : 0xFFFF;
          bad += got[((size_t(bb) * kS + s) * kH + hh) * kD + d] != want;
        }
  EXPECT_EQ(bad, 0);
}

// ---- wgmma ---------------------------------------------------------------------------------

std::vector<uint16_t> small_ints(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> dist(-3, 3);
  std::vector<uint16_t> v(n);
  for (auto& x : v) x = detail::float_to_bf16(static_cast<float>(dist(rng)));
  return v;
}

// C (64 x N) = A (64 x K) B^T, B stored N x K: both K-major, 128-byte swizzled strips.
template <int N, int K>
__global__ void __launch_bounds__(128) wgmma_ss(const uint16_t* a, const uint16_t* b, float* c) {
  extern __shared__ __align__(1024) uint8_t smem[];
  uint8_t* sa = smem;
  uint8_t* sb = smem + 64 * K * 2;
  for (int i = threadIdx.x; i < 64 * K; i += 128)
    *reinterpret_cast<uint16_t*>(sa + sw128_offset(i / K, i % K, 64)) = a[i];
  for (int i = threadIdx.x; i < N * K; i += 128)
    *reinterpret_cast<uint16_t*>(sb + sw128_offset(i / K, i % K, N)) = b[i];
  fence_proxy_async_smem();  // wgmma reads smem through the async proxy
  __syncthreads();
  float d[N / 2];
  const uint64_t da = wgmma_desc(smem_addr(sa), 16, 1024, DescSwizzle::k128B);
  const uint64_t db = wgmma_desc(smem_addr(sb), 16, 1024, DescSwizzle::k128B);
  fence_regs(d);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < K / 16; ++kk) {
    const uint32_t oa = (kk / 4) * 64 * 128 + (kk % 4) * 32;
    const uint32_t ob = (kk / 4) * N * 128 + (kk % 4) * 32;
    WgmmaSS<N, detail::Bf16>::mma(d, da + (oa >> 4), db + (ob >> 4), kk > 0);
  }
  wgmma_commit();
  wgmma_wait<0>();
  fence_regs(d);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int i = 0; i < N / 2; ++i)
    c[(16 * warp + lane / 4 + 8 * acc_half(i)) * N + acc_col(i, lane)] = d[i];
}

// C (64 x N) = A (64 x K) V, A from registers (the RS fragment), V stored K x N row-major in
// swizzled strips and read MN-major (LBO = strip stride), as O += P V reads it.
template <int N, int K>
__global__ void __launch_bounds__(128) wgmma_rs(const uint16_t* a, const uint16_t* v, float* c) {
  extern __shared__ __align__(1024) uint8_t sv[];
  for (int i = threadIdx.x; i < K * N; i += 128)
    *reinterpret_cast<uint16_t*>(sv + sw128_offset(i / N, i % N, K)) = v[i];
  fence_proxy_async_smem();
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // Build the accumulator-shaped values of A, then the fragment the kernel's to_fragment makes.
  float acc[K / 2];
  for (int i = 0; i < K / 2; ++i)
    acc[i] = __bfloat162float(
        __ushort_as_bfloat16(a[(16 * warp + lane / 4 + 8 * acc_half(i)) * K + acc_col(i, lane)]));
  uint32_t frag[K / 16][4];
  to_fragment<detail::Bf16>(acc, frag);
  float d[N / 2];
  for (int i = 0; i < N / 2; ++i) d[i] = 0.f;
  const uint64_t dv = wgmma_desc(smem_addr(sv), K * 128, 1024, DescSwizzle::k128B);
  fence_regs(d);
  fence_regs(frag);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < K / 16; ++kk)
    WgmmaRS<N, detail::Bf16>::mma(d, frag[kk], dv + ((kk * 2048) >> 4), 1);
  wgmma_commit();
  wgmma_wait<0>();
  fence_regs(d);
  fence_regs(frag);
  for (int i = 0; i < N / 2; ++i)
    c[(16 * warp + lane / 4 + 8 * acc_half(i)) * N + acc_col(i, lane)] = d[i];
}

// b_kmajor: B is N x K (C = A B^T); otherwise K x N (C = A B).
std::vector<float> cpu_gemm(const std::vector<uint16_t>& a, const std::vector<uint16_t>& b, int n,
                            int k, bool b_kmajor) {
  std::vector<float> c(size_t(64) * n, 0.f);
  for (int i = 0; i < 64; ++i)
    for (int j = 0; j < n; ++j) {
      double s = 0;
      for (int x = 0; x < k; ++x)
        s += double(detail::bf16_to_float(a[i * k + x])) *
             detail::bf16_to_float(b_kmajor ? b[j * k + x] : b[x * n + j]);
      c[i * n + j] = static_cast<float>(s);
    }
  return c;
}

template <int N, int K>
void check_ss() {
  const auto a = small_ints(64 * K, 1), b = small_ints(N * K, 2);
  Dev<uint16_t> da(a), db(b);
  Dev<float> dc(64 * N);
  const int smem = (64 + N) * K * 2;
  cudaFuncSetAttribute(wgmma_ss<N, K>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  wgmma_ss<N, K><<<1, 128, smem>>>(da.ptr, db.ptr, dc.ptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(dc.host(), cpu_gemm(a, b, N, K, true)) << "m64n" << N << "k16, K = " << K;
}

template <int N, int K>
void check_rs() {
  const auto a = small_ints(64 * K, 3), v = small_ints(K * N, 4);
  Dev<uint16_t> da(a), dv(v);
  Dev<float> dc(64 * N);
  const int smem = K * N * 2;
  cudaFuncSetAttribute(wgmma_rs<N, K>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  wgmma_rs<N, K><<<1, 128, smem>>>(da.ptr, dv.ptr, dc.ptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(dc.host(), cpu_gemm(a, v, N, K, false)) << "m64n" << N << "k16 RS, K = " << K;
}

TEST(HopperPrimitives, WgmmaSharedSharedMatchesCpuGemm) {
  SKIP_WITHOUT_SM90();
  check_ss<64, 64>();
  check_ss<128, 128>();
  check_ss<80, 256>();
}

TEST(HopperPrimitives, WgmmaRegisterSharedMatchesCpuGemm) {
  SKIP_WITHOUT_SM90();
  check_rs<64, 64>();
  check_rs<128, 128>();
  check_rs<256, 80>();
}

// ---- exp2 on the FMA pipe -------------------------------------------------------------------

__global__ void exp2_both(const float* x, float* poly, float* mufu, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) poly[i] = ex2_poly(x[i]), mufu[i] = exp2f(x[i]);
}

TEST(HopperPrimitives, PolynomialExp2MatchesExp2) {
  SKIP_WITHOUT_SM90();
  std::vector<float> x;
  for (float v = -140.f; v <= 0.f; v += 1.f / 64) x.push_back(v);
  x.push_back(-INFINITY);
  const int n = static_cast<int>(x.size());
  Dev<float> dx(x), dp(n), dm(n);
  exp2_both<<<(n + 255) / 256, 256>>>(dx.ptr, dp.ptr, dm.ptr, n);
  CUDA_OK(cudaDeviceSynchronize());
  const std::vector<float> p = dp.host(), m = dm.host();
  double worst = 0;
  for (int i = 0; i < n; ++i) {
    if (x[i] >= -125.f) {
      worst = std::max(worst, std::abs(double(p[i]) / m[i] - 1));
    } else {  // underflow region: tiny and never negative, NaN or infinite
      EXPECT_TRUE(p[i] >= 0.f && p[i] < 1e-37f) << "x = " << x[i] << ": " << p[i];
    }
  }
  EXPECT_LT(worst, 1.1e-4);
}

// ---- setmaxnreg and the ping-pong barriers --------------------------------------------------

__global__ void __launch_bounds__(384, 1) ping_pong(int* log, int rounds) {
  __shared__ int next;
  const int wg = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x / 128), 0);
  if (threadIdx.x == 0) next = 0;
  __syncthreads();
  if (wg == 0) {
    regs_dealloc<24>();
    return;
  }
  regs_alloc<240>();
  const int c = wg - 1;
  const SchedulerBarrier<true> turn{barrier_id(NamedBarrier::kSched, c),
                                    barrier_id(NamedBarrier::kSched, 1 - c)};
  if (c == 1) turn.pass();
  for (int r = 0; r < rounds; ++r) {
    turn.take();
    if (threadIdx.x % 128 == 0) log[next++] = c;
    turn.pass();
  }
  if (c == 0) turn.take();
}

TEST(HopperPrimitives, SetmaxnregAndPingPongAlternate) {
  SKIP_WITHOUT_SM90();
  constexpr int kRounds = 50;
  Dev<int> log(2 * kRounds);
  ping_pong<<<1, 384>>>(log.ptr, kRounds);
  CUDA_OK(cudaDeviceSynchronize());
  const std::vector<int> got = log.host();
  for (int i = 0; i < 2 * kRounds; ++i) EXPECT_EQ(got[i], i % 2) << "turn " << i;
}

}  // namespace
}  // namespace flashcore::hopper
