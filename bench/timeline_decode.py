"""Where a base decode step's time goes, from a kernel timeline (bench/kernel_timeline.cc) of
bench/gpu-decode-timeline.js.

    python3 bench/timeline_decode.py TIMELINE.txt STEPS [OUT.json]

The timeline's steps are split at their embedding kernel (bench/timeline_steps.py); the prefills
that fill the context come first, then the STEPS decode steps the run took (it prints them), of
which the first two are warm-up (the graph's capture and first replay). Prints, over the rest, each kernel's launches, time running and
what it adds to the step as the GPU ran it, then one layer: the kernels from one RoPE kernel to the
next, their start and end after that RoPE kernel's start, averaged over the layers whose kernels
match the most common sequence, and their grids.
"""
import json
import sys

from timeline_steps import mean_walk, print_layer, split_steps

WARM_UP = 2


def main():
    if len(sys.argv) not in (3, 4) or not sys.argv[2].isdigit():
        raise SystemExit(__doc__)
    steps, decodes = split_steps(sys.argv[1]), int(sys.argv[2])
    if decodes <= WARM_UP or decodes > len(steps):
        raise SystemExit(f"{sys.argv[1]}: {len(steps)} steps; STEPS must be more than {WARM_UP} and at most that")
    timed = steps[-decodes:][WARM_UP:]
    out = mean_walk(timed)
    print(f"{len(timed)} steps timed, step span {out['spanUs']:.1f} us")
    print(f"{'kernel':40s} {'launches':>8s} {'runs us':>9s} {'adds us':>9s} {'idle us':>9s} {'early us':>9s}")
    for n, r in sorted(out["kernels"].items(), key=lambda x: -x[1]["adds"]):
        print(f"{n:40s} {r['launches']:8.0f} {r['runs']:9.1f} {r['adds']:9.1f} {r['idle']:9.1f} {r['early']:9.1f}")
    print("\none layer (us after its RoPE kernel starts):")
    print_layer(out["layer"])
    if len(sys.argv) == 4:
        json.dump(out, open(sys.argv[3], "w"), indent=2)


if __name__ == "__main__":
    main()
