"""The C ABI (include/flashcore/flashcore_c.h) from Python through ctypes, on host memory: the
CPU reference backend, so it runs on machines without a GPU. Uses the ctypes mirror that
bench/side_by_side.py times the CUDA backend with, so a drift between the two fails here."""
import ctypes
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "bench"))
from side_by_side import FwdArgs, Flashcore  # noqa: E402

from references import attention  # noqa: E402

LIB = os.environ.get("FLASHCORE_LIB", os.path.join(REPO, "build", "libflashcore.so"))


@pytest.fixture(scope="module")
def fc():
    if not os.path.exists(LIB):
        pytest.fail(f"{LIB} not built (set FLASHCORE_LIB)")
    return Flashcore(LIB)  # also checks sizeof(FwdArgs) against the library's


def to_bf16(x):
    """float -> bf16 bit patterns (uint16), round to nearest even."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16(h):
    return (h.astype(np.uint32) << 16).view(np.float32)


def reference(q, k, v, causal):
    """float64 attention on (B, S, H, D) arrays (references.py, one entry at a time)."""
    return np.stack([attention(q[e], k[e], v[e], causal)[0] for e in range(q.shape[0])])


def args_for(q, k, v, o, causal, backend):
    a = FwdArgs(q=q.ctypes.data, k=k.ctypes.data, v=v.ctypes.data, o=o.ctypes.data)
    for name, t in (("q", q), ("k", k), ("v", v), ("o", o)):
        getattr(a, name + "_strides")[:] = [s // t.itemsize for s in t.strides[:3]]
    a.dtype = 1
    a.batch, a.seqlen_q, a.num_heads_q, a.head_dim = q.shape
    a.seqlen_k, a.num_heads_kv = k.shape[1], k.shape[2]
    a.causal, a.window_left, a.window_right = int(causal), -1, -1
    a.backend, a.device = backend, -1
    return a


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("backend", [0, 1])  # auto (host memory -> reference), reference
def test_matches_numpy(fc, causal, backend):
    rng = np.random.default_rng(7)
    shape_q, shape_k = (2, 37, 4, 64), (2, 50, 2, 64)
    q, k, v = (to_bf16(rng.standard_normal(s)) for s in (shape_q, shape_k, shape_k))
    o = np.full(shape_q, 0x7FC0, dtype=np.uint16)  # NaN: unwritten outputs fail
    a = args_for(q, k, v, o, causal, backend)
    assert fc.kernel(a) == "reference"
    assert fc.workspace_size(a) == 0  # the CPU reference takes no workspace
    fc.run(a, None)
    want = reference(*(from_bf16(t).astype(np.float64) for t in (q, k, v)), causal)
    got = from_bf16(o)
    assert not np.isnan(got).any()
    assert np.abs(got - want).max() < 2e-2  # bf16 output rounding: |O| <= ~4, ulp 2^-6


def test_error_names_the_argument(fc):
    q = np.zeros((1, 4, 1, 96), dtype=np.uint16)
    a = args_for(q, q, q, q.copy(), False, 1)
    err = ctypes.create_string_buffer(256)
    rc = fc.lib.flashcore_fwd(ctypes.byref(a), None, err, 256)
    assert rc == 1  # kInvalidArgument
    assert b"head_dim" in err.value
