"""flash_attn_func, flash_attn_varlen_func and flash_attn_with_kvcache's cache read on JAX
arrays as XLA custom calls (python/src/jax_ffi.cpp, jax_ffi_kvcache.cpp): XLA allocates the
outputs and hands over its own stream, so they run on the GPU and the host (the CPU
reference), eagerly and under jax.jit. The package has them where jax was installed when it
was built; otherwise JAX arrays take the host-only path of _tensors.py.

Shape and dtype rules are checked here, when the call is traced, and the problem's rules by the
core's query (the same messages as every other path), so bad input raises ValueError before
XLA runs anything. softmax_scale, window_size and max_seqlen_q/k are Python numbers (static
under jax.jit), as FlashAttention-2 takes them. A problem the GPU has no kernel for fails when
it runs (XLA's error, with the core's message)."""

from . import _flashcore as _C

_registered = False


def available():
    return hasattr(_C, "jax_ffi_targets")


def _register():
    global _registered
    if _registered:
        return
    import jax

    for name, platforms in _C.jax_ffi_targets().items():
        for platform, capsule in platforms.items():
            jax.ffi.register_ffi_target(name, capsule, platform=platform)
    _registered = True


def _check_arrays(q, k, v, scale, varlen=False, names=("q", "k", "v"), same_batch=True,
                  fp8=False):
    """Ranks, dtypes (fp8: k and v float8_e4m3fn), v shaped as k, head_dim (and batch, with
    same_batch) and group against q, the float32 scale; returns the dtype's name."""
    import jax.numpy as jnp
    import numpy as np

    rank = 3 if varlen else 4
    dims = "(total, heads, head_dim)" if varlen else "(batch, seqlen, heads, head_dim)"
    for name, x in zip(names, (q, k, v)):
        if not (hasattr(x, "shape") and hasattr(x, "dtype")):
            raise ValueError(f"{name}: must be an array (got {type(x).__name__})")
        if len(x.shape) != rank:
            raise ValueError(f"{name}: must have {rank} dimensions {dims} (got {tuple(x.shape)})")
    if q.dtype not in (jnp.float16, jnp.bfloat16):
        raise ValueError(f"q: dtype must be float16 or bfloat16 (got {q.dtype})")
    if fp8:
        if k.dtype != jnp.float8_e4m3fn or v.dtype != jnp.float8_e4m3fn:
            raise ValueError(f"{names[1]}/{names[2]}: with k_scale/v_scale the caches must be "
                             f"float8_e4m3fn (got {k.dtype}, {v.dtype})")
    elif k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"{names[1]}/{names[2]}: " + (
            "an fp8 cache needs k_scale and v_scale (float32, one per kv head)"
            if "float8" in str(k.dtype) + str(v.dtype) else "dtype must match q's"))
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"{names[2]}: shape must be {names[1]}'s {tuple(k.shape)} (got "
                         f"{tuple(v.shape)})")
    if k.shape[-1] != q.shape[-1] or (same_batch and k.shape[0] != q.shape[0]):
        raise ValueError(f"{names[1]}: batch and head_dim must be q's (q {tuple(q.shape)}, "
                         f"{names[1]} {tuple(k.shape)})")
    hq, hkv = q.shape[-2], k.shape[-2]
    if hkv < 1 or hq % hkv:
        raise ValueError(f"num_heads_q: must be a multiple of num_heads_kv (got {hq} and {hkv})")
    s32 = np.float32(scale)  # what the custom call receives
    if not (np.isfinite(s32) and s32 >= 0 and (s32 > 0 or scale == 0)):
        raise ValueError(f"softmax_scale: must be finite and >= 0 in float32, where 0 selects "
                         f"1/sqrt(head_dim) (got {scale})")
    if not 1 <= q.shape[-1] <= 512:
        raise ValueError(f"head_dim: must be 1-512 (got {q.shape[-1]})")
    return "float16" if q.dtype == jnp.float16 else "bfloat16"


def _check(q, k, v, scale, causal, left, right, varlen=False):
    dtype = _check_arrays(q, k, v, scale, varlen, same_batch=not varlen)
    # The core's rules for the rest (head_dim, windows), on a stand-in of the same group size.
    group = q.shape[-2] // k.shape[-2]
    message = _C.query_forward(dtype, q.shape[-1], min(group, 32), 1, causal, left, right,
                               varlen=varlen, lse=True)
    if message:
        raise ValueError(message)


def _int32_array(name, x, batch, rank=1):
    import jax.numpy as jnp

    if (not hasattr(x, "dtype") or x.dtype != jnp.int32 or len(x.shape) != rank
            or x.shape[0] != batch):
        shape = "(batch,)" if rank == 1 else "(batch, max_pages)"
        got = f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}"
        raise ValueError(f"{name}: must be an int32 array {shape} with batch = {batch} (got "
                         f"{got})")


def _call(target, q, lse_shape, args, softmax_scale, causal, left, right, return_attn_probs,
          dmask=True, **attrs):
    """Runs the custom call `target` on args: out shaped as q, fp32 lse of lse_shape; returns
    out, or (out, lse, S_dmask (empty)) as FlashAttention-2 does ((out, lse) without dmask)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    _register()
    call = jax.ffi.ffi_call(
        target,
        (jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct(lse_shape, jnp.float32)),
        vmap_method="sequential",
    )
    out, lse = call(*args, softmax_scale=np.float32(softmax_scale), causal=bool(causal),
                    window_left=np.int64(left), window_right=np.int64(right), **attrs)
    if not return_attn_probs:
        return out
    return (out, lse, jnp.zeros((0,), dtype=q.dtype)) if dmask else (out, lse)


def flash_attn(q, k, v, softmax_scale, causal, left, right, return_attn_probs):
    _check(q, k, v, softmax_scale, bool(causal), left, right)
    b, sq, hq, _ = q.shape
    return _call("flashcore_fwd", q, (b, hq, sq), (q, k, v), softmax_scale, causal, left, right,
                 return_attn_probs)


def flash_attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                      softmax_scale, causal, left, right, return_attn_probs):
    import jax.numpy as jnp
    import numpy as np

    _check(q, k, v, softmax_scale, bool(causal), left, right, varlen=True)
    for name, x in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if (not hasattr(x, "dtype") or x.dtype != jnp.int32 or len(x.shape) != 1
                or x.shape[0] < 1):
            raise ValueError(f"{name}: must be a 1-d int32 array (batch + 1)")
    for name, m in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if not 0 <= m < 2**31:
            raise ValueError(f"{name}: must be in [0, 2^31) (got {m})")
    if cu_seqlens_k.shape != cu_seqlens_q.shape:
        raise ValueError("cu_seqlens_k: must have cu_seqlens_q's length (batch + 1)")
    return _call("flashcore_varlen_fwd", q, (q.shape[1], q.shape[0]),
                 (q, k, v, cu_seqlens_q, cu_seqlens_k), softmax_scale, causal, left, right,
                 return_attn_probs, max_seqlen_q=np.int64(max_seqlen_q),
                 max_seqlen_k=np.int64(max_seqlen_k))


def with_kvcache(q, k_cache, v_cache, cache_seqlens, cache_leftpad, block_table, softmax_scale,
                 causal, left, right, split, return_softmax_lse, k_scale=None, v_scale=None):
    """The cache read (no append): caches (B, capacity, Hkv, D), or pages (num_pages,
    page_size, Hkv, D) with block_table; cache_seqlens an int or int32 (B,); fp8 caches
    (float8_e4m3fn) with k_scale/v_scale float32 (Hkv,). An entry with an error (cache_seqlens
    past the capacity, a bad block-table entry or left pad, a scale not (finite and > 0)) gets
    NaN rows: the custom call has no error flag to OR into (a JAX array cannot be written
    across calls)."""
    import jax.numpy as jnp
    import numpy as np

    paged = block_table is not None
    fp8 = k_scale is not None  # both or neither: interface._check_fp8
    dtype = _check_arrays(q, k_cache, v_cache, softmax_scale, names=("q", "k_cache", "v_cache"),
                          same_batch=not paged, fp8=fp8)
    scales = [jnp.zeros((0,), jnp.float32)] * 2
    if fp8:
        hkv = k_cache.shape[-2]
        for name, x in (("k_scale", k_scale), ("v_scale", v_scale)):
            # Checked before jnp.asarray, which would make float64 float32 (x64 off).
            if getattr(x, "dtype", None) != np.float32 or tuple(getattr(x, "shape", ())) != (hkv,):
                raise ValueError(f"{name}: must be float32 (num_heads_kv,) = ({hkv},) (got "
                                 f"{getattr(x, 'dtype', type(x).__name__)} "
                                 f"{tuple(getattr(x, 'shape', ()))})")
            devices = getattr(x, "devices", None)
            if callable(devices) and callable(getattr(q, "devices", None)):
                try:
                    same = devices() == q.devices()
                except Exception:  # a tracer under jit has no devices: XLA places it
                    same = True
                if not same:
                    raise ValueError(f"{name}: must be on q's device")
        scales = [jnp.asarray(k_scale), jnp.asarray(v_scale)]
    batch = q.shape[0]
    if isinstance(cache_seqlens, (int, np.integer)):
        cache_seqlens = jnp.full((batch,), int(cache_seqlens), jnp.int32)  # placed with q
    _int32_array("cache_seqlens", cache_seqlens, batch)
    if cache_leftpad is not None:
        _int32_array("cache_leftpad", cache_leftpad, batch)
    if paged:
        _int32_array("block_table", block_table, batch, rank=2)
        if k_cache.shape[1] < 1 or block_table.shape[1] < 1:
            raise ValueError(f"k_cache/block_table: a paged cache needs page_size >= 1 and at "
                             f"least one page a sequence (got page_size {k_cache.shape[1]}, "
                             f"block_table {tuple(block_table.shape)})")
    message = _C.query_kvcache(dtype, q.shape[-1], k_cache.shape[1] if paged else 0, False, 0,
                               True, bool(causal), left, right, cache_leftpad is not None)
    if message:
        raise ValueError(message)
    b, sq, hq, _ = q.shape
    return _call("flashcore_kvcache", q, (b, hq, sq),
                 (q, k_cache, v_cache, cache_seqlens,
                  jnp.zeros((0,), jnp.int32) if cache_leftpad is None else cache_leftpad,
                  jnp.zeros((0, 0), jnp.int32) if block_table is None else block_table,
                  *scales),
                 softmax_scale, causal, left, right, return_softmax_lse, dmask=False,
                 has_leftpad=cache_leftpad is not None, paged=paged, split=bool(split), fp8=fp8)
