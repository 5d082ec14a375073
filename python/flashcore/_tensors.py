"""Framework-neutral helpers: allocate outputs next to an input tensor (same framework, same
device) and find the stream a call should run on. flashcore takes any DLPack tensor; outputs
are made with the caller's own framework so they come back as the caller's type.

flash_attn_func, flash_attn_varlen_func and the cache read on JAX arrays are XLA custom calls
(_jax.py) where the package has them. Other calls with a JAX q (the cache function with k/v or
with torch/numpy caches, or every call in a package built without jax) take host arrays only:
JAX arrays are immutable, so a call writes into numpy arrays of its own and hands JAX copies
afterwards (as_caller); a bfloat16 output is a uint16 array the core writes through a bfloat16
view (numpy has no bfloat16 that DLPack carries)."""


def framework(x):
    return type(x).__module__.split(".")[0]


def is_jax(x):
    return framework(x) in ("jax", "jaxlib")


def _check_jax_host(like):
    import jax

    from . import _jax

    custom = ("flash_attn_func, flash_attn_varlen_func and the cache read with JAX caches, XLA "
              "custom calls, take them" if _jax.available()
              else "this package was built without jax: no XLA custom calls")
    if isinstance(like, jax.core.Tracer):  # jax.jit, grad: no buffer to read
        raise TypeError(
            f"flashcore takes concrete host JAX arrays, not traced ones (jax.jit, jax.grad; "
            f"{custom}): call it outside the traced function"
        )
    platforms = {d.platform for d in like.devices()}
    if platforms != {"cpu"}:
        raise TypeError(
            f"flashcore takes JAX arrays on the host only (they run on the CPU reference); this "
            f"one is on {sorted(platforms)} ({custom}). JAX's buffers are immutable and its "
            f"stream is its own; pass torch or cupy arrays (torch.from_dlpack takes a JAX GPU "
            f"array without a copy)"
        )


def _unsupported_framework(like):
    return TypeError(
        f"flashcore allocates outputs for torch, numpy, cupy and host JAX arrays; got "
        f"{type(like).__name__}"
    )


class _Bf16Host:
    """A numpy uint16 array the core fills with bfloat16 values: passed to the core as a
    bfloat16 view, handed to JAX as bfloat16."""

    def __init__(self, shape):
        import numpy

        self.bits = numpy.empty(shape, dtype=numpy.uint16)
        self.shape = tuple(shape)

    def __dlpack__(self, stream=None, **kwargs):
        from . import _flashcore

        return _flashcore.bf16_view(self.bits, self.bits)  # a DLPack capsule

    def __dlpack_device__(self):
        return (1, 0)  # kDLCPU


def as_caller(like, x):
    """x (an output made by empty() for like) as like's framework's type: a JAX array (a copy,
    on like's device) for JAX callers, x itself otherwise."""
    if x is None or not is_jax(like):
        return x
    import jax
    import jax.numpy as jnp

    device = next(iter(like.devices()))  # the caller's host device, not JAX's default (a GPU)
    if isinstance(x, _Bf16Host):
        return jax.device_put(x.bits, device).view(jnp.bfloat16)
    return jax.device_put(x, device)


def empty(like, shape, float32=False):
    """An uninitialised tensor of `shape` with like's dtype (or float32), framework and device."""
    fw = framework(like)
    if fw == "torch":
        import torch

        return torch.empty(shape, dtype=torch.float32 if float32 else like.dtype, device=like.device)
    if fw == "numpy":
        import numpy

        return numpy.empty(shape, dtype=numpy.float32 if float32 else like.dtype)
    if fw == "cupy":
        import cupy

        with cupy.cuda.Device(like.device.id):
            return cupy.empty(shape, dtype=cupy.float32 if float32 else like.dtype)
    if is_jax(like):
        _check_jax_host(like)
        import numpy

        if float32:
            return numpy.empty(shape, dtype=numpy.float32)
        if str(like.dtype) == "bfloat16":
            return _Bf16Host(shape)
        return numpy.empty(shape, dtype=str(like.dtype))
    raise _unsupported_framework(like)


def zeros(like, shape, dtype):
    """A zero-filled tensor of `shape` and dtype ("int32" or "uint8") next to like."""
    fw = framework(like)
    if fw == "torch":
        import torch

        return torch.zeros(shape, dtype=getattr(torch, dtype), device=like.device)
    if fw == "numpy":
        import numpy

        return numpy.zeros(shape, dtype=dtype)
    if fw == "cupy":
        import cupy

        with cupy.cuda.Device(like.device.id):
            return cupy.zeros(shape, dtype=dtype)
    if is_jax(like):  # the caller's own buffers (error flag, cache_seqlens) are numpy
        _check_jax_host(like)
        import numpy

        return numpy.zeros(shape, dtype=dtype)
    raise _unsupported_framework(like)


def persistent_zeros(like, shape, dtype):
    """zeros() for a buffer the package keeps for the process's life (the KV error flag, the
    split workspaces). A torch CUDA one is made on a helper thread: torch's CUDA-graph trees
    (torch.compile mode="reduce-overhead", which transformers uses for static caches) route
    every allocation of the warming-up thread into the graph's private pool and then refuse
    live blocks there that no graph output accounts for. The helper waits for its zero fill,
    so the buffer is ready for any stream."""
    if framework(like) != "torch" or not like.is_cuda:
        return zeros(like, shape, dtype)
    import threading

    import torch

    made = []

    def make():
        try:
            with torch.cuda.device(like.device):
                t = zeros(like, shape, dtype)
                torch.cuda.current_stream().synchronize()
            made.append(t)
        except BaseException as e:  # re-raised on the caller's thread
            made.append(e)

    helper = threading.Thread(target=make, name="flashcore-alloc")
    helper.start()
    helper.join()
    if isinstance(made[0], BaseException):
        raise made[0]
    return made[0]


def full_int32(like, n, value):
    t = zeros(like, (n,), "int32")
    t[:] = value
    return t


def device_key(like):
    """Identifies like's framework and device: the key of flashcore's per-device buffers."""
    fw = framework(like)
    if fw == "torch":
        return fw, str(like.device)
    if fw == "cupy":
        return fw, like.device.id
    return fw, "cpu"


def stream_of(like):
    """The framework's current CUDA stream for like's device, as an integer (0: host or default)."""
    fw = framework(like)
    if fw == "torch" and like.is_cuda:
        import torch

        return torch.cuda.current_stream(like.device).cuda_stream
    if fw == "cupy":
        import cupy

        with cupy.cuda.Device(like.device.id):
            return cupy.cuda.get_current_stream().ptr
    return 0


def for_call(args, stream):
    """args for one core call: CuPy arrays become DLPack capsules made for `stream` (the call's
    own). nanobind asks __dlpack__() without a stream, which DLPack reads as the legacy default
    stream; CuPy then orders that stream after its current one with an event, which a stream
    being captured into a CUDA graph refuses. A capsule is used once, so make them per call."""
    dl_stream = stream or 1  # DLPack's CUDA stream 0 is ambiguous; CuPy's null stream is legacy (1)
    return [x.__dlpack__(stream=dl_stream) if framework(x) == "cupy" else x for x in args]


def capturing(like):
    """True while like's framework is capturing a CUDA graph on the current stream."""
    fw = framework(like)
    if fw == "torch" and like.is_cuda:
        import torch

        return torch.cuda.is_current_stream_capturing()
    if fw == "cupy":
        import cupy

        with cupy.cuda.Device(like.device.id):
            is_capturing = getattr(cupy.cuda.get_current_stream(), "is_capturing", None)
            return bool(is_capturing()) if is_capturing else False
    return False
