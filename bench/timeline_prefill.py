"""What each kernel takes in the prefill steps of bench/gpu-lora-prefill.js, from a kernel
timeline (bench/kernel_timeline.cc): the steps split at their embedding kernel, each engine's
twelve steps (three timed prefills of four steps, the first of each warm-up) in the order the
script makes the engines (per rank: no adapter, 8 adapters, then each VARIANTS entry).

    TROUPE_KERNEL_TIMELINE=/tmp/tl.txt LD_PRELOAD=/tmp/libkernel_timeline.so \\
        node bench/gpu-lora-prefill.js MODEL ADAPTERS
    python3 bench/timeline_prefill.py /tmp/tl.txt [OUT.json]

Per engine, the mean over its non-warm-up steps of each kernel's summed duration a step (us),
its launches a step, and the step's span and idle time (span less the union of kernel times);
then, for each later engine, the kernels whose time differs from the first (no-adapter) engine's
by more than 50 us a step: run one rank at a time (RANKS=16 or RANKS=64).
"""
import collections
import json
import sys

from timeline_steps import split_steps

STEPS_PER_ENGINE = 12
WARMUP_EVERY = 4


def summarize(step):
    kernels = sorted(step)
    per = collections.defaultdict(lambda: [0.0, 0])
    busy, reach = 0, kernels[0][0]
    for start, end, label, _grid in kernels:
        per[label][0] += (end - start) / 1e3
        per[label][1] += 1
        if end > reach:
            busy += end - max(start, reach)
            reach = end
    span = (reach - kernels[0][0]) / 1e3
    return per, span, span - busy / 1e3


def main():
    steps = split_steps(sys.argv[1])
    engines = [steps[i:i + STEPS_PER_ENGINE] for i in range(0, len(steps) - STEPS_PER_ENGINE + 1, STEPS_PER_ENGINE)]
    out = []
    for e, engine in enumerate(engines):
        timed = [s for i, s in enumerate(engine) if i % WARMUP_EVERY != 0]
        total = collections.defaultdict(lambda: [0.0, 0])
        spans, idles = [], []
        for s in timed:
            per, span, idle = summarize(s)
            spans.append(span)
            idles.append(idle)
            for k, (us, n) in per.items():
                total[k][0] += us / len(timed)
                total[k][1] += n / len(timed)
        row = {"engine": e, "spanUs": sum(spans) / len(spans), "idleUs": sum(idles) / len(idles),
               "kernels": {k: {"us": round(v[0], 1), "launches": round(v[1], 1)} for k, v in
                           sorted(total.items(), key=lambda kv: -kv[1][0])}}
        out.append(row)
        print(f"engine {e}: span {row['spanUs'] / 1e3:.2f} ms, idle {row['idleUs']:.0f} us")
        for k, v in list(row["kernels"].items())[:14]:
            print(f"  {v['us']:10.1f} us  {v['launches']:6.1f} x  {k}")
    print("against the first engine:")
    for row in out[1:]:
        base = out[0]["kernels"]
        for k, v in row["kernels"].items():
            d = v["us"] - base.get(k, {"us": 0})["us"]
            if abs(d) > 50:
                print(f"  engine {row['engine']}: {k} {d:+.0f} us a step ({v['launches']:.0f} launches)")
    if len(sys.argv) > 2:
        with open(sys.argv[2], "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
