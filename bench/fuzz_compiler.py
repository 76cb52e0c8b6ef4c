"""Differential fuzzer: random valid ONNX graphs, sparsejit against onnxruntime.

    python -m bench.fuzz_compiler --cases 2000 --seed 0                      # FULL profile
    python -m bench.fuzz_compiler --cases 1 --seed 179 --profile quick --save-dir /tmp/fuzz   # one test case
    python -m bench.fuzz_compiler --cases 500 --save-dir /tmp/fuzz --stop-after 5

Case i uses seed `--seed + i`. Prints the number of cases, of mismatches, of compile errors (and of run
errors, unsupported operators — a generator bug — and models onnxruntime refuses — also a generator
bug), and for each failing case its seed, a graph summary and what differed. `--save-dir` keeps each
failing model (case_<profile>_<seed>.onnx) with its feeds (.npz). The generator, the profiles and the
tolerances are in tests/fuzz_graphs.py; tests/test_fuzz_differential.py runs the first seeds of QUICK
and BUCKETED.
Exit status 1 if any case failed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import fuzz_graphs as fg  # noqa: E402

LABELS = {"mismatch": "mismatches", "compile_error": "compile errors", "run_error": "run errors",
          "unsupported": "unsupported operators (generator bugs)",
          "generator_error": "models onnxruntime refuses (generator bugs)"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=200, help="number of cases (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first case (default 0)")
    parser.add_argument("--profile", choices=sorted(fg.PROFILES), default="full", help="generator profile")
    parser.add_argument("--save-dir", type=Path, default=None, help="save failing models and feeds here")
    parser.add_argument("--stop-after", type=int, default=0, help="stop after this many failures (0: never)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    args = parser.parse_args(argv)

    profile = fg.PROFILES[args.profile]
    counts: Counter = Counter()
    failures: list[fg.Outcome] = []
    start = time.perf_counter()
    for i in range(args.cases):
        seed = args.seed + i
        try:
            case = fg.generate(seed, profile)
        except Exception as exc:  # the generator itself failed: report it like any failure
            counts["generator_error"] += 1
            print(f"\nseed {seed}: generator failed: {type(exc).__name__}: {exc}", flush=True)
            continue
        outcome = fg.run_case(case)
        counts[outcome.status] += 1
        if not outcome.ok:
            failures.append(outcome)
            print(f"\nseed {seed}: {outcome.report()}", flush=True)
            if args.save_dir is not None:
                print(f"  saved {fg.save_case(case, args.save_dir)}", flush=True)
            if args.stop_after and len(failures) >= args.stop_after:
                break
        if not args.quiet:
            done = i + 1
            print(f"\r{done}/{args.cases} cases, {done - counts['ok']} failing, "
                  f"{time.perf_counter() - start:.0f} s", end="", file=sys.stderr, flush=True)
    if not args.quiet:
        print(file=sys.stderr)
    total = sum(counts.values())
    print(f"\nprofile {profile.name}, seeds {args.seed}..{args.seed + total - 1}: {total} cases, "
          f"{counts['ok']} ok, {counts['mismatch']} mismatches, {counts['compile_error']} compile errors")
    for status, label in LABELS.items():
        if status not in ("mismatch", "compile_error") and counts[status]:
            print(f"  {counts[status]} {label}")
    if failures:
        print("failing seeds: " + " ".join(f"{o.case.seed}({o.status})" for o in failures))
    return 1 if failures or counts["generator_error"] else 0


if __name__ == "__main__":
    sys.exit(main())
