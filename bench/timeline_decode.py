"""Where a base decode step's time goes, from a kernel timeline (bench/kernel_timeline.cc) of
bench/gpu-decode-timeline.js.

    python3 bench/timeline_decode.py TIMELINE.txt STEPS [OUT.json]

The timeline's steps are split at their embedding kernel (bench/timeline_steps.py); the prefills
that fill the context come first, then the STEPS decode steps the run took (it prints them), of
which the first two are warm-up (the graph's capture and first replay). Prints, over the rest, each kernel's launches, time running and
what it adds to the step as the GPU ran it, then one layer: the kernels from one RoPE kernel to the
next, their start and end after that RoPE kernel's start, averaged over the layers whose kernels
match the most common sequence.
"""
import collections
import json
import sys

from timeline_steps import layer_cycle, split_steps, walk

WARM_UP = 2


def main():
    if len(sys.argv) not in (3, 4) or not sys.argv[2].isdigit():
        raise SystemExit(__doc__)
    steps, decodes = split_steps(sys.argv[1]), int(sys.argv[2])
    if decodes <= WARM_UP or decodes > len(steps):
        raise SystemExit(f"{sys.argv[1]}: {len(steps)} steps; STEPS must be more than {WARM_UP} and at most that")
    timed = steps[-decodes:][WARM_UP:]
    total = collections.defaultdict(collections.Counter)
    span = 0.0
    for step in timed:
        rows, s = walk(step)
        span += s / len(timed)
        for name, r in rows.items():
            for key, v in r.items():
                total[name][key] += v / len(timed)
    print(f"{len(timed)} steps timed, step span {span:.1f} us")
    print(f"{'kernel':40s} {'launches':>8s} {'runs us':>9s} {'adds us':>9s} {'idle us':>9s} {'early us':>9s}")
    for n, r in sorted(total.items(), key=lambda x: -x[1]["adds"]):
        print(f"{n:40s} {r['launches']:8.0f} {r['runs']:9.1f} {r['adds']:9.1f} {r['idle']:9.1f} {r['early']:9.1f}")
    layer = layer_cycle(timed)
    print("\none layer (us after its RoPE kernel starts):")
    print(f"{'kernel':40s} {'start':>8s} {'end':>8s} {'runs':>8s}")
    for k in layer:
        print(f"{k['kernel']:40s} {k['startUs']:8.2f} {k['endUs']:8.2f} {k['endUs'] - k['startUs']:8.2f}")
    if len(sys.argv) == 4:
        kernels = {n: {k: round(v, 1) for k, v in r.items()} for n, r in total.items()}
        json.dump({"spanUs": round(span, 1), "kernels": kernels, "layer": layer}, open(sys.argv[3], "w"), indent=2)


if __name__ == "__main__":
    main()
