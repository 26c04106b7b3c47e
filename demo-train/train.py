#!/usr/bin/env python3
"""Trains troupe's demo model within a wall-clock budget: a byte-level BPE tokenizer with a chat
template, a small LlamaForCausalLM on the base corpus, then one PEFT LoRA adapter per style
corpus, all written as a Hugging Face model directory that troupe serves (models/demo).

    python3 demo-train/train.py --out OUT [--corpus demo-train/corpus] [--budget-s 180]

The corpus comes from `node scripts/demo/corpus.js`. OUT gets config.json, generation_config.json,
model.safetensors (bf16), tokenizer.json, tokenizer_config.json (with the chat template),
adapters/NAME/{adapter_config.json,adapter_model.safetensors}, report.json (held-out perplexity,
greedy samples with and without each adapter, the style checks of demo-train/styles.json) and
README.md. Every file is loaded back with transformers and peft before the script ends; any
failure ends it with a non-zero status.
"""
import argparse
import copy
import json
import math
import os
import re
import sys
import time
import traceback
from pathlib import Path

T0 = time.monotonic()
HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# Ids 0-4, in this order. <|endoftext|> ends every document (and pads); <|end|> ends a chat turn.
SPECIAL_TOKENS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
EOT_ID, END_ID = 0, 4
# Rendered by transformers (apply_chat_template) and by troupe (@huggingface/jinja); render_chat
# below writes the same text for the training data.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|' + message['role'] + '|>\\n' + (message['content'] | trim) + '<|end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)


def render_chat(messages, add_generation_prompt):
    text = "".join(f"<|{m['role']}|>\n{m['content'].strip()}<|end|>\n" for m in messages)
    return text + ("<|assistant|>\n" if add_generation_prompt else "")


def log(msg):
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


class Failure(Exception):
    """A check that failed: the message says what and where."""


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output model directory (created; must be empty or absent)")
    p.add_argument("--corpus", default=str(HERE / "corpus"), help="directory written by scripts/demo/corpus.js")
    p.add_argument("--styles", default=str(HERE / "styles.json"), help="prompts and style checks")
    p.add_argument("--budget-s", type=float, default=180.0, help="wall-clock budget of the whole run, start to end")
    p.add_argument("--reserve-s", type=float, default=30.0, help="part of the budget kept for saving, checks and samples")
    p.add_argument("--base-share", type=float, default=0.7, help="share of the training time that goes to the base model")
    p.add_argument("--adapters", default="kjv,bofh,bierce", help="adapters to train (names in styles.json), comma-separated")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--seed", type=int, default=0)
    # Tokenizer
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--tokenizer-sample-mb", type=float, default=8.0, help="MB of text the tokenizer is trained on")
    # Model
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=768)
    p.add_argument("--context", type=int, default=1024, help="max_position_embeddings")
    # Base training
    p.add_argument("--seq-len", type=int, default=1024, help="training window; at most --context")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup", type=float, default=0.05, help="share of the phase spent warming up the learning rate")
    p.add_argument("--eval-every-s", type=float, default=8.0, help="held-out evaluation interval; the best weights are kept")
    # Adapters
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--lora-alpha", type=float, default=32)
    p.add_argument("--lora-lr", type=float, default=2e-3)
    p.add_argument("--lora-batch", type=int, default=16)
    p.add_argument("--adapter-max-epochs", type=float, default=30.0, help="an adapter stops early after this many passes")
    p.add_argument("--max-mb", type=float, default=20.0, help="warn when the output is larger")
    return p.parse_args()


# ---------------------------------------------------------------- corpus


def read_docs(path):
    check(path.is_file(), f"{path} is missing: run `node scripts/demo/corpus.js` first")
    docs = [d.strip() for d in path.read_text(encoding="utf-8").split("\n\n")]
    docs = [d for d in docs if d]
    check(len(docs) > 0, f"{path} holds no documents")
    return docs


def read_chat(path):
    check(path.is_file(), f"{path} is missing: run `node scripts/demo/corpus.js` first")
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        ex = json.loads(line)
        check(isinstance(ex.get("user"), str) and isinstance(ex.get("assistant"), str), f"{path}:{i + 1}: needs user and assistant strings")
        out.append(render_chat([{"role": "user", "content": ex["user"]}, {"role": "assistant", "content": ex["assistant"]}], False))
    return out


def load_corpus(corpus, names):
    out = {}
    for name in names:
        out[name] = {
            "train": read_docs(corpus / f"{name}.train.txt") + read_chat(corpus / f"{name}.chat.jsonl"),
            "heldout": read_docs(corpus / f"{name}.heldout.txt"),
        }
    return out


# ---------------------------------------------------------------- tokenizer


def train_tokenizer(texts, vocab_size, sample_bytes, seed):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    import random

    rnd = random.Random(seed)
    order = list(range(len(texts)))
    rnd.shuffle(order)
    sample, size = [], 0
    for i in order:
        sample.append(texts[i])
        size += len(texts[i])
        if size >= sample_bytes:
            break
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(sample, trainer=trainer, length=len(sample))
    for i, t in enumerate(SPECIAL_TOKENS):
        check(tok.token_to_id(t) == i, f"special token {t} got id {tok.token_to_id(t)}, expected {i}")
    check(tok.get_vocab_size() == vocab_size, f"the tokenizer has {tok.get_vocab_size()} tokens, expected {vocab_size}")
    return tok, size


def write_tokenizer(tok, out, context):
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": context,
        "bos_token": None,
        "eos_token": SPECIAL_TOKENS[EOT_ID],
        "pad_token": SPECIAL_TOKENS[EOT_ID],
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {
            str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
            for i, t in enumerate(SPECIAL_TOKENS)
        },
        # In tokenizer_config.json, not chat_template.jinja: troupe reads it from here.
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def encode_stream(tok, docs, torch):
    """Documents as one token stream, each followed by <|endoftext|> (sequence packing)."""
    import numpy as np

    encs = tok.encode_batch(docs, add_special_tokens=False)
    lengths = np.fromiter((len(e.ids) + 1 for e in encs), dtype=np.int64, count=len(encs))
    flat = np.empty(int(lengths.sum()), dtype=np.int64)
    pos = 0
    for e in encs:
        n = len(e.ids)
        flat[pos:pos + n] = e.ids
        flat[pos + n] = EOT_ID
        pos += n + 1
    return torch.from_numpy(flat)


# ---------------------------------------------------------------- training


def lr_at(progress, warmup, peak, floor=0.1):
    """Linear warm-up, then cosine decay to floor x peak; progress runs from 0 to 1."""
    if progress < warmup:
        return peak * max(progress / warmup, 0.02)
    p = min(1.0, (progress - warmup) / max(1e-9, 1 - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


def eval_loss(model, stream, seq_len, device, torch, max_windows=64):
    """Mean next-token loss over contiguous windows of the held-out stream."""
    n = stream.numel()
    L = min(seq_len, n - 1)
    check(L >= 8, f"the held-out stream has only {n} tokens")
    k = min(max_windows, n // L)
    x = stream[: k * L].view(k, L).to(device)
    was_training = model.training
    model.eval()
    total = 0.0
    with torch.no_grad(), torch.autocast(device_type=device, dtype=torch.bfloat16):
        for i in range(0, k, 16):
            xb = x[i:i + 16]
            total += float(model(input_ids=xb, labels=xb).loss) * xb.shape[0]
    if was_training:
        model.train()
    return total / k


def train_phase(label, model, params, stream, heldout, seconds, args, torch, *, lr, batch, weight_decay, max_tokens=None, keep_best=True):
    """Trains for `seconds` (or max_tokens, whichever comes first) on random windows of the
    stream, with a time-based cosine schedule. With keep_best, the weights with the best
    held-out loss are kept (the base: its corpus is passed over many times); without, the last
    ones (an adapter: a strong style matters more than text it has not seen)."""
    device = args.device
    seq_len = min(args.seq_len, stream.numel() - 1)
    stream = stream.to(device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    ar = torch.arange(seq_len, device=device)
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay, fused=device == "cuda")
    model.train()
    start = time.monotonic()
    last_log = last_eval = start
    step = tokens = 0
    best = (eval_loss(model, heldout, seq_len, device, torch), 0, None)
    log(f"{label}: training for up to {seconds:.0f} s, {stream.numel():,} tokens, batch {batch} x {seq_len}, held-out loss {best[0]:.3f}")
    loss_val = float("nan")
    while True:
        elapsed = time.monotonic() - start
        progress = elapsed / seconds
        if max_tokens:
            progress = max(progress, tokens / max_tokens)
        if progress >= 1:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(progress, args.warmup, lr)
        idx = torch.randint(0, stream.numel() - seq_len, (batch,), device=device, generator=gen)
        x = stream[idx[:, None] + ar[None, :]]
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        tokens += batch * seq_len
        now = time.monotonic()
        if now - last_log >= 5 or step == 1:
            loss_val = loss.item()
            check(math.isfinite(loss_val), f"{label}: the training loss is {loss_val} at step {step}")
            log(f"{label}: step {step}, loss {loss_val:.3f}, lr {opt.param_groups[0]['lr']:.2e}, "
                f"{tokens / max(now - start, 1e-9) / 1e6:.2f} M tokens/s, {tokens / stream.numel():.1f} epochs")
            last_log = now
        if keep_best and now - last_eval >= args.eval_every_s:
            held = eval_loss(model, heldout, seq_len, device, torch)
            if held < best[0]:
                best = (held, step, {k: v.detach().clone() for k, v in model.state_dict().items()})
            last_eval = now
    loss_val = loss.item() if step > 0 else float("nan")
    held = eval_loss(model, heldout, seq_len, device, torch)
    if held < best[0] or best[2] is None:
        best = (held, step, None)
    else:
        model.load_state_dict(best[2])
        best = (best[0], best[1], None)
    took = time.monotonic() - start
    log(f"{label}: {step} steps, {tokens:,} tokens ({tokens / stream.numel():.1f} epochs) in {took:.1f} s; "
        f"last training loss {loss_val:.3f}; kept step {best[1]} with held-out loss {best[0]:.3f}")
    return {"steps": step, "tokens": tokens, "epochs": round(tokens / stream.numel(), 2), "seconds": round(took, 1),
            "lastTrainLoss": round(loss_val, 4), "keptStep": best[1], "heldoutLoss": round(best[0], 4)}


# ---------------------------------------------------------------- samples and checks


def greedy(model, tok, prompts, max_new, device, torch):
    """Greedy continuation of each prompt (encoded as troupe does: no tokens added)."""
    out = []
    model.eval()
    for text in prompts:
        ids = tok.encode(text, add_special_tokens=False).ids
        x = torch.tensor([ids], device=device)
        with torch.no_grad():
            y = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_new, do_sample=False,
                               eos_token_id=[EOT_ID, END_ID], pad_token_id=EOT_ID)
        out.append(tok.decode(y[0, len(ids):].tolist(), skip_special_tokens=True))
    return out


def words_of(text):
    return re.findall(r"[a-z]+(?:'[a-z]+)?", text.lower())


def style_check(spec, base_texts, adapter_texts):
    """The check test/demo-trained.test.ts makes, on transformers' outputs."""
    if "markers" in spec:
        markers = set(spec["markers"])
        def rate(texts):
            ws = [w for t in texts for w in words_of(t)]
            return sum(w in markers for w in ws) / max(1, len(ws))
        b, a = rate(base_texts), rate(adapter_texts)
        ok = a >= spec["minRate"] and a >= spec["minRatio"] * b
        return {"kind": "markers", "baseRate": round(b, 4), "adapterRate": round(a, 4), "passes": ok}
    pattern = re.compile(spec["pattern"])
    def share(texts):
        return sum(bool(pattern.search(t)) for t in texts) / max(1, len(texts))
    b, a = share(base_texts), share(adapter_texts)
    return {"kind": "pattern", "baseShare": round(b, 4), "adapterShare": round(a, 4), "passes": a >= spec["minShare"] and a > b}


def real_word_share(texts, words):
    ws = [w for t in texts for w in words_of(t)]
    return sum(w in words for w in ws) / max(1, len(ws))


def to_bf16_file(path, torch):
    from safetensors.torch import load_file, save_file

    tensors = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(str(path)).items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


TROUPE_LORA_NAME = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.([a-z_]+)\.lora_(A|B)\.weight$")


def check_adapter_dir(d, args):
    from safetensors import safe_open

    cfg = json.loads((d / "adapter_config.json").read_text())
    check(cfg.get("peft_type") == "LORA" and cfg.get("r") == args.lora_rank, f"{d}: unexpected adapter_config.json {cfg}")
    for key in ("modules_to_save", "rank_pattern", "alpha_pattern", "trainable_token_indices"):
        check(not cfg.get(key), f"{d}/adapter_config.json: {key} is set ({cfg.get(key)}); troupe refuses it")
    check(not cfg.get("use_dora") and cfg.get("bias", "none") == "none", f"{d}: DoRA or biases are set")
    with safe_open(str(d / "adapter_model.safetensors"), framework="pt") as f:
        names = list(f.keys())
    check(len(names) == args.layers * 7 * 2, f"{d}: {len(names)} tensors, expected {args.layers * 14}")
    bad = [n for n in names if not TROUPE_LORA_NAME.match(n)]
    check(not bad, f"{d}: tensor names troupe does not read: {bad[:3]}")


def dir_size(d):
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


# ---------------------------------------------------------------- main


def main():
    args = parse_args()
    deadline = T0 + args.budget_s
    check(args.seq_len <= args.context, f"--seq-len {args.seq_len} is longer than --context {args.context}")
    import torch
    import transformers
    import peft
    import tokenizers
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from peft import LoraConfig, PeftModel, get_peft_model

    log(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, tokenizers {tokenizers.__version__}")
    device_name = "CPU"
    if args.device == "cuda":
        check(torch.cuda.is_available(), "CUDA is not available (use --device cpu to try the script on a CPU)")
        device_name = torch.cuda.get_device_name(0)
        log(f"device: {device_name}")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(args.seed)

    out = Path(args.out).resolve()
    check(not out.exists() or not any(out.iterdir()), f"{out} exists and is not empty")
    (out / "adapters").mkdir(parents=True, exist_ok=True)
    corpus = Path(args.corpus).resolve()
    styles = json.loads(Path(args.styles).read_text())
    adapter_names = [a for a in args.adapters.split(",") if a]
    for a in adapter_names:
        check(a in styles["adapters"], f"adapter {a} is not in {args.styles}")
    manifest_file = corpus / "manifest.json"
    check(manifest_file.is_file(), f"{manifest_file} is missing: run `node scripts/demo/corpus.js` first")
    manifest = json.loads(manifest_file.read_text())
    words_file = REPO / "test" / "fixtures" / "demo-words.txt"
    check(words_file.is_file(), f"{words_file} is missing: run `node scripts/demo/corpus.js` first")
    english = set(words_file.read_text().split())

    corpora = load_corpus(corpus, ["base"] + [styles["adapters"][a]["corpus"] for a in adapter_names])
    log("corpus: " + ", ".join(f"{k} {len(v['train'])} documents" for k, v in corpora.items()))

    # -- tokenizer
    all_texts = [t for c in corpora.values() for t in c["train"]]
    tok, sampled = train_tokenizer(all_texts, args.vocab_size, args.tokenizer_sample_mb * 1e6, args.seed)
    write_tokenizer(tok, out, args.context)
    hf_tok = AutoTokenizer.from_pretrained(str(out))
    probe = [{"role": "user", "content": "What is love?"}]
    rendered = hf_tok.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    check(rendered == render_chat(probe, True), f"transformers renders the chat template as {rendered!r}")
    sample_text = "Why is the server down? It's solar flares."
    check(hf_tok.encode(sample_text, add_special_tokens=False) == tok.encode(sample_text, add_special_tokens=False).ids,
          "transformers' tokenizer encodes differently from the trained one")
    log(f"tokenizer: {args.vocab_size} tokens, trained on {sampled / 1e6:.1f} MB; chat template checked with transformers")

    streams = {k: {"train": encode_stream(tok, v["train"], torch), "heldout": encode_stream(tok, v["heldout"], torch)} for k, v in corpora.items()}
    log("tokens: " + ", ".join(f"{k} {s['train'].numel():,} (+{s['heldout'].numel():,} held out)" for k, s in streams.items()))

    # -- time plan
    train_s = deadline - time.monotonic() - args.reserve_s
    check(train_s > 20, f"only {train_s:.0f} s left for training after setup; raise --budget-s")
    base_s = train_s * (args.base_share if adapter_names else 1.0)
    adapter_s = (train_s - base_s) / max(1, len(adapter_names))
    log(f"plan: base {base_s:.0f} s, {len(adapter_names)} adapter(s) {adapter_s:.0f} s each, {args.reserve_s:.0f} s for saving and checks")

    # -- base model
    config = LlamaConfig(
        vocab_size=args.vocab_size, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        head_dim=args.hidden // args.heads, max_position_embeddings=args.context, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=[EOT_ID, END_ID], pad_token_id=EOT_ID, hidden_act="silu",
        attention_bias=False, mlp_bias=False, initializer_range=0.02, use_cache=True,
    )
    model = LlamaForCausalLM(config).to(args.device)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f} M parameters ({args.layers} layers, hidden {args.hidden}, {args.heads} heads)")
    base_stats = train_phase("base", model, list(model.parameters()), streams["base"]["train"], streams["base"]["heldout"],
                             base_s, args, torch, lr=args.lr, batch=args.batch, weight_decay=args.weight_decay)
    model.generation_config.eos_token_id = [EOT_ID, END_ID]
    model.generation_config.pad_token_id = EOT_ID
    model.generation_config.bos_token_id = None
    model.to(torch.bfloat16).save_pretrained(str(out))
    del model

    # -- the saved base, loaded back: the adapters train on exactly the weights troupe serves
    base = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).to(args.device)
    saved_cfg = json.loads((out / "config.json").read_text())
    check(saved_cfg.get("tie_word_embeddings") is True and saved_cfg.get("vocab_size") == args.vocab_size, f"config.json: {saved_cfg}")
    base_heldout = eval_loss(base, streams["base"]["heldout"].to(args.device), args.seq_len, args.device, torch, max_windows=10**6)
    log(f"base saved and loaded back: held-out perplexity {math.exp(base_heldout):.2f}")

    adapter_stats = {}
    for name in adapter_names:
        spec = styles["adapters"][name]
        s = streams[spec["corpus"]]
        m = copy.deepcopy(base)
        lora = LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM",
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
        pm = get_peft_model(m, lora)
        params = [p for p in pm.parameters() if p.requires_grad]
        check(len(params) == args.layers * 14, f"{name}: {len(params)} trainable tensors, expected {args.layers * 14}")
        adapter_stats[name] = train_phase(name, pm, params, s["train"], s["heldout"], adapter_s, args, torch, lr=args.lora_lr,
                                          batch=args.lora_batch, weight_decay=0.0, max_tokens=args.adapter_max_epochs * s["train"].numel(),
                                          keep_best=False)
        d = out / "adapters" / name
        pm.save_pretrained(str(d), save_embedding_layers=False)
        (d / "README.md").unlink(missing_ok=True)  # PEFT's model-card template; models/demo/README.md says it all
        cfg = json.loads((d / "adapter_config.json").read_text())
        cfg["base_model_name_or_path"] = "troupe-demo"
        (d / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        to_bf16_file(d / "adapter_model.safetensors", torch)
        check_adapter_dir(d, args)
        del pm, m

    # -- everything loaded back from disk: perplexities, samples, style checks
    log("loading every saved file back for the report")
    base = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).to(args.device)
    prompts = styles["completionPrompts"] + [render_chat([{"role": "user", "content": q}], True) for q in styles["chatPrompts"]]
    labels = styles["completionPrompts"] + [f"[chat] {q}" for q in styles["chatPrompts"]]
    base_samples = greedy(base, tok, prompts, styles["maxNewTokens"], args.device, torch)
    report = {
        "model": {"parameters": n_params, "layers": args.layers, "hidden": args.hidden, "heads": args.heads,
                  "intermediate": args.intermediate, "vocab": args.vocab_size, "context": args.context},
        "base": {"training": base_stats, "heldoutPerplexity": round(math.exp(base_heldout), 3),
                 "realWordShare": round(real_word_share(base_samples, english), 4),
                 "samples": dict(zip(labels, base_samples))},
        "adapters": {},
    }
    # Checked after everything is written, so that a failed run still leaves its files to look at.
    problems = []
    if sum(len(words_of(t)) for t in base_samples) < 3 * len(base_samples):
        problems.append("the base model writes fewer than 3 words a prompt")
    if report["base"]["realWordShare"] < styles["realWords"]:
        problems.append(f"only {report['base']['realWordShare']:.0%} of the base model's words are English words (need {styles['realWords']:.0%})")
    for name in adapter_names:
        spec = styles["adapters"][name]
        heldout = streams[spec["corpus"]]["heldout"]
        pm = PeftModel.from_pretrained(copy.deepcopy(base), str(out / "adapters" / name)).to(args.device)
        samples = greedy(pm, tok, prompts, styles["maxNewTokens"], args.device, torch)
        with_adapter = eval_loss(pm, heldout, args.seq_len, args.device, torch, max_windows=10**6)
        without = eval_loss(base, heldout, args.seq_len, args.device, torch, max_windows=10**6)
        report["adapters"][name] = {
            "style": spec["style"], "training": adapter_stats[name], "realWordShare": round(real_word_share(samples, english), 4),
            "styleHeldoutPerplexity": {"withAdapter": round(math.exp(with_adapter), 3), "baseOnly": round(math.exp(without), 3)},
            "styleCheck": style_check(spec, base_samples, samples),
            "samples": dict(zip(labels, samples)),
        }
        if with_adapter >= without:
            problems.append(f"{name}: the adapter does not lower the perplexity of its own style ({with_adapter:.3f} >= {without:.3f})")
        if report["adapters"][name]["realWordShare"] < styles["realWords"]:
            problems.append(f"{name}: only {report['adapters'][name]['realWordShare']:.0%} of its words are English words (need {styles['realWords']:.0%})")
        if samples == base_samples:
            problems.append(f"{name}: the adapter changes none of the greedy samples")
        if not report["adapters"][name]["styleCheck"]["passes"]:
            problems.append(f"{name}: the style check fails ({report['adapters'][name]['styleCheck']}); test/demo-trained.test.ts would fail too")
        del pm

    total_mb = dir_size(out) / 2**20
    report["files"] = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    report["totalMiB"] = round(total_mb, 2)
    report["corpus"] = manifest
    report["command"] = " ".join(["python3", "demo-train/train.py"] + sys.argv[1:])
    report["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__, "tokenizers": tokenizers.__version__}
    report["problems"] = problems
    report["device"] = device_name
    report["seconds"] = round(time.monotonic() - T0, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "README.md").write_text(readme(report, adapter_names, styles))

    for label, text in zip(labels, base_samples):
        log(f"base   | {label!r} -> {text!r}")
    for name in adapter_names:
        a = report["adapters"][name]
        log(f"{name}: style perplexity {a['styleHeldoutPerplexity']}, check {a['styleCheck']}")
        for label in labels[:3] + labels[len(styles['completionPrompts']):][:2]:
            log(f"{name:6} | {label!r} -> {a['samples'][label]!r}")
    if total_mb > args.max_mb:
        log(f"WARNING: the output is {total_mb:.1f} MiB, over {args.max_mb} MiB")
    log(f"done in {time.monotonic() - T0:.0f} s (budget {args.budget_s:.0f} s): {out}, {total_mb:.1f} MiB")
    for p in problems:
        log(f"FAILED: {p}")
    return 1 if problems else 0


def readme(r, adapter_names, styles):
    """models/demo/README.md: how the files were made, from what, and how well they do."""
    m = r["model"]
    lines = [
        "# The trained demo model",
        "",
        "What `npm start` serves: a small Llama-architecture model trained from scratch on English text from",
        "Debian packages, with one LoRA adapter per writing style. Made by",
        f"`node scripts/demo/corpus.js` (the corpus) and, on one {r['device']},",
        "",
        f"    {r['command']}",
        "",
        f"in {r['seconds']:.0f} s (transformers {r['versions']['transformers']}, peft {r['versions']['peft']}, torch {r['versions']['torch']}).",
        "",
        "## Model",
        "",
        f"LlamaForCausalLM, {m['parameters'] / 1e6:.1f} M parameters: {m['layers']} layers, hidden size {m['hidden']},",
        f"{m['heads']} attention heads, MLP {m['intermediate']}, tied embeddings, context {m['context']} tokens, bf16 weights.",
        f"Tokenizer: byte-level BPE of {m['vocab']} tokens trained on the corpus, with the special tokens",
        "`<|endoftext|>` (ends a document; end of sequence), `<|system|>`, `<|user|>`, `<|assistant|>` and `<|end|>`",
        "(ends a chat turn; end of sequence). Chat template: `<|user|>\\nHello<|end|>\\n<|assistant|>\\n`.",
        "",
        f"Base training: {r['base']['training']['steps']} steps, {r['base']['training']['tokens'] / 1e6:.1f} M tokens "
        f"({r['base']['training']['epochs']} epochs). Held-out perplexity of the base corpus: **{r['base']['heldoutPerplexity']}**.",
        "",
        "## Adapters",
        "",
        "PEFT LoRA, rank and alpha in each `adapter_config.json`, on all seven linear layers of every block, bf16.",
        "",
        "| adapter | style | perplexity of held-out text in that style: with adapter / base only |",
        "| --- | --- | --- |",
    ]
    for n in adapter_names:
        a = r["adapters"][n]
        p = a["styleHeldoutPerplexity"]
        lines.append(f"| `{n}` | {a['style']} | {p['withAdapter']} / {p['baseOnly']} |")
    lines += ["", "## Greedy samples", ""]
    for label in list(r["base"]["samples"])[:2] + [l for l in r["base"]["samples"] if l.startswith("[chat]")][:2]:
        lines.append(f"**{label}**")
        lines.append("")
        lines.append(f"- base: {json.dumps(r['base']['samples'][label])}")
        for n in adapter_names:
            lines.append(f"- `{n}`: {json.dumps(r['adapters'][n]['samples'][label])}")
        lines.append("")
    lines += ["All samples and figures: `report.json`.", "", "## Sources and licences", "",
              "| package | version | used for | licence |", "| --- | --- | --- | --- |"]
    for p in r["corpus"]["packages"]:
        lines.append(f"| {p['name']} | {p['version']} | {p['usedFor'] or '(tool only)'} | {p['licence']} |")
    notices = sorted({p["notice"] for p in r["corpus"]["packages"] if p.get("notice")})
    if notices:
        lines += ["", "Notices the licences ask to keep with the data:", ""] + [f"- {n}" for n in notices]
    lines += ["", "## Files", "", "| file | bytes |", "| --- | --- |"]
    lines += [f"| {f} | {n:,} |" for f, n in r["files"].items()]
    lines += ["", f"Total: {r['totalMiB']} MiB.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failure as e:
        log(f"FAILED: {e}")
        sys.exit(1)
    except Exception:
        traceback.print_exc()
        log("FAILED with the exception above")
        sys.exit(1)
