#!/usr/bin/env python3
"""Random checkpoints of real shapes, and transformers reference data for them.

  python3 test/gpu/make_checkpoint.py --shape 1b --out /tmp/llama-1b --refs
  python3 test/gpu/make_checkpoint.py --shape 8b --out /tmp/llama-8b
  python3 test/gpu/make_checkpoint.py --shape qwen2-0.5b --out /tmp/troupe-qwen2-0.5b --refs

Llama shapes (1b, 8b, tiny) and the shapes of other families' published models (qwen2-0.5b,
qwen2-1.5b, qwen3-1.7b, mistral-7b; see FAMILY_SHAPES). Writes bf16 safetensors, config.json
(with both the legacy rope fields and rope_parameters, so old and new readers agree), and the
demo tokenizer. With --refs also reference.json: for fixed prompts (token ids), transformers'
greedy continuation of 32 tokens and, teacher-forced on it, each token's logprob and the top-2
logprob gap at each position. The reference runs in float32 on the bf16 weights; the bf16
forward's logprobs are stored beside it for scale.
"""
import argparse
import json
import math
import os
import shutil

import torch
import transformers

import init_scales
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

SHAPES = {
    # Llama-3.2-1B
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, head_dim=64, tie_word_embeddings=True),
    # Llama-3.1-8B
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
    # a few seconds anywhere, for trying the script
    "tiny": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=2, num_attention_heads=8,
                 num_key_value_heads=2, head_dim=32, tie_word_embeddings=True),
}
# Other families' published shapes, with their config fields; rope_theta goes to the config in
# whichever form the installed transformers reads (see build_family_model).
FAMILY_SHAPES = {
    # Qwen2.5-0.5B: q/k/v biases, tied embeddings, 7 query heads per KV head at head_dim 64.
    "qwen2-0.5b": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True, vocab_size=151936,
                       max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
                       use_sliding_window=False, sliding_window=32768, max_window_layers=21,
                       bos_token_id=151643, eos_token_id=151643),
    # Qwen2.5-1.5B: 6 query heads per KV head at head_dim 128.
    "qwen2-1.5b": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                       num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True, vocab_size=151936,
                       max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
                       use_sliding_window=False, sliding_window=32768, max_window_layers=21,
                       bos_token_id=151643, eos_token_id=151643),
    # Qwen3-1.7B: RMSNorm on each q and k head, head_dim from the config.
    "qwen3-1.7b": dict(model_type="qwen3", hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
                       vocab_size=151936, max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1000000.0,
                       attention_bias=False, use_sliding_window=False, sliding_window=None, max_window_layers=28,
                       bos_token_id=151643, eos_token_id=151645),
    # Mistral-7B-v0.1 with a 100-token sliding window instead of 4096, so that the longer test
    # prompts (200 and 333 tokens) outgrow it and the shorter ones do not.
    "mistral-7b": dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False,
                       vocab_size=32000, max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=10000.0,
                       sliding_window=100, bos_token_id=1, eos_token_id=2),
}
FAMILY_CLASSES = {
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
}
ROPE_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
ROPE_THETA = 500000.0
PROMPT_LENGTHS = [5, 17, 64, 200, 333]
CONTINUATION = 32
HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER_DIR = os.path.join(HERE, "..", "..", "node_modules", "@lenml", "tokenizer-llama3", "models")


def hf_config_dict(shape):
    if shape in FAMILY_SHAPES:
        return dict(FAMILY_SHAPES[shape], hidden_act="silu")
    d = dict(SHAPES[shape])
    d.update(vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5, bos_token_id=128000,
             eos_token_id=[128001, 128009], hidden_act="silu", attention_bias=False, mlp_bias=False)
    return d


def build_config(shape):
    d = hf_config_dict(shape)
    try:
        return LlamaConfig(**d, rope_parameters=dict(ROPE_SCALING, rope_theta=ROPE_THETA))
    except TypeError:
        return LlamaConfig(**d, rope_scaling=dict(ROPE_SCALING), rope_theta=ROPE_THETA)


def init_std(name, cfg):
    """init_scales.init_std for a transformers config."""
    return init_scales.init_std(name, cfg.hidden_size, cfg.intermediate_size,
                                cfg.num_attention_heads * head_dim_of(cfg), cfg.model_type)


def head_dim_of(cfg):
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def instantiate(model_class, cfg):
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            return model_class(cfg)
    finally:
        torch.set_default_dtype(torch.float32)


def uses_rope_theta(model, theta, head_dim):
    """Whether every rotary embedding of the model holds the inverse frequencies of theta."""
    want = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    found = [b for n, b in model.named_buffers() if n.endswith("inv_freq")]
    return bool(found) and all(torch.allclose(b.float().cpu(), want, rtol=1e-2) for b in found)


def build_family_model(shape):
    """The family's model with its rope_theta, which transformers 5 takes in rope_parameters and 4.x
    as rope_theta (an unknown keyword is kept as a plain attribute, so each form is checked on the
    model's rotary buffers)."""
    d = hf_config_dict(shape)
    kind = d.pop("model_type")
    theta = d.pop("rope_theta")
    config_class, model_class = FAMILY_CLASSES[kind]
    for rope in (dict(rope_parameters={"rope_type": "default", "rope_theta": theta}), dict(rope_theta=theta)):
        try:
            cfg = config_class(**d, **rope)
        except TypeError:
            continue
        model = instantiate(model_class, cfg)
        if uses_rope_theta(model, theta, head_dim_of(cfg)):
            check_window(model.config, d)
            return model
        del model
    raise RuntimeError(f"transformers {transformers.__version__} did not take rope_theta {theta} for {kind}")


def check_window(cfg, d):
    """The reference must attend as config.json says: Mistral's window on every layer, Qwen's on none."""
    if "use_sliding_window" in d:
        types = getattr(cfg, "layer_types", None) or []
        if any(t != "full_attention" for t in types):
            raise RuntimeError(f"transformers put a sliding window on layers: {types}")
    elif d.get("sliding_window") is not None and getattr(cfg, "sliding_window", None) != d["sliding_window"]:
        raise RuntimeError(f"transformers did not keep sliding_window {d['sliding_window']}")


def make_model(shape, seed):
    if shape in FAMILY_SHAPES:
        model = build_family_model(shape)
        cfg = model.config
    else:
        cfg = build_config(shape)
        model = instantiate(LlamaForCausalLM, cfg)
    g = torch.Generator(device="cuda").manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("q_norm.weight") or name.endswith("k_norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g, device="cuda"))
            elif name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g, device="cuda"))
            else:
                p.copy_(torch.randn(p.shape, generator=g, device="cuda") * init_std(name, cfg))
    return model.eval()


def save(model, shape, out):
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    path = os.path.join(out, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg.update(hf_config_dict(shape))
    if shape in FAMILY_SHAPES:
        cfg["rope_scaling"] = None
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg["rope_theta"]}
    else:
        cfg["rope_scaling"] = dict(ROPE_SCALING)
        cfg["rope_theta"] = ROPE_THETA
    cfg["torch_dtype"] = "bfloat16"
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(TOKENIZER_DIR, name), os.path.join(out, name))


def prompts(vocab_size, seed=1234):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1000, min(100000, vocab_size), (n,), generator=g).tolist() for n in PROMPT_LENGTHS]


@torch.no_grad()
def teacher_forced(model, prompt, cont):
    ids = torch.tensor([prompt + cont], device="cuda")
    logits = model(ids).logits[0].float()
    lp = torch.log_softmax(logits, dim=-1)[len(prompt) - 1: len(prompt) - 1 + len(cont)]
    target = torch.tensor(cont, device="cuda")
    chosen = lp.gather(1, target[:, None])[:, 0]
    top2 = lp.topk(2, dim=-1).values
    return chosen.tolist(), (top2[:, 0] - top2[:, 1]).tolist(), lp.argmax(-1).tolist()


@torch.no_grad()
def greedy(model, prompt, n):
    ids = torch.tensor([prompt], device="cuda")
    out = []
    for _ in range(n):
        nxt = int(model(ids).logits[0, -1].float().argmax())
        out.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]], device="cuda")], dim=1)
    return out


def references(model):
    f32 = model.float()
    f32.config._attn_implementation = "sdpa"
    cases = []
    for prompt in prompts(model.config.vocab_size):
        cont = greedy(f32, prompt, CONTINUATION)
        lp, gap, _ = teacher_forced(f32, prompt, cont)
        cases.append({"prompt": prompt, "continuation": cont, "logprobs": lp, "top2Gap": gap})
    bf = f32.to(torch.bfloat16)
    worst = 0.0
    for case in cases:
        lp, _, _ = teacher_forced(bf, case["prompt"], case["continuation"])
        case["bf16Logprobs"] = lp
        worst = max(worst, max(abs(a - b) for a, b in zip(lp, case["logprobs"])))
    return {"dtype": "float32 forward on the bf16 weights", "bf16MaxAbsDiff": worst, "cases": cases}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES) + sorted(FAMILY_SHAPES), required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--refs", action="store_true")
    args = ap.parse_args()
    model = make_model(args.shape, args.seed)
    save(model, args.shape, args.out)
    print(f"wrote {args.shape} checkpoint to {args.out}", flush=True)
    if args.refs:
        refs = references(model)
        with open(os.path.join(args.out, "reference.json"), "w") as f:
            json.dump(refs, f)
        print(f"wrote reference.json (transformers bf16 vs float32 max |logprob diff| {refs['bf16MaxAbsDiff']:.4f})",
              flush=True)


if __name__ == "__main__":
    main()
