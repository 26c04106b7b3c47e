#!/usr/bin/env python3
"""Random PEFT LoRA adapters for a checkpoint of make_checkpoint.py, and PEFT reference data.

  python3 test/gpu/make_adapters.py --model /tmp/troupe-llama-1b
  python3 test/gpu/make_adapters.py --model /tmp/troupe-qwen2-0.5b

Any family make_checkpoint.py writes: the model class comes from its config.json.

Writes MODEL/adapters/{r8-qv,r16-all,r64-all,r32-all}: rank 8 on q_proj and v_proj, ranks 16, 64
and 32 on all seven modules (rank 64 with rsLoRA scaling), every factor random (B too, so each
adapter changes the output). MODEL/lora-reference.json holds, per adapter and for the base model,
transformers + PEFT's greedy continuation of each prompt (24 tokens) and, teacher-forced on it,
each token's logprob and the top-2 gap, computed in float32 on the bf16 weights as reference.json
is.
"""
import argparse
import json
import math
import os

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from make_checkpoint import greedy, prompts, teacher_forced

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAPTERS = {
    "r8-qv": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    "r16-all": dict(r=16, lora_alpha=32, target_modules=ALL),
    "r64-all": dict(r=64, lora_alpha=16, target_modules=ALL, use_rslora=True),
    # Last, so that the others keep their slots in tests that load adapter i into slot i.
    "r32-all": dict(r=32, lora_alpha=64, target_modules=ALL),
}
CONTINUATION = 24


def make_adapter(base, name, spec, out, seed):
    cfg = LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, bias="none", init_lora_weights=False, **spec)
    model = get_peft_model(base, cfg)
    g = torch.Generator(device="cuda").manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "lora_A" in pname:
                p.copy_(torch.randn(p.shape, generator=g, device="cuda") / math.sqrt(p.shape[1]))
            elif "lora_B" in pname:
                # Deltas of about 0.1 per output feature whatever the scaling: the size of the smaller
                # base projections, so every adapter changes the continuation.
                scale = spec["lora_alpha"] / (math.sqrt(spec["r"]) if spec.get("use_rslora") else spec["r"])
                p.copy_(torch.randn(p.shape, generator=g, device="cuda") * 0.1 / (math.sqrt(p.shape[1]) * scale))
    model.save_pretrained(out, safe_serialization=True)
    return model.unload()


@torch.no_grad()
def reference(model):
    cases = []
    for prompt in prompts(model.config.vocab_size)[:4]:
        cont = greedy(model, prompt, CONTINUATION)
        lp, gap, _ = teacher_forced(model, prompt, cont)
        cases.append({"prompt": prompt, "continuation": cont, "logprobs": lp, "top2Gap": gap})
    return cases


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    args = ap.parse_args()
    base = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16).cuda().eval()
    root = os.path.join(args.model, "adapters")
    for i, (name, spec) in enumerate(ADAPTERS.items()):
        base = make_adapter(base, name, spec, os.path.join(root, name), 100 + i)
    base = base.float()
    refs = {"base": reference(base)}
    for name in ADAPTERS:
        peft = PeftModel.from_pretrained(base, os.path.join(root, name)).eval()
        refs[name] = reference(peft)
        base = peft.unload()
        print(f"reference for {name}", flush=True)
    with open(os.path.join(args.model, "lora-reference.json"), "w") as f:
        json.dump({"adapters": list(ADAPTERS), "cases": refs}, f)


if __name__ == "__main__":
    main()
