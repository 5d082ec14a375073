"""The README's support table, generated: each row is what the core's query() answers for that
case on the CPU reference backend (the CUDA kernels take the same set on sm80+, except where
query names a device limit), or the ValueError the Python function raises for an option.
`python -m flashcore.support` prints it; tests/python/test_package.py checks the README's copy
is current."""

from . import _flashcore as _C
from . import interface


def _raised(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ValueError as e:
        return str(e)
    return ""


def _tiny():
    import numpy as np

    q = np.ones((1, 1, 4, 64), np.float16)
    cache = np.ones((1, 8, 2, 64), np.float16)
    return q, cache


def rows():
    """(function, case, "" if supported else the reason)."""
    fwd, kv = "flash_attn_func / _varlen_func", "flash_attn_with_kvcache"
    for dtype in ("float16", "bfloat16"):
        for d in (64, 128, 256):
            yield fwd, f"{dtype}, head_dim {d}", _C.query_forward(dtype, d, 8, 2)
    for d in (32, 96, 192):
        yield fwd, f"head_dim {d}", _C.query_forward("bfloat16", d, 8, 2)
    yield fwd, "GQA 32/8, MQA 32/1", _C.query_forward("bfloat16", 128, 32, 8) or \
        _C.query_forward("bfloat16", 128, 32, 1)
    yield fwd, "causal (bottom-right)", _C.query_forward("bfloat16", 128, 8, 8, causal=True)
    yield fwd, "sliding window", _C.query_forward("bfloat16", 128, 8, 8, window_left=16,
                                                  window_right=0)
    yield fwd, "variable length (cu_seqlens)", _C.query_forward("bfloat16", 128, 8, 8, varlen=True)
    yield fwd, "softmax_lse", _C.query_forward("bfloat16", 128, 8, 8, lse=True)
    for name, kwargs in (("dropout_p > 0", {"dropout_p": 0.1}), ("softcap > 0", {"softcap": 1.0}),
                         ("alibi_slopes", {"alibi_slopes": 1})):
        yield fwd, name, _raised(interface._unsupported, **kwargs)
    yield fwd, "block_table (varlen)", _raised(interface._unsupported, block_table=1)
    for dtype in ("float16", "bfloat16"):
        for d in (64, 128, 256):
            yield kv, f"{dtype}, head_dim {d}", _C.query_kvcache(dtype, d)
    yield kv, "paged cache (block_table)", _C.query_kvcache("bfloat16", 128, page_size=4)
    yield kv, "append k/v in place", _C.query_kvcache("bfloat16", 128, append=True, causal=True)
    yield kv, "rotary, interleaved and half-split", \
        _C.query_kvcache("bfloat16", 128, append=True, rotary_dim=128, rotary_interleaved=True) or \
        _C.query_kvcache("bfloat16", 128, append=True, rotary_dim=64)
    yield kv, "sliding window", _C.query_kvcache("bfloat16", 128, window_left=8, window_right=0)
    yield kv, "cache_leftpad", _C.query_kvcache("bfloat16", 128, append=True, leftpad=True)
    q, cache = _tiny()
    import numpy as np

    fp8, scale = np.full(cache.shape, 0x38, np.uint8), np.ones(cache.shape[2], np.float32)
    yield kv, "fp8 (e4m3) cache, k_scale/v_scale (keyword-only)", _raised(
        interface.flash_attn_with_kvcache, q, fp8, fp8.copy(), q[:, :, :2], q[:, :, :2],
        cache_seqlens=4, k_scale=scale, v_scale=scale)
    for name, kwargs in (("cache_batch_idx", {"cache_batch_idx": 1}),
                         ("num_splits > 1", {"num_splits": 2}),
                         ("softcap > 0", {"softcap": 1.0}),
                         ("alibi_slopes", {"alibi_slopes": 1})):
        yield kv, name, _raised(interface.flash_attn_with_kvcache, q, cache, cache,
                                cache_seqlens=4, **kwargs)


def table():
    lines = ["| function | case | flashcore |", "|---|---|---|"]
    for fn, case, reason in rows():
        lines.append(f"| {fn} | {case} | {'yes' if not reason else 'no: ' + reason} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
