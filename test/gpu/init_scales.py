"""Standard deviations of random checkpoints' weights, shared by test/gpu/make_checkpoint.py and
bench/make_big_checkpoint.py (no torch or transformers here, so either can import it).

Chosen so every layer matters without making the model chaotic: unit-scale q/k/v, a mild MLP
nonlinearity (gate and up at half scale), each layer adding a fraction of the residual, and
logits with a standard deviation of 3 (a random model's top token then has a clear but not total
lead). Larger layer outputs or a sharper MLP make a random model amplify rounding (transformers'
own bf16 forward then strays by more than 1 nat from its float32 one), which no trained model
does and which would bury real errors under noise. With these, a bf16 forward stays within about
0.1 of the float32 one, as on trained Llama checkpoints.

Qwen2's q/k/v biases are half the size of a projected value, so they change attention. Qwen3
normalizes each q and k head, so its q and k projections are four times larger (unnormalized,
the attention scores would be 16 times sharper) and its q/k norm weights vary more: a forward
that skipped the norms would be far off. Norm weights are not covered: the callers make them
around 1.
"""
import math


def init_std(name, hidden, intermediate, q_dim, model_type="llama"):
    if name.endswith(".bias"):
        return 0.5
    if "embed_tokens" in name or "lm_head" in name:
        return 3.0 / math.sqrt(hidden)
    if ("q_proj" in name or "k_proj" in name) and model_type == "qwen3":
        return 4.0 / math.sqrt(hidden)
    if "q_proj" in name or "k_proj" in name or "v_proj" in name:
        return 1.0 / math.sqrt(hidden)
    if "gate_proj" in name or "up_proj" in name:
        return 0.5 / math.sqrt(hidden)
    if "o_proj" in name:
        return 0.2 / math.sqrt(q_dim)
    if "down_proj" in name:
        return 0.3 / math.sqrt(intermediate)
    raise ValueError(name)
