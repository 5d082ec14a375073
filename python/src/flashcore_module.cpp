// flashcore._flashcore: the C++ API over DLPack tensors (nanobind). Thin: it maps tensors to
// pointers, shapes and strides and calls run(); every rule about the problem is checked by the
// library (src/api/validate.cpp), whose messages become the Python exceptions. The GIL is
// released while the call runs.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>

#include "flashcore/flashcore.h"

namespace nb = nanobind;
using flashcore::AttentionParams;
using flashcore::DType;
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

const int32_t* int32_data(const std::optional<Tensor>& t, const char* name) {
  if (!t) return nullptr;
  const nb::dlpack::dtype d = t->dtype();
  if (d.code != uint8_t(nb::dlpack::dtype_code::Int) || d.bits != 32 || d.lanes != 1)
    fail(std::string(name) + ": dtype must be int32");
  if (t->ndim() != 1 || (t->shape(0) > 1 && t->stride(0) != 1))
    fail(std::string(name) + ": must be a contiguous 1-d tensor");
  return static_cast<const int32_t*>(t->data());
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

// Forward attention: q/k/v/out (B, S, H, D), or packed (total, H, D) with cu_seqlens_q/k.
void fwd(const Tensor& q, const Tensor& k, const Tensor& v, const OutTensor& out,
         const std::optional<OutTensor>& softmax_lse, const std::optional<Tensor>& cu_seqlens_q,
         const std::optional<Tensor>& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k,
         double softmax_scale, bool causal, int64_t window_left, int64_t window_right,
         uintptr_t stream) {
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
  if (varlen) {
    p.cu_seqlens_q = int32_data(cu_seqlens_q, "cu_seqlens_q");
    p.cu_seqlens_k = int32_data(cu_seqlens_k, "cu_seqlens_k");
    if (!p.cu_seqlens_q || !p.cu_seqlens_k) fail("cu_seqlens_q/cu_seqlens_k: give both or neither");
    p.batch = int64_t(cu_seqlens_q->shape(0)) - 1;
    p.seqlen_q = max_seqlen_q;
    p.seqlen_k = max_seqlen_k;
    p.total_q = int64_t(q.shape(0));
    p.total_k = int64_t(k.shape(0));
  } else {
    p.batch = int64_t(q.shape(0));
    p.seqlen_q = int64_t(q.shape(1));
    p.seqlen_k = int64_t(k.shape(1));
  }
  p.lse = lse_data(softmax_lse);
  p.softmax_scale = float(softmax_scale);
  p.causal = causal;
  p.window_left = window_left;
  p.window_right = window_right;
  if (on_cuda(q)) p.device = q.device_id();
  Status s;
  {
    nb::gil_scoped_release release;
    s = flashcore::run(p, nullptr, reinterpret_cast<void*>(stream));
  }
  raise_if_failed(s);
}

}  // namespace

NB_MODULE(_flashcore, m) {
  m.doc() = "flashcore's C++ API over DLPack tensors (use the flashcore package, not this)";
  m.def("fwd", &fwd, nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("out"),
        nb::arg("softmax_lse").none(), nb::arg("cu_seqlens_q").none(),
        nb::arg("cu_seqlens_k").none(), nb::arg("max_seqlen_q"), nb::arg("max_seqlen_k"),
        nb::arg("softmax_scale"), nb::arg("causal"), nb::arg("window_left"),
        nb::arg("window_right"), nb::arg("stream"));
  m.def("cuda_device_count", &flashcore::cuda_device_count);
}
