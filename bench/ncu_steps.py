"""GPU time per kernel of the decode steps in an Nsight Compute profile of bench/gpu-lora-profile.js.

    python3 bench/ncu_steps.py PROF.csv [OUT.json]

PROF.csv is `ncu --import PROF.ncu-rep --csv --page raw --print-units base` of a run under
PROFILE=1. A step starts at its embedding kernel: the first steps fill the context (8 rows
each, so four for the profile's 32 rows; set ROWS as for the profiled run), then each case (no
adapter, 1 adapter, 8 adapters) runs PROFILE_STEPS steps (3 unless said, as for the profiled run), the first of them warm-up. Prints, and writes to OUT.json, the mean GPU time of each kernel in a step per case.
"""
import collections
import csv
import json
import os
import re
import sys

FILL_STEPS = -(-int(os.environ.get("ROWS", "32")) // 8)
CASES = ("base", "1 adapter", "8 adapters")
STEPS_PER_CASE = int(os.environ.get("PROFILE_STEPS", "3"))


def kernel_label(name):
    """troupe::<unnamed>::itemShrinkKernel<256, 4>(...) -> itemShrinkKernel."""
    name = re.sub(r"\(.*$", "", name).replace("<unnamed>", "anon")
    return re.sub(r"^.*::", "", re.sub(r"<.*", "", name))


def read_steps(path):
    rows = list(csv.reader(open(path, newline="")))
    header = rows[0]
    name_at, time_at = header.index("Kernel Name"), header.index("gpu__time_duration.sum")
    steps = []
    for row in rows[2:]:  # the second row holds the units
        if len(row) <= max(name_at, time_at):
            continue
        name, ns = row[name_at], float(row[time_at].replace(",", ""))
        if re.search(r"\bembedKernel\(", name):
            steps.append([])
        if steps:
            steps[-1].append((kernel_label(name), ns / 1e3))
    want = FILL_STEPS + STEPS_PER_CASE * len(CASES)
    if len(steps) != want:
        raise SystemExit(f"{path}: {len(steps)} steps, expected {want} (was it a PROFILE=1 run of gpu-lora-profile.js?)")
    return steps


def per_case(steps):
    out = {}
    for c, case in enumerate(CASES):
        first = FILL_STEPS + STEPS_PER_CASE * c + 1
        timed = steps[first : FILL_STEPS + STEPS_PER_CASE * (c + 1)]
        us, launches = collections.Counter(), collections.Counter()
        for step in timed:
            for label, t in step:
                us[label] += t / len(timed)
                launches[label] += 1 / len(timed)
        out[case] = {k: {"us": round(us[k], 1), "launches": round(launches[k])} for k in us}
    return out


def main():
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__)
    cases = per_case(read_steps(sys.argv[1]))
    last = CASES[-1]
    labels = sorted(set().union(*cases.values()), key=lambda k: -cases[last].get(k, {"us": 0})["us"])
    print(f"{'kernel':40s} {'launches':>8s} " + " ".join(f"{c + ' us':>14s}" for c in CASES))
    for k in labels:
        n = max(cases[c].get(k, {"launches": 0})["launches"] for c in CASES)
        print(f"{k:40s} {n:8d} " + " ".join(f"{cases[c].get(k, {'us': 0})['us']:14.1f}" for c in CASES))
    totals = {c: round(sum(v["us"] for v in cases[c].values()), 1) for c in CASES}
    print(f"{'total':40s} {'':8s} " + " ".join(f"{totals[c]:14.1f}" for c in CASES))
    if len(sys.argv) == 3:
        json.dump({"kernels": cases, "totalUs": totals}, open(sys.argv[2], "w"), indent=2)


if __name__ == "__main__":
    main()
