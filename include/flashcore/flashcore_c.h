/* flashcore C ABI: a thin wrapper of flashcore::run / flashcore::query for FFI users (ctypes,
 * cffi). Plain C, no allocation; the struct mirrors flashcore::AttentionParams field by field. */
#ifndef FLASHCORE_FLASHCORE_C_H_
#define FLASHCORE_FLASHCORE_C_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FLASHCORE_C_API __attribute__((visibility("default")))

/* Return values: flashcore::StatusCode (0 ok, 1 invalid argument, 2 not supported, 3 CUDA error),
 * or FLASHCORE_C_INTERNAL_ERROR when an unexpected C++ exception was caught. */
#define FLASHCORE_C_INTERNAL_ERROR (-1)

/* Strides are in elements, in the order {batch, seq, head}; head_dim is contiguous. */
typedef struct flashcore_fwd_args {
  const void* q; /* [B, Sq, Hq, D] or packed [total_q, Hq, D] */
  const void* k; /* [B, Sk, Hkv, D] or packed [total_k, Hkv, D] */
  const void* v; /* like k */
  void* o;       /* like q */
  int64_t q_strides[3];
  int64_t k_strides[3];
  int64_t v_strides[3];
  int64_t o_strides[3];
  float* lse;    /* optional fp32 [B, Hq, Sq] (varlen: [Hq, total_q]); NULL: not written */
  int32_t dtype; /* 0 = fp16, 1 = bf16 */
  int64_t batch;
  int64_t seqlen_q; /* varlen: max_seqlen_q */
  int64_t seqlen_k; /* varlen: max_seqlen_k */
  int64_t num_heads_q;
  int64_t num_heads_kv;
  int64_t head_dim;
  const int32_t* cu_seqlens_q; /* varlen: batch + 1 prefix sums, or NULL (both or neither) */
  const int32_t* cu_seqlens_k;
  float softmax_scale; /* 0: 1/sqrt(head_dim) */
  int32_t causal;      /* nonzero: causal (bottom-right aligned) */
  int64_t window_left; /* -1: unbounded */
  int64_t window_right;
  int32_t backend; /* 0 = auto, 1 = CPU reference, 2 = CUDA */
  int32_t device;  /* CUDA device ordinal; -1: the current device */
  int32_t family;  /* 0 = auto, 1 = Hopper kernels, 2 = portable kernels */
  int64_t total_q; /* varlen, optional: rows of packed q and k/v (0: unknown) */
  int64_t total_k;
  void* workspace; /* optional: flashcore_workspace_size bytes of zero-filled device memory
                    * (see flashcore::run), or NULL */
} flashcore_fwd_args;

/* sizeof(flashcore_fwd_args) as compiled into the library, for FFI mirrors to check. */
FLASHCORE_C_API size_t flashcore_fwd_args_size(void);

/* Runs forward attention on stream (a cudaStream_t; NULL: the legacy default stream). The
 * status message, or "" on success, is copied into err_buf (truncated, NUL-terminated) when
 * err_buf is not NULL and err_len > 0. */
FLASHCORE_C_API int flashcore_fwd(const flashcore_fwd_args* args, void* stream, char* err_buf,
                                  size_t err_len);

/* Bytes of workspace flashcore_fwd can use for args (0: none, or args not valid). */
FLASHCORE_C_API int64_t flashcore_workspace_size(const flashcore_fwd_args* args);

/* Validates and plans without running: on success copies the kernel name flashcore_fwd would
 * launch into name_buf (truncated, NUL-terminated). Same return value and err_buf as above. */
FLASHCORE_C_API int flashcore_query_kernel(const flashcore_fwd_args* args, char* name_buf,
                                           size_t name_len, char* err_buf, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif /* FLASHCORE_FLASHCORE_C_H_ */
