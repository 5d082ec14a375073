"""FlashAttention-2 (flash-attn 2.8.3) compatible functions over flashcore's C++ core: the same
names, positional order, keyword names, defaults and return values, so switching is a change
of import. Options the core does not support raise ValueError naming the argument; nothing is
ignored. One documented difference: a query row that sees no key gets LSE -inf (as
FlashAttention-3 returns), not +inf."""

from . import _flashcore as _C
from ._tensors import empty, stream_of


def _unsupported(dropout_p=0.0, softcap=0.0, alibi_slopes=None, block_table=None):
    if dropout_p != 0.0:
        raise ValueError(f"dropout_p: flashcore has no dropout; must be 0.0 (got {dropout_p})")
    if softcap != 0.0:
        raise ValueError(f"softcap: not supported by flashcore yet; must be 0.0 (got {softcap})")
    if alibi_slopes is not None:
        raise ValueError("alibi_slopes: not supported by flashcore yet; must be None")
    if block_table is not None:
        raise ValueError(
            "block_table: not supported in flash_attn_varlen_func by flashcore yet; paged caches "
            "are served by flash_attn_with_kvcache"
        )


def _window(window_size):
    left, right = window_size
    return int(left), int(right)


def _scale(softmax_scale):
    # 0 selects 1/sqrt(head_dim) in the core, as None does in FlashAttention-2.
    return 0.0 if softmax_scale is None else float(softmax_scale)


def _dmask(q):
    return empty(q, (0,))


def flash_attn_func(
    q,
    k,
    v,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """q (B, Sq, Hq, D), k/v (B, Sk, Hkv, D). Returns out (B, Sq, Hq, D), or
    (out, softmax_lse (B, Hq, Sq) fp32, S_dmask (empty)) with return_attn_probs."""
    _unsupported(dropout_p, softcap, alibi_slopes)
    out = empty(q, tuple(q.shape))
    lse = empty(q, (q.shape[0], q.shape[2], q.shape[1]), float32=True) if return_attn_probs else None
    left, right = _window(window_size)
    _C.fwd(q, k, v, out, lse, None, None, 0, 0, _scale(softmax_scale), bool(causal), left, right,
           stream_of(q))
    return (out, lse, _dmask(q)) if return_attn_probs else out


def flash_attn_varlen_func(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
    block_table=None,
):
    """Packed q (total_q, Hq, D), k/v (total_k, Hkv, D), int32 cu_seqlens (B + 1). Returns out,
    or (out, softmax_lse (Hq, total_q) fp32, S_dmask (empty)) with return_attn_probs."""
    _unsupported(dropout_p, softcap, alibi_slopes, block_table)
    out = empty(q, tuple(q.shape))
    lse = empty(q, (q.shape[1], q.shape[0]), float32=True) if return_attn_probs else None
    left, right = _window(window_size)
    _C.fwd(q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k),
           _scale(softmax_scale), bool(causal), left, right, stream_of(q))
    return (out, lse, _dmask(q)) if return_attn_probs else out


def flash_attn_qkvpacked_func(
    qkv,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """qkv (B, S, 3, H, D): flash_attn_func on its three views."""
    return flash_attn_func(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], dropout_p, softmax_scale,
                           causal, window_size, softcap, alibi_slopes, deterministic,
                           return_attn_probs)


def flash_attn_kvpacked_func(
    q,
    kv,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """kv (B, Sk, 2, Hkv, D): flash_attn_func on its two views."""
    return flash_attn_func(q, kv[:, :, 0], kv[:, :, 1], dropout_p, softmax_scale, causal,
                           window_size, softcap, alibi_slopes, deterministic, return_attn_probs)


def flash_attn_varlen_qkvpacked_func(
    qkv,
    cu_seqlens,
    max_seqlen,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """qkv (total, 3, H, D): flash_attn_varlen_func on its three views."""
    return flash_attn_varlen_func(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu_seqlens, cu_seqlens,
                                  max_seqlen, max_seqlen, dropout_p, softmax_scale, causal,
                                  window_size, softcap, alibi_slopes, deterministic,
                                  return_attn_probs)


def flash_attn_varlen_kvpacked_func(
    q,
    kv,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """kv (total_k, 2, Hkv, D): flash_attn_varlen_func on its two views."""
    return flash_attn_varlen_func(q, kv[:, 0], kv[:, 1], cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                  max_seqlen_k, dropout_p, softmax_scale, causal, window_size,
                                  softcap, alibi_slopes, deterministic, return_attn_probs)
