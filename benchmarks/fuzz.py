"""Long mutation-fuzzing run of the decoder (the CI-sized run is tests/test_fuzz.py).

    python -m benchmarks.fuzz --cases 100000 --workers 2 --out benchmarks/results/fuzz.json

Each worker process fuzzes its own seed; a worker that dies (segfault), or a case that
runs past ``--case-timeout`` seconds (hang), is reported as a failure with its seed and
case number so it can be replayed.
"""
from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import signal
import sys
import time
from pathlib import Path

import numpy as np


def _timeout(signum, frame):
    raise TimeoutError("case ran too long")


def worker(seed: int, cases: int, case_timeout: int) -> dict:
    from benchmarks import fuzzing

    signal.signal(signal.SIGALRM, _timeout)
    corpus = fuzzing.corpus()
    rng = np.random.default_rng(seed)
    outcomes, failures = collections.Counter(), []
    for i in range(cases):
        original = corpus[i % len(corpus)]
        mutant = fuzzing.mutate(original, rng)
        signal.alarm(case_timeout)
        try:
            outcomes[f"{'resealed' if mutant.resealed else 'raw'}:{fuzzing.run_case(original, mutant)}"] += 1
        except (AssertionError, TimeoutError, MemoryError, Exception) as e:  # noqa: BLE001 - all are findings
            failures.append({"seed": seed, "case": i, "kind": mutant.kind, "error": f"{type(e).__name__}: {e}"})
            outcomes["FAILURE"] += 1
        finally:
            signal.alarm(0)
    return {"outcomes": dict(outcomes), "failures": failures[:50]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=100_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--case-timeout", type=int, default=30)
    p.add_argument("--out", default="benchmarks/results/fuzz.json")
    args = p.parse_args()
    start = time.time()
    per = -(-args.cases // args.workers)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(args.workers) as pool:
        jobs = [pool.apply_async(worker, (args.seed + w, per, args.case_timeout)) for w in range(args.workers)]
        results = []
        for w, job in enumerate(jobs):
            try:
                results.append(job.get())
            except Exception as e:  # noqa: BLE001 - a dead worker is a finding
                results.append({"outcomes": {"WORKER_DIED": 1}, "failures": [{"seed": args.seed + w, "error": repr(e)}]})
    outcomes = collections.Counter()
    for r in results:
        outcomes.update(r["outcomes"])
    report = {"cases": sum(v for k, v in outcomes.items() if k != "WORKER_DIED"), "seconds": round(time.time() - start),
              "outcomes": dict(sorted(outcomes.items())), "failures": [f for r in results for f in r["failures"]]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
