#!/usr/bin/env python3
"""The transformers + PEFT side of the multi-LoRA GPU benchmark (bench/gpu-lora.js runs troupe's).

  python3 bench/gpu_peft.py MODEL_DIR ADAPTER_DIR OUT.json   (OUT.json "-": only write the adapters)

Writes 8 random PEFT adapters of rank 16 and 8 of rank 64 on all seven modules to
ADAPTER_DIR/r{16,64}-{0..7} (bf16 safetensors, every factor random), then times transformers +
PEFT + SDPA on a decode step of 32 rows over a 512-token context, with the rows spread over 1 and
over 8 distinct rank-16 adapters through PEFT's mixed-adapter batches (adapter_names), and measures
the device's copy bandwidth as bench/gpu_hf.py does. Timings are CUDA-event medians after warm-up,
as in bench/gpu_hf.py.
"""
import json
import math
import os
import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import DynamicCache, LlamaForCausalLM

from gpu_hf import copy_bandwidth, timed

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ROWS = 32
CONTEXT = 512


def write_adapters(base, root):
    for rank in (16, 64):
        for i in range(8):
            out = os.path.join(root, f"r{rank}-{i}")
            if os.path.exists(os.path.join(out, "adapter_model.safetensors")):
                continue
            cfg = LoraConfig(task_type="CAUSAL_LM", r=rank, lora_alpha=2 * rank, target_modules=ALL, lora_dropout=0.0,
                             init_lora_weights=False)
            model = get_peft_model(base, cfg)
            g = torch.Generator(device="cuda").manual_seed(1000 * rank + i)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "lora_" in name:
                        p.copy_(torch.randn(p.shape, generator=g, device="cuda") * (0.02 / math.sqrt(p.shape[1])))
            model.save_pretrained(out, safe_serialization=True)
            base = model.unload()
    return base


@torch.no_grad()
def main():
    model_dir, adapter_dir, out = sys.argv[1:4]
    base = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
    base = write_adapters(base, adapter_dir)
    print("adapters written", flush=True)
    if out == "-":
        return
    names = [f"r16-{i}" for i in range(8)]
    model = PeftModel.from_pretrained(base, os.path.join(adapter_dir, names[0]), adapter_name=names[0])
    for n in names[1:]:
        model.load_adapter(os.path.join(adapter_dir, n), adapter_name=n)
    model.eval()
    g = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.randint(1000, 100000, (ROWS, CONTEXT - 1), device="cuda", generator=g)
    nxt = torch.randint(1000, 100000, (ROWS, 1), device="cuda", generator=g)
    # The device's copy bandwidth in the same run: bench/gpu-lora.js's floor for what adapters add.
    result = {"rows": ROWS, "context": CONTEXT, "copyBandwidthBytesPerS": copy_bandwidth(), "decodeMs": {}}
    for distinct in (1, 8):
        rows = [names[i % distinct] for i in range(ROWS)]
        cache = DynamicCache()
        model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1, adapter_names=rows)

        def run():
            model(nxt, past_key_values=cache, use_cache=True, logits_to_keep=1, adapter_names=rows)
            cache.crop(CONTEXT - 1)

        result["decodeMs"][distinct] = timed(run, 2, 5)
        print(f"transformers + PEFT decode, {ROWS} rows over {distinct} rank-16 adapter(s): "
              f"{result['decodeMs'][distinct]:.1f} ms", flush=True)
        del cache
        torch.cuda.empty_cache()
    with open(out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
