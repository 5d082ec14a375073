"""attn_implementation="flashcore" in transformers: selected on the first try in a fresh
process (a subprocess, as a user's script would), a tiny LLaMA-shaped model with random bf16
weights and GQA gives the logits and greedy tokens of attn_implementation="sdpa" on the CPU,
a left-padded batch included (the padding mask must reach the kernel: the FlashAttention path
unpads into flash_attn_varlen_func). Skipped without torch or transformers."""

import json
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

SCRIPT = textwrap.dedent("""
    import copy, json, torch, transformers
    import flashcore.integrations.transformers as fct
    fct.register()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=256, intermediate_size=512,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=256)
    base = transformers.LlamaForCausalLM(config).to(torch.bfloat16).eval()
    state = base.state_dict()
    models = {}
    for impl in ("flashcore", "sdpa"):
        m = transformers.LlamaForCausalLM._from_config(copy.deepcopy(config), attn_implementation=impl,
                                                       dtype=torch.bfloat16).eval()
        m.load_state_dict(state)
        models[impl] = m
    ids = torch.randint(0, 256, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding in the second row
    out = {"impl": [m.config._attn_implementation for m in models.values()]}
    with torch.no_grad():
        logits = {k: m(input_ids=ids, attention_mask=mask).logits.float() for k, m in models.items()}
        real = mask.bool()
        out["max_logit_diff"] = (logits["flashcore"] - logits["sdpa"])[real].abs().max().item()
        gen = {k: m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16,
                             do_sample=False, pad_token_id=0)[:, 12:].tolist()
               for k, m in models.items()}
    out["tokens_flashcore"], out["tokens_sdpa"] = gen["flashcore"], gen["sdpa"]
    print(json.dumps(out))
""")


def tiny_llama_models():
    """same_weights() of a 2-layer GQA LLaMA (4/2 heads, hidden 256, vocabulary 256)."""
    import transformers

    return same_weights(transformers.LlamaConfig(vocab_size=256, hidden_size=256,
                                                 intermediate_size=512, num_hidden_layers=2,
                                                 num_attention_heads=4, num_key_value_heads=2))


def same_weights(config, impls=("flashcore", "sdpa")):
    """A bf16 LLaMA per attention implementation, all with the first one's random weights."""
    import copy

    import torch
    import transformers

    models = {}
    for impl in impls:
        models[impl] = transformers.LlamaForCausalLM._from_config(
            copy.deepcopy(config), attn_implementation=impl, dtype=torch.bfloat16).eval()
        models[impl].load_state_dict(models[impls[0]].state_dict())
    return models


def test_llama_flashcore_matches_sdpa_in_a_fresh_process():
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["impl"] == ["flashcore", "sdpa"]
    assert result["max_logit_diff"] < 0.1, result
    agree = sum(a == b for ra, rb in zip(result["tokens_flashcore"], result["tokens_sdpa"])
                for a, b in zip(ra, rb))
    assert agree == 32, result  # both rows, 16 greedy tokens each


def test_other_transformers_versions_are_refused(monkeypatch):
    import transformers

    import flashcore.integrations.transformers as fct

    monkeypatch.setattr(transformers, "__version__", "5.99.0")
    with pytest.raises(RuntimeError, match="tested with transformers 5.17"):
        fct.register()


def test_a_custom_4d_mask_falls_back_to_sdpa_with_a_warning():
    import torch
    import transformers

    import flashcore.integrations.transformers as fct

    fct.register()
    fct._warned_masks = False
    torch.manual_seed(1)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=128, intermediate_size=256,
                                      num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=1)
    models = same_weights(config)
    ids = torch.randint(0, 128, (1, 10))
    # Two packed segments, causal within each: not expressible as padding + causal.
    seg = torch.tensor([0] * 4 + [1] * 6)
    mask = (seg[:, None] == seg[None, :]) & torch.ones(10, 10, dtype=torch.bool).tril()
    mask4 = mask[None, None]
    with torch.no_grad(), pytest.warns(UserWarning, match="4-d attention mask"):
        got = models["flashcore"](input_ids=ids, attention_mask=mask4).logits
    with torch.no_grad():
        want = models["sdpa"](input_ids=ids, attention_mask=mask4).logits
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("padded_masks", [False, True])
def test_static_cache_steps_read_the_cache_in_place(padded_masks):
    """generate(cache_implementation="static"): decode steps go to the KV-cache kernel on the
    cache buffer (cache_seqlens and cache_leftpad from the mask), not the unpadding copy; the
    tokens are sdpa's, plain and left-padded, and each step's (cache_leftpad, cache_seqlens) are
    the mask's. With register(in_place_when_compiled=True) the masks are padded to the buffer's
    length (one shape for every step); the right-padded batch takes the FlashAttention path
    with them."""
    import torch

    import flashcore.integrations.transformers as fct
    import flashcore.interface as fi

    fct.register(in_place_when_compiled=padded_masks)
    torch.manual_seed(2)
    models = tiny_llama_models()
    steps = []
    original = fi._with_kvcache

    def spy(*args, **kwargs):
        steps.append((args[8].tolist(), args[7].tolist()))  # cache_leftpad, cache_seqlens
        return original(*args, **kwargs)

    inspected = []  # masks inspected: one per forward, not one per layer
    run_of = fct._run_of

    def run_spy(valid):
        inspected.append(valid.shape)
        return run_of(valid)

    fi._with_kvcache, fct._run_of = spy, run_spy
    try:
        ids = torch.randint(1, 256, (2, 12))
        for padding in ("none", "left", "right"):
            mask = torch.ones_like(ids)
            if padding == "left":
                mask[1, :4] = 0
            if padding == "right":  # new tokens follow the pad: a gap, not one run of keys
                mask[1, -3:] = 0
            steps.clear()
            inspected.clear()
            with torch.no_grad():
                runs = {k: m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8,
                                      do_sample=False, pad_token_id=0, output_logits=True,
                                      return_dict_in_generate=True,
                                      cache_implementation="static")
                        for k, m in models.items()}
            got = {k: r.sequences[:, 12:].tolist() for k, r in runs.items()}
            assert all(torch.isfinite(x).all() for x in runs["flashcore"].logits), padding
            # Right padding puts a pad last, whose logits pick the first new token: transformers
            # warns it is unsupported, and the FlashAttention path (zeros at pad rows) and sdpa
            # disagree there by design, so only the first two cases compare tokens.
            if padding != "right":
                assert got["flashcore"] == got["sdpa"], (padding, got)
            # Decode steps of both layers in place, but for the unpadded batch's 7th, which
            # finds the buffer full and all valid (transformers passes no mask and the dense
            # call reads the whole buffer); a mask with a gap (right padding) never goes in
            # place.
            if padding == "right":
                assert not steps, steps
            else:
                pad = [0, 4] if padding == "left" else [0, 0]
                assert all(left == pad for left, _ in steps), (padding, steps)
                assert all(lens[0] == lens[1] for _, lens in steps), steps
                # 12 prompt keys, then one more each step, once per layer
                last = 19 if padding == "left" else 18
                assert sorted(lens[0] for _, lens in steps) == [n for n in range(13, last + 1)
                                                                for _ in range(2)], steps
                assert len(inspected) == len(steps) // 2, (inspected, steps)  # two layers
    finally:
        fi._with_kvcache, fct._run_of = original, run_of
        fct.register()


def test_compiled_cache_steps_go_in_place_only_when_asked(monkeypatch):
    """Under compilation or capture the mask cannot be inspected on the host: by default such
    steps take the FlashAttention path; register(in_place_when_compiled=True) reads the cache
    in place, and a row whose valid keys have a gap (right padding) gets NaN and a flag bit,
    while a left-padded row is answered."""
    import torch

    import flashcore
    import flashcore.integrations.transformers as fct

    torch.manual_seed(3)
    b, h, hkv, n, d = 2, 4, 2, 16, 64
    q = torch.randn(b, h, 1, d, dtype=torch.bfloat16)
    k = torch.randn(b, hkv, n, d, dtype=torch.bfloat16)
    v = torch.randn(b, hkv, n, d, dtype=torch.bfloat16)
    mask = torch.zeros(b, n, dtype=torch.long)
    mask[0, 3:10] = 1  # left padding: keys 3..9
    mask[1, :5] = 1
    mask[1, 8:10] = 1  # right padding then new keys: a gap
    module = torch.nn.Module()
    module.is_causal = True
    kwargs = {"scaling": d ** -0.5}
    monkeypatch.setattr(fct, "_graph_safe_only", lambda query: True)
    flag = flashcore.kvcache_error_flag(q)
    flag[0] = 0
    try:
        fct.register()
        assert fct._in_place(module, q, k, v, mask, kwargs) is None
        fct.register(in_place_when_compiled=True)
        cache_args = fct._in_place(module, q, k, v, mask, kwargs)
        assert cache_args is not None
        out = fct._cache_step(module, q, k, v, cache_args, kwargs)
        assert int(flag[0]) != 0
        assert torch.isnan(out[1].float()).all()
        g = h // hkv
        kr = k[0, :, 3:10].repeat_interleave(g, 0).float()
        vr = v[0, :, 3:10].repeat_interleave(g, 0).float()
        p = torch.softmax(q[0].float() @ kr.transpose(-1, -2) * d ** -0.5, -1)
        ref = (p @ vr).transpose(0, 1)  # (1, h, d): the step's layout
        assert (out[0].float() - ref).abs().max() < 2e-2
    finally:
        flag[0] = 0
        fct.register()


def test_cache_args_are_computed_once_a_forward(monkeypatch):
    """Every layer of a forward gets the same mask, so its cache arguments are computed at the
    forward's first layer and reused by the later layers, eagerly and under capture (where each
    computation would be recorded in the graph); the next forward computes them afresh, even
    from the same mask tensor, and a mask changed in place is never answered from the kept
    copy."""
    import torch

    import flashcore.integrations.transformers as fct

    b, h, hkv, n, d = 2, 4, 2, 16, 64
    q = torch.randn(b, h, 1, d, dtype=torch.bfloat16)
    k = torch.randn(b, hkv, n, d, dtype=torch.bfloat16)
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask[:, 2:9] = True
    module = torch.nn.Module()
    capturing = [False]
    runs = []
    run_of = fct._run_of
    monkeypatch.setattr(fct, "_graph_safe_only", lambda query: capturing[0])
    monkeypatch.setattr(fct, "_run_of", lambda valid: runs.append(1) or run_of(valid))
    fct.register(in_place_when_compiled=True)
    try:
        for capturing[0] in (False, True):
            runs.clear()
            for _ in range(2):  # forwards
                for module.layer_idx in range(3):
                    first, lens = fct._in_place(module, q, k, k, mask, {})
                    assert first.tolist() == [2, 2] and lens.tolist() == [9, 9]
            assert len(runs) == 2, capturing
            mask[:, 9] = True  # in place, between two layers of the same forward
            module.layer_idx = 3
            first, lens = fct._in_place(module, q, k, k, mask, {})
            assert lens.tolist() == [10, 10] and len(runs) == 3
            mask[:, 9] = False
        # A model whose first cache-step layer is not layer 0 (e.g. sliding-window layers
        # first): each forward still computes once, at its first such layer.
        capturing[0] = False
        runs.clear()
        for _ in range(2):
            for module.layer_idx in (3, 7, 11):
                assert fct._in_place(module, q, k, k, mask, {}) is not None
        assert len(runs) == 2
        # Inference tensors have no version counter: computed every layer, no error.
        with torch.inference_mode():
            frozen = mask.clone()
        runs.clear()
        for module.layer_idx in range(3):
            first, lens = fct._in_place(module, q, k, k, frozen, {})
            assert lens.tolist() == [9, 9]
        assert len(runs) == 3
    finally:
        fct.register()


def test_generate_under_inference_mode():
    """Inference tensors have no version counter: a left-padded static-cache generate under
    torch.inference_mode() runs (it raised before) and gives sdpa's tokens."""
    import torch

    import flashcore.integrations.transformers as fct

    fct.register()
    torch.manual_seed(5)
    models = tiny_llama_models()
    ids = torch.randint(1, 256, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with torch.inference_mode():
        got = {k: m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                             pad_token_id=0, cache_implementation="static")
               for k, m in models.items()}
    assert torch.equal(got["flashcore"], got["sdpa"])


def test_padded_masks_answer_as_unpadded_ones():
    """_mask's padding (False columns up to the cache buffer's length) changes no answer: a
    one-token step with left padding (read in place) and with a gap (the FlashAttention path)
    gives the same output with the padded mask as with the mask transformers made."""
    import torch

    import flashcore.integrations.transformers as fct

    torch.manual_seed(4)
    b, h, hkv, n, d, valid = 2, 4, 2, 16, 64, 10
    q = torch.randn(b, h, 1, d, dtype=torch.bfloat16)
    k = torch.randn(b, hkv, n, d, dtype=torch.bfloat16)
    v = torch.randn(b, hkv, n, d, dtype=torch.bfloat16)
    module = torch.nn.Module()
    module.is_causal, module.layer_idx = True, 0
    module.config = transformers_config()
    left = torch.ones(b, valid, dtype=torch.bool)
    left[1, :3] = False
    gap = left.clone()
    gap[0, 5:8] = False
    fct.register(in_place_when_compiled=True)
    try:
        for mask in (left, gap):
            padded = fct._pad_columns(mask, n)
            want = fct._attention(module, q, k, v, mask, scaling=d ** -0.5)[0]
            got = fct._attention(module, q, k, v, padded, scaling=d ** -0.5)[0]
            assert torch.equal(got, want)
            keep = torch.nn.functional.pad(mask, (0, n - valid), value=False)
            kr = k.repeat_interleave(h // hkv, 1).float()
            vr = v.repeat_interleave(h // hkv, 1).float()
            s = (q.float() @ kr.transpose(-1, -2)) * d ** -0.5
            p = torch.softmax(s.masked_fill(~keep[:, None, None, :], float("-inf")), -1)
            torch.testing.assert_close(got.float(), (p @ vr).transpose(1, 2), atol=2e-2, rtol=2e-2)
    finally:
        fct.register()


def transformers_config():
    import types

    return types.SimpleNamespace(_attn_implementation="flashcore")
