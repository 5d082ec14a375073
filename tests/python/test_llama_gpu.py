"""Token-by-token match on the GPU (issue 7): a LLaMA-2-shaped (MHA 32/32) and a LLaMA-3-shaped
(GQA 32/8, rope theta 5e5, 128k vocabulary) model with random bf16 weights (4 layers) generate
64 greedy tokens with attn_implementation="flashcore" and "sdpa" from the same weights, a
left-padded batch of two. Reports the agreement and the largest logit difference over the
steps whose prefixes agree (pytest -rP prints it). The static-cache case is compiled by
transformers and reads the cache in place (register(in_place_when_compiled=True)). Skipped
without CUDA or transformers."""

import copy

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
import flashcore.integrations.transformers as fct  # noqa: E402

SHAPES = {
    "llama2": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                   num_attention_heads=32, num_key_value_heads=32),
    "llama3": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                   num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0),
}
NEW_TOKENS = 64


def models_for(shape):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(num_hidden_layers=4, max_position_embeddings=4096,
                                      **SHAPES[shape])
    out = {}
    for impl in ("flashcore", "sdpa"):
        with torch.device("cuda"):
            out[impl] = transformers.LlamaForCausalLM._from_config(
                copy.deepcopy(config), attn_implementation=impl, dtype=torch.bfloat16).eval()
    out["sdpa"].load_state_dict(out["flashcore"].state_dict())
    return config, out


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("shape", ["llama2", "llama3"])
def test_greedy_tokens_match_sdpa(shape, cache):
    if cache == "static" and shape == "llama2":
        pytest.skip("the static (compiled) case runs on the GQA shape only, to bound the time")
    fct.register(in_place_when_compiled=True)
    try:
        config, models = models_for(shape)
        ids = torch.randint(1, config.vocab_size, (2, 100), device="cuda")
        mask = torch.ones_like(ids)
        mask[1, :7] = 0  # left padding
        runs = {}
        with torch.no_grad():
            for impl, m in models.items():
                extra = {"cache_implementation": "static"} if cache == "static" else {}
                runs[impl] = m.generate(input_ids=ids, attention_mask=mask,
                                        max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                        do_sample=False, pad_token_id=0, output_logits=True,
                                        return_dict_in_generate=True, **extra)
    finally:
        fct.register()
    fc, ref = runs["flashcore"], runs["sdpa"]
    tokens_fc, tokens_ref = fc.sequences[:, 100:], ref.sequences[:, 100:]
    agree = int((tokens_fc == tokens_ref).sum())
    # Logits compare only while a row's prefix agrees (a different token changes what follows).
    max_diff = 0.0
    for row in range(2):
        for step in range(NEW_TOKENS):
            diff = (fc.logits[step][row].float() - ref.logits[step][row].float()).abs().max()
            max_diff = max(max_diff, float(diff))
            if tokens_fc[row, step] != tokens_ref[row, step]:
                break
    print(f"{shape} {cache} cache: {agree}/{2 * NEW_TOKENS} greedy tokens equal to sdpa's, "
          f"largest logit difference {max_diff:.4f}")
    assert all(torch.isfinite(x).all() for x in fc.logits)
    assert agree == 2 * NEW_TOKENS, (tokens_fc.tolist(), tokens_ref.tolist())
