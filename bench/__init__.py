"""lockgate benchmarks (`make bench`, `python -m bench.run [--quick]`).

Starts its own real stack (Temporal dev server, OpenBao, embedded PostgreSQL) on free ports in a
temporary directory, measures governed tool calls side by side with plain Temporal activities on the
same server, and writes bench/results.json. See bench/run.py.
"""
