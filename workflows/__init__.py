"""Workflows: deterministic orchestration only (no I/O, no cedarpy/hvac/psycopg)."""
