"""FlashAttention-2 (flash-attn 2.8.3) compatible functions over flashcore's C++ core: the same
names, positional order, keyword names, defaults and return values, so switching is a change
of import. Options the core does not support raise ValueError naming the argument; nothing is
ignored. One documented difference: a query row that sees no key gets LSE -inf (as
FlashAttention-3 returns), not +inf."""

from . import _flashcore as _C
from . import _jax
from ._tensors import device_key as _device_key
from ._tensors import as_caller, capturing, empty, for_call, framework, is_jax, stream_of
from ._tensors import full_int32 as _full_int32
from ._tensors import persistent_zeros as _persistent_zeros


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


def _torch_ops(q):
    """True for torch tensors: they go through the torch.library ops (torch_ops.py), which
    torch.compile traces; everything else calls the core directly."""
    if framework(q) != "torch":
        return False
    from . import torch_ops  # noqa: F401  (registers torch.ops.flashcore.*)

    return True


def _window(window_size):
    left, right = window_size
    return int(left), int(right)


def _scale(softmax_scale):
    # The core reads 0 as 1/sqrt(head_dim), FlashAttention-2's None; a literal 0 (uniform
    # attention in FlashAttention-2) would silently mean something else.
    if softmax_scale is None:
        return 0.0
    if float(softmax_scale) == 0.0:
        raise ValueError("softmax_scale: 0 is not supported (None gives 1/sqrt(head_dim))")
    return float(softmax_scale)


def _dmask(q):
    return empty(q, (0,))


def _fwd(q, *args):
    # The per-stream workspace (below) lets the Hopper kernels split their last round of tiles.
    _run(_C.fwd, q, (q, *args), split=True)


def _run(call, q, args, split):
    """call(*args, workspace, stream, unsplit): runs at once with the stream's workspace, or
    answers the bytes its plan wants (then the workspace is grown, once, and it runs). Inside a
    CUDA-graph capture the graph's workspace for the stream is used instead (_adopt)."""
    stream = stream_of(q)
    if not split:
        call(*for_call(args, stream), None, stream, True)
        return
    key = (*_device_key(q), stream)
    in_capture = capturing(q)
    held = _graph_workspaces if in_capture else _workspaces
    need = call(*for_call((*args, held.get(key)), stream), stream, False)
    if need <= 0:
        return
    # No workspace is made inside a capture: adopt one, else run unsplit.
    ws = _adopt(key, need) if in_capture else _workspace(q, key, need)
    call(*for_call((*args, ws), stream), stream, True)


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
    left, right = _window(window_size)
    if _torch_ops(q):
        import torch

        out, lse = torch.ops.flashcore.fwd(q, k, v, softmax_scale, bool(causal), left, right)
        return (out, lse, _dmask(q)) if return_attn_probs else out
    return _flash_attn(q, k, v, softmax_scale, causal, (left, right), return_attn_probs)


def _flash_attn(q, k, v, softmax_scale, causal, window_size, return_attn_probs):
    left, right = _window(window_size)
    if is_jax(q) and _jax.available():  # an XLA custom call: GPU or host, jax.jit too
        return _jax.flash_attn(q, k, v, _scale(softmax_scale), bool(causal), left, right,
                               return_attn_probs)
    out = empty(q, tuple(q.shape))
    lse = empty(q, (q.shape[0], q.shape[2], q.shape[1]), float32=True) if return_attn_probs else None
    _fwd(q, k, v, out, lse, None, None, 0, 0, _scale(softmax_scale), bool(causal), left, right)
    out, lse = as_caller(q, out), as_caller(q, lse)
    return (out, lse, as_caller(q, _dmask(q))) if return_attn_probs else out


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
    left, right = _window(window_size)
    if _torch_ops(q):
        import torch

        out, lse = torch.ops.flashcore.varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k,
                                                   int(max_seqlen_q), int(max_seqlen_k),
                                                   softmax_scale, bool(causal), left, right)
        return (out, lse, _dmask(q)) if return_attn_probs else out
    return _flash_attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                              softmax_scale, causal, (left, right), return_attn_probs)


def _flash_attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                       softmax_scale, causal, window_size, return_attn_probs):
    left, right = _window(window_size)
    if is_jax(q) and _jax.available():  # an XLA custom call: GPU or host, jax.jit too
        return _jax.flash_attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q),
                                      int(max_seqlen_k), _scale(softmax_scale), bool(causal),
                                      left, right, return_attn_probs)
    out = empty(q, tuple(q.shape))
    lse = empty(q, (q.shape[1], q.shape[0]), float32=True) if return_attn_probs else None
    _fwd(q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k),
         _scale(softmax_scale), bool(causal), left, right)
    out, lse = as_caller(q, out), as_caller(q, lse)
    return (out, lse, as_caller(q, _dmask(q))) if return_attn_probs else out


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


# Per (framework, device): the int32 error flag every KV-cache call ORs its bits into. Per
# (framework, device, stream): the zero-filled workspace both entry points share (every call
# leaves it zeroed, flashcore.h; concurrent streams must not share one). Buffers are never
# freed: a captured CUDA graph keeps using the address it was captured with.
_flags = {}
_workspaces = {}  # eager calls', per (framework, device, stream)
_graph_workspaces = {}  # captured calls', per capturing stream (_adopt)
_retired = []


def kvcache_error_flag(like):
    """The int32 tensor of shape (1,) that flash_attn_with_kvcache calls on like's device OR
    their error bits into (flashcore/kvcache.h: 1 cache overflow, 2 block-table entry out of
    range, 4 rotary position out of range, 8 cache_leftpad out of range, 16 an fp8 cache's
    k_scale/v_scale not (finite and > 0)); 0 while every call
    stayed inside its cache. An entry with an error writes nothing to the cache and gets NaN
    output rows. The calls never read it (no host synchronisation); the caller reads it and
    clears it (flag[0] = 0). It is made on first use, which must not be inside a CUDA-graph
    capture (a captured allocation is only zeroed when the graph replays): warm up first.
    JAX cache reads, where the package has its XLA custom calls, have none (a JAX array cannot
    be written across calls): an entry with an error shows only as NaN rows. So for a JAX
    array this raises, unless a call that ran on the host path (a JAX q with torch or numpy
    caches) has made one for its device."""
    if is_jax(like) and _jax.available() and _device_key(like) not in _flags:
        raise TypeError("kvcache_error_flag: JAX cache reads are XLA custom calls with no error "
                        "flag (a JAX array cannot be written across calls); an entry with an "
                        "error gets NaN output rows")
    return _error_flag(like)


def _error_flag(like):
    key = _device_key(like)
    if key not in _flags:
        if capturing(like):
            raise RuntimeError(
                "flashcore: the first KV-cache call on a device is inside a CUDA-graph capture; "
                "call flashcore.kvcache_error_flag(q) (or run the step once) before capturing"
            )
        _flags[key] = _persistent_zeros(like, (1,), "int32")
    return _flags[key]


def _adopt(key, nbytes):
    """A capture cannot make a workspace, and torch.cuda.graph captures on a stream of its own,
    not the one the step was warmed up on: without a workspace every split call in the graph
    would run unsplit (at batch 1, a fraction of the GPU). So the capture takes over the
    device's largest eager workspace that holds nbytes (usually the warm-up stream's, grown by
    the same call). From then on it belongs to the graphs captured on that stream, never to an
    eager call: the stream it came from makes a new one when it next needs one. Graphs captured
    on one stream share it: replay them one after another, not concurrently. The buffer must be
    idle when the capture starts (torch.cuda.graph synchronizes the device first). None:
    nothing fits, the call runs unsplit."""
    free = [k for k in _workspaces if k[:-1] == key[:-1]]
    if not free:
        return None
    largest = max(free, key=lambda k: _workspaces[k].shape[0])
    if _workspaces[largest].shape[0] < nbytes:
        return None
    if key in _graph_workspaces:  # graphs captured before keep using it
        _retired.append(_graph_workspaces[key])
    _graph_workspaces[key] = _workspaces.pop(largest)
    return _graph_workspaces[key]


def _workspace(like, key, nbytes):
    """A new zero-filled workspace of nbytes for key (device and stream); the old one is kept."""
    if key in _workspaces:
        _retired.append(_workspaces[key])
    ws = _workspaces[key] = _persistent_zeros(like, (nbytes,), "uint8")
    return ws


def flash_attn_with_kvcache(
    q,
    k_cache,
    v_cache,
    k=None,
    v=None,
    rotary_cos=None,
    rotary_sin=None,
    cache_seqlens=None,
    cache_batch_idx=None,
    cache_leftpad=None,
    block_table=None,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    rotary_interleaved=True,
    alibi_slopes=None,
    num_splits=0,
    return_softmax_lse=False,
    *,
    k_scale=None,
    v_scale=None,
):
    """q (B, Sq, Hq, D); k_cache/v_cache (B, capacity, Hkv, D), or pages (num_pages, page_size,
    Hkv, D) with block_table (B, max_pages) int32. k/v (B, Sq, Hkv, D), when given, are written
    into the cache in place at cache_seqlens (rotated when rotary_cos/sin are given) before the
    attention over the updated cache. cache_seqlens: int or int32 (B,); cache_leftpad: int32
    (B,), the row each entry's keys start at. Returns out, or
    (out, softmax_lse (B, Hq, Sq) fp32). Errors on the device (overflow, bad block-table
    entries) set bits in kvcache_error_flag(q) (not for JAX cache reads: NaN rows only) and
    NaN rows, never out-of-bounds writes.

    fp8 caches (keyword-only, beyond FlashAttention-2's signature): k_cache/v_cache
    float8_e4m3fn (torch, or ml_dtypes with numpy; a uint8 view is taken as the same bytes) with
    k_scale/v_scale float32 (Hkv,) in q's memory: a stored byte means e4m3 * scale. k/v stay in
    q's dtype and are stored as e4m3(k / k_scale) (rotated first), rounded to nearest even and
    saturated at +-448. A scale that is not (finite and > 0) sets bit 16 of the error flag.
    JAX float8_e4m3fn caches (with a JAX q) are read by the XLA custom call."""
    _unsupported(softcap=softcap, alibi_slopes=alibi_slopes)
    if cache_batch_idx is not None:
        raise ValueError("cache_batch_idx: not supported by flashcore yet; must be None")
    if num_splits not in (0, 1):
        raise ValueError(
            f"num_splits: flashcore picks the split itself; 0 (automatic) or 1 (no split), "
            f"got {num_splits}"
        )
    if (k is None) != (v is None):
        raise ValueError("k/v: give both new-key tensors or neither")
    _check_fp8(q, k_cache, v_cache, k_scale, v_scale)
    if k is not None and (is_jax(k_cache) or is_jax(v_cache)):
        raise ValueError(
            "k_cache/v_cache: JAX arrays are immutable, and with k/v flashcore writes the new rows "
            "into the cache in place (as FlashAttention-2 does); write them with .at[].set and "
            "call without k/v, or pass torch/numpy caches"
        )
    if (rotary_cos is not None or rotary_sin is not None) and k is None:
        raise ValueError("rotary_cos/rotary_sin: rotary needs the new k and v (as in "
                         "FlashAttention-2); q alone is not rotated")
    batch = q.shape[0]
    if cache_seqlens is None:
        if k is not None:
            raise ValueError("cache_seqlens: required when k/v are appended")
        rows = (block_table.shape[1] * k_cache.shape[1]) if block_table is not None else k_cache.shape[1]
        cache_seqlens = rows
    left, right = _window(window_size)
    if k is None and all(map(is_jax, (q, k_cache, v_cache))) and _jax.available():
        # An XLA custom call: GPU or host, jax.jit too.
        return _jax.with_kvcache(q, k_cache, v_cache, cache_seqlens, cache_leftpad, block_table,
                                 _scale(softmax_scale), causal, left, right, num_splits == 0,
                                 return_softmax_lse, k_scale, v_scale)
    if isinstance(cache_seqlens, int):
        cache_seqlens = _full_int32(q, batch, cache_seqlens)
    if _torch_ops(q):
        import torch

        if k is None:
            out, lse = torch.ops.flashcore.kvcache_read(q, k_cache, v_cache, cache_seqlens,
                                                        cache_leftpad, block_table, softmax_scale,
                                                        bool(causal), left, right, num_splits == 0,
                                                        k_scale, v_scale)
        else:
            out, lse = torch.ops.flashcore.kvcache(q, k_cache, v_cache, k, v, rotary_cos,
                                                   rotary_sin, cache_seqlens, cache_leftpad,
                                                   block_table, softmax_scale, bool(causal), left,
                                                   right, bool(rotary_interleaved), num_splits == 0,
                                                   k_scale, v_scale)
        return (out, lse) if return_softmax_lse else out
    out, lse = _with_kvcache(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens,
                             cache_leftpad, block_table, softmax_scale, causal, (left, right),
                             rotary_interleaved, num_splits == 0, return_softmax_lse, k_scale,
                             v_scale)
    return (out, lse) if return_softmax_lse else out


def _check_fp8(q, k_cache, v_cache, k_scale, v_scale):
    """The ValueErrors about fp8 caches that the core cannot give (it sees their bytes only),
    and the scales' both-or-neither for every path."""
    fp8 = k_scale is not None or v_scale is not None
    if fp8 and (k_scale is None or v_scale is None):
        raise ValueError("k_scale/v_scale: give both or neither")
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        dtype = str(getattr(cache, "dtype", ""))
        if "float8" in dtype and not dtype.endswith("float8_e4m3fn"):
            raise ValueError(f"{name}: dtype {dtype} is not supported; an fp8 cache must be "
                             f"float8_e4m3fn")
        if is_jax(cache) and (fp8 or "float8" in dtype) and not (
                all(map(is_jax, (q, k_cache, v_cache))) and _jax.available()):
            raise ValueError(f"{name}: fp8 JAX caches run as the package's XLA custom call only: "
                             f"with a JAX q and both caches JAX arrays, in a package built with "
                             f"jax")
    for name, scale in (("k_scale", k_scale), ("v_scale", v_scale)):
        if scale is None:
            continue
        if not hasattr(scale, "__dlpack__") or (framework(q) == "torch") != (framework(scale) == "torch"):
            raise ValueError(f"{name}: must be a float32 (num_heads_kv,) array in q's memory (a "
                             f"torch tensor where q is one; got {type(scale).__name__})")


def _fp8_bytes(cache):
    """An fp8 (e4m3) cache as the uint8 view the core takes (the same memory): DLPack
    exporters do not agree on fp8 types. Other caches as they are."""
    if str(getattr(cache, "dtype", "")).endswith("float8_e4m3fn"):
        fw = framework(cache)
        if fw == "torch":
            import torch

            return cache.view(torch.uint8)
        if fw == "numpy":
            import numpy

            return cache.view(numpy.uint8)
    return cache


def _with_kvcache(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens,
                  cache_leftpad, block_table, softmax_scale, causal, window_size,
                  rotary_interleaved, split, return_lse, k_scale=None, v_scale=None):
    batch = q.shape[0]
    out = empty(q, tuple(q.shape))
    lse = empty(q, (batch, q.shape[2], q.shape[1]), float32=True) if return_lse else None
    left, right = _window(window_size)
    args = (q, _fp8_bytes(k_cache), _fp8_bytes(v_cache), out, k, v, cache_seqlens, cache_leftpad,
            block_table, rotary_cos, rotary_sin, bool(rotary_interleaved), lse,
            _scale(softmax_scale), bool(causal), left, right, _error_flag(q), k_scale, v_scale)
    _run(_C.kvcache, q, args, split)
    return as_caller(q, out), as_caller(q, lse)
