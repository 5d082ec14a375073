// Argument rules for forward attention. Each check returns at the first broken rule with a
// message "argument: rule (value)" so users can fix their call without reading our code.
#include "api/validate.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <type_traits>
#include <utility>

namespace flashcore::detail {
namespace {

Status invalid(const std::string& msg) { return {StatusCode::kInvalidArgument, msg}; }

// std::to_string and snprintf rather than iostreams: formatting a message with an ostringstream
// killed Python processes on the GPU machine (cause not found; docs/python-design.md), and a
// message must never cost a crash.
template <typename T>
std::string str(T v) {
  if constexpr (std::is_floating_point_v<T>) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", static_cast<double>(v));
    return buf;
  } else {
    return std::to_string(v);
  }
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

// Vector loads move 16 bytes at a time (8 16-bit or 16 fp8 elements), so every stride must be a
// multiple of that many elements and each base pointer 16-byte aligned.
Status check_tensor(const char* name, const void* ptr, const Strides& s, bool needed, bool varlen,
                    int64_t elem_bytes = 2) {
  if (ptr == nullptr) {
    if (needed) return invalid(std::string(name) + ": must not be null");
    return {};
  }
  if (!aligned16(ptr)) return invalid(std::string(name) + ": pointer must be 16-byte aligned");
  const int64_t strides[3] = {s.batch, s.seq, s.head};
  const char* sname[3] = {"batch", "seq", "head"};
  const int64_t per_vector = 16 / elem_bytes;
  for (int i = varlen ? 1 : 0; i < 3; ++i) {
    if (strides[i] < 0)
      return invalid(std::string(name) + "_strides." + sname[i] + ": must be >= 0 (got " +
                     str(strides[i]) + ")");
    if (strides[i] % per_vector != 0)
      return invalid(std::string(name) + "_strides." + sname[i] + ": must be a multiple of " +
                     str(per_vector) + " elements for 16-byte vector access (got " +
                     str(strides[i]) + ")");
  }
  return {};
}

// Writes to o must not alias each other, or threads race on the same element. With the dims
// of size > 1 sorted by stride, each stride must reach past everything nested inside it.
Status check_output_disjoint(const Strides& s, int64_t heads, int64_t seqlen, int64_t batch,
                             int64_t head_dim, const char* name = "o") {
  struct Dim {
    int64_t size, stride;
    const char* name;
  } dims[3] = {{heads, s.head, "head"}, {seqlen, s.seq, "seq"}, {batch, s.batch, "batch"}};
  for (int i = 0; i < 3; ++i)  // insertion sort by stride, three elements
    for (int j = i; j > 0 && dims[j].stride < dims[j - 1].stride; --j)
      std::swap(dims[j], dims[j - 1]);
  int64_t extent = head_dim;
  for (const Dim& d : dims) {
    if (d.size <= 1) continue;
    if (d.stride < extent)
      return invalid(std::string(name) + "_strides." + d.name + ": " + str(d.stride) +
                     " makes written rows overlap (need >= " + str(extent) + ")");
    extent += d.stride * (d.size - 1);
  }
  return {};
}

// The rules both entry points share: enums, head counts, head dim, scale, windows, device.
struct Common {
  DType dtype;
  Backend backend;
  KernelFamily family;
  int64_t batch, seqlen_q;
  int64_t num_heads_q, num_heads_kv, head_dim;
  float softmax_scale;
  int64_t window_left, window_right;
  int device;
};
Status check_common(const Common& c) {
  if (c.dtype != DType::kFloat16 && c.dtype != DType::kBFloat16)
    return invalid("dtype: must be kFloat16 or kBFloat16 (got " + str(static_cast<int>(c.dtype)) +
                   ")");
  if (c.backend != Backend::kAuto && c.backend != Backend::kReference &&
      c.backend != Backend::kCuda)
    return invalid("backend: unknown value " + str(static_cast<int>(c.backend)));
  if (c.family != KernelFamily::kAuto && c.family != KernelFamily::kHopper &&
      c.family != KernelFamily::kPortable)
    return invalid("family: unknown value " + str(static_cast<int>(c.family)));
  if (c.batch < 0) return invalid("batch: must be >= 0 (got " + str(c.batch) + ")");
  if (c.seqlen_q < 0) return invalid("seqlen_q: must be >= 0 (got " + str(c.seqlen_q) + ")");
  if (c.num_heads_q < 1)
    return invalid("num_heads_q: must be >= 1 (got " + str(c.num_heads_q) + ")");
  if (c.num_heads_kv < 1)
    return invalid("num_heads_kv: must be >= 1 (got " + str(c.num_heads_kv) + ")");
  if (c.num_heads_q % c.num_heads_kv != 0)
    return invalid("num_heads_q: must be a multiple of num_heads_kv (got " + str(c.num_heads_q) +
                   " and " + str(c.num_heads_kv) + ")");
  if (c.head_dim != 64 && c.head_dim != 128 && c.head_dim != 256)
    return invalid("head_dim: must be 64, 128 or 256 (got " + str(c.head_dim) + ")");
  if (!std::isfinite(c.softmax_scale) || c.softmax_scale < 0.0f)
    return invalid(
        "softmax_scale: must be finite and >= 0, where 0 selects 1/sqrt(head_dim) (got " +
        str(c.softmax_scale) + ")");
  if (c.window_left < -1)
    return invalid("window_left: must be >= -1, where -1 means unbounded (got " +
                   str(c.window_left) + ")");
  if (c.window_right < -1)
    return invalid("window_right: must be >= -1, where -1 means unbounded (got " +
                   str(c.window_right) + ")");
  if (c.device < -1) return invalid("device: must be >= -1 (got " + str(c.device) + ")");
  return {};
}

Status check_aligned4(const char* name, const void* ptr) {
  if (reinterpret_cast<uintptr_t>(ptr) & 3u)
    return invalid(std::string(name) + ": pointer must be 4-byte aligned");
  return {};
}

}  // namespace

Status validate_args(const AttentionParams& p) {
  Status s = check_common({p.dtype, p.backend, p.family, p.batch, p.seqlen_q, p.num_heads_q,
                           p.num_heads_kv, p.head_dim, p.softmax_scale, p.window_left,
                           p.window_right, p.device});
  if (!s.ok()) return s;
  if (p.seqlen_k < 0) return invalid("seqlen_k: must be >= 0 (got " + str(p.seqlen_k) + ")");
  if (p.seqlen_q > INT32_MAX || p.seqlen_k > INT32_MAX)
    return invalid("seqlen_q/seqlen_k: must be < 2^31");

  const bool varlen_q = p.cu_seqlens_q != nullptr;
  const bool varlen_k = p.cu_seqlens_k != nullptr;
  if (varlen_q != varlen_k)
    return invalid(std::string(varlen_q ? "cu_seqlens_k" : "cu_seqlens_q") +
                   ": cu_seqlens_q and cu_seqlens_k must be given together");
  if (varlen_q && (reinterpret_cast<uintptr_t>(p.cu_seqlens_q) & 3u))
    return invalid("cu_seqlens_q: pointer must be 4-byte aligned");
  if (varlen_k && (reinterpret_cast<uintptr_t>(p.cu_seqlens_k) & 3u))
    return invalid("cu_seqlens_k: pointer must be 4-byte aligned");
  if (p.total_q < 0 || p.total_k < 0)
    return invalid("total_q/total_k: must be >= 0, where 0 means unknown (got " + str(p.total_q) +
                   ", " + str(p.total_k) + ")");
  if (!varlen_q && (p.total_q != 0 || p.total_k != 0))
    return invalid("total_q/total_k: only meaningful with cu_seqlens_q/cu_seqlens_k; must be 0");
  if (p.total_q > INT32_MAX || p.total_k > INT32_MAX)
    return invalid("total_q/total_k: must be < 2^31");

  // A tensor with no elements may be null; otherwise it must exist.
  const bool any_q = p.batch > 0 && p.seqlen_q > 0;
  const bool any_k = p.batch > 0 && p.seqlen_k > 0;
  if (!(s = check_tensor("q", p.q, p.q_strides, any_q, varlen_q)).ok()) return s;
  if (!(s = check_tensor("k", p.k, p.k_strides, any_k, varlen_q)).ok()) return s;
  if (!(s = check_tensor("v", p.v, p.v_strides, any_k, varlen_q)).ok()) return s;
  if (!(s = check_tensor("o", p.o, p.o_strides, any_q, varlen_q)).ok()) return s;
  if (any_q && !(s = check_output_disjoint(p.o_strides, p.num_heads_q, p.seqlen_q,
                                           varlen_q ? 1 : p.batch, p.head_dim))
                    .ok())
    return s;
  if (p.lse != nullptr && (reinterpret_cast<uintptr_t>(p.lse) & 3u))
    return invalid("lse: pointer must be 4-byte aligned");
  return {};
}

Status validate_cu_seqlens_host(const AttentionParams& p) {
  if (p.cu_seqlens_q == nullptr) return {};
  const struct {
    const char* name;
    const int32_t* cu;
    int64_t max_len;
    const char* max_name;
    int64_t total;
    const char* total_name;
  } lists[2] = {{"cu_seqlens_q", p.cu_seqlens_q, p.seqlen_q, "seqlen_q", p.total_q, "total_q"},
                {"cu_seqlens_k", p.cu_seqlens_k, p.seqlen_k, "seqlen_k", p.total_k, "total_k"}};
  for (const auto& l : lists) {
    if (p.batch > 0 && l.cu[0] != 0)
      return invalid(std::string(l.name) + ": must start at 0 (got " + str(l.cu[0]) + ")");
    for (int64_t b = 0; b < p.batch; ++b) {
      const int64_t len = static_cast<int64_t>(l.cu[b + 1]) - l.cu[b];
      if (len < 0)
        return invalid(std::string(l.name) + ": must be non-decreasing (entry " + str(b + 1) +
                       " = " + str(l.cu[b + 1]) + " < entry " + str(b) + " = " + str(l.cu[b]) +
                       ")");
      if (len > l.max_len)
        return invalid(std::string(l.name) + ": sequence " + str(b) + " has length " + str(len) +
                       ", more than " + l.max_name + " = " + str(l.max_len));
    }
  }
  for (const auto& l : lists)
    if (l.total > 0 && l.cu[p.batch] > l.total)
      return invalid(std::string(l.name) + ": last entry " + str(l.cu[p.batch]) + " exceeds " +
                     l.total_name + " = " + str(l.total));
  return {};
}

Status validate_kv_args(const KvCacheParams& p) {
  Status s = check_common({p.dtype, p.backend, p.family, p.batch, p.seqlen_q, p.num_heads_q,
                           p.num_heads_kv, p.head_dim, p.softmax_scale, p.window_left,
                           p.window_right, p.device});
  if (!s.ok()) return s;
  if (p.seqlen_q > INT32_MAX) return invalid("seqlen_q: must be < 2^31");

  const bool paged = p.block_table != nullptr;
  if (paged) {
    if (p.cache_capacity != 0)
      return invalid("cache_capacity: contiguous caches only; a paged cache holds "
                     "max_pages_per_seq * page_size rows (got " + str(p.cache_capacity) + ")");
    if (p.page_size < 1) return invalid("page_size: must be >= 1 (got " + str(p.page_size) + ")");
    if (p.num_pages < 1) return invalid("num_pages: must be >= 1 (got " + str(p.num_pages) + ")");
    if (p.max_pages_per_seq < 1)
      return invalid("max_pages_per_seq: must be >= 1 (got " + str(p.max_pages_per_seq) + ")");
    if (p.block_table_stride < p.max_pages_per_seq)
      return invalid("block_table_stride: must be >= max_pages_per_seq (got " +
                     str(p.block_table_stride) + " < " + str(p.max_pages_per_seq) + ")");
    if (p.page_size > INT32_MAX / p.max_pages_per_seq || p.num_pages > INT32_MAX)
      return invalid("max_pages_per_seq * page_size and num_pages: must be < 2^31");
    if (!(s = check_aligned4("block_table", p.block_table)).ok()) return s;
  } else {
    if (p.page_size != 0 || p.num_pages != 0 || p.max_pages_per_seq != 0 ||
        p.block_table_stride != 0)
      return invalid("page_size/num_pages/max_pages_per_seq/block_table_stride: only meaningful "
                     "with block_table; must be 0");
    if (p.cache_capacity < 0 || p.cache_capacity > INT32_MAX)
      return invalid("cache_capacity: must be in [0, 2^31) (got " + str(p.cache_capacity) + ")");
  }

  const int64_t capacity = paged ? p.max_pages_per_seq * p.page_size : p.cache_capacity;
  if (capacity + p.seqlen_q > INT32_MAX)
    return invalid("seqlen_q: the cache's capacity plus seqlen_q must be < 2^31");
  const bool append = p.k_new != nullptr;
  if (append != (p.v_new != nullptr))
    return invalid(std::string(append ? "v_new" : "k_new") +
                   ": k_new and v_new must be given together");
  if (p.error_flag == nullptr)
    return invalid("error_flag: must not be null (cache overflows are reported through it)");
  if (!(s = check_aligned4("error_flag", p.error_flag)).ok()) return s;

  const bool any = p.batch > 0;
  const bool any_q = any && p.seqlen_q > 0;
  if (any && p.cache_seqlens == nullptr) return invalid("cache_seqlens: must not be null");
  if (any && !(s = check_aligned4("cache_seqlens", p.cache_seqlens)).ok()) return s;
  if (p.cache_leftpad != nullptr && !(s = check_aligned4("cache_leftpad", p.cache_leftpad)).ok())
    return s;
  if (!(s = check_tensor("q", p.q, p.q_strides, any_q, false)).ok()) return s;
  if (!(s = check_tensor("o", p.o, p.o_strides, any_q, false)).ok()) return s;
  const int64_t cache_bytes = p.cache_fp8 ? 1 : 2;
  if (!(s = check_tensor("k_cache", p.k_cache, p.k_cache_strides, any, false, cache_bytes)).ok())
    return s;
  if (!(s = check_tensor("v_cache", p.v_cache, p.v_cache_strides, any, false, cache_bytes)).ok())
    return s;
  if (p.cache_fp8) {
    if (p.k_scale == nullptr || p.v_scale == nullptr)
      return invalid(std::string(p.k_scale ? "v_scale" : "k_scale") +
                     ": must not be null with cache_fp8");
    if (!(s = check_aligned4("k_scale", p.k_scale)).ok() ||
        !(s = check_aligned4("v_scale", p.v_scale)).ok())
      return s;
  } else if (p.k_scale != nullptr || p.v_scale != nullptr) {
    return invalid(std::string(p.k_scale ? "k_scale" : "v_scale") +
                   ": only meaningful with cache_fp8; must be null");
  }
  if (append) {
    if (!(s = check_tensor("k_new", p.k_new, p.k_new_strides, any_q, false)).ok()) return s;
    if (!(s = check_tensor("v_new", p.v_new, p.v_new_strides, any_q, false)).ok()) return s;
  }
  if (any_q &&
      !(s = check_output_disjoint(p.o_strides, p.num_heads_q, p.seqlen_q, p.batch, p.head_dim))
           .ok())
    return s;
  if (p.lse != nullptr && !(s = check_aligned4("lse", p.lse)).ok()) return s;
  // The append writes the caches: their rows must not alias either.
  if (any && append) {
    const int64_t outer = paged ? p.num_pages : p.batch, rows = paged ? p.page_size : capacity;
    if (!(s = check_output_disjoint(p.k_cache_strides, p.num_heads_kv, rows, outer, p.head_dim,
                                    "k_cache"))
             .ok() ||
        !(s = check_output_disjoint(p.v_cache_strides, p.num_heads_kv, rows, outer, p.head_dim,
                                    "v_cache"))
             .ok())
      return s;
  }

  const Rotary& r = p.rotary;
  if (r.rotary_dim == 0) {
    if (r.cos != nullptr || r.sin != nullptr || r.max_position != 0)
      return invalid("rotary.cos/sin/max_position: given, but rotary.rotary_dim is 0");
  } else {
    if (r.rotary_dim < 0 || r.rotary_dim % 2 != 0 || r.rotary_dim > p.head_dim)
      return invalid("rotary.rotary_dim: must be even and in [0, head_dim] (got " +
                     str(r.rotary_dim) + ")");
    if (r.cos == nullptr || r.sin == nullptr)
      return invalid(std::string(r.cos == nullptr ? "rotary.cos" : "rotary.sin") +
                     ": must not be null when rotary.rotary_dim > 0");
    if (r.max_position < 1 || r.max_position > INT32_MAX)
      return invalid("rotary.max_position: must be in [1, 2^31) (got " + str(r.max_position) +
                     ")");
    if ((reinterpret_cast<uintptr_t>(r.cos) | reinterpret_cast<uintptr_t>(r.sin)) & 1u)
      return invalid("rotary.cos/sin: pointers must be 2-byte aligned");
  }
  return {};
}

}  // namespace flashcore::detail
