"""Run every ``benchmarks/bench_*.py`` with its default arguments, one after another (``make bench``).

Each benchmark runs in its own process, so one's threads, hooks and memory cannot skew the next.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    failed = []
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"\n# {script.name}", flush=True)
        started = time.time()
        code = subprocess.call([sys.executable, str(script)])
        print(f"# {script.name}: exit {code}, {time.time() - started:.0f} s", flush=True)
        if code:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
