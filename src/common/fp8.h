// The fp8 KV cache's byte format, OCP E4M3FN (kvcache.h: cache_fp8): bias 7, 3 mantissa bits,
// max 448, no infinities, NaN = S.1111.111. The host's codec (the CPU reference, the tests):
// it agrees bit for bit with cuda_fp8.h's __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3)
// and __nv_cvt_fp8_to_halfraw, which the kernels use (tests/test_fp8_cpu.cpp checks it), so the
// reference stores exactly the bytes the kernels store.
#pragma once

#include <cstdint>
#include <cstring>

namespace flashcore::detail {

inline float e4m3_to_float(uint8_t x) {
  const uint32_t a = x & 0x7Fu;
  // Below exponent 1 the format is uniform in steps of 2^-9 (bytes 0..7 are 0..7 steps): no
  // implicit leading 1, so the rebias below cannot build them; a multiply does.
  if (a < 8) {
    const float m = static_cast<float>(a) * 0.001953125f;
    return (x & 0x80u) ? -m : m;
  }
  // NaN: cuda_fp8.h drops the sign and returns fp16's 0x7FFF; this is that value widened.
  // Otherwise exponent and mantissa move up as one field, rebiased from 7 to 127.
  const uint32_t bits = a == 0x7Fu
                            ? 0x7FFFE000u
                            : (static_cast<uint32_t>(x & 0x80u) << 24) | ((a << 20) + (120u << 23));
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even, saturating: what cvt.rn.satfinite.e4m3x2.f32 does on the GPU.
inline uint8_t float_to_e4m3(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  const uint8_t sign = static_cast<uint8_t>((bits >> 24) & 0x80u);
  uint32_t a = bits & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return 0x7F;  // NaN, sign dropped as cuda_fp8.h does
  // |x| >= 448, inf included: (448, 464] rounds to 448 (its mantissa is even), beyond saturates.
  if (a >= 0x43E00000u) return sign | 0x7Eu;
  if (a < 0x3C800000u) {  // |x| < 2^-6, the subnormal range: a grid of 2^-9
    // Adding 2^14, whose float ulp is 2^-9, rounds |x| to that grid with the FPU's round to
    // nearest even; the sum's low bits then count the steps (8 steps = 2^-6 = byte 0x08).
    float ax;
    std::memcpy(&ax, &a, 4);
    const float sum = ax + 16384.0f;
    uint32_t s;
    std::memcpy(&s, &sum, 4);
    return sign | static_cast<uint8_t>(s - 0x46800000u);
  }
  // Normal: round the float's 23 mantissa bits to 3 (ties to even; a carry bumps the
  // exponent), then rebias the exponent from 127 to 7.
  a += 0x7FFFFu + ((a >> 20) & 1u);
  return sign | static_cast<uint8_t>((a >> 20) - (120u << 3));
}

}  // namespace flashcore::detail
