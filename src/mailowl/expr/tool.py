"""``mailowl expr``: try an expression on a sample's facts before putting it into a ruleset.

Every answer is ``{"result": ..., "error": ..., "phase": ...}``: ``result`` is the result name, or null
when the condition does not hold; an expression that cannot be loaded has ``phase: "load"`` and the
message check-config gives; one that raises while evaluated (or yields no result) has ``result:
"failed"``, ``phase: "eval"`` and the error — the ``expressions`` rule makes such a sample ``failed``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from mailowl.expr import schema
from mailowl.expr.evaluate import Expression, ExpressionError, NotAResult, Unreadable, load

if TYPE_CHECKING:
    from mailowl.config import Config
    from mailowl.rules.engine import Engine
    from mailowl.store.jobs import Job

Answer = dict[str, Any]


class Evaluator:
    """Answers cases, loading each distinct expression once."""

    def __init__(self, dialect: str = "peekaboo") -> None:
        self.dialect = dialect
        self._loaded: dict[str, Expression | ExpressionError] = {}

    def load(self, text: str) -> Expression | ExpressionError:
        loaded = self._loaded.get(text)
        if loaded is None:
            try:
                loaded = load(text, self.dialect)
            except ExpressionError as exc:
                loaded = exc
            self._loaded[text] = loaded
        return loaded

    def answer(self, text: str, facts: Mapping[str, Any]) -> Answer:
        loaded = self.load(text)
        if isinstance(loaded, ExpressionError):
            return {"result": None, "error": str(loaded), "phase": "load"}
        try:
            reports = schema.from_json(facts)
        except ValueError as exc:
            return {"result": "failed", "error": f"facts: {exc}", "phase": "eval"}

        def resolve(name: str) -> Any:
            try:
                return reports[name]
            except KeyError:
                raise schema.MissingFact(f"no facts of {name} given") from None

        try:
            result = loaded.evaluate(resolve)
        except Unreadable as exc:
            return {"result": "failed", "error": exc.problem, "phase": "eval"}
        except Exception as exc:
            return {"result": "failed", "error": describe(exc), "phase": "eval"}
        return {"result": result.name if result is not None else None, "error": None, "phase": None}


def describe(exc: BaseException) -> str:
    if isinstance(exc, (schema.MissingFact, NotAResult)):  # their messages say it all
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def batch(lines: Iterable[str], evaluator: Evaluator) -> Iterator[Answer]:
    """One answer per non-empty line of ``{"expression": ..., "facts": {...}}``, in order."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            case = json.loads(line)
            text, facts = case["expression"], case.get("facts", {})
            if not isinstance(text, str) or not isinstance(facts, Mapping):
                raise TypeError("expression must be a string and facts an object")
        except (ValueError, KeyError, TypeError) as exc:
            yield {"result": None, "error": f"line {number}: not a case: {describe(exc)}", "phase": "load"}
            continue
        yield evaluator.answer(text, facts)


def write_lines(answers: Iterable[Answer], out: IO[str]) -> None:
    dumps = json.JSONEncoder(ensure_ascii=False).encode
    out.writelines(dumps(answer) + "\n" for answer in answers)


def run_eval(args: argparse.Namespace) -> int:
    """``mailowl expr eval``: exit 0 when evaluated, 1 when evaluating failed, 2 when not loadable."""
    evaluator = Evaluator(args.dialect)
    if args.batch is not None:
        if args.expression is not None:
            raise UsageError("give either an EXPRESSION or --batch FILE")
        with _open(args.batch) as handle:
            write_lines(batch(handle, evaluator), sys.stdout)
        return 0
    if args.expression is None:
        raise UsageError("give an EXPRESSION (or --batch FILE)")
    facts: Any = {}
    if args.facts is not None:
        with _open(args.facts) as handle:
            try:
                facts = json.load(handle)
            except ValueError as exc:
                raise UsageError(f"{args.facts}: not JSON: {exc}") from None
        if not isinstance(facts, Mapping):
            raise UsageError(f"{args.facts}: expected an object like {{\"sample\": {{...}}, \"filereport\": {{...}}}}")
    answer = evaluator.answer(args.expression, facts)
    write_lines([answer], sys.stdout)
    return {None: 0, "eval": 1, "load": 2}[answer["phase"]]


def run_facts(args: argparse.Namespace, load_engine: Callable[[], tuple[Config, Engine]]) -> int:
    """``mailowl expr facts``: a finished job's facts (JOB_ID) or a file's (--file), as FACTS.json."""
    from mailowl.expr import facts as facts_of

    if args.file is not None:
        from mailowl.analysis.sample import Sample

        _, engine = load_engine()
        try:
            content = Path(args.file).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
        sample = Sample(content, filename=args.name or Path(args.file).name, type_declared=args.type,
                        content_disposition=args.disposition)
        found = facts_of.of_sample(sample, engine)
    else:
        if args.job_id is None:
            raise UsageError("give a JOB_ID (or --file FILE)")
        job, found = _job_facts(args)
        why, absent = facts_of.missing(job, found)
        if absent:
            print(f"mailowl: {why}: {', '.join(absent)} "
                  f"(`mailowl expr facts --file` on the sample gives every fact)", file=sys.stderr)
    print(json.dumps(found, indent=2, ensure_ascii=False))
    return 0


def _job_facts(args: argparse.Namespace) -> tuple[Job, dict[str, Any]]:
    import asyncio

    from mailowl.config import load_config
    from mailowl.expr.facts import of_job
    from mailowl.store import Store

    config = load_config(args.config)

    async def run() -> tuple[Job, dict[str, Any]]:
        store = Store(config.store_url, max_age=config.store.max_age, purge_min_age=config.store.purge_min_age)
        await store.open()
        try:
            job = await store.get_job(args.job_id)
            if job is None or not job.finished:
                raise UsageError(f"job {args.job_id} {'is not finished' if job else 'does not exist (or was purged)'}")
            journal = await store.journal(job.identity)
        finally:
            await store.close()
        return job, of_job(job, journal.journal)

    return asyncio.run(run())


class UsageError(Exception):
    """A mistake on the command line; the message says which."""


def _open(name: str) -> contextlib.AbstractContextManager[IO[str]]:
    if name == "-":
        return contextlib.nullcontext(sys.stdin)
    try:
        return open(name, encoding="utf-8")  # noqa: SIM115 (the caller closes it)
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror}") from None
