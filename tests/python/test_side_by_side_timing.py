"""bench/side_by_side.py's timing loop, on fakes of torch's CUDA events: the backends are
visited in turn every round (so drift reaches all of them alike), each round times
iters // rounds calls after its warm-up, a backend that raises is dropped with its error, and
the reported time is the median of all of a backend's samples."""
import contextlib
import os
import sys
import types

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "bench"))
from side_by_side import time_backends  # noqa: E402


class FakeClock:
    """Each call of a timed function advances the clock by the duration it returns."""

    def __init__(self):
        self.now_ms = 0.0


def fake_torch(clock):
    class Event:
        def __init__(self, enable_timing=False):
            self.t = None

        def record(self):
            self.t = clock.now_ms

        def elapsed_time(self, end):
            return end.t - self.t

    cuda = types.SimpleNamespace(Event=Event, synchronize=lambda: None)
    return types.SimpleNamespace(cuda=cuda)


def test_rounds_interleave_backends_and_take_the_median():
    clock = FakeClock()
    calls = []
    active = {"be": None}

    @contextlib.contextmanager
    def sdpa_kernel(backends):
        active["be"] = backends[0]
        try:
            yield
        finally:
            active["be"] = None

    def timed(name, ms_by_round):
        state = {"n": 0}

        def fn(i):
            calls.append((name, active["be"], i))
            # duration in ms: grows per call, so the median depends on which calls were timed
            clock.now_ms += ms_by_round(state["n"])
            state["n"] += 1
        return fn

    def broken(i):
        raise RuntimeError("no kernel for this shape\nmore detail")

    backends = [("flashcore", None, timed("flashcore", lambda n: 1.0 + n)),
                ("cudnn", "CUDNN", timed("cudnn", lambda n: 2.0)),
                ("efficient", "EFF", broken)]
    args = types.SimpleNamespace(rounds=3, iters=6, warmup=1)
    errors = {}
    us = time_backends(fake_torch(clock), backends, sdpa_kernel, n_sets=2, args=args,
                       errors=errors)

    # 3 rounds x (1 warm-up + 2 timed) calls per working backend, visited in turn.
    order = [name for name, _, _ in calls]
    assert order == ["flashcore"] * 3 + ["cudnn"] * 3 + ["flashcore"] * 3 + ["cudnn"] * 3 + \
        ["flashcore"] * 3 + ["cudnn"] * 3
    # flashcore runs outside any SDPA backend context, cudnn inside its own.
    assert all(be is None for name, be, _ in calls if name == "flashcore")
    assert all(be == "CUDNN" for name, be, _ in calls if name == "cudnn")
    # flashcore's timed calls are its calls 1, 2, 4, 5, 7, 8 (1 + n ms): median of
    # {2, 3, 5, 6, 8, 9} ms is 5.5 ms = 5500 us.
    assert us["flashcore"] == 5500.0
    assert us["cudnn"] == 2000.0
    assert us["efficient"] is None
    assert errors == {"efficient": "no kernel for this shape"}


def test_fewer_iters_than_rounds_still_times_one_call_per_round():
    clock = FakeClock()
    n = {"calls": 0}

    def fn(i):
        n["calls"] += 1
        clock.now_ms += 1.0

    args = types.SimpleNamespace(rounds=4, iters=2, warmup=0)
    us = time_backends(fake_torch(clock), [("flashcore", None, fn)], None, 1, args, {})
    assert n["calls"] == 4 and us["flashcore"] == 1000.0
