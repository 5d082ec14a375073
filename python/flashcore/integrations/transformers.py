"""flashcore as a transformers attention implementation: after register(),
`from_pretrained(..., attn_implementation="flashcore")` works, on the first selection in a
fresh process.

transformers decides "is this a FlashAttention flavour?" by a substring test ("flash" in the
name), then takes its FlashAttention path (`integrations/flash_attention.py` ->
`modeling_flash_attention_utils._flash_attention_forward`), which imports FA2-named functions
lazily by implementation name and fails for a name it does not know. flashcore's functions
have FlashAttention-2's exact signatures, so register() hands them to that path: the unpadded
varlen call for padded batches, the dense call otherwise, bottom-right causal masks. These are
transformers internals; the versions this was tested with are pinned below and any other
version is refused loudly rather than run untested."""

import importlib
import warnings

TESTED_TRANSFORMERS = ("5.17",)  # major.minor
NAME = "flashcore"


def _check_version():
    import transformers

    major_minor = ".".join(transformers.__version__.split(".")[:2])
    if major_minor not in TESTED_TRANSFORMERS:
        raise RuntimeError(
            f"flashcore.integrations.transformers was tested with transformers "
            f"{', '.join(v + '.x' for v in TESTED_TRANSFORMERS)}; found {transformers.__version__}. "
            f"It hooks transformers internals (modeling_flash_attention_utils), so it refuses to "
            f"run untested; use attn_implementation='sdpa' or a tested version."
        )


_warned_masks = False
_in_place_when_compiled = False


def _attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' FlashAttention forward, except for masks it cannot honour: a prepared 4-d
    mask (custom patterns, passed through by transformers as given) goes to sdpa, with a
    warning the first time, instead of being reduced to padding plus causal."""
    from transformers.integrations.flash_attention import flash_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    global _warned_masks
    cache_args = _in_place(module, query, key, value, attention_mask, kwargs)
    if cache_args is not None:
        return _cache_step(module, query, key, value, cache_args, kwargs), None
    if attention_mask is not None and attention_mask.dim() != 2:
        if not _warned_masks:
            _warned_masks = True
            warnings.warn(
                "flashcore: a 4-d attention mask (a custom pattern) cannot be expressed as "
                "padding + causal/window; these calls run on sdpa",
                stacklevel=2,
            )
        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)
    return flash_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _in_place(module, query, key, value, attention_mask, kwargs):
    """(cache_leftpad, cache_seqlens) when the call is a cache step the KV-cache kernel takes:
    a few query rows against a longer key buffer under a 2-d mask, with nothing that call does
    not do (dropout, sliding window, softcap, attention sinks, a value head_dim other than
    q's); None sends it to the FlashAttention path."""
    import torch

    if attention_mask is None or attention_mask.dim() != 2:
        return None
    if not key.shape[2] >= attention_mask.shape[1] > query.shape[2]:
        return None
    if kwargs.get("dropout", 0.0) or kwargs.get("sliding_window") is not None:
        return None
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        return None
    if value.shape[-1] != query.shape[-1]:
        return None
    # The FlashAttention path casts fp32 (autocast) inputs to the model's half dtype; the
    # KV-cache call takes 16-bit tensors as they are.
    if query.dtype not in (torch.float16, torch.bfloat16) or not query.dtype == key.dtype == value.dtype:
        return None
    layer_idx = getattr(module, "layer_idx", None)
    if _graph_safe_only(query):
        return _cache_args(attention_mask, False, layer_idx)[:2] if _in_place_when_compiled else None
    # Outside compilation and capture the mask can be inspected: a mask whose valid keys are
    # not one run (padding on the right or inside) goes to the FlashAttention path.
    first, lens, one_run = _cache_args(attention_mask, True, layer_idx)
    return (first, lens) if one_run else None


def _graph_safe_only(query):
    import torch

    return torch.compiler.is_compiling() or (query.is_cuda and torch.cuda.is_current_stream_capturing())


def _run_of(valid):
    """Per row of a 2-d bool mask: the first valid index, one past the last, and whether the
    valid indices are exactly that run."""
    import torch

    ones = valid.to(torch.int32)
    pos = torch.arange(1, valid.shape[1] + 1, device=valid.device, dtype=torch.int32)
    last = (ones * pos).amax(-1)
    first = ones.argmax(-1).to(torch.int32)
    one_run = ones.sum(-1, dtype=torch.int32) == last - first
    return first, last, one_run


_memo = None  # (a weak reference to a mask, its tag, the layer that computed or last used it, answer)


def _cache_args(mask, eager, layer_idx):
    """(cache_leftpad, cache_seqlens, whether every row is one run) of a 2-d mask: per row the
    first valid key, and one past the last or -1 where the valid keys are not one run. Eagerly
    the last item is a bool (a host read), under compilation or capture None.

    Every layer of a forward is handed the same mask tensor, so outside compilation the answer
    is kept for the rest of the forward: eagerly one host read a forward instead of one a
    layer, under CUDA-graph capture one computation recorded a forward instead of one a layer.
    A layer whose index is not above the last one's starts a new forward and computes afresh,
    so does a mask changed in place (its version). Under capture this assumes a graph holds
    whole forwards: graphs of single layers would share a mask's values across graphs. Under
    compilation nothing is kept (inductor fuses the computation into one kernel a layer), nor
    for inference tensors (no version to check) or a module without layer_idx."""
    global _memo
    import weakref

    import torch

    keep = (layer_idx is not None and not torch.compiler.is_compiling()
            and not mask.is_inference())
    tag = (mask._version, eager) if keep else None
    if (keep and _memo is not None and _memo[0]() is mask and _memo[1] == tag
            and layer_idx > _memo[2]):
        _memo = (_memo[0], tag, layer_idx, _memo[3])
        return _memo[3]
    first, last, one_run = _run_of(mask.bool())
    lens = torch.where(one_run, last, torch.full_like(last, -1))
    answer = (first, lens, bool(one_run.all()) if eager else None)
    _memo = (weakref.ref(mask), tag, layer_idx, answer) if keep else None
    return answer


def _cache_step(module, query, key, value, cache_args, kwargs):
    """A few query rows against a longer key buffer with a 2-d mask: a StaticCache step. The
    FlashAttention path would gather every valid key and value into packed tensors (a copy of
    the layer's cache per step, and a host read of the longest length); here the cache buffer
    is read in place by the KV-cache kernel: each row's keys are the mask's valid run [first,
    last], as cache_leftpad and cache_seqlens (_cache_args), computed on the device (CUDA-graph
    safe). A mask whose valid keys are not one run cannot be expressed so: its length becomes
    -1, which the kernel flags (kvcache_error_flag) and answers with NaN rows. That happens only
    under compilation or graph capture with register(in_place_when_compiled=True): eager calls
    inspect the mask and send such masks to the FlashAttention path (_in_place)."""
    import flashcore

    first, lens = cache_args
    causal = kwargs.get("is_causal")
    causal = module.is_causal if causal is None else causal
    # transformers' layout is (batch, heads, seq, head_dim); flashcore's views take it as is.
    return flashcore.flash_attn_with_kvcache(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), cache_seqlens=lens,
        cache_leftpad=first, softmax_scale=kwargs.get("scaling"), causal=causal)


def _mask(**kwargs):
    """FlashAttention's mask function (a 2-d padding mask, or None), except that with
    register(in_place_when_compiled=True) the mask of a one-token step shorter than the cache
    buffer (a StaticCache) is padded with False to the buffer's length. transformers makes a
    static cache's masks outside the compiled step, one column longer every token: unpadded,
    each step would reach the compiled graph with a new shape, and torch.compile's CUDA graphs
    record a new graph for every shape. Only one-token steps: the FlashAttention path, which
    may still take them (_in_place), reads such a mask right (its keys are unpadded by the
    mask; its one query needs no columns), while for longer steps it takes the last columns
    as the queries'."""
    from transformers.masking_utils import flash_attention_mask

    mask = flash_attention_mask(**kwargs)
    kv_length = kwargs["kv_length"]
    if _in_place_when_compiled and mask is not None and kwargs["q_length"] == 1 < mask.shape[1] < kv_length:
        mask = _pad_columns(mask, kv_length)
    return mask


def _pad_columns(mask, length):
    import torch

    return torch.nn.functional.pad(mask, (0, length - mask.shape[1]), value=False)


def register(in_place_when_compiled=False):
    """Registers attn_implementation="flashcore" (attention and mask functions) and points
    transformers' FlashAttention path at flashcore's functions for that name.

    StaticCache decode steps read the cache buffer in place (no per-step copy of the valid
    keys) whenever the mask's valid keys are one run per row (no padding, or left padding).
    Eagerly that is checked on the mask. Under torch.compile or CUDA-graph capture (transformers
    compiles static-cache decoding on CUDA) it cannot be: by default those steps take the
    FlashAttention path, as FlashAttention-2 would. in_place_when_compiled=True reads in place
    there too; a batch with padding on the right or inside then gets NaN rows and the
    kvcache_error_flag bit instead of an answer (transformers does not support right padding
    in generation; pad on the left)."""
    global _in_place_when_compiled
    _check_version()
    _in_place_when_compiled = bool(in_place_when_compiled)
    import flashcore
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    fa_utils = importlib.import_module("transformers.modeling_flash_attention_utils")
    AttentionInterface.register(NAME, _attention)
    # Without a mask function under the same name transformers builds no mask at all: padding
    # would be dropped silently. _mask passes the 2-d padding mask through, as FlashAttention's.
    AttentionMaskInterface.register(NAME, _mask)

    functions = (flashcore.flash_attn_func, flashcore.flash_attn_varlen_func,
                 flashcore.flash_attn_with_kvcache, fa_utils._pad_input, fa_utils._unpad_input)
    original = fa_utils._lazy_imports
    if getattr(original, "_flashcore", False):
        original = original._flashcore_original

    def lazy_imports(implementation, attention_wrapper=None, allow_all_kernels=False):
        if fa_utils.split_attention_implementation(implementation)[1] == NAME:
            return functions
        return original(implementation, attention_wrapper, allow_all_kernels=allow_all_kernels)

    lazy_imports._flashcore = True
    lazy_imports._flashcore_original = original
    fa_utils._lazy_imports = lazy_imports
