"""PyTorch custom ops (torch.library) over the flashcore functions, with fake implementations
(their outputs contiguous, as the real ops return them, whatever q's strides),
so torch.compile(fullgraph=True) traces them and CUDA graphs capture them. The
FlashAttention-2 compatible functions route torch tensors through these ops. The forward ops
are out-of-place; the KV-cache op declares that it writes k_cache and v_cache, and a call
without new keys goes to kvcache_read, which declares no write (a declared write makes
torch.compile functionalize the call: the caches become values to keep and copy back)."""

from typing import Optional

import torch

from . import interface as _impl


@torch.library.custom_op("flashcore::fwd", mutates_args=())
def fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: Optional[float],
        causal: bool, window_left: int, window_right: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, Sq, Hq, D), softmax_lse (B, Hq, Sq) fp32)."""
    out, lse, _ = _impl._flash_attn(q, k, v, softmax_scale, causal, (window_left, window_right),
                                    True)
    return out, lse


@fwd.register_fake
def _(q, k, v, softmax_scale, causal, window_left, window_right):
    return q.new_empty(q.shape), q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32)


@torch.library.custom_op("flashcore::varlen_fwd", mutates_args=())
def varlen_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
               cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int,
               softmax_scale: Optional[float], causal: bool, window_left: int,
               window_right: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (total_q, Hq, D), softmax_lse (Hq, total_q) fp32)."""
    out, lse, _ = _impl._flash_attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                           max_seqlen_k, softmax_scale, causal,
                                           (window_left, window_right), True)
    return out, lse


@varlen_fwd.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal,
      window_left, window_right):
    return q.new_empty(q.shape), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)


@torch.library.custom_op("flashcore::kvcache", mutates_args=("k_cache", "v_cache"))
def kvcache(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
            k: Optional[torch.Tensor], v: Optional[torch.Tensor],
            rotary_cos: Optional[torch.Tensor], rotary_sin: Optional[torch.Tensor],
            cache_seqlens: torch.Tensor, cache_leftpad: Optional[torch.Tensor],
            block_table: Optional[torch.Tensor],
            softmax_scale: Optional[float], causal: bool, window_left: int, window_right: int,
            rotary_interleaved: bool, split: bool, k_scale: Optional[torch.Tensor] = None,
            v_scale: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, Sq, Hq, D), softmax_lse (B, Hq, Sq) fp32); k/v appended into the caches
    (fp8 caches with k_scale/v_scale: quantized as stored)."""
    return _impl._with_kvcache(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens,
                               cache_leftpad, block_table, softmax_scale, causal, (window_left, window_right),
                               rotary_interleaved, split, True, k_scale, v_scale)


@kvcache.register_fake
def _(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, cache_leftpad,
      block_table, softmax_scale, causal, window_left, window_right, rotary_interleaved, split,
      k_scale=None, v_scale=None):
    return q.new_empty(q.shape), q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32)


@torch.library.custom_op("flashcore::kvcache_read", mutates_args=())
def kvcache_read(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 cache_seqlens: torch.Tensor, cache_leftpad: Optional[torch.Tensor],
                 block_table: Optional[torch.Tensor], softmax_scale: Optional[float],
                 causal: bool, window_left: int, window_right: int, split: bool,
                 k_scale: Optional[torch.Tensor] = None,
                 v_scale: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """kvcache without new keys: attention over the caches as they are."""
    return _impl._with_kvcache(q, k_cache, v_cache, None, None, None, None, cache_seqlens,
                               cache_leftpad, block_table, softmax_scale, causal,
                               (window_left, window_right), True, split, True, k_scale, v_scale)


@kvcache_read.register_fake
def _(q, k_cache, v_cache, cache_seqlens, cache_leftpad, block_table, softmax_scale, causal,
      window_left, window_right, split, k_scale=None, v_scale=None):
    return q.new_empty(q.shape), q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32)
