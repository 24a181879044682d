"""`python -m bench.mem_worker CACHE`: worker.py, but with Worker(max_cached_workflows=CACHE).

Used only by the memory figure's optional comparison (`--mem-cache`), to show what a bounded sticky
cache would do to RSS without touching worker.py. Everything else is worker.main as shipped.
"""

from __future__ import annotations

import functools
import os
import sys

if __name__ == "__main__":
    import worker

    cache = int(sys.argv[1])
    worker.Worker = functools.partial(worker.Worker, max_cached_workflows=cache)  # type: ignore[misc]
    code = worker.main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # as worker.py: avoids an abort in the native runtime at finalization
