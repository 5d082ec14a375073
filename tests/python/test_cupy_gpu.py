"""CuPy arrays through the DLPack path on the GPU: outputs come back as CuPy arrays on the
input's device, the call runs on CuPy's current stream, the cache is written in place, the
error flag is a CuPy array, and a decode step captured in a CuPy CUDA graph replays while
cache_seqlens changes. References: the float64 numpy attention. CuPy has no bfloat16, so fp16.
Skipped without CuPy or a CUDA device."""

import numpy as np
import pytest

cp = pytest.importorskip("cupy")
try:
    cp.cuda.runtime.getDeviceCount()
except cp.cuda.runtime.CUDARuntimeError:
    pytest.skip("no CUDA device", allow_module_level=True)
import flashcore  # noqa: E402
from references import attention  # noqa: E402


def randn(rng, *shape):
    return cp.asarray(rng.standard_normal(shape), dtype=cp.float16)


def close(got, want):
    np.testing.assert_allclose(cp.asnumpy(got).astype(np.float64), want, atol=2e-2, rtol=2e-2)


def test_flash_attn_func_on_a_side_stream():
    rng = np.random.default_rng(0)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        q, k, v = randn(rng, 2, 77, 8, 128), randn(rng, 2, 300, 2, 128), randn(rng, 2, 300, 2, 128)
        assert flashcore._tensors.stream_of(q) == stream.ptr
        out, lse, _ = flashcore.flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    stream.synchronize()
    assert isinstance(out, cp.ndarray) and isinstance(lse, cp.ndarray)
    assert out.dtype == cp.float16 and lse.dtype == cp.float32 and lse.shape == (2, 8, 77)
    assert out.device.id == q.device.id
    for b in range(2):
        want_o, want_lse = attention(cp.asnumpy(q[b]), cp.asnumpy(k[b]), cp.asnumpy(v[b]), True)
        close(out[b], want_o)
        np.testing.assert_allclose(cp.asnumpy(lse[b]), want_lse, atol=1e-3, rtol=1e-3)


def test_varlen_with_cupy_cu_seqlens():
    rng = np.random.default_rng(1)
    cu_q = cp.asarray([0, 5, 135], dtype=cp.int32)
    cu_k = cp.asarray([0, 9, 209], dtype=cp.int32)
    q, k, v = randn(rng, 135, 4, 64), randn(rng, 209, 4, 64), randn(rng, 209, 4, 64)
    out = flashcore.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 130, 200, causal=True)
    assert isinstance(out, cp.ndarray) and out.shape == q.shape
    for sq, sk in ((slice(0, 5), slice(0, 9)), (slice(5, 135), slice(9, 209))):
        want, _ = attention(cp.asnumpy(q[sq]), cp.asnumpy(k[sk]), cp.asnumpy(v[sk]), True)
        close(out[sq], want)


def test_with_kvcache_appends_in_place_and_flags_overflow():
    rng = np.random.default_rng(2)
    b, hq, hkv, d, cap = 2, 8, 2, 128, 256
    k_cache, v_cache = randn(rng, b, cap, hkv, d), randn(rng, b, cap, hkv, d)
    q, kn, vn = randn(rng, b, 3, hq, d), randn(rng, b, 3, hkv, d), randn(rng, b, 3, hkv, d)
    lens = cp.asarray([40, 200], dtype=cp.int32)
    before_k = cp.asnumpy(k_cache)
    flag = flashcore.kvcache_error_flag(q)
    assert isinstance(flag, cp.ndarray)
    flag[0] = 0
    out = flashcore.flash_attn_with_kvcache(q, k_cache, v_cache, kn, vn, cache_seqlens=lens,
                                            causal=True)
    cp.cuda.get_current_stream().synchronize()
    assert int(flag[0]) == 0
    for e, n in enumerate((40, 200)):
        np.testing.assert_array_equal(cp.asnumpy(k_cache[e, n:n + 3]), cp.asnumpy(kn[e]))
        np.testing.assert_array_equal(cp.asnumpy(k_cache[e, :n]), before_k[e, :n])
        want, _ = attention(cp.asnumpy(q[e]), cp.asnumpy(k_cache[e, :n + 3]),
                            cp.asnumpy(v_cache[e, :n + 3]), True)
        close(out[e], want)
    lens[1] = cap - 1  # 3 new tokens do not fit
    out = flashcore.flash_attn_with_kvcache(q, k_cache, v_cache, kn, vn, cache_seqlens=lens,
                                            causal=True)
    cp.cuda.get_current_stream().synchronize()
    assert int(flag[0]) & 1
    assert cp.isnan(out[1]).all() and not cp.isnan(out[0]).any()


def test_decode_step_in_a_cupy_graph_replays_while_cache_seqlens_change():
    rng = np.random.default_rng(3)
    b, hq, hkv, d, cap = 1, 32, 8, 128, 8192  # batch 1: a split call, its workspace adopted
    k_cache, v_cache = randn(rng, b, cap, hkv, d), randn(rng, b, cap, hkv, d)
    q, kn, vn = randn(rng, b, 1, hq, d), randn(rng, b, 1, hkv, d), randn(rng, b, 1, hkv, d)
    lens = cp.asarray([5000], dtype=cp.int32)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        flashcore.kvcache_error_flag(q)[0] = 0
        step = lambda: flashcore.flash_attn_with_kvcache(  # noqa: E731
            q, k_cache, v_cache, kn, vn, cache_seqlens=lens, causal=True)
        step()  # warm-up: the workspace and the flag exist before the capture
        stream.begin_capture()
        out = step()
        graph = stream.end_capture()
        for n in (5001, 6000, 7999):
            lens[0] = n
            q[...], kn[...] = randn(rng, b, 1, hq, d), randn(rng, b, 1, hkv, d)
            graph.launch(stream)
            stream.synchronize()
            np.testing.assert_array_equal(cp.asnumpy(k_cache[0, n]), cp.asnumpy(kn[0, 0]))
            want, _ = attention(cp.asnumpy(q[0]), cp.asnumpy(k_cache[0, :n + 1]),
                                cp.asnumpy(v_cache[0, :n + 1]), True)
            close(out[0], want)
        assert int(flashcore.kvcache_error_flag(q)[0]) == 0
