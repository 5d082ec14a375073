#!/usr/bin/env python3
"""flashcore against PyTorch SDPA (cuDNN, FlashAttention-2, memory-efficient) in one process.

flashcore is called through its C ABI (libflashcore.so, ctypes) on (B, S, H, D) tensors; SDPA
gets the (B, H, S, D) transposed view of the same tensors. Times are CUDA-event medians over
iterations that rotate through a ring of input sets larger than twice the L2 cache, taken in
--rounds rounds that visit every backend in turn, so clock or thermal drift during a row
reaches all of them alike.
Needs PyTorch with CUDA; exits with code 2 without it.
"""
import argparse
import contextlib
import ctypes
import datetime
import json
import math
import os
import re
import statistics
import subprocess
import sys
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ANCHORS.md prefill grid: (D, S, causal), B = 16384 / S, H = 2048 / D, bf16.
PREFILL = [(64, 512, False), (64, 1024, False), (64, 1024, True), (64, 4096, False),
           (64, 16384, False), (64, 16384, True), (128, 512, False), (128, 512, True),
           (128, 1024, False), (128, 1024, True), (128, 4096, False), (128, 4096, True),
           (128, 16384, False), (128, 16384, True), (256, 1024, False), (256, 4096, False),
           (256, 16384, False), (256, 16384, True)]
# ANCHORS.md small shapes: (B, H, S, D), fp16, non-causal.
SMALL = [(32, 8, 128, 64), (2, 8, 512, 64), (8, 96, 512, 64), (1, 32, 512, 128)]


class FwdArgs(ctypes.Structure):
    """Mirror of flashcore_fwd_args (include/flashcore/flashcore_c.h); the size is checked."""
    _fields_ = [("q", ctypes.c_void_p), ("k", ctypes.c_void_p), ("v", ctypes.c_void_p),
                ("o", ctypes.c_void_p),
                ("q_strides", ctypes.c_int64 * 3), ("k_strides", ctypes.c_int64 * 3),
                ("v_strides", ctypes.c_int64 * 3), ("o_strides", ctypes.c_int64 * 3),
                ("lse", ctypes.c_void_p), ("dtype", ctypes.c_int32),
                ("batch", ctypes.c_int64), ("seqlen_q", ctypes.c_int64),
                ("seqlen_k", ctypes.c_int64), ("num_heads_q", ctypes.c_int64),
                ("num_heads_kv", ctypes.c_int64), ("head_dim", ctypes.c_int64),
                ("cu_seqlens_q", ctypes.c_void_p), ("cu_seqlens_k", ctypes.c_void_p),
                ("softmax_scale", ctypes.c_float), ("causal", ctypes.c_int32),
                ("window_left", ctypes.c_int64), ("window_right", ctypes.c_int64),
                ("backend", ctypes.c_int32), ("device", ctypes.c_int32),
                ("family", ctypes.c_int32), ("total_q", ctypes.c_int64),
                ("total_k", ctypes.c_int64), ("workspace", ctypes.c_void_p)]


class Flashcore:
    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        self.lib.flashcore_fwd_args_size.restype = ctypes.c_size_t
        self.lib.flashcore_fwd.argtypes = [ctypes.POINTER(FwdArgs), ctypes.c_void_p,
                                           ctypes.c_char_p, ctypes.c_size_t]
        self.lib.flashcore_workspace_size.argtypes = [ctypes.POINTER(FwdArgs)]
        self.lib.flashcore_workspace_size.restype = ctypes.c_int64
        self.lib.flashcore_query_kernel.argtypes = [ctypes.POINTER(FwdArgs), ctypes.c_char_p,
                                                    ctypes.c_size_t, ctypes.c_char_p,
                                                    ctypes.c_size_t]
        if self.lib.flashcore_fwd_args_size() != ctypes.sizeof(FwdArgs):
            sys.exit(f"{path}: flashcore_fwd_args is {self.lib.flashcore_fwd_args_size()} bytes,"
                     f" the ctypes mirror {ctypes.sizeof(FwdArgs)}: rebuild or update the script")
        self.err = ctypes.create_string_buffer(1024)

    @staticmethod
    def args(q, k, v, o, causal, device):
        """Arguments for (B, S, H, D) torch tensors; strides in elements."""
        import torch
        a = FwdArgs(q=q.data_ptr(), k=k.data_ptr(), v=v.data_ptr(), o=o.data_ptr())
        for name, t in (("q", q), ("k", k), ("v", v), ("o", o)):
            getattr(a, name + "_strides")[:] = t.stride()[:3]
        a.dtype = {torch.float16: 0, torch.bfloat16: 1}[q.dtype]
        a.batch, a.seqlen_q, a.num_heads_q, a.head_dim = q.shape
        a.seqlen_k, a.num_heads_kv = k.shape[1], k.shape[2]
        a.causal, a.window_left, a.window_right = int(causal), -1, -1
        a.backend, a.device = 2, device  # CUDA
        return a

    def check(self, rc):
        if rc != 0:
            raise RuntimeError(f"flashcore error {rc}: {self.err.value.decode()}")

    def kernel(self, a):
        name = ctypes.create_string_buffer(256)
        self.check(self.lib.flashcore_query_kernel(ctypes.byref(a), name, 256, self.err, 1024))
        return name.value.decode()

    def workspace_size(self, a):
        return self.lib.flashcore_workspace_size(ctypes.byref(a))

    def run(self, a, stream):
        self.check(self.lib.flashcore_fwd(ctypes.byref(a), stream, self.err, 1024))


def git_revision():
    """FLASHCORE_GIT_REV when set (a copied tree may carry a stale .git), else git."""
    if os.environ.get("FLASHCORE_GIT_REV"):
        return os.environ["FLASHCORE_GIT_REV"]
    try:
        return subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def samples_us(torch, fn, n_sets, warmup, iters):
    """CUDA-event times (µs) of fn(set_index) over iters calls after warmup calls, rotating
    through the ring."""
    for i in range(warmup):
        fn(i % n_sets)
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
          for _ in range(iters)]
    for i, (start, end) in enumerate(ev):
        start.record()
        fn((warmup + i) % n_sets)
        end.record()
    torch.cuda.synchronize()
    return [1e3 * s.elapsed_time(e) for s, e in ev]


def time_backends(torch, backends, sdpa_kernel, n_sets, args, errors):
    """Median µs per backend over args.rounds rounds; in each round every backend still
    standing times args.iters // args.rounds calls, so drift during a row reaches all of them
    alike. backends: (name, SDPA backend or None, fn). A RuntimeError records the backend's
    first error line in errors, and its time is None."""
    samples = {name: [] for name, _, _ in backends}
    per_round = max(1, args.iters // args.rounds)
    for _ in range(args.rounds):
        for name, be, fn in backends:
            if name in errors:
                continue
            try:
                with sdpa_kernel([be]) if be is not None else contextlib.nullcontext():
                    samples[name] += samples_us(torch, fn, n_sets, args.warmup, per_round)
            except RuntimeError as e:
                errors[name] = str(e).splitlines()[0] if str(e) else "failed"
    return {name: statistics.median(samples[name]) if samples[name] and name not in errors
            else None for name, _, _ in backends}


def short(s):
    return f"{s // 1024}k" if s >= 1024 and s % 1024 == 0 else str(s)


def make_rows(which):
    rows = []
    if which in ("prefill", "all"):
        rows += [dict(name=f"prefill_d{d}_s{short(s)}" + ("_causal" if c else ""), b=16384 // s,
                      h=2048 // d, s=s, d=d, causal=c, dtype="bf16") for d, s, c in PREFILL]
    if which in ("small", "all"):
        rows += [dict(name=f"small_b{b}_h{h}_s{s}_d{d}", b=b, h=h, s=s, d=d, causal=False,
                      dtype="fp16") for b, h, s, d in SMALL]
    return rows


def bench_row(torch, fc, row, args):
    F = torch.nn.functional
    from torch.nn.attention import SDPBackend, sdpa_kernel
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[row["dtype"]]
    b, h, s, d, causal = row["b"], row["h"], row["s"], row["d"], row["causal"]
    dev = torch.cuda.current_device()
    set_bytes = 4 * b * s * h * d * 2  # q, k, v, o
    l2 = max(getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", 0), 50 << 20)
    free, _ = torch.cuda.mem_get_info()
    n_sets = max(2, min(math.ceil(2 * l2 / set_bytes) + 1, int(0.5 * free) // set_bytes, 512))
    ring = []
    for _ in range(n_sets):  # (B, S, H, D) tensors and their (B, H, S, D) views for SDPA
        q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=dtype) for _ in range(3))
        o = torch.empty_like(q)
        ring.append(dict(fc=Flashcore.args(q, k, v, o, causal, dev), o=o, keep=(q, k, v),
                         sdpa=tuple(t.transpose(1, 2) for t in (q, k, v))))
    # One zero-filled workspace serves every call of the row (one stream; flashcore.h).
    ws_bytes = fc.workspace_size(ring[0]["fc"])
    workspace = torch.zeros(max(ws_bytes, 1), dtype=torch.uint8, device="cuda")
    for r in ring:
        r["fc"].workspace = workspace.data_ptr() if ws_bytes else None
    stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
    out = dict(row, ring_sets=n_sets, kernel=fc.kernel(ring[0]["fc"]), workspace_bytes=ws_bytes,
               us={}, errors={})

    # Correctness before timing: flashcore (output poisoned with NaN) against FA2, else math.
    ring[0]["o"].fill_(float("nan"))
    fc.run(ring[0]["fc"], stream)
    ref, out["check_against"] = None, None
    for name, be in (("fa2", SDPBackend.FLASH_ATTENTION), ("math", SDPBackend.MATH)):
        if name == "math" and b * h * s * s * 4 > (4 << 30):
            break
        try:
            with sdpa_kernel([be]):
                ref = F.scaled_dot_product_attention(*ring[0]["sdpa"], is_causal=causal)
            out["check_against"] = name
            break
        except RuntimeError:
            continue
    if ref is None:
        out["max_abs_diff"], out["check"] = None, "no reference"
    else:
        diff = (ring[0]["o"].float() - ref.transpose(1, 2).float()).abs().max().item()
        tol = 2e-2 if dtype == torch.bfloat16 else 1e-2
        out["max_abs_diff"] = diff
        out["check"] = "pass" if diff <= tol else "FAIL"  # NaN compares false: fails
        if out["check"] == "FAIL":
            print(f"!!! {row['name']}: flashcore differs from SDPA {out['check_against']} by "
                  f"{diff} (tolerance {tol})", file=sys.stderr)
        del ref

    def run_fc(i):
        fc.run(ring[i]["fc"], stream)

    def run_sdpa(i):  # the backend is the one the caller's sdpa_kernel context allows
        F.scaled_dot_product_attention(*ring[i]["sdpa"], is_causal=causal)
    backends = [("flashcore", None, run_fc), ("cudnn", SDPBackend.CUDNN_ATTENTION, run_sdpa),
                ("fa2", SDPBackend.FLASH_ATTENTION, run_sdpa),
                ("efficient", SDPBackend.EFFICIENT_ATTENTION, run_sdpa)]
    out["us"] = time_backends(torch, backends, sdpa_kernel, n_sets, args, out["errors"])
    flops = 4.0 * b * h * s * s * d / (2 if causal else 1)
    out["tflops"] = {k: (flops / (t * 1e-6) / 1e12 if t else None) for k, t in out["us"].items()}
    tf = out["tflops"]
    out["ratio_fa2"] = tf["flashcore"] / tf["fa2"] if tf["fa2"] else None
    out["ratio_cudnn"] = tf["flashcore"] / tf["cudnn"] if tf["cudnn"] else None
    return out


def fmt(x, spec):
    return format(x, spec) if x is not None else "n/a".rjust(len(format(0.0, spec)))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", default=os.path.join(REPO, "build", "libflashcore.so"))
    ap.add_argument("--rows", choices=["prefill", "small", "all"], default="prefill")
    ap.add_argument("--filter", default="", help="only rows whose name contains this")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=10, help="per backend and round")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds over the backends; each times iters/rounds calls")
    ap.add_argument("--out", help="JSON path or folder (default bench/results/side_by_side_<device>_<date>.json)")
    args = ap.parse_args()
    try:
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: F401 (checks presence)
    except ImportError as e:
        print(f"side_by_side.py needs PyTorch with CUDA ({e})", file=sys.stderr)
        sys.exit(2)
    if not torch.cuda.is_available():
        print("side_by_side.py needs a CUDA GPU visible to PyTorch", file=sys.stderr)
        sys.exit(2)
    warnings.filterwarnings("ignore", category=UserWarning)  # SDPA backend refusals
    fc = Flashcore(args.lib)
    device = torch.cuda.get_device_name()
    today = datetime.date.today().isoformat()
    rows = [r for r in make_rows(args.rows) if args.filter in r["name"]]
    print(f"{device}; torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, "
          f"flashcore git {git_revision()}; {args.rounds} rounds of warmup {args.warmup}, "
          f"iters {max(1, args.iters // args.rounds)} per backend")
    print("layout: flashcore takes (B,S,H,D) tensors; SDPA gets the (B,H,S,D) transposed view "
          "of the same tensors")
    print(f"{'name':<24} {'B':>3} {'H':>3} {'S':>6} {'D':>4} {'causal':>6} | {'flashcore':>9} "
          f"{'cuDNN':>7} {'FA2':>7} {'eff':>7} TF/s | {'fc/FA2':>6} {'fc/cuDNN':>8} | "
          f"{'fc us':>8} check")
    results, failed = [], False
    for row in rows:
        try:
            r = bench_row(torch, fc, row, args)
        except RuntimeError as e:
            print(f"{row['name']:<24} ERROR: {e}")
            results.append(dict(row, error=str(e)))
            failed = True
            continue
        finally:
            torch.cuda.empty_cache()
        failed |= r["check"] == "FAIL"
        tf = r["tflops"]
        print(f"{r['name']:<24} {r['b']:>3} {r['h']:>3} {r['s']:>6} {r['d']:>4} "
              f"{'yes' if r['causal'] else 'no':>6} | {fmt(tf['flashcore'], '9.1f')} "
              f"{fmt(tf['cudnn'], '7.1f')} {fmt(tf['fa2'], '7.1f')} {fmt(tf['efficient'], '7.1f')}"
              f"      | {fmt(r['ratio_fa2'], '6.2f')} {fmt(r['ratio_cudnn'], '8.2f')} | "
              f"{fmt(r['us']['flashcore'], '8.1f')} {r['check']} "
              f"({r['check_against']} {fmt(r['max_abs_diff'], '.2g')}) {r['kernel']}", flush=True)
        results.append(r)
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    name = f"side_by_side_{slug}_{today}.json"
    path = args.out or os.path.join(REPO, "bench", "results", name)
    if os.path.isdir(path):
        path = os.path.join(path, name)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    meta = dict(device=device, date=today, torch=torch.__version__,
                cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                git_revision=git_revision(), library=os.path.abspath(args.lib),
                layout="flashcore (B,S,H,D); SDPA the (B,H,S,D) transposed view of the same "
                       "tensors", timing=f"CUDA events, median over {args.rounds} rounds of "
                                         f"{max(1, args.iters // args.rounds)} calls per backend "
                                         f"(each after {args.warmup} warmup calls), backends "
                                         f"interleaved per round, inputs rotated over a ring "
                                         f"> 2x L2", rows=results)
    with open(path, "w") as f:
        json.dump(meta, f, indent=1)
    print(f"wrote {path}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
