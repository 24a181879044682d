"""Cedar conformance: lockgate's policy pipeline against Cedar's own integration corpus.

`make conformance` (`python -m conformance`); see conformance/run.py.
"""
