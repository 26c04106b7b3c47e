"""What each kernel adds to a decode step, from a kernel timeline (bench/kernel_timeline.cc) of
bench/gpu-lora-profile.js run with PROFILE=1.

    python3 bench/timeline_steps.py TIMELINE.txt [OUT.json]

The steps are split at their embedding kernel as in bench/ncu_steps.py (the context fill, then
base, 1 adapter and 8 adapters, PROFILE_STEPS steps each, the first of them warm-up). Walking a step's
kernels in the order they started, each kernel adds to the step what its end reaches past every
kernel before it ("adds"); time where no kernel ran is counted before the kernel that ends it
("idle before"), and a kernel that started before the ones ahead of it had ended (programmatic
launch) shows how much earlier ("early"). A step's span is the sum of what its kernels add and
its idle time, so the columns say where a step's time goes as the GPU ran it, where Nsight
Compute's serialized times say only how long each kernel takes alone.

Then one layer as the GPU ran it, per case: the kernels from one RoPE kernel to the next, their
start and end after that RoPE kernel's start, averaged over the layers whose kernels match the
most common sequence, and their grids (blocks).
"""
import collections
import json
import re
import sys

from ncu_steps import CASES, FILL_STEPS, STEPS_PER_CASE, kernel_label


# The kernels that start a layer's cycle.
ROPE_KERNELS = ("ropeKvKernel", "ropeKvLoraKernel")


def label(name):
    # __cxa_demangle writes "(anonymous namespace)" where Nsight Compute writes "<unnamed>".
    return kernel_label(name.replace("(anonymous namespace)", "anon"))


def split_steps(path):
    """The timeline's kernels (start, end, label, grid), in the order they started, one list a step."""
    kernels = []
    for line in open(path):
        parts = line.rstrip("\n").split(" ", 5)
        if len(parts) < 6:
            continue
        start, end, stream, graph, grid, name = parts
        kernels.append((int(start), int(end), label(name), int(grid)))
    kernels.sort()
    steps = []
    for k in kernels:
        if k[2] == "embedKernel":
            steps.append([])
        if steps:
            steps[-1].append(k)
    return steps


def read_steps(path):
    steps = split_steps(path)
    want = FILL_STEPS + STEPS_PER_CASE * len(CASES)
    if len(steps) != want:
        raise SystemExit(f"{path}: {len(steps)} steps, expected {want} (a PROFILE=1 run of gpu-lora-profile.js?)")
    return steps


def walk(step):
    """Per kernel label: launches, time running, what it adds, idle before it, how early it started (us)."""
    rows = collections.defaultdict(lambda: collections.Counter())
    reach = step[0][0]
    for start, end, name, _ in step:
        r = rows[name]
        r["launches"] += 1
        r["runs"] += (end - start) / 1e3
        r["adds"] += max(0, end - max(reach, start)) / 1e3
        r["idle"] += max(0, start - reach) / 1e3
        r["early"] += max(0, reach - start) / 1e3
        reach = max(reach, end)
    return rows, (reach - step[0][0]) / 1e3


def mean_walk(steps):
    """walk()'s columns and the span averaged over steps (to 0.1 us), and their layer_cycle()."""
    total = collections.defaultdict(collections.Counter)
    span = 0.0
    for step in steps:
        rows, s = walk(step)
        span += s / len(steps)
        for name, r in rows.items():
            for key, v in r.items():
                total[name][key] += v / len(steps)
    kernels = {n: {k: round(v, 1) for k, v in r.items()} for n, r in total.items()}
    return {"spanUs": round(span, 1), "kernels": kernels, "layer": layer_cycle(steps)}


def per_case(steps):
    out = {}
    for c, case in enumerate(CASES):
        first = FILL_STEPS + STEPS_PER_CASE * c + 1
        out[case] = mean_walk(usual_steps(steps[first : FILL_STEPS + STEPS_PER_CASE * (c + 1)]))
    return out


def usual_steps(steps):
    """The steps whose span is within a fifth of the (lower) median's: a step that tunes a GEMM (a
    graph's first use of a product's shape, Gemm::tune) also runs cuBLAS's candidates and is left
    out, even where it is one of two."""
    spans = [walk(s)[1] for s in steps]
    median = sorted(spans)[(len(spans) - 1) // 2]
    return [s for s, span in zip(steps, spans) if span <= 1.2 * median]


def layer_cycle(steps):
    """The most common kernel sequence from one RoPE kernel to the next (ropeKvKernel, or ropeKvLoraKernel
    where q/k/v's LoRA tail rows add the deltas), with mean start and end (us)
    and each kernel's most common grid (blocks: how many multiprocessors it can hold)."""
    cycles = []
    for step in steps:
        at = [i for i, k in enumerate(step) if k[2] in ROPE_KERNELS]
        for a, b in zip(at, at[1:]):
            t0 = step[a][0]
            cycles.append([(k[2], (k[0] - t0) / 1e3, (k[1] - t0) / 1e3, k[3]) for k in step[a:b]])
    if not cycles:
        return []
    shapes = collections.Counter(tuple(k[0] for k in c) for c in cycles)
    shape, _ = shapes.most_common(1)[0]
    same = [c for c in cycles if tuple(k[0] for k in c) == shape]
    return [
        {"kernel": name, "startUs": round(sum(c[i][1] for c in same) / len(same), 2),
         "endUs": round(sum(c[i][2] for c in same) / len(same), 2),
         "blocks": collections.Counter(c[i][3] for c in same).most_common(1)[0][0]}
        for i, name in enumerate(shape)
    ]


def print_layer(layer):
    """One layer_cycle() as a table."""
    print(f"{'kernel':40s} {'start':>8s} {'end':>8s} {'runs':>8s} {'blocks':>7s}")
    for k in layer:
        print(f"{k['kernel']:40s} {k['startUs']:8.2f} {k['endUs']:8.2f} {k['endUs'] - k['startUs']:8.2f} {k['blocks']:7d}")


def main():
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__)
    cases = per_case(read_steps(sys.argv[1]))
    base, last = CASES[0], CASES[-1]
    names = sorted(set().union(*(c["kernels"] for c in cases.values())),
                   key=lambda n: -cases[last]["kernels"].get(n, {}).get("adds", 0))
    for case in CASES:
        k = cases[case]["kernels"]
        print(f"\n{case}: step span {cases[case]['spanUs']:.1f} us")
        print(f"{'kernel':40s} {'launches':>8s} {'runs us':>9s} {'adds us':>9s} {'idle us':>9s} {'early us':>9s}")
        for n in names:
            if n in k:
                r = k[n]
                print(f"{n:40s} {r['launches']:8.0f} {r['runs']:9.1f} {r['adds']:9.1f} {r.get('idle', 0):9.1f} {r.get('early', 0):9.1f}")
    for case in CASES:
        print(f"\none layer, {case} (us after its RoPE kernel starts):")
        print_layer(cases[case]["layer"])
    print(f"\nwhat {last} add over {base}, by kernel (us a step):")
    for n in names:
        d = cases[last]["kernels"].get(n, {}).get("adds", 0) - cases[base]["kernels"].get(n, {}).get("adds", 0)
        if abs(d) >= 1:
            print(f"{n:40s} {d:+9.1f}")
    print(f"{'span':40s} {cases[last]['spanUs'] - cases[base]['spanUs']:+9.1f}")
    if len(sys.argv) == 3:
        json.dump(cases, open(sys.argv[2], "w"), indent=2)


if __name__ == "__main__":
    main()
