"""The flashcore Python package on the CPU reference backend (numpy float16 arrays): the
FlashAttention-2 2.8.3 signatures, results against a float64 numpy reference, the packed
forms, and ValueError for every option the core does not support. scripts/test installs the
package (pip install python/) before running these."""

import inspect
import os

# JAX (imported by the tests that use it) would otherwise take most of a GPU's memory at once.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import numpy as np
import pytest

import flashcore
from references import attention as reference

# flash-attn 2.8.3, flash_attn/flash_attn_interface.py: parameter lists, defaults included.
FA2_SIGNATURES = {
    "flash_attn_func": "(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, "
    "window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False, "
    "return_attn_probs=False)",
    "flash_attn_varlen_func": "(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, "
    "dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, "
    "alibi_slopes=None, deterministic=False, return_attn_probs=False, block_table=None)",
    "flash_attn_qkvpacked_func": "(qkv, dropout_p=0.0, softmax_scale=None, causal=False, "
    "window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False, "
    "return_attn_probs=False)",
    "flash_attn_kvpacked_func": "(q, kv, dropout_p=0.0, softmax_scale=None, causal=False, "
    "window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False, "
    "return_attn_probs=False)",
    "flash_attn_varlen_qkvpacked_func": "(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, "
    "softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None, "
    "deterministic=False, return_attn_probs=False)",
    "flash_attn_varlen_kvpacked_func": "(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, "
    "max_seqlen_k, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), "
    "softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False)",
}


@pytest.mark.parametrize("name", sorted(FA2_SIGNATURES))
def test_signature_is_flash_attn_2_8_3(name):
    assert str(inspect.signature(getattr(flashcore, name))) == FA2_SIGNATURES[name]


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float16)


def assert_close(out, ref, lse=None, ref_lse=None):
    np.testing.assert_allclose(out.astype(np.float64), ref, atol=4e-3, rtol=4e-3)
    if lse is not None:
        np.testing.assert_array_equal(np.isinf(lse), np.isinf(ref_lse))
        finite = np.isfinite(ref_lse)
        np.testing.assert_allclose(lse[finite], ref_lse[finite], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("causal,window", [(False, (-1, -1)), (True, (-1, -1)), (False, (7, 3))])
def test_flash_attn_func_matches_reference(d, causal, window):
    rng = np.random.default_rng(d)
    q, k, v = randn(rng, 2, 19, 4, d), randn(rng, 2, 33, 2, d), randn(rng, 2, 33, 2, d)
    out, lse, s_dmask = flashcore.flash_attn_func(q, k, v, causal=causal, window_size=window,
                                                  return_attn_probs=True)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == (2, 4, 19) and lse.dtype == np.float32
    assert s_dmask.size == 0
    for b in range(2):
        ref, ref_lse = reference(q[b], k[b], v[b], causal, window)
        assert_close(out[b], ref, lse[b], ref_lse)


def test_rows_that_see_no_key_get_zero_and_lse_minus_inf():
    rng = np.random.default_rng(1)
    q, k, v = randn(rng, 1, 8, 2, 64), randn(rng, 1, 3, 2, 64), randn(rng, 1, 3, 2, 64)
    out, lse, _ = flashcore.flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    # Bottom-right causal with Sq > Sk: rows 0..4 see no key (FlashAttention-3's -inf).
    assert np.all(out[0, :5] == 0) and np.all(np.isneginf(lse[0, :, :5]))
    ref, ref_lse = reference(q[0], k[0], v[0], causal=True)
    assert_close(out[0], ref, lse[0], ref_lse)


def test_softmax_scale_is_used():
    rng = np.random.default_rng(2)
    q, k, v = randn(rng, 1, 5, 2, 64), randn(rng, 1, 9, 2, 64), randn(rng, 1, 9, 2, 64)
    out = flashcore.flash_attn_func(q, k, v, softmax_scale=0.3)
    assert_close(out[0], reference(q[0], k[0], v[0], scale=0.3)[0])


def test_varlen_matches_each_sequence():
    """Packed q ends in 3 padding rows past the last sequence (cu_seqlens_q[-1] < q.shape[0]):
    lse is (Hq, q.shape[0]) as in FlashAttention-2, so every head's row stride is q.shape[0]."""
    rng = np.random.default_rng(3)
    lq, lk = [5, 1, 12], [9, 4, 12]
    cu_q = np.array([0, *np.cumsum(lq)], np.int32)
    cu_k = np.array([0, *np.cumsum(lk)], np.int32)
    q = randn(rng, sum(lq) + 3, 4, 64)
    k, v = randn(rng, sum(lk), 1, 64), randn(rng, sum(lk), 1, 64)
    out, lse, _ = flashcore.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lq), max(lk),
                                                   causal=True, return_attn_probs=True)
    assert lse.shape == (4, sum(lq) + 3)
    for b in range(3):
        sq, sk = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        ref, ref_lse = reference(q[sq], k[sk], v[sk], causal=True)
        assert_close(out[sq], ref, lse[:, sq], ref_lse)


def test_packed_forms_match_the_reference():
    rng = np.random.default_rng(4)
    qkv = randn(rng, 2, 11, 3, 2, 64)
    q, kv = randn(rng, 2, 7, 4, 64), randn(rng, 2, 11, 2, 2, 64)
    out = flashcore.flash_attn_qkvpacked_func(qkv, causal=True)
    for b in range(2):
        assert_close(out[b], reference(qkv[b, :, 0], qkv[b, :, 1], qkv[b, :, 2], causal=True)[0])
    out = flashcore.flash_attn_kvpacked_func(q, kv)
    for b in range(2):
        assert_close(out[b], reference(q[b], kv[b, :, 0], kv[b, :, 1])[0])
    cu = np.array([0, 4, 11], np.int32)
    pq = qkv[0]  # (11, 3, 2, 64): two sequences packed
    out = flashcore.flash_attn_varlen_qkvpacked_func(pq, cu, 7, causal=True)
    for lo, hi in ((0, 4), (4, 11)):
        assert_close(out[lo:hi], reference(pq[lo:hi, 0], pq[lo:hi, 1], pq[lo:hi, 2], causal=True)[0])
    out = flashcore.flash_attn_varlen_kvpacked_func(q[0], kv[0], np.array([0, 7], np.int32),
                                                    np.array([0, 11], np.int32), 7, 11)
    assert_close(out, reference(q[0], kv[0, :, 0], kv[0, :, 1])[0])


def test_mismatched_shapes_raise_naming_the_tensor():
    rng = np.random.default_rng(13)
    q, k = randn(rng, 2, 4, 4, 64), randn(rng, 2, 6, 2, 64)
    cases = [((q, k, randn(rng, 2, 6, 2, 128)), "v"),   # head_dim differs
             ((q, k[:1], k[:1]), "k"),                  # batch differs
             ((q, k, k[:, :5]), "v")]                   # length differs
    for args, name in cases:
        with pytest.raises(ValueError, match=f"^{name}: shape"):
            flashcore.flash_attn_func(*args)
    cu = np.array([0, 4], np.int32)
    with pytest.raises(ValueError, match="cu_seqlens_k: shape"):
        flashcore.flash_attn_varlen_func(q[0], k[0], k[0], cu, np.array([0, 3, 6], np.int32), 4, 6)
    kc = randn(rng, 1, 16, 2, 64)
    with pytest.raises(ValueError, match="cache_seqlens: shape"):
        flashcore.flash_attn_with_kvcache(q[:1, :1], kc, kc, cache_seqlens=np.array([3, 3], np.int32))
    with pytest.raises(ValueError, match="k_cache: shape"):  # an entry without a cache
        flashcore.flash_attn_with_kvcache(q[:, :1], kc, kc, k[:, :1], k[:, :1], cache_seqlens=3)
    with pytest.raises(ValueError, match="k: shape"):
        flashcore.flash_attn_with_kvcache(q[:1, :1], kc, kc, randn(rng, 1, 1, 1, 64),
                                          randn(rng, 1, 1, 1, 64), cache_seqlens=3)


def test_options_flash_attn_treats_otherwise_raise():
    rng = np.random.default_rng(14)
    q, kc = randn(rng, 1, 1, 2, 64), randn(rng, 1, 8, 2, 64)
    with pytest.raises(ValueError, match="softmax_scale"):
        flashcore.flash_attn_func(q, kc, kc, softmax_scale=0.0)
    cos = np.ones((16, 32), np.float16)
    with pytest.raises(ValueError, match="rotary_cos"):
        flashcore.flash_attn_with_kvcache(q, kc, kc, rotary_cos=cos, rotary_sin=cos, cache_seqlens=3)


@pytest.mark.parametrize("kwargs,argument", [
    ({"dropout_p": 0.1}, "dropout_p"),
    ({"softcap": 30.0}, "softcap"),
    ({"alibi_slopes": np.zeros(4, np.float32)}, "alibi_slopes"),
])
def test_unsupported_options_raise_naming_the_argument(kwargs, argument):
    rng = np.random.default_rng(5)
    q, k, v = randn(rng, 1, 4, 4, 64), randn(rng, 1, 4, 4, 64), randn(rng, 1, 4, 4, 64)
    with pytest.raises(ValueError, match=argument):
        flashcore.flash_attn_func(q, k, v, **kwargs)


def test_varlen_block_table_raises():
    rng = np.random.default_rng(6)
    q = randn(rng, 4, 2, 64)
    cu = np.array([0, 4], np.int32)
    with pytest.raises(ValueError, match="block_table"):
        flashcore.flash_attn_varlen_func(q, q, q, cu, cu, 4, 4, block_table=np.zeros((1, 1), np.int32))


def test_core_errors_carry_the_cpp_message():
    rng = np.random.default_rng(7)
    q = randn(rng, 1, 4, 2, 48)
    with pytest.raises(ValueError, match="head_dim"):
        flashcore.flash_attn_func(q, q, q)
    q64 = randn(rng, 1, 4, 2, 64)
    with pytest.raises(ValueError, match="dtype"):
        flashcore.flash_attn_func(q64, q64.astype(np.float32), q64)
    with pytest.raises(ValueError, match="num_heads"):
        flashcore.flash_attn_func(randn(rng, 1, 4, 3, 64), q64, q64)


def test_with_kvcache_signature_is_flash_attn_2_8_3():
    # flash-attn 2.8.3 annotates four of these parameters with torch types; names, order and
    # defaults are what a caller sees, and what must match.
    expected = [("q", None), ("k_cache", None), ("v_cache", None), ("k", None), ("v", None),
                ("rotary_cos", None), ("rotary_sin", None), ("cache_seqlens", None),
                ("cache_batch_idx", None), ("cache_leftpad", None), ("block_table", None),
                ("softmax_scale", None), ("causal", False), ("window_size", (-1, -1)),
                ("softcap", 0.0), ("rotary_interleaved", True), ("alibi_slopes", None),
                ("num_splits", 0), ("return_softmax_lse", False)]
    params = list(inspect.signature(flashcore.flash_attn_with_kvcache).parameters.values())
    got = [(p.name, None if p.default is inspect.Parameter.empty else p.default) for p in params]
    # FlashAttention-2's parameters in its order, then flashcore's keyword-only fp8 scales.
    assert got[:len(expected)] == expected
    assert [(p.name, p.default, p.kind) for p in params[len(expected):]] == [
        ("k_scale", None, inspect.Parameter.KEYWORD_ONLY),
        ("v_scale", None, inspect.Parameter.KEYWORD_ONLY)]
    first_three = list(inspect.signature(flashcore.flash_attn_with_kvcache).parameters.values())[:3]
    assert all(p.default is inspect.Parameter.empty for p in first_three)


def rotate(x, cos, sin, pos, interleaved):
    """x (S, H, D) float64 rotated at positions pos (S,) with tables (P, R/2), rounded to fp16."""
    x = x.astype(np.float64).copy()
    half = cos.shape[1]
    c = cos[pos].astype(np.float64)[:, None, :]
    s = sin[pos].astype(np.float64)[:, None, :]
    a = x[..., 0:2 * half:2] if interleaved else x[..., :half]
    b = x[..., 1:2 * half:2] if interleaved else x[..., half:2 * half]
    ra, rb = a * c - b * s, a * s + b * c
    if interleaved:
        x[..., 0:2 * half:2], x[..., 1:2 * half:2] = ra, rb
    else:
        x[..., :half], x[..., half:2 * half] = ra, rb
    return x.astype(np.float16)


def as_pages(rng, k_dense, v_dense, page=8):
    """(block_table, k pages, v pages): dense (B, capacity, Hkv, D) caches cut into pages of
    `page` rows, placed in a shuffled order."""
    batch, cap = k_dense.shape[:2]
    pages = cap // page
    table = rng.permutation(batch * pages).astype(np.int32).reshape(batch, pages)
    k_cache = np.empty((batch * pages, page) + k_dense.shape[2:], k_dense.dtype)
    v_cache = np.empty_like(k_cache)
    for b in range(batch):
        for p in range(pages):
            k_cache[table[b, p]] = k_dense[b, p * page:(p + 1) * page]
            v_cache[table[b, p]] = v_dense[b, p * page:(p + 1) * page]
    return table, k_cache, v_cache


def entry_rows(cache, table, b):
    """Entry b's rows of a dense cache, or of a paged one through its block table."""
    return cache[b] if table is None else np.concatenate([cache[p] for p in table[b]])


@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize("rotary", [None, "interleaved", "half"])
def test_with_kvcache_appends_in_place_then_attends(paged, rotary):
    rng = np.random.default_rng(8)
    batch, sq, hq, hkv, d, cap = 2, 3, 4, 2, 64, 40
    lens = [17, 5]
    q = randn(rng, batch, sq, hq, d)
    k_new, v_new = randn(rng, batch, sq, hkv, d), randn(rng, batch, sq, hkv, d)
    k_dense, v_dense = randn(rng, batch, cap, hkv, d), randn(rng, batch, cap, hkv, d)
    cos = sin = None
    if rotary:
        ang = np.arange(64)[:, None] * 10000.0 ** (-np.arange(0, d, 2) / d)[None, :]
        cos, sin = np.cos(ang).astype(np.float16), np.sin(ang).astype(np.float16)
    table, k_cache, v_cache = as_pages(rng, k_dense, v_dense) if paged else \
        (None, k_dense.copy(), v_dense.copy())
    out, lse = flashcore.flash_attn_with_kvcache(
        q, k_cache, v_cache, k_new, v_new, cos, sin, np.array(lens, np.int32), block_table=table,
        causal=True, rotary_interleaved=rotary == "interleaved", return_softmax_lse=True)
    assert flashcore.kvcache_error_flag(q)[0] == 0
    for b in range(batch):
        L = lens[b]
        pos = np.arange(L, L + sq)
        kb = rotate(k_new[b], cos, sin, pos, rotary == "interleaved") if rotary else k_new[b]
        qb = rotate(q[b], cos, sin, pos, rotary == "interleaved") if rotary else q[b]
        keys = np.concatenate([k_dense[b, :L], kb])
        vals = np.concatenate([v_dense[b, :L], v_new[b]])
        ref, ref_lse = reference(qb, keys, vals, causal=True)
        assert_close(out[b], ref, lse[b], ref_lse)
        # The cache now holds the (rotated) new rows at L.., and nothing else changed.
        got_k, got_v = entry_rows(k_cache, table, b), entry_rows(v_cache, table, b)
        np.testing.assert_array_equal(got_k[L:L + sq], kb)
        np.testing.assert_array_equal(got_v[L:L + sq], v_new[b])
        np.testing.assert_array_equal(got_k[:L], k_dense[b, :L])
        np.testing.assert_array_equal(got_k[L + sq:], k_dense[b, L + sq:])


def e4m3_decode(b):
    """uint8 e4m3 bytes (OCP E4M3FN: bias 7, no infinities, 0x7f/0xff NaN) as float64."""
    b = np.asarray(b, np.int64)
    e, m = (b >> 3) & 15, (b & 7).astype(np.float64)
    mag = np.where(e == 0, m / 8 * 2.0 ** -6, (1 + m / 8) * 2.0 ** (e - 7))
    mag = np.where((b & 127) == 127, np.nan, mag)
    return np.where(b >> 7, -mag, mag)


E4M3_FINITE = np.array([e4m3_decode(b) for b in range(256) if b & 127 != 127])


def random_e4m3(rng, *shape):
    """Random finite e4m3 bytes."""
    b = rng.integers(0, 256, shape).astype(np.uint8)
    return np.where((b & 127) == 127, b ^ 1, b).astype(np.uint8)


@pytest.mark.parametrize("paged", [False, True])
def test_with_kvcache_fp8_cache_appends_quantized_then_attends(paged):
    rng = np.random.default_rng(21)
    batch, sq, hq, hkv, d, cap = 2, 2, 4, 2, 64, 40
    lens = [17, 5]
    q = randn(rng, batch, sq, hq, d)
    k_new, v_new = randn(rng, batch, sq, hkv, d), randn(rng, batch, sq, hkv, d)
    k_new[0, 0, 0, :2] = [1000, -1000]  # past +-448 x k_scale: stored saturated, +-448
    k_dense, v_dense = random_e4m3(rng, batch, cap, hkv, d), random_e4m3(rng, batch, cap, hkv, d)
    k_scale = rng.uniform(0.01, 0.05, hkv).astype(np.float32)  # keys of e4m3 x 0.03: O(1)
    v_scale = rng.uniform(0.5, 2.0, hkv).astype(np.float32)
    table, k_cache, v_cache = as_pages(rng, k_dense, v_dense) if paged else \
        (None, k_dense.copy(), v_dense.copy())
    flag = flashcore.kvcache_error_flag(q)
    flag[0] = 0
    out, lse = flashcore.flash_attn_with_kvcache(
        q, k_cache, v_cache, k_new, v_new, cache_seqlens=np.array(lens, np.int32),
        block_table=table, causal=True, return_softmax_lse=True, k_scale=k_scale,
        v_scale=v_scale)
    assert flag[0] == 0
    for b in range(batch):
        L = lens[b]
        got_k, got_v = entry_rows(k_cache, table, b), entry_rows(v_cache, table, b)
        # The new rows are stored as the nearest e4m3 of value / scale; nothing else changed.
        for got, new, scale in ((got_k, k_new[b], k_scale), (got_v, v_new[b], v_scale)):
            want = new.astype(np.float32) / scale[None, :, None]
            nearest = np.abs(want[..., None] - E4M3_FINITE).min(-1)
            np.testing.assert_allclose(np.abs(e4m3_decode(got[L:L + sq]) - want), nearest,
                                       atol=1e-6, rtol=1e-6)
        for got, dense in ((got_k, k_dense[b]), (got_v, v_dense[b])):
            np.testing.assert_array_equal(got[:L], dense[:L])
            np.testing.assert_array_equal(got[L + sq:], dense[L + sq:])
        # Attention over what the cache holds now: e4m3 x scale per kv head.
        keys = e4m3_decode(got_k[:L + sq]) * k_scale[None, :, None]
        vals = e4m3_decode(got_v[:L + sq]) * v_scale[None, :, None]
        ref, ref_lse = reference(q[b], keys, vals, causal=True)
        assert_close(out[b], ref, lse[b], ref_lse)
    np.testing.assert_array_equal(entry_rows(k_cache, table, 0)[lens[0], 0, :2], [0x7E, 0xFE])


def test_with_kvcache_fp8_arguments_are_checked():
    rng = np.random.default_rng(22)
    q = randn(rng, 1, 1, 4, 64)
    kc8, vc8 = random_e4m3(rng, 1, 16, 2, 64), random_e4m3(rng, 1, 16, 2, 64)
    kc16 = randn(rng, 1, 16, 2, 64)
    scale = np.ones(2, np.float32)
    with pytest.raises(ValueError, match="8-bit .* needs k_scale and v_scale"):
        flashcore.flash_attn_with_kvcache(q, kc8, vc8, cache_seqlens=4)
    with pytest.raises(ValueError, match="with k_scale/v_scale the caches must be float8_e4m3fn"):
        flashcore.flash_attn_with_kvcache(q, kc16, kc16, cache_seqlens=4, k_scale=scale,
                                          v_scale=scale)
    with pytest.raises(ValueError, match="k_scale/v_scale: give both or neither"):
        flashcore.flash_attn_with_kvcache(q, kc8, vc8, cache_seqlens=4, k_scale=scale)
    with pytest.raises(ValueError, match=r"k_scale: shape must be \(2\)"):
        flashcore.flash_attn_with_kvcache(q, kc8, vc8, cache_seqlens=4, k_scale=np.ones(3, np.float32),
                                          v_scale=scale)
    with pytest.raises(ValueError, match="v_scale: dtype must be float32"):
        flashcore.flash_attn_with_kvcache(q, kc8, vc8, cache_seqlens=4, k_scale=scale,
                                          v_scale=np.ones(2))
    with pytest.raises(ValueError, match="k_scale: must be a float32 .* array"):
        flashcore.flash_attn_with_kvcache(q, kc8, vc8, cache_seqlens=4, k_scale=[1.0, 1.0],
                                          v_scale=scale)


def test_with_kvcache_fp8_bad_scale_sets_the_flag_and_nan_rows():
    rng = np.random.default_rng(23)
    q = randn(rng, 1, 1, 4, 64)
    kc8, vc8 = random_e4m3(rng, 1, 16, 2, 64), random_e4m3(rng, 1, 16, 2, 64)
    flag = flashcore.kvcache_error_flag(q)
    flag[0] = 0
    out = flashcore.flash_attn_with_kvcache(q, kc8, vc8, cache_seqlens=9,
                                            k_scale=np.array([1.0, 0.0], np.float32),
                                            v_scale=np.ones(2, np.float32))
    assert flag[0] == 16
    assert np.all(np.isnan(out))
    flag[0] = 0


def test_with_kvcache_fp8_ml_dtypes_caches_are_their_bytes():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(24)
    q = randn(rng, 1, 1, 4, 64)
    kc8, vc8 = random_e4m3(rng, 1, 16, 2, 64), random_e4m3(rng, 1, 16, 2, 64)
    scale = np.array([0.03, 0.05], np.float32)
    want = flashcore.flash_attn_with_kvcache(q, kc8, vc8, cache_seqlens=11, k_scale=scale,
                                             v_scale=scale)
    got = flashcore.flash_attn_with_kvcache(q, kc8.view(ml_dtypes.float8_e4m3fn),
                                            vc8.view(ml_dtypes.float8_e4m3fn), cache_seqlens=11,
                                            k_scale=scale, v_scale=scale)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(kc8.view(ml_dtypes.float8_e4m3fn).astype(np.float64),
                               e4m3_decode(kc8))
    with pytest.raises(ValueError, match="k_cache: dtype float8_e5m2 is not supported"):
        flashcore.flash_attn_with_kvcache(q, kc8.view(ml_dtypes.float8_e5m2), vc8,
                                          cache_seqlens=11, k_scale=scale, v_scale=scale)


def test_with_kvcache_fp8_jax_caches_with_a_numpy_q_raise_saying_why():
    jnp = pytest.importorskip("jax.numpy")
    rng = np.random.default_rng(25)
    q = randn(rng, 1, 1, 4, 64)
    kc8 = jnp.asarray(random_e4m3(rng, 1, 16, 2, 64)).view(jnp.float8_e4m3fn)
    scale = np.array([0.03, 0.05], np.float32)
    # (a numpy q: a JAX one would make the JAX error flag that test_jax_kvcache_under_jit
    # expects not to exist; a JAX q with numpy fp8 caches is in the host-path test below)
    with pytest.raises(ValueError, match="k_cache: fp8 JAX caches run as the package's XLA"):
        flashcore.flash_attn_with_kvcache(q, kc8, kc8, cache_seqlens=4, k_scale=scale,
                                          v_scale=scale)


def test_with_kvcache_int_seqlens_and_no_append():
    rng = np.random.default_rng(9)
    q, kc, vc = randn(rng, 2, 1, 4, 64), randn(rng, 2, 30, 1, 64), randn(rng, 2, 30, 1, 64)
    out = flashcore.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=21, num_splits=1)
    for b in range(2):
        assert_close(out[b], reference(q[b], kc[b, :21], vc[b, :21])[0])
    whole = flashcore.flash_attn_with_kvcache(q, kc, vc)  # no cache_seqlens: the whole cache
    assert_close(whole[1], reference(q[1], kc[1], vc[1])[0])


def test_with_kvcache_overflow_sets_the_flag_and_nan_rows():
    rng = np.random.default_rng(10)
    q, kc, vc = randn(rng, 2, 2, 2, 64), randn(rng, 2, 8, 2, 64), randn(rng, 2, 8, 2, 64)
    kn, vn = randn(rng, 2, 2, 2, 64), randn(rng, 2, 2, 2, 64)
    flag = flashcore.kvcache_error_flag(q)
    flag[0] = 0
    before = kc.copy()
    out = flashcore.flash_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=np.array([3, 7], np.int32))
    assert flag[0] == 1  # entry 1: 7 + 2 > 8 rows
    assert np.all(np.isnan(out[1])) and not np.any(np.isnan(out[0]))
    np.testing.assert_array_equal(kc[1], before[1])  # the bad entry wrote nothing
    flag[0] = 0


@pytest.mark.parametrize("kwargs,argument", [
    ({"cache_batch_idx": np.zeros(1, np.int32)}, "cache_batch_idx"),
    ({"softcap": 5.0}, "softcap"),
    ({"alibi_slopes": np.zeros(2, np.float32)}, "alibi_slopes"),
    ({"num_splits": 4}, "num_splits"),
])
def test_with_kvcache_unsupported_options_raise(kwargs, argument):
    rng = np.random.default_rng(11)
    q, kc = randn(rng, 1, 1, 2, 64), randn(rng, 1, 8, 2, 64)
    with pytest.raises(ValueError, match=argument):
        flashcore.flash_attn_with_kvcache(q, kc, kc, cache_seqlens=4, **kwargs)


def test_readme_support_table_is_the_generated_one():
    import pathlib

    from flashcore import support

    readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("<!-- support-table -->\n") + len("<!-- support-table -->\n")
    end = readme.index("\n<!-- /support-table -->")
    assert readme[start:end] == support.table(), "regenerate: python -m flashcore.support"


def test_workspace_is_asked_for_made_once_and_never_made_unsplit():
    """The binding answers the bytes a split plan wants instead of running; the package then
    makes the stream's workspace once and runs. num_splits=1 (split=False) gets none."""
    from flashcore import interface

    calls = []

    def call(*args):
        *_, workspace, stream, unsplit = args
        size = None if workspace is None else workspace.shape[0]
        calls.append((size, unsplit))
        return 100 if (size is None or size < 100) and not unsplit else 0

    q = np.zeros((1, 1, 1, 64), np.float16)
    key = (*interface._device_key(q), interface.stream_of(q))
    interface._workspaces.pop(key, None)
    interface._run(call, q, (q,), split=True)
    interface._run(call, q, (q,), split=True)
    interface._run(call, q, (q,), split=False)
    assert calls == [(None, False), (100, True), (100, False), (None, True)]
    assert not interface._workspaces[key].any()  # zero-filled
    interface._workspaces.pop(key)


def test_a_capture_adopts_a_workspace_made_outside_it(monkeypatch):
    """Inside a capture nothing is made: the capturing stream (stream 7 here) takes over the
    largest eager workspace that holds the plan's bytes, which then serves only captures on
    that stream (its old stream makes a new one, eager calls on stream 7 too); a later capture
    wanting more adopts a larger one and the smaller one is kept alive for the graph that uses
    it; with nothing large enough the call runs unsplit."""
    from flashcore import interface

    calls = []

    def call(*args):
        *_, workspace, stream, unsplit = args
        size = None if workspace is None else workspace.shape[0]
        calls.append((stream, size, unsplit))
        return args[0] if (size is None or size < args[0]) and not unsplit else 0

    q = np.zeros((1, 1, 1, 64), np.float16)
    dev = interface._device_key(q)
    saved = dict(interface._workspaces), dict(interface._graph_workspaces), list(interface._retired)
    interface._workspaces.clear()
    interface._graph_workspaces.clear()
    streams = iter([1, 7, 7, 2, 7, 7, 3, 7, 1])
    monkeypatch.setattr(interface, "stream_of", lambda like: next(streams))
    capture = lambda on: monkeypatch.setattr(interface, "capturing", lambda like: on)  # noqa: E731
    try:
        capture(False)
        interface._run(call, q, (100,), split=True)  # stream 1, eagerly: makes 100 bytes
        capture(True)
        interface._run(call, q, (80,), split=True)  # capture on 7 adopts stream 1's
        first = interface._graph_workspaces[(*dev, 7)]
        assert not interface._workspaces and first.shape[0] == 100
        interface._run(call, q, (120,), split=True)  # nothing free holds 120: unsplit
        capture(False)
        interface._run(call, q, (150,), split=True)  # stream 2, eagerly: makes 150
        capture(True)
        interface._run(call, q, (120,), split=True)  # capture on 7 adopts stream 2's
        assert any(r is first for r in interface._retired)  # the first graph's, kept alive
        interface._run(call, q, (90,), split=True)  # capture on 7 uses its own
        interface._run(call, q, (90,), split=True)  # capture on 3: nothing free
        capture(False)
        interface._run(call, q, (90,), split=True)  # stream 7 eagerly: its own, new one
        interface._run(call, q, (90,), split=True)  # stream 1 eagerly: a new one too
        assert calls == [(1, None, False), (1, 100, True),
                         (7, None, False), (7, 100, True),
                         (7, 100, False), (7, None, True),
                         (2, None, False), (2, 150, True),
                         (7, 100, False), (7, 150, True),
                         (7, 150, False),
                         (3, None, False), (3, None, True),
                         (7, None, False), (7, 90, True),
                         (1, None, False), (1, 90, True)]
        assert set(interface._graph_workspaces) == {(*dev, 7)}
        assert interface._graph_workspaces[(*dev, 7)].shape[0] == 150
        assert set(interface._workspaces) == {(*dev, 7), (*dev, 1)}
    finally:
        interface._workspaces.clear()
        interface._workspaces.update(saved[0])
        interface._graph_workspaces.clear()
        interface._graph_workspaces.update(saved[1])
        interface._retired[:] = saved[2]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_jax_host_arrays_run_on_the_reference(dtype):
    """Host JAX arrays in, JAX arrays out (outputs made by the package and handed over through
    DLPack: JAX arrays are immutable, and numpy has no bfloat16 that DLPack carries)."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    rng = np.random.default_rng(21)
    f32 = [rng.standard_normal(shape).astype(np.float32)
           for shape in ((2, 9, 4, 64), (2, 13, 2, 64), (2, 13, 2, 64))]
    cpu = jax.devices("cpu")[0]  # the default device is a GPU where JAX has one
    q, k, v = (jax.device_put(x, cpu).astype(dtype) for x in f32)
    out, lse, s_dmask = flashcore.flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    assert isinstance(out, jax.Array) and out.dtype == q.dtype and out.shape == q.shape
    assert out.devices() == q.devices() == lse.devices() == {cpu}
    assert isinstance(lse, jax.Array) and lse.dtype == jnp.float32 and lse.shape == (2, 4, 9)
    assert isinstance(s_dmask, jax.Array) and s_dmask.size == 0
    as64 = [np.asarray(x.astype(jnp.float32), dtype=np.float64) for x in (q, k, v)]
    tol = 4e-3 if dtype == "float16" else 1e-2
    for b in range(2):
        ref, ref_lse = reference(*(x[b] for x in as64), causal=True)
        np.testing.assert_allclose(np.asarray(out[b].astype(jnp.float32)), ref, atol=tol, rtol=tol)
        np.testing.assert_allclose(np.asarray(lse[b]), ref_lse, atol=1e-3, rtol=1e-4)
    # The cache read (no append) takes JAX caches too; cache_seqlens as an int.
    got = flashcore.flash_attn_with_kvcache(q[:, :1], k, v, cache_seqlens=11)
    ref, _ = reference(as64[0][0, :1], as64[1][0, :11], as64[2][0, :11])
    assert isinstance(got, jax.Array) and got.devices() == {cpu}
    np.testing.assert_allclose(np.asarray(got[0].astype(jnp.float32)), ref, atol=tol, rtol=tol)


def test_jax_caches_cannot_take_an_append():
    """The append writes the cache in place, which a JAX array forbids: a ValueError naming the
    cache and the way around it, not a silent copy the caller never sees."""
    jnp = pytest.importorskip("jax.numpy")
    q = jnp.ones((1, 1, 4, 64), dtype=jnp.float16)
    cache = jnp.zeros((1, 8, 2, 64), dtype=jnp.float16)
    new = jnp.ones((1, 1, 2, 64), dtype=jnp.float16)
    with pytest.raises(ValueError, match="k_cache/v_cache: JAX arrays are immutable"):
        flashcore.flash_attn_with_kvcache(q, cache, cache, new, new, cache_seqlens=3)


def _jax_ffi():
    from flashcore import _jax

    if not _jax.available():
        pytest.skip("the package was built without jax (no XLA FFI handlers)")


def _jax_gpu():
    """jax and its first GPU, with the custom calls built; else the test skips."""
    jax = pytest.importorskip("jax")
    _jax_ffi()
    try:
        return jax, jax.devices("gpu")[0]
    except RuntimeError:
        pytest.skip("JAX has no GPU here")


def _jax_case(jax, rng, dtype, device, shapes=((2, 9, 4, 64), (2, 13, 2, 64))):
    qs, ks = shapes
    f32 = [rng.standard_normal(shape).astype(np.float32) for shape in (qs, ks, ks)]
    return [jax.device_put(x, device).astype(dtype) for x in f32]


def _check_jax_against_reference(jax, q, k, v, out, lse, causal, window, tol):
    jnp = jax.numpy
    as64 = [np.asarray(x.astype(jnp.float32), dtype=np.float64) for x in (q, k, v)]
    for b in range(q.shape[0]):
        ref, ref_lse = reference(*(x[b] for x in as64), causal=causal, window=window)
        np.testing.assert_allclose(np.asarray(out[b].astype(jnp.float32)), ref, atol=tol, rtol=tol)
        if lse is not None:
            np.testing.assert_allclose(np.asarray(lse[b]), ref_lse, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_jax_flash_attn_func_under_jit(dtype):
    """flash_attn_func is an XLA custom call on JAX arrays: it traces under jax.jit, and the
    jitted call gives the eager call's result bit for bit, both the reference's."""
    jax = pytest.importorskip("jax")
    _jax_ffi()
    cpu = jax.devices("cpu")[0]
    q, k, v = _jax_case(jax, np.random.default_rng(5), dtype, cpu)
    for causal, window in ((True, (-1, -1)), (False, (3, 1))):
        step = jax.jit(lambda a, b, c: flashcore.flash_attn_func(
            a, b, c, causal=causal, window_size=window, return_attn_probs=True))
        out, lse, s_dmask = step(q, k, v)
        eager = flashcore.flash_attn_func(q, k, v, causal=causal, window_size=window)
        assert out.devices() == {cpu} and s_dmask.size == 0
        np.testing.assert_array_equal(np.asarray(out.astype(jax.numpy.float32)),
                                      np.asarray(eager.astype(jax.numpy.float32)))
        tol = 4e-3 if dtype == "float16" else 1e-2
        _check_jax_against_reference(jax, q, k, v, out, lse, causal, window, tol)


JAX_GPU_CASES = [  # dtype, (b, sq, hq, d), (sk, hkv), causal, window
    ("bfloat16", (2, 1000, 32, 128), (1000, 8), False, (-1, -1)),
    ("float16", (1, 300, 8, 128), (64, 2), True, (-1, -1)),
    ("bfloat16", (3, 17, 4, 64), (1000, 1), False, (50, 0)),
    ("float16", (1, 129, 8, 256), (700, 8), True, (-1, -1)),
    ("bfloat16", (2, 1, 32, 128), (4096, 8), False, (-1, -1)),
]


@pytest.mark.parametrize("case", range(len(JAX_GPU_CASES)))
def test_jax_gpu_flash_attn_func(case):
    """JAX GPU arrays: the custom call runs the CUDA kernels on JAX's buffers and stream,
    under jax.jit; against the float64 reference: D64-256, GQA and MQA, unmasked, causal with
    more queries than keys, a window, a single query against 4k keys."""
    jax, gpu = _jax_gpu()
    dtype, (b, sq, hq, d), (sk, hkv), causal, window = JAX_GPU_CASES[case]
    q, k, v = _jax_case(jax, np.random.default_rng(100 + case), dtype, gpu,
                        ((b, sq, hq, d), (b, sk, hkv, d)))
    step = jax.jit(lambda x, y, z: flashcore.flash_attn_func(
        x, y, z, causal=causal, window_size=window, return_attn_probs=True))
    out, lse, _ = step(q, k, v)
    assert out.devices() == {gpu} and lse.devices() == {gpu}
    _check_jax_against_reference(jax, q, k, v, out, lse, causal, window, 3e-2)


def _jax_varlen_case(jax, rng, dtype, device, lq, lk, hq, hkv, d, pad_q=0):
    """pad_q: packed q rows past the last sequence (lse's head stride is q.shape[0])."""
    cu = [np.concatenate([[0], np.cumsum(lens)]).astype(np.int32) for lens in (lq, lk)]
    q, k, v = (jax.device_put(rng.standard_normal(shape).astype(np.float32), device).astype(dtype)
               for shape in ((cu[0][-1] + pad_q, hq, d), (cu[1][-1], hkv, d), (cu[1][-1], hkv, d)))
    return q, k, v, *(jax.device_put(c, device) for c in cu)


def _check_jax_varlen(jax, q, k, v, cu_q, cu_k, out, lse, causal, window, tol):
    as64 = [np.asarray(x.astype(jax.numpy.float32), dtype=np.float64) for x in (q, k, v)]
    cq, ck = np.asarray(cu_q), np.asarray(cu_k)
    for b in range(len(cq) - 1):
        sq, sk = slice(cq[b], cq[b + 1]), slice(ck[b], ck[b + 1])
        ref, ref_lse = reference(as64[0][sq], as64[1][sk], as64[2][sk], causal=causal,
                                 window=window)
        np.testing.assert_allclose(np.asarray(out[sq].astype(jax.numpy.float32)), ref, atol=tol,
                                   rtol=tol)
        np.testing.assert_allclose(np.asarray(lse[:, sq]), ref_lse, atol=1e-3, rtol=1e-4)


def test_jax_varlen_under_jit():
    """flash_attn_varlen_func on JAX arrays is a custom call too (max_seqlen static, as
    FlashAttention-2 takes it): three sequences of different lengths, causal and windowed."""
    jax = pytest.importorskip("jax")
    _jax_ffi()
    cpu = jax.devices("cpu")[0]
    case = _jax_varlen_case(jax, np.random.default_rng(9), "bfloat16", cpu, [5, 9, 1],
                            [7, 12, 2], 4, 2, 64, pad_q=4)
    for causal, window in ((True, (-1, -1)), (False, (2, 3))):
        step = jax.jit(lambda *a: flashcore.flash_attn_varlen_func(
            *a, 9, 12, causal=causal, window_size=window, return_attn_probs=True))
        out, lse, _ = step(*case)
        assert out.devices() == {cpu}
        _check_jax_varlen(jax, *case, out, lse, causal, window, 1e-2)


def test_jax_gpu_varlen():
    jax, gpu = _jax_gpu()
    case = _jax_varlen_case(jax, np.random.default_rng(10), "float16", gpu, [5, 130, 1, 300],
                            [9, 200, 64, 300], 8, 2, 128, pad_q=21)
    step = jax.jit(lambda *a: flashcore.flash_attn_varlen_func(
        *a, 300, 300, causal=True, return_attn_probs=True))
    out, lse, _ = step(*case)
    assert out.devices() == {gpu}
    _check_jax_varlen(jax, *case, out, lse, True, (-1, -1), 3e-2)


def test_jax_bad_input_raises_when_traced():
    """The rules are checked while the call is traced: ValueError naming the argument, before
    XLA runs anything."""
    jax = pytest.importorskip("jax")
    _jax_ffi()
    jnp = jax.numpy
    q = jnp.ones((1, 4, 3, 64), dtype=jnp.float16)
    kv = jnp.ones((1, 4, 2, 64), dtype=jnp.float16)
    with pytest.raises(ValueError, match="num_heads_q: must be a multiple of num_heads_kv"):
        jax.jit(lambda a, b: flashcore.flash_attn_func(a, b, b))(q, kv)
    with pytest.raises(ValueError, match="q: dtype must be float16 or bfloat16"):
        flashcore.flash_attn_func(q.astype(jnp.float32), kv, kv)
    with pytest.raises(ValueError, match="head_dim"):
        flashcore.flash_attn_func(q[..., :60], kv[:, :, :1, :60], kv[:, :, :1, :60])
    with pytest.raises(ValueError, match="softmax_scale: must be finite and >= 0"):
        jax.jit(lambda a, b: flashcore.flash_attn_func(a, b, b, softmax_scale=-1.0))(q, kv[:, :, :1])
    with pytest.raises(ValueError, match="softmax_scale: must be finite and >= 0"):
        flashcore.flash_attn_func(q, kv[:, :, :1], kv[:, :, :1], softmax_scale=1e-50)
    with pytest.raises(ValueError, match="cu_seqlens_k: must be a 1-d int32 array"):
        flashcore.flash_attn_varlen_func(q[0], kv[0, :, :1], kv[0, :, :1],
                                         jnp.zeros((2,), jnp.int32), [0, 4], 4, 4)
    with pytest.raises(ValueError, match="cu_seqlens_q: must be a 1-d int32 array"):
        flashcore.flash_attn_varlen_func(q[0], kv[0, :, :1], kv[0, :, :1],
                                         jnp.zeros((2,), jnp.int16), jnp.zeros((2,), jnp.int32),
                                         4, 4)


def _no_jax_ffi():
    from flashcore import _jax

    if _jax.available():
        pytest.skip("the package was built with the custom calls (test_jax_*kvcache* cover them)")


def test_jax_gpu_arrays_in_the_cache_function_raise_saying_why():
    """Built without the custom calls, the cache function takes host JAX arrays only: a
    TypeError that names the device and the way around it."""
    jax = pytest.importorskip("jax")
    _no_jax_ffi()
    try:
        gpu = jax.devices("gpu")[0]
    except RuntimeError:
        pytest.skip("JAX has no GPU here")
    q = jax.device_put(np.ones((1, 1, 2, 64), np.float16), gpu)
    with pytest.raises(TypeError, match="JAX arrays on the host only.*gpu"):
        flashcore.flash_attn_with_kvcache(q, q, q, cache_seqlens=1)


def test_traced_jax_arrays_in_the_cache_function_raise_saying_why():
    jax = pytest.importorskip("jax")
    _no_jax_ffi()
    q = jax.numpy.ones((1, 1, 2, 64), dtype=jax.numpy.float16)
    with pytest.raises(TypeError, match="not traced ones"):
        jax.jit(lambda x: flashcore.flash_attn_with_kvcache(x, x, x, cache_seqlens=1))(q)


def _jax_cache_case(jax, rng, device, dtype, b, sq, hq, hkv, d, cap, lens, page_size=0):
    """q, caches (contiguous, or pages of page_size behind a shuffled block table) with NaN in
    every slot past an entry's length, int32 lengths, the block table (or None), and the dense
    per-entry float64 views the reference reads."""
    jnp = jax.numpy
    put = lambda x: jax.device_put(x, device)  # noqa: E731
    q = rng.standard_normal((b, sq, hq, d)).astype(np.float32)
    dense = [rng.standard_normal((b, cap, hkv, d)).astype(np.float32) for _ in range(2)]
    for e, n in enumerate(lens):
        for c in dense:
            c[e, n:] = np.nan
    table = None
    caches = dense
    if page_size:
        per = cap // page_size
        order = rng.permutation(b * per).astype(np.int32)
        table = order.reshape(b, per)
        caches = []
        for c in dense:
            pages = np.empty((b * per, page_size, hkv, d), np.float32)
            pages[table.reshape(-1)] = c.reshape(b * per, page_size, hkv, d)
            caches.append(pages)
        table = put(table)
    q, kc, vc = (put(x).astype(dtype) for x in (q, *caches))
    as64 = [np.asarray(x.astype(jnp.float32), np.float64) for x in (q, *[put(c).astype(dtype)
                                                                       for c in dense])]
    return q, kc, vc, put(np.asarray(lens, np.int32)), table, as64


def _check_jax_cache_read(jax, out, lse, as64, lens, causal, tol):
    jnp = jax.numpy
    for e, n in enumerate(lens):
        ref, ref_lse = reference(as64[0][e], as64[1][e, :n], as64[2][e, :n], causal=causal)
        np.testing.assert_allclose(np.asarray(out[e].astype(jnp.float32)), ref, atol=tol, rtol=tol)
        np.testing.assert_allclose(np.asarray(lse[e]), ref_lse, atol=1e-3, rtol=1e-4)


def test_jax_kvcache_under_jit():
    """The cache read is a custom call too (no append: JAX arrays are immutable): contiguous
    and paged caches with NaN past cache_seqlens, causal, jitted = eager bit for bit; an entry
    past its capacity gets NaN rows (no error flag through JAX); left pad; no cache_seqlens
    (the whole cache) with a window; bad input raises when traced."""
    jax = pytest.importorskip("jax")
    _jax_ffi()
    jnp = jax.numpy
    cpu = jax.devices("cpu")[0]
    rng = np.random.default_rng(13)
    lens = [5, 17, 32]
    for page_size in (0, 8, 32):  # 32: a page longer than query_kvcache's 16-row stand-in
        q, kc, vc, L, table, as64 = _jax_cache_case(jax, rng, cpu, "bfloat16", 3, 2, 8, 2, 64,
                                                    32, lens, page_size)
        call = lambda *a: flashcore.flash_attn_with_kvcache(  # noqa: E731
            *a[:3], cache_seqlens=a[3], block_table=a[4], causal=True, return_softmax_lse=True)
        out, lse = jax.jit(call)(q, kc, vc, L, table)
        eager_out, eager_lse = call(q, kc, vc, L, table)
        assert out.devices() == {cpu} and out.dtype == q.dtype and lse.shape == (3, 8, 2)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(eager_out))
        np.testing.assert_array_equal(np.asarray(lse), np.asarray(eager_lse))
        _check_jax_cache_read(jax, out, lse, as64, lens, True, 1e-2)
    # Whole caches (no NaN rows), so only the overflow can make NaN.
    q, kc, vc, _, _, as64 = _jax_cache_case(jax, rng, cpu, "float16", 2, 1, 4, 4, 64, 16, [16, 16])
    out = flashcore.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=jnp.array([16, 17], jnp.int32))
    assert bool(jnp.isfinite(out[0].astype(jnp.float32)).all())
    assert bool(jnp.isnan(out[1].astype(jnp.float32)).all())  # 17 > the capacity 16
    L, pads = jnp.array([16, 9], jnp.int32), jnp.array([3, 0], jnp.int32)
    out = jax.jit(lambda *a: flashcore.flash_attn_with_kvcache(
        *a[:3], cache_seqlens=a[3], cache_leftpad=a[4]))(q, kc, vc, L, pads)
    for e, (p, n) in enumerate(((3, 16), (0, 9))):
        ref, _ = reference(as64[0][e], as64[1][e, p:n], as64[2][e, p:n])
        np.testing.assert_allclose(np.asarray(out[e].astype(jnp.float32)), ref, atol=4e-3,
                                   rtol=4e-3)
    # No cache_seqlens: the whole cache, as FlashAttention-2 reads it; and a window.
    whole = jax.jit(lambda *a: flashcore.flash_attn_with_kvcache(*a, window_size=(5, 0)))(q, kc, vc)
    for e in range(2):
        ref, _ = reference(as64[0][e], as64[1][e], as64[2][e], window=(5, 0))
        np.testing.assert_allclose(np.asarray(whole[e].astype(jnp.float32)), ref, atol=4e-3,
                                   rtol=4e-3)
    with pytest.raises(ValueError, match="cache_seqlens: must be an int32 array"):
        jax.jit(lambda a: flashcore.flash_attn_with_kvcache(a, kc, vc, cache_seqlens=L[:1]))(q)
    with pytest.raises(ValueError, match="block_table: must be an int32 array"):
        flashcore.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=L,
                                          block_table=jnp.zeros((2, 1), jnp.int16))
    with pytest.raises(ValueError, match="k_cache/v_cache: dtype must match"):
        flashcore.flash_attn_with_kvcache(q, kc.astype(jnp.bfloat16), vc, cache_seqlens=L)
    with pytest.raises(ValueError, match="a paged cache needs page_size >= 1"):
        flashcore.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=L,
                                          block_table=jnp.zeros((2, 0), jnp.int32))
    with pytest.raises(TypeError, match="kvcache_error_flag: JAX cache reads"):
        flashcore.kvcache_error_flag(q)


def test_jax_q_with_numpy_caches_takes_the_host_path():
    """Only JAX caches go to the custom call: a JAX q with numpy caches (and new k/v) runs on
    the host path, appends in place, and its error flag is readable."""
    jax = pytest.importorskip("jax")
    _jax_ffi()
    rng = np.random.default_rng(15)
    cpu = jax.devices("cpu")[0]
    q = jax.device_put(rng.standard_normal((1, 1, 4, 64)).astype(np.float16), cpu)
    kc, vc = randn(rng, 1, 8, 2, 64), randn(rng, 1, 8, 2, 64)
    kn, vn = randn(rng, 1, 1, 2, 64), randn(rng, 1, 1, 2, 64)
    out = flashcore.flash_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=3)
    np.testing.assert_array_equal(kc[0, 3], kn[0, 0])  # written in place
    ref, _ = reference(np.asarray(q[0], np.float64), kc[0, :4], vc[0, :4])
    np.testing.assert_allclose(np.asarray(out[0], np.float64), ref, atol=4e-3, rtol=4e-3)
    assert flashcore.kvcache_error_flag(q)[0] == 0
    # fp8 caches too (JAX fp8 caches go to the custom call: test_jax_fp8_cache_read_under_jit).
    k8, v8 = random_e4m3(rng, 1, 8, 2, 64), random_e4m3(rng, 1, 8, 2, 64)
    scale = np.array([0.03, 0.05], np.float32)
    got = flashcore.flash_attn_with_kvcache(q, k8, v8, cache_seqlens=5, k_scale=scale,
                                            v_scale=scale)
    want = flashcore.flash_attn_with_kvcache(np.asarray(q), k8, v8, cache_seqlens=5,
                                             k_scale=scale, v_scale=scale)
    np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize("page_size", [0, 64])
def test_jax_gpu_kvcache(page_size):
    """The cache read on the GPU under jit: one long entry (split across CTAs, the workspace
    kept by the extension) and a batch of three, GQA 32/8, D128, NaN past cache_seqlens; split
    (num_splits=0) and unsplit (1), each against the reference."""
    jax, gpu = _jax_gpu()
    rng = np.random.default_rng(14)
    for b, lens, sq in ((1, [3000], 1), (3, [1, 1000, 4096], 4)):
        q, kc, vc, L, table, as64 = _jax_cache_case(jax, rng, gpu, "bfloat16", b, sq, 32, 8, 128,
                                                    4096, lens, page_size)
        for splits in (0, 1):
            out, lse = jax.jit(lambda *a: flashcore.flash_attn_with_kvcache(
                *a[:3], cache_seqlens=a[3], block_table=a[4], causal=True, num_splits=splits,
                return_softmax_lse=True))(q, kc, vc, L, table)
            assert out.devices() == {gpu}
            _check_jax_cache_read(jax, out, lse, as64, lens, True, 2e-2)


@pytest.mark.parametrize("platform", ["cpu", "gpu"])
def test_jax_fp8_cache_read_under_jit(platform):
    """float8_e4m3fn JAX caches with per-head scales through the custom call, under jit, on the
    host and (where JAX has one) the GPU: the same answer as the numpy path on the same bytes,
    contiguous and paged; a bad scale gives NaN rows; the dtype and scale rules raise."""
    jax = pytest.importorskip("jax")
    _jax_ffi()
    import jax.numpy as jnp

    dev = jax.devices("cpu")[0] if platform == "cpu" else _jax_gpu()[1]
    rng = np.random.default_rng(26)
    b, sq, hq, hkv, d, cap = 2, 2, 8, 2, 128, 64
    q = randn(rng, b, sq, hq, d)
    k8, v8 = random_e4m3(rng, b, cap, hkv, d), random_e4m3(rng, b, cap, hkv, d)
    ks, vs = np.array([0.03, 0.02], np.float32), np.array([0.5, 1.5], np.float32)
    lens = np.array([50, 9], np.int32)
    put = lambda x: jax.device_put(x, dev)  # noqa: E731
    as_f8 = lambda x: put(jnp.asarray(x).view(jnp.float8_e4m3fn))  # noqa: E731
    run = jax.jit(lambda q, kc, vc, L, t, ks, vs: flashcore.flash_attn_with_kvcache(
        q, kc, vc, cache_seqlens=L, block_table=t, causal=True, k_scale=ks, v_scale=vs))
    for paged in (False, True):
        table, kc, vc = as_pages(rng, k8, v8, page=16) if paged else (None, k8, v8)
        want = flashcore.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens, block_table=table,
                                                 causal=True, k_scale=ks, v_scale=vs)
        got = run(put(q), as_f8(kc), as_f8(vc), put(lens), None if table is None else put(table),
                  put(ks), put(vs))
        assert got.devices() == {dev}
        np.testing.assert_allclose(np.asarray(got, np.float64), want.astype(np.float64),
                                   atol=2e-2 if platform == "gpu" else 0, rtol=2e-2 if platform == "gpu" else 0)
    bad = run(put(q), as_f8(k8), as_f8(v8), put(lens), None, put(np.array([0.03, np.nan], np.float32)),
              put(vs))
    assert np.all(np.isnan(np.asarray(bad, np.float32)))
    with pytest.raises(ValueError, match="k_cache/v_cache: with k_scale/v_scale the caches must"):
        flashcore.flash_attn_with_kvcache(put(q), put(q[:, :1, :2]), put(q[:, :1, :2]),
                                          cache_seqlens=1, k_scale=put(ks), v_scale=put(vs))
    with pytest.raises(ValueError, match="v_scale: must be float32 \\(num_heads_kv,\\)"):
        flashcore.flash_attn_with_kvcache(put(q), as_f8(k8), as_f8(v8), cache_seqlens=4,
                                          k_scale=put(ks), v_scale=put(vs[:1]))
    with pytest.raises(ValueError, match="an fp8 cache needs k_scale and v_scale"):
        flashcore.flash_attn_with_kvcache(put(q), as_f8(k8), as_f8(v8), cache_seqlens=4)
    with pytest.raises(ValueError, match="k_scale/v_scale: give both or neither"):
        flashcore.flash_attn_with_kvcache(put(q), as_f8(k8), as_f8(v8), cache_seqlens=4,
                                          k_scale=put(ks))
    with pytest.raises(ValueError, match="k_scale: must be float32"):
        flashcore.flash_attn_with_kvcache(put(q), as_f8(k8), as_f8(v8), cache_seqlens=4,
                                          k_scale=ks.astype(np.float64), v_scale=put(vs))
    with pytest.raises(ValueError, match="v_cache: fp8 JAX caches run as the package's XLA"):
        flashcore.flash_attn_with_kvcache(put(q), k8, as_f8(v8), cache_seqlens=4,
                                          k_scale=put(ks), v_scale=put(vs))


def test_with_kvcache_left_pad():
    rng = np.random.default_rng(12)
    q, kc, vc = randn(rng, 2, 2, 4, 64), randn(rng, 2, 30, 2, 64), randn(rng, 2, 30, 2, 64)
    kn, vn = randn(rng, 2, 2, 2, 64), randn(rng, 2, 2, 2, 64)
    dense_k, dense_v = kc.copy(), vc.copy()
    pads, lens = np.array([4, 0], np.int32), np.array([11, 7], np.int32)
    out = flashcore.flash_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=lens,
                                            cache_leftpad=pads, causal=True)
    for b in range(2):
        p, L = int(pads[b]), int(lens[b])
        keys = np.concatenate([dense_k[b, p:L], kn[b]])
        vals = np.concatenate([dense_v[b, p:L], vn[b]])
        assert_close(out[b], reference(q[b], keys, vals, causal=True)[0])
