"""flashcore through PyTorch: the torch.library ops (opcheck), results against SDPA's math on
the CPU, torch.compile(fullgraph=True), and on a GPU CUDA-graph replay of a decode step while
cache_seqlens changes. Skipped where torch is not installed (CI has no torch); the GPU tests
skip without CUDA."""

import pytest

torch = pytest.importorskip("torch")
import flashcore  # noqa: E402
from flashcore import torch_ops  # noqa: E402
from references import sdpa  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def sdpa_batch(q, k, v, causal=False):
    """references.sdpa over a (B, S, H, D) batch."""
    return torch.stack([sdpa(q[e], k[e], v[e], causal) for e in range(q.shape[0])])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_flash_attn_func_matches_sdpa_on_cpu(dtype):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 33, 8, 64, generator=g).to(dtype)
    k = torch.randn(2, 47, 2, 64, generator=g).to(dtype)
    v = torch.randn(2, 47, 2, 64, generator=g).to(dtype)
    out = flashcore.flash_attn_func(q, k, v, causal=True)
    assert out.dtype == dtype and out.shape == q.shape
    torch.testing.assert_close(out.float(), sdpa_batch(q, k, v, causal=True), atol=2e-2, rtol=2e-2)


def test_ops_pass_opcheck():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 5, 4, 64, generator=g).half()
    k = torch.randn(1, 9, 2, 64, generator=g).half()
    torch.library.opcheck(torch_ops.fwd, (q, k, k, None, True, -1, -1))
    cu = torch.tensor([0, 5], dtype=torch.int32)
    cuk = torch.tensor([0, 9], dtype=torch.int32)
    torch.library.opcheck(torch_ops.varlen_fwd, (q[0], k[0], k[0], cu, cuk, 5, 9, None, False, -1, -1))
    kc = torch.randn(1, 16, 2, 64, generator=g).half()
    vc = torch.randn(1, 16, 2, 64, generator=g).half()
    kn = torch.randn(1, 5, 2, 64, generator=g).half()
    lens = torch.tensor([3], dtype=torch.int32)
    torch.library.opcheck(torch_ops.kvcache, (q, kc, vc, kn, kn, None, None, lens, None, None,
                                              None, True, -1, -1, True, True))
    torch.library.opcheck(torch_ops.kvcache_read, (q, kc, vc, lens + 5, None, None, None, True,
                                                   -1, -1, True))


def test_compile_inductor_with_transformers_layout():
    # transformers hands over (B, H, S, D) tensors transposed to (B, S, H, D): strided inputs,
    # contiguous outputs; the fake implementations must say so or inductor's stride asserts fail.
    g = torch.Generator().manual_seed(4)
    q = torch.randn(1, 4, 6, 64, generator=g).half().transpose(1, 2)
    k = torch.randn(1, 2, 9, 64, generator=g).half().transpose(1, 2)

    def attn(q, k):
        return flashcore.flash_attn_func(q, k, k, causal=True) * 2

    torch.testing.assert_close(torch.compile(attn, fullgraph=True)(q, k), attn(q, k))


def test_compile_fullgraph_traces_the_ops():
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 4, 4, 64, generator=g).half()
    kc = torch.randn(1, 16, 2, 64, generator=g).half()
    vc = torch.randn(1, 16, 2, 64, generator=g).half()
    kn = torch.randn(1, 4, 2, 64, generator=g).half()
    lens = torch.tensor([5], dtype=torch.int32)

    def step(q, kc, vc, kn, lens):
        a = flashcore.flash_attn_func(q, kn, kn, causal=True)
        b = flashcore.flash_attn_with_kvcache(q, kc, vc, kn, kn, cache_seqlens=lens, causal=True)
        return a + b

    kc2, vc2 = kc.clone(), vc.clone()
    eager = step(q, kc, vc, kn, lens)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(q, kc2, vc2, kn, lens)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(kc2, kc)  # the compiled call wrote the cache in place, too
    torch.testing.assert_close(kc[0, 5:9], kn[0])


def fp8_problem(seed, device="cpu", paged=False):
    """q, k/v new rows (bf16), float8_e4m3fn caches holding normal values / per-head scales."""
    g = torch.Generator().manual_seed(seed)
    b, sq, hq, hkv, d, cap = 2, 3, 8, 2, 128, 64
    q = torch.randn(b, sq, hq, d, generator=g).bfloat16()
    kn, vn = torch.randn(b, sq, hkv, d, generator=g).bfloat16(), torch.randn(b, sq, hkv, d, generator=g).bfloat16()
    ks = (torch.rand(hkv, generator=g) * 0.04 + 0.01).float()
    vs = (torch.rand(hkv, generator=g) * 0.04 + 0.01).float()

    def cache(scale):
        x = torch.randn(b, cap, hkv, d, generator=g) / scale[None, None, :, None]
        return x.to(torch.float8_e4m3fn)

    kc, vc = cache(ks), cache(vs)
    table = None
    if paged:  # pages of 16 rows, shuffled
        perm = torch.randperm(b * cap // 16, generator=g).to(torch.int32)
        table = perm.view(b, cap // 16)
        kp = torch.empty(b * cap // 16, 16, hkv, d, dtype=torch.uint8)
        vp = torch.empty_like(kp)
        for e in range(b):
            for p in range(cap // 16):
                kp[table[e, p]] = kc[e, p * 16:(p + 1) * 16].view(torch.uint8)
                vp[table[e, p]] = vc[e, p * 16:(p + 1) * 16].view(torch.uint8)
        kc, vc = kp.view(torch.float8_e4m3fn), vp.view(torch.float8_e4m3fn)
    lens = torch.tensor([40, 9], dtype=torch.int32)
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    return tuple(map(to, (q, kn, vn, kc, vc, ks, vs, lens, table)))


def test_fp8_caches_through_the_ops_match_sdpa_on_what_is_stored():
    q, kn, vn, kc, vc, ks, vs, lens, _ = fp8_problem(11)
    before_k, before_v = kc.clone(), vc.clone()
    flashcore.kvcache_error_flag(q).zero_()
    out = flashcore.flash_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=lens, causal=True,
                                            k_scale=ks, v_scale=vs)
    assert int(flashcore.kvcache_error_flag(q)[0]) == 0
    assert kc.dtype == torch.float8_e4m3fn
    for e in range(q.shape[0]):
        L, sq = int(lens[e]), q.shape[1]
        # The new rows went in as e4m3(value / scale) (torch's conversion gives NaN past 464
        # where flashcore saturates: clamped first); the other rows are untouched.
        for cache, before, new, scale in ((kc, before_k, kn, ks), (vc, before_v, vn, vs)):
            want = (new[e].float() / scale[None, :, None]).clamp(-448, 448).to(torch.float8_e4m3fn)
            assert torch.equal(cache[e, L:L + sq].view(torch.uint8), want.view(torch.uint8))
            assert torch.equal(cache[e, :L].view(torch.uint8), before[e, :L].view(torch.uint8))
            assert torch.equal(cache[e, L + sq:].view(torch.uint8), before[e, L + sq:].view(torch.uint8))
        keys = kc[e, :L + sq].float() * ks[None, :, None]
        vals = vc[e, :L + sq].float() * vs[None, :, None]
        torch.testing.assert_close(out[e].float(), sdpa(q[e], keys, vals, causal=True),
                                   atol=2e-2, rtol=2e-2)


def test_fp8_ops_pass_opcheck():
    # test_schema compares inputs with arithmetic torch lacks for float8 on the CPU; the fake
    # tensor, autograd registration and AOT dispatch checks run.
    q, kn, vn, kc, vc, ks, vs, lens, _ = fp8_problem(12)
    utils = ("test_faketensor", "test_autograd_registration", "test_aot_dispatch_dynamic")
    torch.library.opcheck(torch_ops.kvcache, (q, kc, vc, kn, vn, None, None, lens, None, None,
                                              None, True, -1, -1, True, True, ks, vs),
                          test_utils=utils)
    torch.library.opcheck(torch_ops.kvcache_read, (q, kc, vc, lens + 3, None, None, None, True,
                                                   -1, -1, True, ks, vs), test_utils=utils)


def test_fp8_caches_compile_fullgraph():
    q, kn, vn, kc, vc, ks, vs, lens, _ = fp8_problem(14)

    def step(q, kc, vc):
        return flashcore.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens, causal=True,
                                                 k_scale=ks, v_scale=vs) * 2

    torch.testing.assert_close(torch.compile(step, fullgraph=True)(q, kc, vc), step(q, kc, vc))


@cuda
@pytest.mark.parametrize("paged", [False, True])
def test_fp8_caches_on_the_gpu_match_the_cpu(paged):
    cpu = fp8_problem(13, "cpu", paged)
    gpu = fp8_problem(13, "cuda", paged)
    outs, caches = [], []
    for q, kn, vn, kc, vc, ks, vs, lens, table in (cpu, gpu):
        flashcore.kvcache_error_flag(q).zero_()
        outs.append(flashcore.flash_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=lens,
                                                      block_table=table, causal=True,
                                                      k_scale=ks, v_scale=vs).cpu())
        assert int(flashcore.kvcache_error_flag(q)[0]) == 0
        caches.append((kc.view(torch.uint8).cpu(), vc.view(torch.uint8).cpu()))
    assert torch.equal(caches[0][0], caches[1][0]) and torch.equal(caches[0][1], caches[1][1])
    torch.testing.assert_close(outs[1].float(), outs[0].float(), atol=2e-2, rtol=2e-2)


@cuda
def test_cuda_graph_decode_step_replays_while_cache_seqlens_change():
    torch.manual_seed(3)
    dev = "cuda"
    b, hq, hkv, d, cap = 2, 8, 2, 128, 256
    kc = torch.randn(b, cap, hkv, d, device=dev, dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    q = torch.randn(b, 1, hq, d, device=dev, dtype=torch.bfloat16)
    kn = torch.randn(b, 1, hkv, d, device=dev, dtype=torch.bfloat16)
    vn = torch.randn_like(kn)
    lens = torch.tensor([10, 50], dtype=torch.int32, device=dev)
    # Warmed up on a side stream, as torch's docs do; torch.cuda.graph then captures on a stream
    # of its own, which must take the warm-up's workspace over: 4 (batch, kv head) units split
    # the 256 keys four ways, and without one the graph would run them unsplit.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = flashcore.flash_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=lens, causal=True)
    torch.cuda.current_stream().wait_stream(side)
    fi = flashcore.interface
    dev = fi._device_key(q)
    for held in (fi._workspaces, fi._graph_workspaces):  # earlier tests' buffers: kept, set aside
        for key in [k for k in held if k[:-1] == dev if k[-1] != side.cuda_stream]:
            fi._retired.append(held.pop(key))
    warm = fi._workspaces[(*dev, side.cuda_stream)]
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = flashcore.flash_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=lens, causal=True)
        capture_key = (*dev, torch.cuda.current_stream().cuda_stream)
    assert fi._graph_workspaces.get(capture_key) is warm, "the capture ran unsplit"
    for step in range(5):
        lens += 1
        q.normal_(), kn.normal_(), vn.normal_()
        graph.replay()
        torch.cuda.synchronize()
        for e in range(b):
            L = int(lens[e])
            ref = sdpa_batch(q[e:e + 1], kc[e:e + 1, :L + 1], vc[e:e + 1, :L + 1], causal=True)
            torch.testing.assert_close(kc[e, L], kn[e, 0])
            torch.testing.assert_close(out[e:e + 1].float(), ref, atol=2e-2, rtol=2e-2)
    assert int(flashcore.kvcache_error_flag(q)[0]) == 0
