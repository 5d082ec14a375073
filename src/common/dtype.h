// Host-side conversions between fp16/bf16 bit patterns and float, round-to-nearest-even.
// Used by the CPU reference, the tests and the benchmark; device code uses cuda_fp16/bf16.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "flashcore/flashcore.h"

namespace flashcore::detail {

inline float bf16_to_float(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if (std::isnan(f)) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

inline float fp16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  const uint32_t man = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: value = man * 2^-24
      float f = std::ldexp(static_cast<float>(man), -24);
      return (h & 0x8000u) ? -f : f;
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | (man << 13);
  } else {
    bits = sign | ((exp + 112u) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t float_to_fp16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  if (std::isnan(f)) return sign | 0x7E00u;
  const float a = std::fabs(f);
  if (a >= 65520.0f) return sign | 0x7C00u;  // rounds to inf
  if (a < 6.103515625e-05f) {                // subnormal range: quantise to 2^-24 steps
    const float q = std::nearbyint(a * 16777216.0f);
    return sign | static_cast<uint16_t>(q);
  }
  uint32_t abits = bits & 0x7FFFFFFFu;
  abits += 0xFFFu + ((abits >> 13) & 1u);  // round to nearest even at bit 13
  const uint32_t exp = (abits >> 23) - 112u;
  return sign | static_cast<uint16_t>((exp << 10) | ((abits >> 13) & 0x3FFu));
}

inline float to_float(DType t, uint16_t h) {
  return t == DType::kBFloat16 ? bf16_to_float(h) : fp16_to_float(h);
}
inline uint16_t from_float(DType t, float f) {
  return t == DType::kBFloat16 ? float_to_bf16(f) : float_to_fp16(f);
}
/// Rounds a float to the nearest value representable in t.
inline float round_to(DType t, float f) { return to_float(t, from_float(t, f)); }

}  // namespace flashcore::detail
