// The C ABI of include/flashcore/flashcore_c.h: converts flashcore_fwd_args to AttentionParams
// and forwards to run()/query(). No exception crosses the boundary.
#include <cstring>
#include <exception>
#include <string>

#include "flashcore/flashcore.h"
#include "flashcore/flashcore_c.h"

namespace {

using flashcore::AttentionParams;

void copy_out(const std::string& s, char* buf, size_t len) {
  if (buf == nullptr || len == 0) return;
  const size_t n = s.size() < len - 1 ? s.size() : len - 1;
  std::memcpy(buf, s.data(), n);
  buf[n] = '\0';
}

flashcore::Strides strides(const int64_t s[3]) { return {s[0], s[1], s[2]}; }

AttentionParams to_params(const flashcore_fwd_args& a) {
  AttentionParams p;
  p.q = a.q;
  p.k = a.k;
  p.v = a.v;
  p.o = a.o;
  p.q_strides = strides(a.q_strides);
  p.k_strides = strides(a.k_strides);
  p.v_strides = strides(a.v_strides);
  p.o_strides = strides(a.o_strides);
  p.lse = a.lse;
  p.dtype = static_cast<flashcore::DType>(a.dtype);  // out-of-range values fail validation
  p.batch = a.batch;
  p.seqlen_q = a.seqlen_q;
  p.seqlen_k = a.seqlen_k;
  p.num_heads_q = a.num_heads_q;
  p.num_heads_kv = a.num_heads_kv;
  p.head_dim = a.head_dim;
  p.cu_seqlens_q = a.cu_seqlens_q;
  p.cu_seqlens_k = a.cu_seqlens_k;
  p.softmax_scale = a.softmax_scale;
  p.causal = a.causal != 0;
  p.window_left = a.window_left;
  p.window_right = a.window_right;
  p.backend = static_cast<flashcore::Backend>(a.backend);
  p.device = a.device;
  p.family = static_cast<flashcore::KernelFamily>(a.family);
  p.total_q = a.total_q;
  p.total_k = a.total_k;
  return p;
}

// Runs f (returning a Status) with the null check and exception guard every entry point needs.
template <typename F>
int guarded(const flashcore_fwd_args* args, char* err_buf, size_t err_len, F f) {
  if (args == nullptr) {
    copy_out("args: must not be null", err_buf, err_len);
    return static_cast<int>(flashcore::StatusCode::kInvalidArgument);
  }
  try {
    const flashcore::Status st = f(to_params(*args));
    copy_out(st.message, err_buf, err_len);
    return static_cast<int>(st.code);
  } catch (const std::exception& e) {
    copy_out(std::string("internal error: ") + e.what(), err_buf, err_len);
  } catch (...) {
    copy_out("internal error: unknown exception", err_buf, err_len);
  }
  return FLASHCORE_C_INTERNAL_ERROR;
}

}  // namespace

extern "C" {

FLASHCORE_C_API size_t flashcore_fwd_args_size(void) { return sizeof(flashcore_fwd_args); }

FLASHCORE_C_API int flashcore_fwd(const flashcore_fwd_args* args, void* stream, char* err_buf,
                                  size_t err_len) {
  return guarded(args, err_buf, err_len,
                 [&](const AttentionParams& p) { return flashcore::run(p, args->workspace, stream); });
}

FLASHCORE_C_API int64_t flashcore_workspace_size(const flashcore_fwd_args* args) {
  if (args == nullptr) return 0;
  try {
    return flashcore::workspace_size(to_params(*args));
  } catch (...) {
    return 0;
  }
}

FLASHCORE_C_API int flashcore_query_kernel(const flashcore_fwd_args* args, char* name_buf,
                                           size_t name_len, char* err_buf, size_t err_len) {
  copy_out("", name_buf, name_len);
  return guarded(args, err_buf, err_len, [&](const AttentionParams& p) {
    const flashcore::Plan plan = flashcore::query(p);
    if (plan.status.ok()) copy_out(plan.kernel, name_buf, name_len);
    return plan.status;
  });
}

}  // extern "C"
