"""`make bench`: import every infra/bench/bench_*.py and run its main(); each prints BENCH lines.

BENCH_ONLY=name1,name2 runs a subset (module names without the bench_ prefix).
"""
from __future__ import annotations

import importlib
import os
import sys
import time
import traceback
from pathlib import Path


def main() -> int:
    only = {s.strip() for s in os.environ.get("BENCH_ONLY", "").split(",") if s.strip()}
    failed = 0
    for path in sorted(Path(__file__).parent.glob("bench_*.py")):
        name = path.stem.removeprefix("bench_")
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        print(f"# running {path.name}", file=sys.stderr, flush=True)
        try:
            importlib.import_module(f"infra.bench.{path.stem}").main()
        except Exception:  # noqa: BLE001 - report and go on with the other benchmarks
            failed += 1
            traceback.print_exc()
        print(f"# {path.name} took {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
