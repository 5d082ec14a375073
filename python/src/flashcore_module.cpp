// flashcore._flashcore: the C++ API over DLPack tensors (nanobind). Thin: it maps tensors to
// pointers, shapes and strides and calls run(); every rule about the problem is checked by the
// library (src/api/validate.cpp), whose messages become the Python exceptions. The GIL is
// released while the call runs.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "flashcore/flashcore.h"
#include "flashcore/kvcache.h"

namespace nb = nanobind;
using flashcore::AttentionParams;
using flashcore::DType;
using flashcore::KvCacheParams;
using flashcore::Status;
using flashcore::StatusCode;
using flashcore::Strides;

namespace {

using Tensor = nb::ndarray<nb::ro>;
using OutTensor = nb::ndarray<>;

[[noreturn]] void fail(const std::string& what) { throw nb::value_error(what.c_str()); }

void raise_if_failed(const Status& s) {
  if (s.ok()) return;
  if (s.code == StatusCode::kCudaError) throw std::runtime_error(s.message);
  fail(s.message);
}

template <class T>
DType dtype_of(const T& t, const char* name) {
  const nb::dlpack::dtype d = t.dtype();
  if (d.bits == 16 && d.lanes == 1 && d.code == uint8_t(nb::dlpack::dtype_code::Float))
    return DType::kFloat16;
  if (d.bits == 16 && d.lanes == 1 && d.code == uint8_t(nb::dlpack::dtype_code::Bfloat))
    return DType::kBFloat16;
  fail(std::string(name) + ": dtype must be float16 or bfloat16");
}

template <class T>
bool on_cuda(const T& t) {
  return t.device_type() == nb::device::cuda::value;
}

template <class T>
void expect_ndim(const T& t, const char* name, size_t ndim) {
  if (t.ndim() != ndim)
    fail(std::string(name) + ": must have " + std::to_string(ndim) + " dimensions (got " +
         std::to_string(t.ndim()) + ")");
}

// Element strides of a (batch, seq, heads, head_dim) tensor, or (tokens, heads, head_dim) when
// packed; head_dim must be contiguous.
template <class T>
Strides strides_of(const T& t, const char* name, bool packed) {
  expect_ndim(t, name, packed ? 3 : 4);
  const size_t last = t.ndim() - 1;
  if (t.shape(last) > 1 && t.stride(last) != 1)
    fail(std::string(name) + ": the last dimension (head_dim) must be contiguous");
  if (packed) return {0, t.stride(0), t.stride(1)};
  return {t.stride(0), t.stride(1), t.stride(2)};
}

// Every tensor's shape must be the one the call's dimensions give it: the core only sees
// pointers, strides and the dimensions taken from q and k.
template <class T>
void expect_shape(const T& t, const char* name, std::initializer_list<int64_t> shape) {
  bool ok = t.ndim() == shape.size();
  size_t i = 0;
  for (int64_t d : shape) ok = ok && i < t.ndim() && int64_t(t.shape(i++)) == d;
  if (ok) return;
  std::string want = "(", got = "(";
  for (int64_t d : shape) want += std::to_string(d) + ", ";
  for (size_t j = 0; j < t.ndim(); ++j) got += std::to_string(t.shape(j)) + ", ";
  want = want.substr(0, want.size() - 2) + ")";
  got = (t.ndim() ? got.substr(0, got.size() - 2) : got) + ")";
  fail(std::string(name) + ": shape must be " + want + " (got " + got + ")");
}

const int32_t* int32_data(const std::optional<Tensor>& t, const char* name) {
  if (!t) return nullptr;
  const nb::dlpack::dtype d = t->dtype();
  if (d.code != uint8_t(nb::dlpack::dtype_code::Int) || d.bits != 32 || d.lanes != 1)
    fail(std::string(name) + ": dtype must be int32");
  if (t->ndim() != 1 || (t->shape(0) > 1 && t->stride(0) != 1))
    fail(std::string(name) + ": must be a contiguous 1-d tensor");
  return static_cast<const int32_t*>(t->data());
}

// An fp8 (e4m3) cache arrives as an 8-bit unsigned view (the Python layer passes
// torch.float8_e4m3fn and ml_dtypes float8_e4m3fn caches so; DLPack exporters differ on fp8).
template <class T>
bool is_bytes(const T& t) {
  const nb::dlpack::dtype d = t.dtype();
  return d.code == uint8_t(nb::dlpack::dtype_code::UInt) && d.bits == 8 && d.lanes == 1;
}

// k_scale/v_scale: float32, one per kv head, contiguous, in q's memory (kvcache.h).
const float* scale_data(const Tensor& t, const char* name, int64_t num_heads_kv, bool cuda) {
  const nb::dlpack::dtype d = t.dtype();
  if (d.code != uint8_t(nb::dlpack::dtype_code::Float) || d.bits != 32 || d.lanes != 1)
    fail(std::string(name) + ": dtype must be float32");
  expect_shape(t, name, {num_heads_kv});
  if (t.shape(0) > 1 && t.stride(0) != 1) fail(std::string(name) + ": must be contiguous");
  if (on_cuda(t) != cuda) fail(std::string(name) + ": must be in q's memory (device or host)");
  return static_cast<const float*>(t.data());
}

float* lse_data(const std::optional<OutTensor>& t) {
  if (!t) return nullptr;
  const nb::dlpack::dtype d = t->dtype();
  if (d.code != uint8_t(nb::dlpack::dtype_code::Float) || d.bits != 32 || d.lanes != 1)
    fail("softmax_lse: dtype must be float32");
  int64_t expect = 1;  // contiguous, row-major
  for (size_t i = t->ndim(); i-- > 0;) {
    if (t->shape(i) > 1 && t->stride(i) != expect) fail("softmax_lse: must be contiguous");
    expect *= int64_t(t->shape(i));
  }
  return static_cast<float*>(t->data());
}

// Runs params with workspace when the plan wants one and it is large enough. When it is short
// (or absent) the call does not run and returns the bytes the plan wants, so the caller can
// make one and call again; with `unsplit` it runs without one instead (same result, slower).
// Returns 0 when it ran. One binding call per attention call on the hot path.
template <class Params>
int64_t run_with(const Params& p, const std::optional<OutTensor>& workspace, uintptr_t stream,
                 bool unsplit) {
  const flashcore::Plan plan = flashcore::query(p);
  raise_if_failed(plan.status);
  void* ws = nullptr;
  if (plan.workspace_bytes > 0) {
    if (workspace && int64_t(workspace->nbytes()) >= plan.workspace_bytes)
      ws = workspace->data();
    else if (!unsplit)
      return plan.workspace_bytes;
  }
  Status s;
  {
    nb::gil_scoped_release release;
    s = flashcore::run(p, ws, reinterpret_cast<void*>(stream));
  }
  raise_if_failed(s);
  return 0;
}

// Forward attention: q/k/v/out (B, S, H, D), or packed (total, H, D) with cu_seqlens_q/k.
AttentionParams fwd_params(const Tensor& q, const Tensor& k, const Tensor& v, const OutTensor& out,
                           const std::optional<OutTensor>& softmax_lse,
                           const std::optional<Tensor>& cu_seqlens_q,
                           const std::optional<Tensor>& cu_seqlens_k, int64_t max_seqlen_q,
                           int64_t max_seqlen_k, double softmax_scale, bool causal,
                           int64_t window_left, int64_t window_right) {
  const bool varlen = cu_seqlens_q.has_value() || cu_seqlens_k.has_value();
  AttentionParams p;
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  p.o = out.data();
  p.q_strides = strides_of(q, "q", varlen);
  p.k_strides = strides_of(k, "k", varlen);
  p.v_strides = strides_of(v, "v", varlen);
  p.o_strides = strides_of(out, "out", varlen);
  p.dtype = dtype_of(q, "q");
  if (dtype_of(k, "k") != p.dtype || dtype_of(v, "v") != p.dtype)
    fail("k/v: dtype must match q's");
  if (dtype_of(out, "out") != p.dtype) fail("out: dtype must match q's");
  const size_t h = varlen ? 1 : 2;
  p.num_heads_q = int64_t(q.shape(h));
  p.num_heads_kv = int64_t(k.shape(h));
  p.head_dim = int64_t(q.shape(h + 1));
  const int64_t d = p.head_dim, hq = p.num_heads_q, hkv = p.num_heads_kv;
  if (varlen) {
    p.cu_seqlens_q = int32_data(cu_seqlens_q, "cu_seqlens_q");
    p.cu_seqlens_k = int32_data(cu_seqlens_k, "cu_seqlens_k");
    if (!p.cu_seqlens_q || !p.cu_seqlens_k) fail("cu_seqlens_q/cu_seqlens_k: give both or neither");
    expect_shape(*cu_seqlens_k, "cu_seqlens_k", {int64_t(cu_seqlens_q->shape(0))});
    const int64_t tk = int64_t(k.shape(0));
    expect_shape(k, "k", {tk, hkv, d});
    expect_shape(v, "v", {tk, hkv, d});
    expect_shape(out, "out", {int64_t(q.shape(0)), hq, d});
    p.batch = int64_t(cu_seqlens_q->shape(0)) - 1;
    p.seqlen_q = max_seqlen_q;
    p.seqlen_k = max_seqlen_k;
    p.total_q = int64_t(q.shape(0));
    p.total_k = int64_t(k.shape(0));
  } else {
    p.batch = int64_t(q.shape(0));
    p.seqlen_q = int64_t(q.shape(1));
    p.seqlen_k = int64_t(k.shape(1));
    expect_shape(k, "k", {p.batch, p.seqlen_k, hkv, d});
    expect_shape(v, "v", {p.batch, p.seqlen_k, hkv, d});
    expect_shape(out, "out", {p.batch, p.seqlen_q, hq, d});
  }
  if (softmax_lse) {
    if (varlen)
      expect_shape(*softmax_lse, "softmax_lse", {hq, int64_t(q.shape(0))});
    else
      expect_shape(*softmax_lse, "softmax_lse", {p.batch, hq, p.seqlen_q});
  }
  p.lse = lse_data(softmax_lse);
  p.softmax_scale = float(softmax_scale);
  p.causal = causal;
  p.window_left = window_left;
  p.window_right = window_right;
  if (on_cuda(q)) p.device = q.device_id();
  return p;
}

int64_t fwd(const Tensor& q, const Tensor& k, const Tensor& v, const OutTensor& out,
            const std::optional<OutTensor>& softmax_lse, const std::optional<Tensor>& cu_seqlens_q,
            const std::optional<Tensor>& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k,
            double softmax_scale, bool causal, int64_t window_left, int64_t window_right,
            const std::optional<OutTensor>& workspace, uintptr_t stream, bool unsplit) {
  return run_with(fwd_params(q, k, v, out, softmax_lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                             max_seqlen_k, softmax_scale, causal, window_left, window_right),
                  workspace, stream, unsplit);
}


// Attention against a KV cache (kvcache.h): q/out (B, Sq, Hq, D); caches (B, capacity, Hkv, D),
// or pages (num_pages, page_size, Hkv, D) with block_table (B, max_pages) int32; k_new/v_new
// (B, Sq, Hkv, D); cache_seqlens (B) int32; rotary cos/sin (max_position, rotary_dim / 2).
KvCacheParams kv_params(const Tensor& q, const OutTensor& k_cache, const OutTensor& v_cache,
                        const OutTensor& out, const std::optional<Tensor>& k_new,
                        const std::optional<Tensor>& v_new, const Tensor& cache_seqlens,
                        const std::optional<Tensor>& cache_leftpad,
                        const std::optional<Tensor>& block_table,
                        const std::optional<Tensor>& rotary_cos,
                        const std::optional<Tensor>& rotary_sin, bool rotary_interleaved,
                        const std::optional<OutTensor>& softmax_lse, double softmax_scale,
                        bool causal, int64_t window_left, int64_t window_right,
                        const OutTensor& error_flag, const std::optional<Tensor>& k_scale,
                        const std::optional<Tensor>& v_scale) {
  KvCacheParams p;
  p.q = q.data();
  p.o = out.data();
  p.q_strides = strides_of(q, "q", false);
  p.o_strides = strides_of(out, "out", false);
  p.dtype = dtype_of(q, "q");
  if (k_scale.has_value() != v_scale.has_value()) fail("k_scale/v_scale: give both or neither");
  p.cache_fp8 = k_scale.has_value();
  if (p.cache_fp8) {
    if (!is_bytes(k_cache) || !is_bytes(v_cache))
      fail("k_cache/v_cache: with k_scale/v_scale the caches must be float8_e4m3fn (or their "
           "uint8 view)");
  } else if (is_bytes(k_cache) || is_bytes(v_cache)) {
    fail("k_cache/v_cache: an 8-bit (fp8 e4m3) cache needs k_scale and v_scale (float32, one "
         "per kv head)");
  } else if (dtype_of(k_cache, "k_cache") != p.dtype || dtype_of(v_cache, "v_cache") != p.dtype) {
    fail("k_cache/v_cache: dtype must match q's");
  }
  if (dtype_of(out, "out") != p.dtype) fail("out: dtype must match q's");
  p.k_cache = k_cache.data();
  p.v_cache = v_cache.data();
  p.k_cache_strides = strides_of(k_cache, "k_cache", false);
  p.v_cache_strides = strides_of(v_cache, "v_cache", false);
  p.batch = int64_t(q.shape(0));
  p.seqlen_q = int64_t(q.shape(1));
  p.num_heads_q = int64_t(q.shape(2));
  p.head_dim = int64_t(q.shape(3));
  p.num_heads_kv = int64_t(k_cache.shape(2));
  const int64_t d = p.head_dim, hkv = p.num_heads_kv;
  expect_shape(out, "out", {p.batch, p.seqlen_q, p.num_heads_q, d});
  expect_shape(k_cache, "k_cache", {int64_t(k_cache.shape(0)), int64_t(k_cache.shape(1)), hkv, d});
  expect_shape(v_cache, "v_cache", {int64_t(k_cache.shape(0)), int64_t(k_cache.shape(1)), hkv, d});
  expect_shape(cache_seqlens, "cache_seqlens", {p.batch});
  if (!block_table) expect_shape(k_cache, "k_cache", {p.batch, int64_t(k_cache.shape(1)), hkv, d});
  if (block_table) {
    if (block_table->ndim() != 2 || (block_table->shape(1) > 1 && block_table->stride(1) != 1))
      fail("block_table: must be a 2-d int32 tensor (batch, max_pages) with contiguous rows");
    const nb::dlpack::dtype d = block_table->dtype();
    if (d.code != uint8_t(nb::dlpack::dtype_code::Int) || d.bits != 32 || d.lanes != 1)
      fail("block_table: dtype must be int32");
    expect_shape(*block_table, "block_table", {p.batch, int64_t(block_table->shape(1))});
    p.block_table = static_cast<const int32_t*>(block_table->data());
    p.max_pages_per_seq = int64_t(block_table->shape(1));
    p.block_table_stride = block_table->stride(0);
    p.num_pages = int64_t(k_cache.shape(0));
    p.page_size = int64_t(k_cache.shape(1));
  } else {
    p.cache_capacity = int64_t(k_cache.shape(1));
  }
  p.cache_seqlens = int32_data(std::optional<Tensor>(cache_seqlens), "cache_seqlens");
  p.cache_leftpad = int32_data(cache_leftpad, "cache_leftpad");
  if (cache_leftpad) expect_shape(*cache_leftpad, "cache_leftpad", {p.batch});
  if (k_new.has_value() != v_new.has_value()) fail("k/v: give both new-key tensors or neither");
  if (k_new) {
    if (dtype_of(*k_new, "k") != p.dtype || dtype_of(*v_new, "v") != p.dtype)
      fail("k/v: dtype must match q's");
    p.k_new = k_new->data();
    p.v_new = v_new->data();
    p.k_new_strides = strides_of(*k_new, "k", false);
    p.v_new_strides = strides_of(*v_new, "v", false);
    if (k_new->ndim() == 4 && int64_t(k_new->shape(1)) != p.seqlen_q)
      fail("k/v: flashcore appends as many new rows as q has (seqlen_q = " +
           std::to_string(p.seqlen_q) + "), got " + std::to_string(k_new->shape(1)));
    expect_shape(*k_new, "k", {p.batch, p.seqlen_q, hkv, d});
    expect_shape(*v_new, "v", {p.batch, p.seqlen_q, hkv, d});
  }
  if (rotary_cos.has_value() != rotary_sin.has_value())
    fail("rotary_cos/rotary_sin: give both or neither");
  if (rotary_cos) {
    for (const auto* t : {&*rotary_cos, &*rotary_sin}) {
      if (t->ndim() != 2) fail("rotary_cos/rotary_sin: must be 2-d (max_position, rotary_dim / 2)");
      if (dtype_of(*t, "rotary_cos/rotary_sin") != p.dtype)
        fail("rotary_cos/rotary_sin: dtype must match q's");
      if ((t->shape(0) > 1 && t->stride(0) != int64_t(t->shape(1))) ||
          (t->shape(1) > 1 && t->stride(1) != 1))
        fail("rotary_cos/rotary_sin: must be contiguous");
    }
    if (rotary_sin->shape(0) != rotary_cos->shape(0) || rotary_sin->shape(1) != rotary_cos->shape(1))
      fail("rotary_cos/rotary_sin: shapes must match");
    p.rotary = {rotary_cos->data(), rotary_sin->data(), 2 * int64_t(rotary_cos->shape(1)),
                int64_t(rotary_cos->shape(0)), rotary_interleaved};
  }
  if (softmax_lse) expect_shape(*softmax_lse, "softmax_lse", {p.batch, p.num_heads_q, p.seqlen_q});
  p.lse = lse_data(softmax_lse);
  p.softmax_scale = float(softmax_scale);
  p.causal = causal;
  p.window_left = window_left;
  p.window_right = window_right;
  const nb::dlpack::dtype fd = error_flag.dtype();
  if (fd.code != uint8_t(nb::dlpack::dtype_code::Int) || fd.bits != 32 || error_flag.size() < 1)
    fail("error_flag: must be an int32 tensor");
  p.error_flag = static_cast<int32_t*>(error_flag.data());
  if (p.cache_fp8) {
    p.k_scale = scale_data(*k_scale, "k_scale", hkv, on_cuda(q));
    p.v_scale = scale_data(*v_scale, "v_scale", hkv, on_cuda(q));
  }
  if (on_cuda(q)) p.device = q.device_id();
  return p;
}

int64_t kvcache(const Tensor& q, const OutTensor& k_cache, const OutTensor& v_cache,
                const OutTensor& out, const std::optional<Tensor>& k_new,
                const std::optional<Tensor>& v_new, const Tensor& cache_seqlens,
                const std::optional<Tensor>& cache_leftpad,
                const std::optional<Tensor>& block_table, const std::optional<Tensor>& rotary_cos,
                const std::optional<Tensor>& rotary_sin, bool rotary_interleaved,
                const std::optional<OutTensor>& softmax_lse, double softmax_scale, bool causal,
                int64_t window_left, int64_t window_right, const OutTensor& error_flag,
                const std::optional<Tensor>& k_scale, const std::optional<Tensor>& v_scale,
                const std::optional<OutTensor>& workspace, uintptr_t stream, bool unsplit) {
  return run_with(kv_params(q, k_cache, v_cache, out, k_new, v_new, cache_seqlens, cache_leftpad,
                            block_table,
                            rotary_cos, rotary_sin, rotary_interleaved, softmax_lse,
                            softmax_scale, causal, window_left, window_right, error_flag,
                            k_scale, v_scale),
                  workspace, stream, unsplit);
}

// What query() answers for a problem shape on the CPU reference backend ("" = supported, else
// the reason), for the README's support table (flashcore/support.py). The tensors are small
// host buffers that query never reads.
DType dtype_named(const std::string& name) {
  if (name == "float16") return DType::kFloat16;
  if (name == "bfloat16") return DType::kBFloat16;
  fail("dtype: float16 or bfloat16");
}
constexpr int64_t kShapeRows = 4, kMaxElems = kShapeRows * 32 * 512;
alignas(256) uint16_t g_q[kMaxElems], g_k[kMaxElems], g_v[kMaxElems], g_o[kMaxElems];
alignas(256) float g_lse[kShapeRows * 32];
alignas(256) int32_t g_ints[64];

std::string query_forward(const std::string& dtype, int64_t head_dim, int64_t num_heads_q,
                          int64_t num_heads_kv, bool causal, int64_t window_left,
                          int64_t window_right, bool varlen, bool lse) {
  if (num_heads_q > 32 || num_heads_kv > 32 || head_dim > 512 || head_dim < 1)
    fail("query_forward: at most 32 heads and head_dim 512 here");
  AttentionParams p;
  p.q = g_q, p.k = g_k, p.v = g_v, p.o = g_o;
  const Strides qs{kShapeRows * num_heads_q * head_dim, num_heads_q * head_dim, head_dim};
  const Strides ks{kShapeRows * num_heads_kv * head_dim, num_heads_kv * head_dim, head_dim};
  p.q_strides = p.o_strides = qs;
  p.k_strides = p.v_strides = ks;
  p.dtype = dtype_named(dtype);
  p.batch = 1, p.seqlen_q = p.seqlen_k = kShapeRows;
  p.num_heads_q = num_heads_q, p.num_heads_kv = num_heads_kv, p.head_dim = head_dim;
  if (varlen) {
    g_ints[0] = 0, g_ints[1] = int32_t(kShapeRows);
    p.cu_seqlens_q = p.cu_seqlens_k = g_ints;
  }
  p.lse = lse ? g_lse : nullptr;
  p.causal = causal, p.window_left = window_left, p.window_right = window_right;
  p.backend = flashcore::Backend::kReference;
  const flashcore::Plan plan = flashcore::query(p);
  return plan.status.ok() ? std::string() : plan.status.message;
}

std::string query_kvcache(const std::string& dtype, int64_t head_dim, int64_t page_size,
                          bool append, int64_t rotary_dim, bool rotary_interleaved, bool causal,
                          int64_t window_left, int64_t window_right, bool leftpad) {
  if (head_dim > 512 || head_dim < 1) fail("query_kvcache: head_dim up to 512 here");
  // One page at least: a page longer than 16 rows must not leave the stand-in with no pages.
  const int64_t hq = 4, hkv = 2, cap = page_size > 16 ? page_size : 16;
  KvCacheParams p;
  p.q = g_q, p.o = g_o, p.k_cache = g_k, p.v_cache = g_v;
  p.q_strides = p.o_strides = {hq * head_dim, hq * head_dim, head_dim};
  p.dtype = dtype_named(dtype);
  p.batch = 1, p.seqlen_q = 1, p.num_heads_q = hq, p.num_heads_kv = hkv, p.head_dim = head_dim;
  if (page_size > 0) {
    p.k_cache_strides = p.v_cache_strides = {page_size * hkv * head_dim, hkv * head_dim, head_dim};
    g_ints[0] = 0;
    p.block_table = g_ints + 8;
    p.block_table_stride = p.max_pages_per_seq = cap / page_size;
    p.num_pages = cap / page_size;
    p.page_size = page_size;
  } else {
    p.k_cache_strides = p.v_cache_strides = {cap * hkv * head_dim, hkv * head_dim, head_dim};
    p.cache_capacity = cap;
  }
  p.cache_seqlens = g_ints;
  if (leftpad) p.cache_leftpad = g_ints + 2;
  if (append) {
    p.k_new = g_q, p.v_new = g_q;
    p.k_new_strides = p.v_new_strides = {hkv * head_dim, hkv * head_dim, head_dim};
  }
  p.error_flag = g_ints + 4;
  p.causal = causal, p.window_left = window_left, p.window_right = window_right;
  if (rotary_dim > 0) p.rotary = {g_o, g_o, rotary_dim, 8, rotary_interleaved};
  p.backend = flashcore::Backend::kReference;
  const flashcore::Plan plan = flashcore::query(p);
  return plan.status.ok() ? std::string() : plan.status.message;
}

// A uint16 host array seen as bfloat16, owned by `owner` (the array itself): the output of a
// bfloat16 call on host JAX arrays, which numpy cannot carry as bfloat16 through DLPack. The
// package makes a numpy uint16 array, the core writes bfloat16 into this view, and the bits go
// to JAX as a uint16 array viewed as bfloat16.
nb::ndarray<nb::device::cpu> bf16_view(nb::ndarray<uint16_t, nb::device::cpu, nb::c_contig> a,
                                       nb::handle owner) {
  std::vector<size_t> shape(a.ndim());
  for (size_t i = 0; i < a.ndim(); ++i) shape[i] = a.shape(i);
  const nb::dlpack::dtype bf16{uint8_t(nb::dlpack::dtype_code::Bfloat), 16, 1};
  return nb::ndarray<nb::device::cpu>(a.data(), shape.size(), shape.data(), owner, nullptr, bf16);
}

}  // namespace

#ifdef FLASHCORE_JAX_FFI
namespace flashcore::python {
void add_jax_ffi(nb::module_& m);  // jax_ffi.cpp
}
#endif

NB_MODULE(_flashcore, m) {
  m.doc() = "flashcore's C++ API over DLPack tensors (use the flashcore package, not this)";
  m.def("fwd", &fwd, nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("out"),
        nb::arg("softmax_lse").none(), nb::arg("cu_seqlens_q").none(),
        nb::arg("cu_seqlens_k").none(), nb::arg("max_seqlen_q"), nb::arg("max_seqlen_k"),
        nb::arg("softmax_scale"), nb::arg("causal"), nb::arg("window_left"),
        nb::arg("window_right"), nb::arg("workspace").none(), nb::arg("stream"),
        nb::arg("unsplit"));
  m.def("kvcache", &kvcache, nb::arg("q"), nb::arg("k_cache"), nb::arg("v_cache"),
        nb::arg("out"), nb::arg("k").none(), nb::arg("v").none(), nb::arg("cache_seqlens"),
        nb::arg("cache_leftpad").none(), nb::arg("block_table").none(), nb::arg("rotary_cos").none(),
        nb::arg("rotary_sin").none(), nb::arg("rotary_interleaved"),
        nb::arg("softmax_lse").none(), nb::arg("softmax_scale"), nb::arg("causal"),
        nb::arg("window_left"), nb::arg("window_right"), nb::arg("error_flag"),
        nb::arg("k_scale").none(), nb::arg("v_scale").none(), nb::arg("workspace").none(),
        nb::arg("stream"), nb::arg("unsplit"));
  m.def("query_forward", &query_forward, nb::arg("dtype"), nb::arg("head_dim"),
        nb::arg("num_heads_q"), nb::arg("num_heads_kv"), nb::arg("causal") = false,
        nb::arg("window_left") = -1, nb::arg("window_right") = -1, nb::arg("varlen") = false,
        nb::arg("lse") = false);
  m.def("query_kvcache", &query_kvcache, nb::arg("dtype"), nb::arg("head_dim"),
        nb::arg("page_size") = 0, nb::arg("append") = false, nb::arg("rotary_dim") = 0,
        nb::arg("rotary_interleaved") = false, nb::arg("causal") = false,
        nb::arg("window_left") = -1, nb::arg("window_right") = -1, nb::arg("leftpad") = false);
  m.def("cuda_device_count", &flashcore::cuda_device_count);
  m.def("bf16_view", &bf16_view, nb::arg("a").noconvert(), nb::arg("owner"));
#ifdef FLASHCORE_JAX_FFI
  flashcore::python::add_jax_ffi(m);
#endif
}
