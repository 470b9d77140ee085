"""Draw Figure 1 (mean test macro F1 ± std per pretraining dataset and strategy) from a table3.csv.

    python scripts/plot_figure1.py outputs/reports/table3/table3.csv [--out figure1.png]

Reads only the CSV written by dinoloc-report; writes the PNG and a PDF beside it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dinoloc.io import DinolocError
from dinoloc.report.figures import plot_figure1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table_csv", type=Path, help="table3.csv written by dinoloc-report")
    parser.add_argument("--out", type=Path, default=None, help="output PNG (default: figure1.png beside the CSV)")
    args = parser.parse_args(argv)
    out = args.out if args.out is not None else args.table_csv.parent / "figure1.png"
    try:
        plot_figure1(args.table_csv, out)
    except DinolocError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(out)
    print(out.with_suffix(".pdf"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
