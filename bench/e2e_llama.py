"""End-to-end decode (issue 7): a LLaMA-2-7B-shaped model with random bf16 weights decodes
greedily from a StaticCache, attn_implementation "sdpa" against "flashcore": ms per generated
token at batch 1 and 16 and contexts 512 / 4k / 16k / 32k, next to the floor (weights + the KV
cache read once, over HBM bandwidth). Cells whose weights + cache do not fit the GPU are
reported as such.

The decode step is the model's own modules (embedding, rotary, decoder layers, norm, head,
argmax) captured once as one CUDA graph and replayed, each replay writing its token into the
cache and feeding the next: the step the GPU runs, without generate()'s Python loop, which at
batch 1 costs more than the GPU work (~10 ms a token against ~5.5 ms of kernels on the H100,
measured with torch.profiler) and moves by +-1 ms between runs. The attention mask each
implementation gets is the one transformers makes for it (create_causal_mask at the first
step), kept in a buffer whose next column the graph sets each step (sdpa's kernel reads the
whole buffer, its masked tail of 2 x WARMUP + tokens x repeats + 1 rows included; flashcore's
only the valid keys). ms per token: CUDA events
around --tokens replays, median of --repeats. `--model tiny --device cpu` runs the same steps
eagerly on a machine without a GPU, to check the script.

    python3 bench/e2e_llama.py [--batches 1 16] [--contexts 512 4096 16384 32768]
"""

import argparse
import json
import statistics
import sys
import time

import torch
import transformers
from transformers.masking_utils import create_causal_mask

import flashcore
import flashcore.integrations.transformers as flashcore_transformers

SHAPES = {
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, vocab_size=32000),
    "tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=256),
}
HBM_BYTES_PER_S = 3.35e12  # H100 SXM
WARMUP = 3


class DecodeStep:
    """One greedy decode step over static buffers (token, position, mask): every input of the
    next step is written by this one, so the step can be captured once and replayed."""

    def __init__(self, model, ids, cache):
        self.model, self.cache = model, cache
        body = model.model
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                           past_key_values=cache, use_cache=True).logits
            self.token = logits[:, -1:].argmax(-1)
            self.pos = torch.full((1,), ids.shape[1], dtype=torch.long, device=ids.device)
            seen = torch.ones(ids.shape[0], ids.shape[1] + 1, dtype=torch.long, device=ids.device)
            embeds = body.embed_tokens(self.token)
            self.mask = create_causal_mask(config=model.config, inputs_embeds=embeds,
                                           attention_mask=seen, past_key_values=cache,
                                           position_ids=self.position_ids())
        if self.mask is None or self.mask.dtype != torch.bool or self.mask.shape[-1] != cache.max_cache_len:
            raise RuntimeError(f"expected a bool mask over the cache buffer, got "
                               f"{None if self.mask is None else (self.mask.dtype, tuple(self.mask.shape))}")

    def position_ids(self):
        return self.pos.view(1, 1).expand(self.token.shape[0], 1)

    @torch.no_grad()
    def __call__(self):
        body = self.model.model
        self.mask.index_fill_(-1, self.pos, True)
        hidden = body.embed_tokens(self.token)
        position_ids = self.position_ids()
        rotary = body.rotary_emb(hidden, position_ids=position_ids)
        for layer in body.layers:
            hidden = layer(hidden, attention_mask=self.mask, position_embeddings=rotary,
                           position_ids=position_ids, past_key_values=self.cache, use_cache=True)
        logits = self.model.lm_head(body.norm(hidden))
        self.token.copy_(logits.argmax(-1))
        self.pos.add_(1)


def ms_per_token(step, tokens, repeats, device):
    if device.type != "cuda":
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(tokens):
                step()
            times.append(1e3 * (time.perf_counter() - t0) / tokens)
        return statistics.median(times)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(WARMUP):
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for _ in range(WARMUP):
        graph.replay()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(tokens):
            graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / tokens)
    return statistics.median(times)


def check_flashcore_run(like, row):
    """No cache call of the timed steps flagged an error (a -1 length from a mask that is not
    one run, an overflow), and whether the captured steps had a split workspace (none: every
    call in the graph ran unsplit, or its plan had no split)."""
    flag = flashcore.kvcache_error_flag(like)
    if int(flag[0]) != 0:
        raise RuntimeError(f"flashcore's KV-cache calls flagged error bits {int(flag[0])}")
    dev = flashcore.interface._device_key(like)
    held = [ws for key, ws in flashcore.interface._graph_workspaces.items() if key[:-1] == dev]
    row["flashcore_graph_workspace_bytes"] = max((ws.shape[0] for ws in held), default=0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", choices=sorted(SHAPES), default="llama2-7b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--contexts", type=int, nargs="+", default=[512, 4096, 16384, 32768])
    ap.add_argument("--tokens", type=int, default=16, help="replays per timing")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", help="write the rows here too")
    args = ap.parse_args()

    # Every batch here is unpadded, so captured steps may read the cache in place.
    flashcore_transformers.register(in_place_when_compiled=True)
    device = torch.device(args.device)
    torch.manual_seed(0)
    generated = 2 * WARMUP + args.tokens * args.repeats + 1
    config = transformers.LlamaConfig(max_position_embeddings=max(args.contexts) + generated,
                                      **SHAPES[args.model])
    with device:
        model = transformers.LlamaForCausalLM(config).to(torch.bfloat16).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    head_dim = config.hidden_size // config.num_attention_heads
    kv_bytes_per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{args.model} ({weight_bytes / 1e9:.1f} GB of weights) on {name}, torch "
          f"{torch.__version__}, transformers {transformers.__version__}; decode step "
          f"{'replayed as a CUDA graph' if device.type == 'cuda' else 'run eagerly (no GPU)'}, "
          f"{args.tokens} tokens a timing, median of {args.repeats}")
    print(f"{'batch':>5} {'context':>7} {'floor ms':>9} {'sdpa ms':>9} {'flashcore ms':>12} "
          f"{'fc/sdpa':>8} {'graph ws MB':>11}")
    rows = []
    for batch in args.batches:
        for ctx in args.contexts:
            max_len = ctx + generated
            cache_bytes = batch * max_len * kv_bytes_per_token
            floor_ms = 1e3 * (weight_bytes + batch * ctx * kv_bytes_per_token) / HBM_BYTES_PER_S
            row = {"batch": batch, "context": ctx, "floor_ms": floor_ms}
            if device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(device)
                if cache_bytes > 0.85 * free:
                    row["skipped"] = (f"does not fit: cache {cache_bytes / 2**30:.0f} GiB, "
                                      f"{free / 2**30:.0f} GiB free")
                    rows.append(row)
                    print(f"{batch:>5} {ctx:>7} {floor_ms:>9.2f}  {row['skipped']}")
                    continue
            ids = torch.randint(1, config.vocab_size, (batch, ctx), device=device)
            cache = transformers.StaticCache(config=config, max_cache_len=max_len)
            impls = ("sdpa", "flashcore") if len(rows) % 2 == 0 else ("flashcore", "sdpa")
            for impl in impls:  # alternating which goes first, row by row
                model.set_attn_implementation(impl)
                cache.reset()
                row[f"{impl}_ms"] = ms_per_token(DecodeStep(model, ids, cache), args.tokens,
                                                 args.repeats, device)
            check_flashcore_run(ids, row)
            del cache
            row["flashcore_over_sdpa"] = row["flashcore_ms"] / row["sdpa_ms"]
            rows.append(row)
            print(f"{batch:>5} {ctx:>7} {floor_ms:>9.2f} {row['sdpa_ms']:>9.2f} "
                  f"{row['flashcore_ms']:>12.2f} {row['flashcore_over_sdpa']:>8.3f} "
                  f"{row['flashcore_graph_workspace_bytes'] / 2**20:>11.1f}")
            sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "device": name, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
