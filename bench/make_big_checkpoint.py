#!/usr/bin/env python3
"""A random-weight bf16 checkpoint of the Llama-3.1-70B shape, for the tensor-parallel benchmarks.

  python3 bench/make_big_checkpoint.py --out /data/llama-70b [--layers 80] [--spill /dev/shm/llama-70b]

80 layers are about 141 GB, more than some machines' disks and memory, so the model is never held
anywhere: each tensor is made on the GPU (torch), copied to the host and appended to its shard,
one shard per layer plus one for the embedding and one for the final norm and lm_head. When a
shard would leave the output filesystem with less than --margin-gib free, it is written under
--spill instead (e.g. a tmpfs) and linked from the output directory by a symbolic link, which
troupe's checkpoint reader follows like a file. Each shard is written under a temporary name and
renamed when complete, and every tensor has its own seed, so an interrupted run started again
keeps the shards it finished and makes the same values for the rest.

Initial scales come from test/gpu/init_scales.py, as make_checkpoint.py's do, which keep a
random model's activations finite through many layers.
config.json and the tokenizer files are those make_checkpoint.py writes for its Llama shapes:
the Llama 3 tokenizer from node_modules, whose 128256 ids match vocab_size.
"""
import argparse
import json
import math
import os
import shutil
import struct
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
# The weight scales test/gpu/make_checkpoint.py uses (that script itself pulls in transformers).
sys.path.insert(0, os.path.join(HERE, "..", "test", "gpu"))
from init_scales import init_std as init_std_of  # noqa: E402
TOKENIZER_DIR = os.path.join(HERE, "..", "node_modules", "@lenml", "tokenizer-llama3", "models")
# Llama-3.1-70B as its config.json has it (rope scaling included); the layer count is --layers.
SHAPE_70B = dict(hidden_size=8192, intermediate_size=28672, num_attention_heads=64, num_key_value_heads=8,
                 head_dim=128, vocab_size=128256)
# The same structure scaled down for trying the script on a CPU in seconds; the vocabulary stays
# whole so the tokenizer's ids stay in range.
SHAPE_TINY = dict(hidden_size=64, intermediate_size=192, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=16, vocab_size=128256)
ROPE_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
ROPE_THETA = 500000.0
GB = 1e9


def hf_config(shape, layers):
    return dict(shape, architectures=["LlamaForCausalLM"], model_type="llama", num_hidden_layers=layers,
                tie_word_embeddings=False, max_position_embeddings=131072, rms_norm_eps=1e-5,
                bos_token_id=128000, eos_token_id=[128001, 128009], hidden_act="silu", attention_bias=False,
                mlp_bias=False, rope_theta=ROPE_THETA, rope_scaling=dict(ROPE_SCALING),
                # transformers 5 reads this one; both say the same, as in make_checkpoint.py.
                rope_parameters=dict(ROPE_SCALING, rope_theta=ROPE_THETA), torch_dtype="bfloat16",
                initializer_range=0.02, use_cache=True)


def init_std(name, c):
    """init_scales.init_std for this Llama shape; None for norm weights (made around 1)."""
    if name.endswith("norm.weight"):
        return None
    return init_std_of(name, c["hidden_size"], c["intermediate_size"], c["num_attention_heads"] * c["head_dim"])


def shards(c):
    """[(file name, [(tensor name, shape)])] in the order they are written."""
    h, inter = c["hidden_size"], c["intermediate_size"]
    q, kv = c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    layers = c["num_hidden_layers"]
    groups = [[("model.embed_tokens.weight", [c["vocab_size"], h])]]
    for i in range(layers):
        p = f"model.layers.{i}."
        groups.append([(p + "input_layernorm.weight", [h]), (p + "self_attn.q_proj.weight", [q, h]),
                       (p + "self_attn.k_proj.weight", [kv, h]), (p + "self_attn.v_proj.weight", [kv, h]),
                       (p + "self_attn.o_proj.weight", [h, q]), (p + "post_attention_layernorm.weight", [h]),
                       (p + "mlp.gate_proj.weight", [inter, h]), (p + "mlp.up_proj.weight", [inter, h]),
                       (p + "mlp.down_proj.weight", [h, inter])])
    groups.append([("model.norm.weight", [h]), ("lm_head.weight", [c["vocab_size"], h])])
    n = len(groups)
    return [(f"model-{k + 1:05d}-of-{n:05d}.safetensors", g) for k, g in enumerate(groups)]


def header_bytes(tensors):
    """The safetensors header (8-byte length, JSON padded to 8 bytes) and the data size."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in tensors:
        n = math.prod(shape) * 2
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, offset


def make_tensor(name, shape, c, seed, device):
    # One seed per tensor: a resumed run makes the values an uninterrupted one would have.
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(shape, generator=g, device=device, dtype=torch.float32)
    std = init_std(name, c)
    x = 1.0 + 0.1 * x if std is None else x * std
    return x.to(torch.bfloat16)


def write_shard(path, tensors, c, seeds, device):
    head, _ = header_bytes(tensors)
    tmp = path + ".partial"
    with open(tmp, "wb") as f:
        f.write(head)
        for name, shape in tensors:
            t = make_tensor(name, shape, c, seeds[name], device)
            f.write(memoryview(t.view(torch.int16).cpu().numpy()))
            del t
    os.replace(tmp, path)


def complete(path, size):
    """A finished shard (followed through its link) of the expected size."""
    return os.path.isfile(path) and os.path.getsize(path) == size


def main():
    ap = argparse.ArgumentParser(description="Random-weight Llama-3.1-70B-shaped bf16 checkpoint, written shard by shard.")
    ap.add_argument("--out", required=True, help="checkpoint directory")
    ap.add_argument("--layers", type=int, default=80, help="decoder layers (80 as Llama-3.1-70B; fewer for a smaller model)")
    ap.add_argument("--spill", help="directory for shards that do not fit on --out's filesystem (linked from --out)")
    ap.add_argument("--margin-gib", type=float, default=4.0, help="free space to leave on --out's filesystem")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.layers < 1:
        ap.error("--layers must be at least 1")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.tiny:
        ap.error("no CUDA device: making a full-size checkpoint on the CPU would take hours")
    c = hf_config(SHAPE_TINY if args.tiny else SHAPE_70B, args.layers)
    plan = shards(c)
    seeds = {name: args.seed * 1_000_003 + i for i, name in enumerate(n for _, ts in plan for n, _ in ts)}
    total = sum(header_bytes(ts)[1] for _, ts in plan)
    os.makedirs(args.out, exist_ok=True)
    if args.spill:
        os.makedirs(args.spill, exist_ok=True)
    print(f"{len(plan)} shards, {total / GB:.1f} GB of weights ({args.layers} layers), tensors made on {device}", flush=True)

    t0, written, index = time.perf_counter(), 0, {}
    for k, (fname, tensors) in enumerate(plan):
        head, data = header_bytes(tensors)
        size = len(head) + data
        path = os.path.join(args.out, fname)
        index.update({name: fname for name, _ in tensors})
        if complete(path, size):
            print(f"[{k + 1}/{len(plan)}] {fname}: already there", flush=True)
            continue
        if os.path.islink(path) or os.path.exists(path):
            os.remove(path)  # a link to a spilled shard that was lost, or a wrong size
        where = path
        if shutil.disk_usage(args.out).free - size < args.margin_gib * 2**30:
            if not args.spill:
                raise SystemExit(f"{fname} ({size / GB:.2f} GB) would leave {args.out} with less than {args.margin_gib} GiB free; "
                                 "pass --spill DIR (e.g. under /dev/shm) or fewer --layers")
            where = os.path.join(os.path.abspath(args.spill), fname)
            if not complete(where, size) and shutil.disk_usage(args.spill).free < size:
                raise SystemExit(f"{fname} ({size / GB:.2f} GB) fits neither on {args.out} nor on {args.spill}; "
                                 f"make fewer --layers (now {args.layers})")
        ts = time.perf_counter()
        if complete(where, size):  # spilled by an earlier run that stopped before linking it
            os.symlink(where, path)
            print(f"[{k + 1}/{len(plan)}] {fname}: linked to {where}, written before", flush=True)
            continue
        write_shard(where, tensors, c, seeds, device)
        written += size
        if where != path:
            os.symlink(where, path)
        dt = time.perf_counter() - ts
        rate = written / GB / max(time.perf_counter() - t0, 1e-9)
        print(f"[{k + 1}/{len(plan)}] {fname}: {size / GB:.2f} GB in {dt:.1f} s ({size / GB / max(dt, 1e-9):.2f} GB/s)"
              f"{' -> ' + where if where != path else ''}; {written / GB:.1f} GB written, {rate:.2f} GB/s overall", flush=True)

    with open(os.path.join(args.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": index}, f, indent=2)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(TOKENIZER_DIR, name), os.path.join(args.out, name))
    dt = time.perf_counter() - t0
    print(f"wrote {args.out}: {written / GB:.1f} GB in {dt:.0f} s ({written / GB / max(dt, 1e-9):.2f} GB/s)", flush=True)


if __name__ == "__main__":
    main()
