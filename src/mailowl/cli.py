"""Command line: serve, scan, check-config, db, mail, logs, expr, demo."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from mailowl import __version__

if TYPE_CHECKING:
    from mailowl.config import Config
    from mailowl.rules.engine import Engine

# Commands import what they use when they run: `mailowl logs parse` (a pipeline tool) would otherwise
# spend more CPU on importing the configuration, rules and asyncio than on parsing a day of logs.


def _config_args(parser: argparse.ArgumentParser, serve: bool = False) -> None:
    parser.add_argument("--config", type=Path, help="mailowl.toml (default: $MAILOWL_CONFIG or built-in defaults)")
    parser.add_argument("--ruleset", help="ruleset file: native .toml or a PeekabooAV ruleset.conf")
    parser.add_argument("--analyzers", type=Path, help="PeekabooAV's analyzers.conf: its [cortex] section "
                        "configures Cortex (replaces [cortex] of the configuration)")
    if serve:
        parser.add_argument("--listen", help="HOST:PORT for the REST API (default 127.0.0.1:8100)")
        parser.add_argument("--data-dir", help="where the SQLite store lives (default ./mailowl-data)")


def _load(args: argparse.Namespace) -> tuple[Config, Engine]:
    from mailowl.config import load_config
    from mailowl.rules.loader import engine_for

    overrides: dict[str, dict[str, Any]] = {}
    if getattr(args, "ruleset", None):
        overrides["analysis"] = {"ruleset": args.ruleset}
    if getattr(args, "listen", None):
        overrides.setdefault("server", {})["listen"] = args.listen
    if getattr(args, "data_dir", None):
        overrides.setdefault("server", {})["data_dir"] = args.data_dir
    if getattr(args, "analyzers", None):
        from mailowl.analyzers_conf import read_analyzers_conf

        overrides["cortex"] = read_analyzers_conf(args.analyzers)
    config = load_config(args.config, overrides=overrides)
    return config, engine_for(config)


def cmd_serve(args: argparse.Namespace) -> int:
    from mailowl.server import serve

    config, engine = _load(args)
    print(f"mailowl {__version__} listening on http://{config.server.listen}, "
          f"milter {config.milter.listen or 'off'}, content filter {config.smtp.listen or 'off'} "
          f"(store: {config.store_url.split('://')[0]}, rules: {', '.join(engine.rule_names)})", file=sys.stderr)
    serve(config, engine)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    config, engine = _load(args)
    print(f"configuration ok; store {config.store_url.split('://')[0]}, listen {config.server.listen}, "
          f"rules: {', '.join(engine.rule_names)}")
    return 0


def _walk(paths: list[str]) -> Iterator[Path]:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, _dirs, files in os.walk(path):
                for name in sorted(files):
                    yield Path(root) / name
        else:
            yield path


def cmd_scan(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from mailowl.analysis.sample import Sample
    from mailowl.results import Result

    config, engine = _load(args)
    files = list(_walk(args.paths))
    rows: list[dict[str, Any]] = []
    err = Console(stderr=True)
    show_progress = not args.json and len(files) > 1 and err.is_terminal
    with Progress(console=err, disable=not show_progress, transient=True) as progress:
        task = progress.add_task("scanning", total=len(files))
        for path in files:
            try:
                size = path.stat().st_size
                if size > config.server.max_sample_size:
                    raise OSError(f"larger than max_sample_size ({config.server.max_sample_size} bytes)")
                content = path.read_bytes()
            except OSError as exc:
                rows.append({"path": str(path), "result": Result.failed.name,
                             "reason": f"cannot read: {getattr(exc, 'strerror', None) or exc}"})
                progress.advance(task)
                continue
            verdict = engine.run(Sample(content, filename=path.name))
            rows.append({"path": str(path), "result": verdict.result.name, "reason": verdict.reason,
                         "rules": [r.as_dict() for r in verdict.rules]})
            progress.advance(task)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        table = Table("file", "result", "reason")
        for row in rows:
            style = {"bad": "red", "failed": "yellow"}.get(row["result"], "")
            table.add_row(row["path"], f"[{style}]{row['result']}[/]" if style else row["result"], row["reason"])
        out = Console()
        if not out.is_terminal:
            out = Console(width=200)  # piped output: no truncated paths
        out.print(table)
    return 1 if any(r["result"] == Result.bad.name for r in rows) else 0


def cmd_db_purge(args: argparse.Namespace) -> int:
    import asyncio

    from mailowl.config import ConfigError, load_config, parse_duration
    from mailowl.store import Store

    config = load_config(args.config)
    try:
        seconds = parse_duration(args.older_than)
    except ValueError as exc:
        raise ConfigError(f"--older-than: {exc}") from None
    if seconds < config.store.purge_min_age:
        # a running server answers young jobs from memory: purging them would leave it serving deleted jobs
        raise ConfigError(f"--older-than {args.older_than}: must be at least [store] purge_min_age "
                          f"({config.store.purge_min_age} s)")

    async def run() -> int:
        store = Store(config.store_url, purge_min_age=config.store.purge_min_age)
        await store.open()
        try:
            return await store.purge(seconds)
        finally:
            await store.close()

    print(f"deleted {asyncio.run(run())} finished job(s) older than {args.older_than}")
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    import asyncio

    from mailowl.config import load_config
    from mailowl.store import Store

    config = load_config(args.config)

    async def run() -> None:
        store = Store(config.store_url)
        await store.open()
        await store.close()

    asyncio.run(run())
    print("store schema is current")
    return 0


def cmd_mail_inspect(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    from mailowl.config import load_config
    from mailowl.mail.parts import Part, extract, limits_for

    config = load_config(args.config)
    summaries: list[dict[str, Any]] = []
    findings: list[list[str]] = []

    def seen(part: Part) -> None:
        # the part's content is dropped here: memory holds one part at a time
        summaries.append(part.summary())
        findings.append(part.findings)

    try:
        with contextlib.ExitStack() as stack:
            source: IO[bytes]
            if args.file == "-":  # the walker seeks: a pipe is spooled first
                source = stack.enter_context(tempfile.TemporaryFile())
                shutil.copyfileobj(sys.stdin.buffer, source, 1 << 20)
            else:
                source = stack.enter_context(Path(args.file).open("rb"))
            extraction = extract(source, limits_for(config), args.bodies, on_part=seen)
    except OSError as exc:
        print(f"mailowl: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    out: dict[str, Any] = {"parts": summaries}
    if args.verbose_findings or extraction.incomplete:
        out["findings"] = extraction.findings
        out["part_findings"] = findings
        out["incomplete"] = extraction.incomplete
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return 1 if extraction.incomplete else 0


def cmd_logs_parse(args: argparse.Namespace) -> int:
    from typing import BinaryIO

    from mailowl.logs.klms import to_ndjson

    # 1 MiB blocks whatever PYTHONUNBUFFERED says: with it (as in most container images) sys.stdout.buffer
    # is the raw file, and one write system call per line cost a quarter of the run time
    sys.stdout.flush()
    try:
        out: BinaryIO = open(sys.stdout.fileno(), "wb", buffering=1 << 20, closefd=False)  # noqa: SIM115
    except (AttributeError, OSError, ValueError):  # replaced by an object without a file (tests, embedding)
        out = sys.stdout.buffer
    try:
        for name in args.files or ["-"]:
            try:
                handle = sys.stdin.buffer if name == "-" else open(name, "rb")  # noqa: SIM115 (closed below)
            except OSError as exc:
                print(f"mailowl: cannot read {name}: {exc.strerror}", file=sys.stderr)
                return 2
            with handle:
                to_ndjson(handle, out, ecs=args.schema == "ecs")
    finally:
        out.flush()
    return 0


def cmd_logs_ship(args: argparse.Namespace) -> int:
    from mailowl.logs.ship import Shipper, follow

    shipper = Shipper(args.es, args.index)
    try:
        shipper.prepare()
    except Exception as exc:
        print(f"mailowl: {exc}", file=sys.stderr)
        return 2
    if args.follow:
        if len(args.files) != 1:
            print("mailowl: --follow takes exactly one file", file=sys.stderr)
            return 2
        result = shipper.ship(follow(args.files[0]))
    else:
        result = shipper.ship(_lines(args.files))
    print(f"indexed {result.indexed}, already there {result.duplicates}, failed {result.failed}")
    for error in result.errors:
        print(f"  {error}", file=sys.stderr)
    return 1 if result.failed else 0


def _lines(files: list[str]) -> Iterator[str]:
    for name in files or ["-"]:
        if name == "-":
            yield from (raw.decode("utf-8", "replace") for raw in sys.stdin.buffer)
            continue
        with open(name, encoding="utf-8", errors="replace") as handle:
            yield from handle


def cmd_expr(args: argparse.Namespace) -> int:
    from mailowl.expr.tool import UsageError, run_eval, run_facts

    try:
        return run_eval(args) if args.expr_command == "eval" else run_facts(args, lambda: _load(args))
    except UsageError as exc:
        print(f"mailowl: {exc}", file=sys.stderr)
        return 2


def cmd_demo(args: argparse.Namespace) -> int:
    import asyncio
    import tempfile

    from mailowl.demo.run import DemoError, run

    directory = args.dir or Path(tempfile.mkdtemp(prefix="mailowl-demo-"))
    try:
        outcomes = asyncio.run(run(directory.resolve(), once=args.once, token=args.token, port=args.port,
                                   postfix=args.postfix))
    except DemoError as exc:
        print(f"mailowl: {exc}", file=sys.stderr)
        return 2
    # every mail ended as the story says it should
    return 0 if outcomes and all((o.state == "delivered") == (o.expect == "delivered") for o in outcomes) else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mailowl", description="Email attachment analysis gateway")
    p.add_argument("--version", action="version", version=f"mailowl {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the REST API and analysis workers")
    _config_args(s, serve=True)
    s.set_defaults(func=cmd_serve)
    s = sub.add_parser("scan", help="analyse files or directory trees in-process")
    _config_args(s)
    s.add_argument("paths", nargs="+", metavar="PATH")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(func=cmd_scan)
    s = sub.add_parser("check-config", help="validate configuration and ruleset, exit non-zero on error")
    _config_args(s)
    s.set_defaults(func=cmd_check_config)
    mail = sub.add_parser("mail", help="mail tools").add_subparsers(dest="mail_command", required=True)
    s = mail.add_parser("inspect", help="list the parts mailowl would analyse in a message (.eml)")
    s.add_argument("file", help="message file, or - for standard input")
    s.add_argument("--config", type=Path, help="mailowl.toml whose [mail] limits apply (default: $MAILOWL_CONFIG)")
    s.add_argument("--bodies", action="store_true", help="include text bodies, as mail.include_bodies does")
    s.add_argument("--findings", dest="verbose_findings", action="store_true",
                   help="also show decoding problems found")
    s.set_defaults(func=cmd_mail_inspect)
    logs = sub.add_parser("logs", help="verdict log tools").add_subparsers(dest="logs_command", required=True)
    s = logs.add_parser("parse", help="KLMS/KSMG verdict lines to NDJSON, one document per line")
    s.add_argument("files", nargs="*", help="log files (default: standard input)")
    s.add_argument("--schema", choices=["ecs", "klms"], default="ecs",
                   help="ecs: Elastic Common Schema; klms: the flat field names of the usual grok pattern")
    s.set_defaults(func=cmd_logs_parse)
    s = logs.add_parser("ship", help="parse verdict lines and bulk-index them into Elasticsearch")
    s.add_argument("files", nargs="*", help="log files (default: standard input)")
    s.add_argument("--es", required=True, help="Elasticsearch URL, e.g. http://127.0.0.1:9200")
    s.add_argument("--index", default="mailowl-verdicts", help="index name (default: mailowl-verdicts)")
    s.add_argument("--follow", action="store_true", help="keep reading a growing file, like tail -F")
    s.set_defaults(func=cmd_logs_ship)
    expr = sub.add_parser("expr", help="try rule expressions").add_subparsers(dest="expr_command", required=True)
    s = expr.add_parser("eval", help="evaluate an expression on facts, as the expressions rule would")
    s.add_argument("expression", nargs="?", help="the expression, e.g. \"sample.file_extension == 'exe' -> bad\"")
    s.add_argument("--facts", metavar="FACTS.json", help="the sample's facts (as `expr facts` prints them; - for stdin)")
    s.add_argument("--batch", metavar="FILE.jsonl",
                   help='one {"expression": ..., "facts": {...}} per line (- for stdin); one answer per line')
    s.add_argument("--dialect", choices=["peekaboo", "mailowl"], default="peekaboo",
                   help="the expressions rule's dialect (default: peekaboo)")
    s.set_defaults(func=cmd_expr)
    s = expr.add_parser("facts", help="print a finished job's (or a file's) facts as FACTS.json")
    s.add_argument("job_id", nargs="?", type=int, metavar="JOB_ID")
    _config_args(s)
    s.add_argument("--file", help="analyse this file now instead (every report, no job needed)")
    s.add_argument("--name", help="with --file: the declared filename (default: the file's name)")
    s.add_argument("--type", help="with --file: the declared content type")
    s.add_argument("--disposition", help="with --file: the declared content disposition (inline, attachment)")
    s.set_defaults(func=cmd_expr)
    s = sub.add_parser("demo", help="send demo mails through mailowl on loopback, narrated; serve the web interface")
    s.add_argument("--dir", type=Path, help="where everything goes: Maildir, store, verdict log (default: a new "
                   "temporary directory)")
    s.add_argument("--once", action="store_true", help="exit after the story instead of serving the web interface")
    s.add_argument("--token", default="", help="require this token for the web interface")
    s.add_argument("--port", type=int, default=8100, help="web interface port if free (default 8100, else any)")
    s.add_argument("--postfix", action="store_true", help="send through a private Postfix with mailowl's milter "
                   "(needs Postfix and root)")
    s.set_defaults(func=cmd_demo)
    db = sub.add_parser("db", help="store maintenance").add_subparsers(dest="db_command", required=True)
    s = db.add_parser("purge", help="delete finished jobs older than a given age")
    s.add_argument("--config", type=Path)
    s.add_argument("--older-than", required=True, help="age such as 30d, 12h or 2w")
    s.set_defaults(func=cmd_db_purge)
    s = db.add_parser("upgrade", help="migrate the store's schema to the current version")
    s.add_argument("--config", type=Path)
    s.set_defaults(func=cmd_db_upgrade)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result: int = args.func(args)
        return result
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`mailowl scan --json | head`): stop quietly, as other Unix tools do
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:
        if not _is_configuration_error(exc):
            raise
        print(f"mailowl: configuration error: {exc}", file=sys.stderr)
        return 2


def _is_configuration_error(exc: Exception) -> bool:
    config, rules = sys.modules.get("mailowl.config"), sys.modules.get("mailowl.rules")
    return (config is not None and isinstance(exc, config.ConfigError)) or (
        rules is not None and isinstance(exc, rules.RulesetError))


if __name__ == "__main__":
    sys.exit(main())
