#!/usr/bin/env python3
"""The transformers side of the GPU benchmark (bench/gpu-decode.js runs troupe's side).

  python3 bench/gpu_hf.py MODEL_DIR OUT.json

Measures, on the same GPU: device-to-device copy bandwidth (bytes read plus written), and
transformers + SDPA (bf16) decode step time at batch 1, 8, 32, 64, 128 over a 512-token
context, and prefill throughput for 1 x 2048 and 8 x 512 tokens. Timings are CUDA-event
medians after warm-up; only the last position's logits are computed, as in troupe.
"""
import json
import statistics
import sys

import torch
from transformers import AutoModelForCausalLM, DynamicCache

BATCHES = [1, 8, 32, 64, 128]
CONTEXT = 512


def timed(fn, warmup=2, reps=10):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def copy_bandwidth():
    n = 2 << 30
    srcs = [torch.randint(0, 255, (n,), dtype=torch.uint8, device="cuda") for _ in range(2)]
    dst = torch.empty_like(srcs[0])
    i = [0]

    def run():
        dst.copy_(srcs[i[0] % 2])
        i[0] += 1

    ms = timed(run, 3, 20)
    return 2 * n / (ms / 1e3)


@torch.no_grad()
def main():
    model_dir, out = sys.argv[1], sys.argv[2]
    result = {"copyBandwidthBytesPerS": copy_bandwidth()}
    print(f"device copy: {result['copyBandwidthBytesPerS'] / 1e12:.2f} TB/s", flush=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
    cfg = model.config
    result["weightBytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    result["embedBytes"] = model.model.embed_tokens.weight.numel() * 2
    g = torch.Generator(device="cuda").manual_seed(0)
    # Ids inside every family's vocabulary (Mistral's has 32,768).
    top = min(100000, cfg.vocab_size)
    decode = {}
    for b in BATCHES:
        ids = torch.randint(1000, top, (b, CONTEXT - 1), device="cuda", generator=g)
        cache = DynamicCache()
        model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        nxt = torch.randint(1000, top, (b, 1), device="cuda", generator=g)
        # Each timed step appends one token; crop back so every step sees a 512-token context.
        def run():
            model(nxt, past_key_values=cache, use_cache=True, logits_to_keep=1)
            if hasattr(cache, "crop"):
                cache.crop(CONTEXT - 1)
        decode[b] = timed(run, 3, 10)
        print(f"transformers decode batch {b}: {decode[b]:.2f} ms", flush=True)
        del cache
        torch.cuda.empty_cache()
    result["decodeMs"] = decode
    prefill = {}
    for b, n in [(1, 2048), (8, 512)]:
        ids = torch.randint(1000, top, (b, n), device="cuda", generator=g)
        ms = timed(lambda: model(ids, use_cache=False, logits_to_keep=1), 2, 5)
        prefill[f"{b}x{n}"] = {"ms": ms, "tokensPerS": b * n / (ms / 1e3)}
        print(f"transformers prefill {b}x{n}: {ms:.1f} ms, {b * n / (ms / 1e3):.0f} tokens/s", flush=True)
    result["prefill"] = prefill
    result["config"] = {"layers": cfg.num_hidden_layers, "kvHeads": cfg.num_key_value_heads, "headDim": getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads}
    result["gpu"] = torch.cuda.get_device_name()
    with open(out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
