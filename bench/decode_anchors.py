"""The ANCHORS decode rows through PyTorch SDPA (cuDNN and FA2 backends), timed as
flashcore-bench --grid decode times flashcore: 20 calls captured in a CUDA graph, K/V rotated
over a ring larger than twice the L2, microseconds = replay / 20, median of 20 replays.
Run it in the same call as flashcore-bench --grid decode: compare within one run."""
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

F = torch.nn.functional
ROWS = [("decode_b1_1k", 1, 1024), ("decode_b1_4k", 1, 4096), ("decode_b1_16k", 1, 16384),
        ("decode_b1_64k", 1, 65536), ("decode_b16_4k", 16, 4096)]
HQ, HKV, D = 32, 8, 128


def time_graph(call, n_sets):
    for i in range(3):
        call(i % n_sets)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(20):
            call(i % n_sets)
    times = []
    for rep in range(23):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        g.replay()
        e1.record()
        e1.synchronize()
        if rep >= 3:
            times.append(e0.elapsed_time(e1) * 1e3 / 20)
    return sorted(times)[len(times) // 2]


def main():
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, cuDNN "
          f"{torch.backends.cudnn.version()}")
    print(f"{'name':16} {'cudnn us':>10} {'fa2 us':>10}")
    for name, b, length in ROWS:
        set_bytes = 2 * b * length * HKV * D * 2
        n = max(2, min(64, 2 * l2 // set_bytes + 1))
        q = torch.randn(b, HQ, 1, D, device="cuda", dtype=torch.bfloat16)
        kv = [(torch.randn(b, HKV, length, D, device="cuda", dtype=torch.bfloat16),
               torch.randn(b, HKV, length, D, device="cuda", dtype=torch.bfloat16))
              for _ in range(n)]
        out = {}
        for label, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION),
                               ("fa2", SDPBackend.FLASH_ATTENTION)):
            try:
                with sdpa_kernel([backend]):
                    out[label] = "%.2f" % time_graph(
                        lambda i: F.scaled_dot_product_attention(q, *kv[i], enable_gqa=True), n)
            except Exception as ex:  # a backend that refuses the shape says why
                out[label] = type(ex).__name__
        print(f"{name:16} {out['cudnn']:>10} {out['fa2']:>10}")
        del kv


if __name__ == "__main__":
    main()
