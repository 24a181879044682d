"""`make conformance` / `python -m conformance [--corpus DIR]`: lockgate decides exactly as Cedar.

lockgate does not hand its policies to Cedar as written: it splits the source into statements
(`split_statements`), evaluates only the statements whose action scope can match (`slice_for`),
passes only the parts of `context` they read (`prune_context`) and caches answers (`PolicySlice`).
This runs that real pipeline, `PolicyBundle.authorize` (the call the gate makes), over Cedar's own
integration corpus: the 7,809 generated tests of `corpus-tests.tar.gz` and the hand-written
`tests/` with `sample-data/`. Every request is asked twice of the same bundle, the second time
(and for a repeated request, the first) answered from the cache. For each answer it compares:

- lockgate with plain Cedar: `cedarpy.is_authorized` on the whole, unsplit policy text, with the
  test's schema, on the request as written: decision, deciding policies, erring policies;
- plain Cedar with the expected answer the corpus records.

Policy ids: the corpus names policies `policy0..N` in source order, so lockgate's statements get
those ids in the order `split_statements` finds them, and each statement must parse to exactly the
policy Cedar parses at that position from the whole text (a splitting difference is lockgate's).

The corpus runs in four modes (`MODES`), each compared with plain Cedar given the same inputs:
- with the test's schema or without any (plain Cedar then reads entities and context without one
  too; its answers may then differ from the expected ones, which are for the schema);
- entities normalised (written back by Cedar itself, read with the schema, in explicit JSON) or
  raw (the test's entities.json as written: the bundle must read it as Cedar does).
`context` is always typed by conformance/schema_types.py when there is a schema: lockgate builds
each context itself, in explicit Cedar JSON (`PolicyBundle.authorize`'s contract).

Exit: 0 when lockgate differs from plain Cedar nowhere; 1 on any difference lockgate causes
(differences between plain Cedar and the expected answers are listed apart and do not fail);
2 when the corpus is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cedarpy

from conformance.schema_types import ContextTypes
from lockgate.gates.bundle import Answer, EntityUid, PolicyBundle, PolicyStatement, split_statements

__all__ = ["DEFAULT_CORPUS", "MODES", "Mode", "Outcome", "Tally", "check_test", "main"]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = ROOT.parent / "shared" / "data" / "cedar-integration-tests"
SHOWN = 25  # differences printed per kind


@dataclass(frozen=True)
class Outcome:
    """What is compared: decision, deciding policies, erring policies ("<request>" for an error
    that names no policy, e.g. a request Cedar cannot build)."""

    allowed: bool
    policies: tuple[str, ...]
    errors: tuple[str, ...]

    def __str__(self) -> str:
        return f"{'allow' if self.allowed else 'deny'} {list(self.policies)} errors={list(self.errors)}"


def _from_cedar(result: Any) -> Outcome:
    errors = []
    for e in result.diagnostics.errors:
        at = e.find("`policy")
        errors.append(e[at + 1 : e.index("`", at + 1)] if at >= 0 else "<request>")
    return Outcome(bool(result.allowed), tuple(sorted(result.diagnostics.reasons)), tuple(sorted(errors)))


def _from_lockgate(answer: Answer) -> Outcome:
    named = len(answer.error_ids)
    return Outcome(
        answer.allowed,
        tuple(sorted(answer.policy_ids)),
        tuple(sorted([*answer.error_ids, *["<request>"] * (len(answer.errors) - named)])),
    )


def _expected(request: dict[str, Any]) -> Outcome:
    return Outcome(request["decision"] == "allow", tuple(sorted(request["reason"])), tuple(sorted(request["errors"])))


def _uid(value: Any) -> EntityUid:
    inner = value.get("__entity", value)
    return (str(inner["type"]), str(inner["id"]))


@dataclass
class Tally:
    files: int = 0
    requests: int = 0
    evaluations: int = 0
    policies: int = 0
    split_ok: int = 0
    lockgate_eq_cedar: int = 0
    cedar_eq_expected: int = 0
    lockgate_eq_expected: int = 0
    slices: int = 0
    cache_hits: int = 0
    context_reads: int = 0  # requests whose slice reads some of `context`
    lockgate_diffs: list[str] = field(default_factory=list)
    cedar_diffs: list[str] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        for name, value in vars(other).items():
            setattr(self, name, getattr(self, name) + value)


def lockgate_statements(text: str, label: str) -> tuple[list[PolicyStatement], str | None]:
    """The statements as lockgate splits them, named policy0.. in source order; and a sentence
    when they are not exactly the policies Cedar parses from the whole text."""
    whole = json.loads(cedarpy.policies_to_json_str(text))
    expected = whole.get("staticPolicies", {})
    statements: list[PolicyStatement] = []
    for i, (line, part) in enumerate(split_statements(text)):
        try:
            parsed = json.loads(cedarpy.policies_to_json_str(part))
        except ValueError as err:
            return statements, f"statement {i} (line {line}) does not parse alone: {err}"
        static = parsed.get("staticPolicies", {})
        if parsed.get("templates") or len(static) != 1:
            return statements, f"statement {i} (line {line}) is not one static policy"
        body = next(iter(static.values()))
        if expected.get(f"policy{i}") != body:
            return statements, f"statement {i} (line {line}) is not Cedar's policy{i}"
        statements.append(PolicyStatement.from_est(body, text=part, file=label, line=line, policy_id=f"policy{i}"))
    if len(statements) != len(expected) or whole.get("templates"):
        return statements, f"{len(statements)} statements, Cedar parses {len(expected)} policies"
    return statements, None


def _explicit_entities(entities_text: str, schema_text: str | None) -> str:
    """The entities as Cedar reads them with the schema, written back by Cedar in explicit JSON
    (with the schema's action entities)."""
    try:
        return str(cedarpy.Entities.from_json_str(entities_text, schema_text))
    except ValueError:
        return entities_text  # Cedar refuses them: so must the pipeline, on the same text


@dataclass(frozen=True)
class Mode:
    """How the corpus is handed to lockgate (see the module's docstring)."""

    schema: bool
    normalise: bool

    def __str__(self) -> str:
        return f"{'schema' if self.schema else 'no schema'}, {'normalised' if self.normalise else 'raw'} entities"


MODES = (Mode(True, True), Mode(True, False), Mode(False, True), Mode(False, False))


def check_test(label: str, test: dict[str, Any], base: Path, mode: Mode = MODES[0]) -> Tally:
    """One test file: every request through plain Cedar and through lockgate's pipeline."""
    tally = Tally(files=1)
    text = (base / test["policies"]).read_text()
    entities_text = (base / test["entities"]).read_text()
    schema_text = (base / test["schema"]).read_text() if test.get("schema") and mode.schema else None
    requests = test["requests"]
    tally.requests = len(requests)

    raw = [{k: r[k] for k in ("principal", "action", "resource", "context")} for r in requests]
    cedar = [_from_cedar(r) for r in cedarpy.is_authorized_batch(raw, text, entities_text, schema=schema_text)]

    statements, split_problem = lockgate_statements(text, label)
    tally.policies = len(statements)
    if split_problem is not None:
        tally.lockgate_diffs.append(f"{label}: splitting: {split_problem}")
        return tally
    tally.split_ok = 1
    bundle = PolicyBundle(
        statements=statements,
        entities_json=_explicit_entities(entities_text, schema_text) if mode.normalise else entities_text,
        schema_text=schema_text,
        hash=label,
    )
    types = ContextTypes(schema_text)
    first: list[Outcome] = []
    for attempt in range(2):
        for i, r in enumerate(requests):
            action = _uid(r["action"])
            try:
                answer = bundle.authorize(
                    _uid(r["principal"]), action, _uid(r["resource"]), types.explicit(action, r["context"])
                )
                got = _from_lockgate(answer)
            except Exception as err:  # noqa: BLE001 - the gate denies on any exception; report it here
                got = Outcome(False, (), (f"<exception {type(err).__name__}: {err}>",))
            tally.evaluations += 1
            if attempt == 0:
                first.append(got)
                tally.context_reads += not bundle.slice_for(action).context_free
            elif got != first[i]:
                tally.lockgate_diffs.append(f"{label} #{i} {r['description']!r}: cached {got} vs first {first[i]}")
    for piece in bundle._slices.values():
        tally.slices += 1
        tally.cache_hits += piece.hits
    for i, r in enumerate(requests):
        want, plain, got = _expected(r), cedar[i], first[i]
        tally.lockgate_eq_cedar += got == plain
        tally.cedar_eq_expected += plain == want
        tally.lockgate_eq_expected += got == want
        where = f"{label} #{i} {r['description']!r}"
        if got != plain:
            tally.lockgate_diffs.append(f"{where}: lockgate {got} | Cedar {plain} | expected {want}")
        if plain != want:
            tally.cedar_diffs.append(f"{where}: Cedar {plain} | expected {want}")
    return tally


def _corpus_tests(extracted: Path) -> Iterator[tuple[str, dict[str, Any], Path]]:
    for path in sorted((extracted / "corpus-tests").glob("*.json")):
        if not path.name.endswith(".entities.json"):
            yield f"corpus-tests/{path.name}", json.loads(path.read_text()), extracted


def _handwritten_tests(corpus: Path) -> Iterator[tuple[str, dict[str, Any], Path]]:
    for path in sorted((corpus / "tests").rglob("*.json")):
        yield str(path.relative_to(corpus)), json.loads(path.read_text()), corpus


def _extract(archive: Path, into: Path) -> None:
    with tarfile.open(archive) as tar:
        try:
            tar.extractall(into, filter="data")
        except TypeError:  # Python before 3.11.4 has no extraction filters
            tar.extractall(into)  # noqa: S202 - Cedar's own archive, read-only input


def run(corpus: Path, modes: tuple[Mode, ...] = MODES) -> dict[Mode, tuple[Tally, Tally]]:
    """Per mode: (generated corpus tally, hand-written tally)."""
    out = {mode: (Tally(), Tally()) for mode in modes}
    with tempfile.TemporaryDirectory(prefix="cedar-corpus-") as tmp:
        _extract(corpus / "corpus-tests.tar.gz", Path(tmp))
        for label, test, base in _corpus_tests(Path(tmp)):
            for mode in modes:
                out[mode][0].add(check_test(label, test, base, mode))
    for label, test, base in _handwritten_tests(corpus):
        for mode in modes:
            out[mode][1].add(check_test(label, test, base, mode))
    return out


def _report(name: str, t: Tally, out: Any) -> None:
    print(f"{name}: {t.files} files, {t.policies} policies, {t.requests} requests", file=out)
    print(f"  statements split as Cedar parses them  {t.split_ok}/{t.files} files", file=out)
    print(f"  lockgate = plain Cedar                 {t.lockgate_eq_cedar}/{t.requests}", file=out)
    print(f"  plain Cedar = expected                 {t.cedar_eq_expected}/{t.requests}", file=out)
    print(f"  lockgate = expected                    {t.lockgate_eq_expected}/{t.requests}", file=out)
    print(
        f"  pipeline: {t.evaluations} evaluations, {t.cache_hits} from cache, {t.slices} slices, "
        f"{t.context_reads} requests with a slice that reads context",
        file=out,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conformance", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help=f"default: {DEFAULT_CORPUS}")
    parser.add_argument(
        "--mode",
        type=int,
        choices=range(1, len(MODES) + 1),
        help="only one mode: " + "; ".join(f"{i}: {m}" for i, m in enumerate(MODES, 1)) + " (default: all four)",
    )
    args = parser.parse_args(argv)
    corpus: Path = args.corpus
    if not (corpus / "corpus-tests.tar.gz").is_file() or not (corpus / "tests").is_dir():
        print(
            f"conformance: Cedar's integration corpus is missing: expected {corpus}/corpus-tests.tar.gz "
            "and tests/ (cedar-policy/cedar-integration-tests; see ../shared/data/README.md)",
            file=sys.stderr,
        )
        return 2
    started = time.perf_counter()
    modes = MODES if args.mode is None else (MODES[args.mode - 1],)
    failed = False
    summary = []
    for mode, (generated, handwritten) in run(corpus, modes).items():
        total = Tally()
        total.add(generated)
        total.add(handwritten)
        print(f"== mode: {mode}")
        _report("generated corpus", generated, sys.stdout)
        _report("hand-written tests", handwritten, sys.stdout)
        for title, diffs in (
            ("lockgate-caused differences", total.lockgate_diffs),
            ("plain Cedar vs expected (not lockgate's)", total.cedar_diffs),
        ):
            print(f"{title}: {len(diffs)}")
            for line in diffs[:SHOWN]:
                print(f"  {line}")
            if len(diffs) > SHOWN:
                print(f"  ... and {len(diffs) - SHOWN} more")
        failed = failed or bool(total.lockgate_diffs)
        summary.append(
            f"  {mode}: lockgate = plain Cedar {total.lockgate_eq_cedar}/{total.requests}, "
            f"{len(total.lockgate_diffs)} lockgate-caused differences"
        )
    print("summary:")
    print("\n".join(summary))
    print(f"time: {time.perf_counter() - started:.1f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
