"""`python worker.py`: run a lockgate worker (the same as `lockgate worker`).

The composition root lives in `lockgate.worker`; this file is only the entry point the design card
keeps at the top level.
"""

from lockgate.worker import entry

if __name__ == "__main__":
    entry()
