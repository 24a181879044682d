"""One mutant against chosen tests, outside the campaign: is it killed?

    python -m mutation.probe TARGET "KEY SUBSTRING" [--line N] -- tests/test_x.py::test_y ...

Copies the repository into a temporary lane, writes the mutant there (never in the working tree),
runs the tests in a fresh pytest process on their own servers, prints `killed` or `survived` and the
test output's tail, and records nothing in bench/mutation.json. For writing a test against a
survivor: it must say `killed` with the mutant and the test must pass without it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from mutation.run import load_targets, make_lane, mutants_of, mutate, run_tests


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    tests: list[str] = []
    if "--" in args:
        at = args.index("--")
        args, tests = args[:at], args[at + 1 :]
    parser = argparse.ArgumentParser(prog="python -m mutation.probe", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("target", help="a target name of mutation/targets.toml")
    parser.add_argument("key", help="the mutant's description as --report prints it, or a substring of it")
    parser.add_argument("--line", type=int, help="only the mutant on this line")
    parser.add_argument("--timeout", type=float, default=600.0)
    opts = parser.parse_args(args)
    targets = {t.name: t for t in load_targets()}
    if opts.target not in targets:
        print(f"unknown target {opts.target!r}: one of {', '.join(sorted(targets))}", file=sys.stderr)
        return 2
    target = targets[opts.target]
    found = [m for m in mutants_of(target) if opts.key in m.key and (opts.line is None or m.line == opts.line)]
    exact = [m for m in found if m.key == opts.key]  # a key is a prefix of its `#2` twin's
    found = exact or found
    if len(found) != 1:
        print(f"{len(found)} mutants match (need exactly one):", file=sys.stderr)
        for m in found[:20]:
            print(f"  line {m.line}: {m.key}", file=sys.stderr)
        return 2
    mutant = found[0]
    base = Path(tempfile.mkdtemp(prefix="lockgate-probe-"))
    try:
        lane = make_lane(base, 0)
        if mutate(lane, mutant) is None:
            print("the mutant no longer applies", file=sys.stderr)
            return 2
        status, seconds, out = run_tests(lane, tests or target.tests, opts.timeout)
        verdict = "survived" if status == "passed" else "killed" if status == "failed" else status
        print("\n".join(out.splitlines()[-15:]))
        print(f"{verdict}: {mutant.key} (line {mutant.line}, {seconds:.0f} s)")
        return 0 if verdict != "survived" else 1
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
