"""flash_attn_func on JAX GPU arrays (the XLA FFI custom call) next to JAX's own attention,
jax.nn.dot_product_attention with the cuDNN and XLA implementations, in one process: each a
jitted forward, bf16, q/k/v rotated over sets larger than the L2. Time: calls dispatched back
to back, one block_until_ready at the end, wall time / calls; median of 7 rounds. JAX exposes
no CUDA events, so dispatch overhead counts, hidden behind the kernels at these shapes.
Decode rows: flash_attn_with_kvcache's cache read (one query token, a full cache) against
dot_product_attention with key_value_seq_lengths; 20 calls, each on its own query and cache,
inside one jitted function, so one dispatch covers them (time / 20)."""
import os
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import flashcore  # noqa: E402

ROWS = [  # name, batch, seqlen, heads q, heads kv, head_dim, causal
    ("b2_s4k_gqa_causal", 2, 4096, 32, 8, 128, True),
    ("b2_s4k_gqa", 2, 4096, 32, 8, 128, False),
    ("b1_s16k_causal", 1, 16384, 32, 32, 128, True),
    ("b4_s2k_d64_causal", 4, 2048, 32, 32, 64, True),
]
DECODE_ROWS = [  # name, batch, cache length, heads q, heads kv, head_dim
    ("b1_c256_gqa_decode", 1, 256, 32, 8, 128),  # next to nothing to read: a call's fixed cost
    ("b1_c4k_gqa_decode", 1, 4096, 32, 8, 128),
    ("b1_c16k_gqa_decode", 1, 16384, 32, 8, 128),
]
DECODE_CALLS = 20
L2_BYTES = 50 << 20


def time_it(fn, sets, calls=20, rounds=7):
    for i in range(3):
        fn(*sets[i % len(sets)]).block_until_ready()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for i in range(calls):
            out = fn(*sets[i % len(sets)])
        out.block_until_ready()
        times.append((time.perf_counter() - t0) / calls)
    return sorted(times)[len(times) // 2] * 1e6


def main():
    gpu = jax.devices("gpu")[0]
    print(f"{gpu.device_kind}, jax {jax.__version__}, bf16; microseconds a call, TFLOP/s")
    print(f"{'name':22} {'flashcore':>10} {'cudnn':>10} {'xla':>10}  {'fc TF/s':>8}")
    rng = np.random.default_rng(0)
    for name, b, s, hq, hkv, d, causal in ROWS:
        one = 2 * b * s * (hq + 2 * hkv) * d
        n_sets = max(2, -(-2 * L2_BYTES // one))
        sets = [[jax.device_put(rng.standard_normal((b, s, h, d), np.float32), gpu)
                 .astype(jnp.bfloat16) for h in (hq, hkv, hkv)] for _ in range(n_sets)]
        fc = jax.jit(lambda q, k, v: flashcore.flash_attn_func(q, k, v, causal=causal))
        row = [time_it(fc, sets)]
        for impl in ("cudnn", "xla"):
            f = jax.jit(lambda q, k, v, impl=impl: jax.nn.dot_product_attention(
                q, k, v, is_causal=causal, implementation=impl))
            try:
                want = f(*sets[0]).astype(jnp.float32)
                got = fc(*sets[0]).astype(jnp.float32)
                err = float(jnp.abs(want - got).max())
                assert err < 5e-2, f"{impl}: max |difference| {err}"
                row.append(time_it(f, sets))
            except AssertionError:  # a wrong result stops the run, not a missing backend
                raise
            except Exception as e:  # noqa: BLE001  (an implementation JAX cannot run here)
                print(f"  {name} {impl}: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
                row.append(float("nan"))
        flops = 4 * b * hq * s * s * d / (2 if causal else 1)
        print(f"{name:22} {row[0]:10.1f} {row[1]:10.1f} {row[2]:10.1f}  "
              f"{flops / row[0] / 1e6:8.0f}")
    decode_rows(gpu, rng)


def decode_rows(gpu, rng):
    print(f"{'name':22} {'flashcore':>10} {'cudnn':>10} {'xla':>10}  {'fc TB/s':>8}")
    for name, b, s, hq, hkv, d in DECODE_ROWS:
        one = 2 * b * s * hkv * d * 2  # bytes of K and V
        # A cache a call too: XLA merges dots that share an operand, so two calls on one cache
        # could read it once.
        caches = [[jax.device_put(rng.standard_normal((b, s, hkv, d), np.float32), gpu)
                   .astype(jnp.bfloat16) for _ in range(2)] for _ in range(DECODE_CALLS)]
        # A query a call: identical calls would be merged by XLA (common subexpressions).
        qs = [jax.device_put(rng.standard_normal((b, 1, hq, d), np.float32), gpu)
              .astype(jnp.bfloat16) for _ in range(DECODE_CALLS)]
        q = qs[0]
        lens = jax.device_put(np.full((b,), s, np.int32), gpu)
        reads = {
            "flashcore": lambda q, k, v, n: flashcore.flash_attn_with_kvcache(q, k, v,
                                                                            cache_seqlens=n),
            "cudnn": lambda q, k, v, n: jax.nn.dot_product_attention(
                q, k, v, key_value_seq_lengths=n, implementation="cudnn"),
            "xla": lambda q, k, v, n: jax.nn.dot_product_attention(
                q, k, v, key_value_seq_lengths=n, implementation="xla"),
        }
        row = []
        for impl, read in reads.items():
            many = jax.jit(lambda qs, n, cs, read=read: [
                read(qs[i], *cs[i], n) for i in range(DECODE_CALLS)])
            try:
                if impl != "flashcore":
                    want = read(q, *caches[0], lens).astype(jnp.float32)
                    got = reads["flashcore"](q, *caches[0], lens).astype(jnp.float32)
                    err = float(jnp.abs(want - got).max())
                    assert err < 5e-2, f"{impl}: max |difference| {err}"
                for _ in range(3):
                    jax.block_until_ready(many(qs, lens, caches))
                times = []
                for _ in range(7):
                    t0 = time.perf_counter()
                    jax.block_until_ready(many(qs, lens, caches))
                    times.append((time.perf_counter() - t0) / DECODE_CALLS)
                row.append(sorted(times)[3] * 1e6)
            except AssertionError:  # a wrong result stops the run, not a missing backend
                raise
            except Exception as e:  # noqa: BLE001  (an implementation JAX cannot run here)
                print(f"  {name} {impl}: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
                row.append(float("nan"))
        print(f"{name:22} {row[0]:10.1f} {row[1]:10.1f} {row[2]:10.1f}  "
              f"{one / row[0] / 1e6:8.2f}")


if __name__ == "__main__":
    main()
