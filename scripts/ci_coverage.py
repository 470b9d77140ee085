"""Coverage of Table III's bootstrap intervals, by simulation against an OpenCell-like population.

    PYTHONPATH=src python scripts/ci_coverage.py [--sets 300] [--boot 1000]

For each interval method of dinoloc.stats, the share of simulated test sets (131 targets, 17 classes, six of
them with about 1-3 positive test targets) whose interval holds the expected test macro F1, over all scored
classes and over the well-supported ones (>= 3 positive test targets). The numbers printed here are the
ones dinoloc.stats.SIMULATED_COVERAGE records and the table notes quote.
"""

from __future__ import annotations

import argparse

from dinoloc import stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", type=int, default=300)
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--truth", type=int, default=2000)
    args = ap.parse_args()
    for min_support in (1, stats.WELL_SUPPORTED):
        r = stats.coverage(n_sets=args.sets, n_boot=args.boot, n_truth=args.truth, min_support=min_support)
        truth = r.pop("_truth")
        print(f"classes with >= {min_support} positive test target(s); expected macro F1 {truth['value']:.4f}; "
              f"{args.sets} test sets, {args.boot} replicates, nominal {truth['level']:.2f}")
        for method, v in r.items():
            print(f"  {method:10s} coverage {v['coverage']:.3f}  mean width {v['mean_width']:.4f}  "
                  f"estimate inside (before widening) {v['estimate_inside']:.3f}")


if __name__ == "__main__":
    main()
