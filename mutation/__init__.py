"""`make mutation`: mutation testing of the code that decides and enforces (see mutation/run.py)."""
