"""Token-by-token match on the GPU (issue 7): a LLaMA-2-shaped (MHA 32/32) and a LLaMA-3-shaped
(GQA 32/8, rope theta 5e5, 128k vocabulary) model with random bf16 weights (4 layers), a
left-padded batch of two, 64 greedy tokens, attn_implementation "flashcore" against "sdpa".

Two measures, printed (pytest -rP):
- free-running: how many greedy tokens equal sdpa's (the issue's figure);
- teacher-forced: each implementation decodes sdpa's own tokens (a logits processor forces
  them; output_logits keeps the raw logits), so every step compares logits under the same
  prefix: the largest logit difference, and the steps where the argmax differs.
With random weights the top two logits of a 32k-128k vocabulary are often closer than bf16
rounding moves them, so two correct implementations drift apart free-running; "eager"
(transformers' matmul-softmax-matmul) is measured the same way as the control. The assertions:
flashcore's logits stay within twice the control's distance of sdpa's, every forced step
where flashcore's argmax differs is a near-tie (sdpa's top-2 gap at most twice that step's
largest logit difference), and the flashcore runs read the cache in place. The static case (compiled by transformers, cache read in place through
register(in_place_when_compiled=True)) runs on the GQA shape.

test_trained_model_generates_sdpas_tokens asks for the issue's "identical tokens" where it is
well posed: small LLaMAs with LLaMA-2's and LLaMA-3's head layouts, trained on the GPU to copy a
periodic sequence (attention picks each token), so their top logit leads by several units.
Skipped without CUDA."""

import contextlib
import copy
import functools

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
import flashcore.integrations.transformers as fct  # noqa: E402
import flashcore.interface as fi  # noqa: E402

SHAPES = {
    "llama2": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                   num_attention_heads=32, num_key_value_heads=32),
    "llama3": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                   num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0),
}
NEW = 64
PROMPT = 100


class Force(transformers.LogitsProcessor):
    """Makes generate pick the given tokens (the raw logits stay in output_logits)."""

    def __init__(self, tokens):
        self.tokens = tokens

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - PROMPT
        forced = torch.full_like(scores, float("-inf"))
        forced.scatter_(1, self.tokens[:, step:step + 1], 0.0)
        return forced


@contextlib.contextmanager
def cache_reads():
    """Within the block: register(in_place_when_compiled=True), and a list that gets, for each
    call of flashcore's cache function (Python runs, not graph replays), whether it read the
    cache buffer in place (k is None)."""
    reads = []
    original = fi._with_kvcache

    def spy(*args, **kwargs):
        reads.append(args[3] is None)
        return original(*args, **kwargs)

    fct.register(in_place_when_compiled=True)
    fi._with_kvcache = spy
    try:
        yield reads
    finally:
        fi._with_kvcache = original
        fct.register()


def generate(model, ids, mask, cache, force=None):
    extra = {"cache_implementation": "static"} if cache == "static" else {}
    if force is not None:
        extra["logits_processor"] = transformers.LogitsProcessorList([Force(force)])
    with torch.no_grad():
        run = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW,
                             min_new_tokens=NEW, do_sample=False, pad_token_id=0,
                             output_logits=True, return_dict_in_generate=True, **extra)
    return run.sequences[:, PROMPT:], torch.stack(run.logits, 1).float()  # (B, NEW, vocab)


def compare(logits, ref_logits, ref_tokens):
    """Largest logit difference, and per forced step whose argmax differs: (diff, sdpa gap)."""
    diff = (logits - ref_logits).abs().amax(-1)  # (B, NEW)
    top2 = ref_logits.topk(2, -1).values
    gap = top2[..., 0] - top2[..., 1]
    differs = (logits.argmax(-1) != ref_tokens).nonzero().tolist()
    return float(diff.max()), [(float(diff[b, s]), float(gap[b, s])) for b, s in differs]


@pytest.mark.parametrize("shape,cache", [("llama2", "dynamic"), ("llama3", "dynamic"),
                                         ("llama3", "static")])
def test_greedy_tokens_against_sdpa(shape, cache):
    fct.register()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(num_hidden_layers=4, max_position_embeddings=4096,
                                      **SHAPES[shape])
    models = {}
    for impl in ("sdpa", "flashcore", "eager"):
        with torch.device("cuda"):
            models[impl] = transformers.LlamaForCausalLM._from_config(
                copy.deepcopy(config), attn_implementation=impl, dtype=torch.bfloat16).eval()
        if impl != "sdpa":
            models[impl].load_state_dict(models["sdpa"].state_dict())
    ids = torch.randint(1, config.vocab_size, (2, PROMPT), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, :7] = 0  # left padding
    with cache_reads() as in_place:
        ref_tokens, ref_logits = generate(models["sdpa"], ids, mask, cache)
        assert not in_place
        free_tokens, _ = generate(models["flashcore"], ids, mask, cache)
        _, fc_logits = generate(models["flashcore"], ids, mask, cache, force=ref_tokens)
    assert in_place and all(in_place), "the flashcore runs never read the cache in place"
    _, eager_logits = generate(models["eager"], ids, mask, "dynamic", force=ref_tokens)
    agree = int((free_tokens == ref_tokens).sum())
    fc_max, fc_flips = compare(fc_logits, ref_logits, ref_tokens)
    eager_max, eager_flips = compare(eager_logits, ref_logits, ref_tokens)
    print(f"{shape} {cache} cache: free-running {agree}/{2 * NEW} greedy tokens equal to sdpa's; "
          f"forced: largest logit difference {fc_max:.4f} (eager {eager_max:.4f}), argmax "
          f"differs at {len(fc_flips)} of {2 * NEW} steps (eager {len(eager_flips)}); "
          f"(difference, sdpa top-2 gap) there: {[(round(d, 4), round(g, 4)) for d, g in fc_flips]}")
    assert torch.isfinite(fc_logits).all()
    assert fc_max <= 2 * eager_max, (fc_max, eager_max)
    # An argmax can flip only where the top two are within the two logits' moves (each <= d).
    assert all(g <= 2 * d for d, g in fc_flips), fc_flips


PERIOD = 24


def periodic(segments, length):
    return segments[:, torch.arange(length, device=segments.device) % segments.shape[1]]


@functools.lru_cache(maxsize=None)  # the GQA model serves the dynamic and the static case
def train_copy_model(num_key_value_heads, rope_theta, device="cuda", max_steps=1500):
    """A 2-layer LLaMA (8 query heads of 128, the given kv heads) trained in fp32 with sdpa to
    continue a sequence that repeats every PERIOD tokens: each next token must be read from the
    key PERIOD - 1 positions back, so attention decides every token, and a trained model's top
    logit stands well clear of the rest (no near-ties, unlike random weights)."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512,
                                      num_hidden_layers=2, num_attention_heads=8,
                                      num_key_value_heads=num_key_value_heads, head_dim=128,
                                      max_position_embeddings=1024, rope_theta=rope_theta)
    with torch.device(device):
        model = transformers.LlamaForCausalLM._from_config(config, attn_implementation="sdpa")
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    for step in range(max_steps):
        x = periodic(torch.randint(1, 512, (16, PERIOD), device=device), 192)
        labels = x.clone()
        labels[:, :PERIOD] = -100  # the first period cannot be predicted
        loss = model(input_ids=x, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.002:
            return config, model.state_dict(), step
    raise AssertionError(f"the copy model did not train: loss {loss.item():.3f} after {max_steps} steps")


@pytest.mark.parametrize("kv_heads,theta,cache", [(8, 1e4, "dynamic"), (2, 5e5, "dynamic"),
                                                  (2, 5e5, "static")])
def test_trained_model_generates_sdpas_tokens(kv_heads, theta, cache):
    """64 greedy tokens identical to sdpa's, row for row, on a model that is sure of them: MHA
    (LLaMA-2's layout) and GQA 4:1 with rope theta 5e5 (LLaMA-3's), bf16, a left-padded batch
    of two, dynamic and static caches. sdpa must first produce the periodic continuation (the
    model works: at most 4 of 128 tokens wrong); then flashcore must produce exactly sdpa's."""
    fct.register()
    config, state, steps = train_copy_model(kv_heads, theta)
    models = {}
    for impl in ("sdpa", "flashcore"):
        with torch.device("cuda"):
            models[impl] = transformers.LlamaForCausalLM._from_config(
                copy.deepcopy(config), attn_implementation=impl, dtype=torch.bfloat16).eval()
        models[impl].load_state_dict(state)
    segments = torch.randint(1, 512, (2, PERIOD), device="cuda")
    ids = periodic(segments, PROMPT + NEW)
    ids[1] = torch.roll(ids[1], 7)  # row 1: 7 pad tokens on the left, then its sequence
    expected = ids[:, PROMPT:].clone()
    ids = ids[:, :PROMPT].clone()
    ids[1, :7] = 0
    mask = torch.ones_like(ids)
    mask[1, :7] = 0
    with cache_reads() as calls:  # proof that the flashcore model ran flashcore at all
        sdpa_tokens, sdpa_logits = generate(models["sdpa"], ids, mask, cache)
        assert not calls
        fc_tokens, fc_logits = generate(models["flashcore"], ids, mask, cache)
    assert calls, "the flashcore model never reached flashcore's cache function"
    assert cache != "static" or all(calls), "static-cache steps did not read the cache in place"
    top2 = sdpa_logits.topk(2, -1).values
    gap = float((top2[..., 0] - top2[..., 1]).min())
    diff = float((fc_logits - sdpa_logits).abs().max())
    agree = int((fc_tokens == sdpa_tokens).sum())
    right = int((sdpa_tokens == expected).sum())
    print(f"kv heads {kv_heads}, theta {theta:g}, {cache} cache, trained in {steps} steps: "
          f"{agree}/{2 * NEW} greedy tokens equal to sdpa's; largest logit difference {diff:.4f}, "
          f"smallest top-2 gap of sdpa's logits {gap:.3f}; sdpa's tokens continue the sequence at "
          f"{right}/{2 * NEW}")
    assert right >= 2 * NEW - 4, f"sdpa continued the sequence at {right}/{2 * NEW}: training failed"
    assert torch.equal(fc_tokens, sdpa_tokens), (agree, diff)
