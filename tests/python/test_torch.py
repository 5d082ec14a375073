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
