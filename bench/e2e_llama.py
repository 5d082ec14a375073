"""End-to-end decode (issue 7): a LLaMA-2-7B-shaped model with random bf16 weights generates
with a static cache (transformers compiles the decode step and replays it as a CUDA graph),
attn_implementation "sdpa" against "flashcore": ms per generated token at batch 1 and 16 and
contexts 512 / 4k / 16k / 32k, next to the floor (weights + the KV cache read once, over HBM
bandwidth). Cells whose weights + cache do not fit the GPU are reported as such.

ms per token = (generate(n_long) - generate(n_short)) / (n_long - n_short), medians of
--repeats runs on one pre-allocated StaticCache, so prefill, compilation and the cache size
cancel. `--model tiny --device cpu` checks the script on a machine without a GPU (no graphs).

    python3 bench/e2e_llama.py [--batches 1 16] [--contexts 512 4096 16384 32768]
"""

import argparse
import json
import statistics
import sys
import time

import torch
import transformers

import flashcore.integrations.transformers as flashcore_transformers

SHAPES = {
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, vocab_size=32000),
    "tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=256),
}
HBM_BYTES_PER_S = 3.35e12  # H100 SXM


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def generate_ms(model, ids, cache, new_tokens, repeats):
    times = []
    for _ in range(repeats):
        cache.reset()
        sync(ids.device)
        t0 = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=cache,
                       max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                       pad_token_id=0)
        sync(ids.device)
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", choices=sorted(SHAPES), default="llama2-7b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--contexts", type=int, nargs="+", default=[512, 4096, 16384, 32768])
    ap.add_argument("--tokens", type=int, nargs=2, default=[8, 40], metavar=("SHORT", "LONG"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="write the rows here too")
    args = ap.parse_args()

    # Every batch here is unpadded, so the compiled decode step may read the cache in place.
    flashcore_transformers.register(in_place_when_compiled=True)
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(max_position_embeddings=max(args.contexts) + args.tokens[1],
                                      **SHAPES[args.model])
    with device:
        model = transformers.LlamaForCausalLM(config).to(torch.bfloat16).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    head_dim = config.hidden_size // config.num_attention_heads
    kv_bytes_per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{args.model} ({weight_bytes / 1e9:.1f} GB of weights) on {name}, torch "
          f"{torch.__version__}, transformers {transformers.__version__}")
    print(f"{'batch':>5} {'context':>7} {'floor ms':>9} {'sdpa ms':>9} {'flashcore ms':>12} "
          f"{'fc/sdpa':>8}")
    rows = []
    for batch in args.batches:
        for ctx in args.contexts:
            max_len = ctx + args.tokens[1]
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
            for impl in ("sdpa", "flashcore"):
                model.set_attn_implementation(impl)
                generate_ms(model, ids, cache, args.tokens[0], 1)  # compile and warm up
                short = generate_ms(model, ids, cache, args.tokens[0], args.repeats)
                long = generate_ms(model, ids, cache, args.tokens[1], args.repeats)
                row[f"{impl}_ms"] = (long - short) / (args.tokens[1] - args.tokens[0])
            del cache
            row["flashcore_over_sdpa"] = row["flashcore_ms"] / row["sdpa_ms"]
            rows.append(row)
            print(f"{batch:>5} {ctx:>7} {floor_ms:>9.2f} {row['sdpa_ms']:>9.2f} "
                  f"{row['flashcore_ms']:>12.2f} {row['flashcore_over_sdpa']:>8.3f}")
            sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "device": name, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
