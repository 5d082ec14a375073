"""Attention references the Python tests share: float64 numpy, and fp32 SDPA math in torch
(imported only when called: CI has no torch). Both take one sequence (S, H, D) with GQA
h // (Hq/Hkv) and masks aligned bottom-right."""

import numpy as np


def attention(q, k, v, causal=False, window=(-1, -1), scale=None):
    """float64 attention of one sequence: q (Sq, Hq, D), k/v (Sk, Hkv, D); bottom-right masks."""
    sq, hq, d = q.shape
    sk, hkv = k.shape[0], k.shape[1]
    g = hq // hkv
    kk = np.repeat(k.astype(np.float64), g, axis=1)
    vv = np.repeat(v.astype(np.float64), g, axis=1)
    s = np.einsum("ihd,jhd->hij", q.astype(np.float64), kk) * (scale or 1 / np.sqrt(d))
    i = np.arange(sq)[:, None] + sk - sq
    j = np.arange(sk)[None, :]
    left, right = window
    if causal:
        right = 0
    visible = np.ones((sq, sk), bool)
    if right >= 0:
        visible &= j <= i + right
    if left >= 0:
        visible &= j >= i - left
    s = np.where(visible, s, -np.inf)
    m = s.max(-1, keepdims=True)
    p = np.where(visible, np.exp(s - np.where(np.isfinite(m), m, 0)), 0.0)
    l = p.sum(-1, keepdims=True)
    o = np.einsum("hij,jhd->ihd", p / np.where(l > 0, l, 1), vv)
    lse = np.where(l[..., 0] > 0, (m + np.log(np.where(l > 0, l, 1)))[..., 0], -np.inf)
    return o, lse  # (Sq, Hq, D), (Hq, Sq)


def sdpa(q, k, v, causal=False, window=(-1, -1)):
    """fp32 SDPA math (torch) on (S, H, D) tensors of one sequence; masks aligned bottom-right;
    rows that see no key give 0."""
    import torch
    import torch.nn.functional as F

    sq, sk = q.shape[0], k.shape[0]
    i = torch.arange(sq, device=q.device)[:, None] + sk - sq
    j = torch.arange(sk, device=q.device)[None, :]
    left, right = window
    right = 0 if causal else right
    mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device)
    if right >= 0:
        mask &= j <= i + right
    if left >= 0:
        mask &= j >= i - left
    qt, kt, vt = (x.transpose(0, 1).float()[None] for x in (q, k, v))
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        o = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask,
                                           enable_gqa=q.shape[1] != k.shape[1])
    return torch.nan_to_num(o[0].transpose(0, 1))  # rows that see nothing: 0
