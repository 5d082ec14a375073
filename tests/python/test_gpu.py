"""The Python functions on the GPU against SDPA's math backend in fp32, on random shapes; cache
slots past cache_seqlens hold NaN (they must never leak). Skipped without torch or CUDA."""

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
import flashcore  # noqa: E402
from references import sdpa  # noqa: E402


def close(got, want):
    torch.testing.assert_close(got.float(), want, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("seed", range(6))
def test_flash_attn_func_random_shapes(seed):
    g = torch.Generator().manual_seed(seed)
    pick = lambda xs: xs[int(torch.randint(len(xs), (1,), generator=g))]  # noqa: E731
    dtype, d = pick([torch.float16, torch.bfloat16]), pick([64, 128, 256])
    hkv = pick([1, 2, 8])
    hq = hkv * pick([1, 4])
    b, sq, sk = pick([1, 3]), pick([1, 17, 300]), pick([1, 64, 1000])
    causal, window = pick([True, False]), pick([(-1, -1), (50, 0)])
    q = torch.randn(b, sq, hq, d, generator=g).to("cuda", dtype)
    k = torch.randn(b, sk, hkv, d, generator=g).to("cuda", dtype)
    v = torch.randn(b, sk, hkv, d, generator=g).to("cuda", dtype)
    out = flashcore.flash_attn_func(q, k, v, causal=causal, window_size=window)
    for e in range(b):
        close(out[e], sdpa(q[e], k[e], v[e], causal, window))


def lse_of(q, k, causal):
    """fp32 log-sum-exp (Hq, Sq) of one sequence, causal bottom-right (every row sees a key)."""
    g = q.shape[1] // k.shape[1]
    s = torch.einsum("ihd,jhd->hij", q.float(), k.float().repeat_interleave(g, 1))
    s = s / q.shape[-1] ** 0.5
    if causal:
        i = torch.arange(q.shape[0], device=q.device)[:, None] + k.shape[0] - q.shape[0]
        s = s.masked_fill(torch.arange(k.shape[0], device=q.device)[None, :] > i, float("-inf"))
    return torch.logsumexp(s, -1)


@pytest.mark.parametrize("pad", [0, 11])
def test_varlen_on_the_gpu(pad):
    """pad: packed q rows past the last sequence; lse is (Hq, q.shape[0]) either way."""
    g = torch.Generator().manual_seed(7)
    lq, lk = [5, 130, 1], [9, 200, 64]
    cu_q = torch.tensor([0, 5, 135, 136], dtype=torch.int32, device="cuda")
    cu_k = torch.tensor([0, 9, 209, 273], dtype=torch.int32, device="cuda")
    q = torch.randn(136 + pad, 8, 128, generator=g).to("cuda", torch.bfloat16)
    k = torch.randn(273, 2, 128, generator=g).to("cuda", torch.bfloat16)
    v = torch.randn(273, 2, 128, generator=g).to("cuda", torch.bfloat16)
    out, lse, _ = flashcore.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lq), max(lk),
                                                   causal=True, return_attn_probs=True)
    assert lse.shape == (8, 136 + pad)
    for e in range(3):
        sq, sk = slice(int(cu_q[e]), int(cu_q[e + 1])), slice(int(cu_k[e]), int(cu_k[e + 1]))
        close(out[sq], sdpa(q[sq], k[sk], v[sk], causal=True))
        torch.testing.assert_close(lse[:, sq], lse_of(q[sq], k[sk], True), atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("paged", [False, True])
def test_with_kvcache_never_reads_past_cache_seqlens(paged):
    g = torch.Generator().manual_seed(8)
    b, sq, hq, hkv, d, cap = 3, 4, 32, 8, 128, 512
    lens = torch.tensor([0, 100, 500], dtype=torch.int32)
    dense_k = torch.randn(b, cap, hkv, d, generator=g).to("cuda", torch.bfloat16)
    dense_v = torch.randn(b, cap, hkv, d, generator=g).to("cuda", torch.bfloat16)
    for e in range(b):  # the unfilled tail is NaN
        dense_k[e, int(lens[e]):] = float("nan")
        dense_v[e, int(lens[e]):] = float("nan")
    q = torch.randn(b, sq, hq, d, generator=g).to("cuda", torch.bfloat16)
    kn = torch.randn(b, sq, hkv, d, generator=g).to("cuda", torch.bfloat16)
    vn = torch.randn(b, sq, hkv, d, generator=g).to("cuda", torch.bfloat16)
    table = None
    if paged:
        page = 64
        perm = torch.randperm(b * cap // page, generator=g).to(torch.int32)
        table = perm.view(b, cap // page).cuda()
        k_cache = torch.empty(b * cap // page, page, hkv, d, dtype=torch.bfloat16, device="cuda")
        v_cache = torch.empty_like(k_cache)
        for e in range(b):
            for p in range(cap // page):
                k_cache[table[e, p]] = dense_k[e, p * page:(p + 1) * page]
                v_cache[table[e, p]] = dense_v[e, p * page:(p + 1) * page]
    else:
        k_cache, v_cache = dense_k.clone(), dense_v.clone()
    flag = flashcore.kvcache_error_flag(q)
    flag.zero_()
    out = flashcore.flash_attn_with_kvcache(q, k_cache, v_cache, kn, vn,
                                            cache_seqlens=lens.cuda(), block_table=table,
                                            causal=True)
    torch.cuda.synchronize()
    assert int(flag[0]) == 0
    assert not torch.isnan(out).any()
    for e in range(b):
        L = int(lens[e])
        keys = torch.cat([dense_k[e, :L], kn[e]])
        vals = torch.cat([dense_v[e, :L], vn[e]])
        close(out[e], sdpa(q[e], keys, vals, causal=True))


def test_compile_reduce_overhead_decode_replays_while_cache_seqlens_change():
    torch.manual_seed(9)
    b, hq, hkv, d, cap = 2, 8, 2, 128, 256
    kc = torch.randn(b, cap, hkv, d, device="cuda", dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    q = torch.randn(b, 1, hq, d, device="cuda", dtype=torch.bfloat16)
    kn = torch.randn(b, 1, hkv, d, device="cuda", dtype=torch.bfloat16)
    vn = torch.randn_like(kn)
    lens = torch.tensor([10, 50], dtype=torch.int32, device="cuda")

    # The caches stay where they are (as a model's static cache does), so inductor may put the
    # step in a CUDA graph despite the in-place write; the counter proves it did.
    for t in (kc, vc):
        torch._dynamo.mark_static_address(t)
    torch._dynamo.utils.counters.clear()

    @torch.compile(mode="reduce-overhead", fullgraph=True)
    def step(q, kc, vc, kn, vn, lens):
        return flashcore.flash_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=lens, causal=True)

    for _ in range(3):  # warm-up and capture
        out = step(q, kc, vc, kn, vn, lens)
    assert not torch._dynamo.utils.counters["inductor"]["cudagraph_skips"], \
        dict(torch._dynamo.utils.counters["inductor"])
    for _ in range(4):
        lens += 1
        q.normal_(), kn.normal_(), vn.normal_()
        out = step(q, kc, vc, kn, vn, lens).clone()
        torch.cuda.synchronize()
        for e in range(b):
            L = int(lens[e])
            torch.testing.assert_close(kc[e, L], kn[e, 0])
            close(out[e], sdpa(q[e], kc[e, :L + 1], vc[e, :L + 1], causal=True))
