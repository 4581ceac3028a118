"""`mailowl demo`: the whole mail path in one process on loopback, narrated.

sending MTA (mta.Sender) -> mailowl's SMTP ingress (mail/smtp.py, the policy every ingress uses) -> receiving
MTA (mta.MaildirServer) -> Maildir; the analysis service, store, verdict log and web interface are those of
`mailowl serve` (server.make_asgi), configured to write everything under one directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import mailbox
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from rich.console import Console
from rich.markup import escape

from mailowl.config import Config, load_config
from mailowl.demo.mails import RECIPIENT, SENDER, DemoMail, demo_mails, eicar
from mailowl.demo.mta import Attempt, MaildirServer, Outgoing, Sender
from mailowl.demo.postfix import PostfixError, PrivatePostfix, available
from mailowl.server import build_service, make_asgi
from mailowl.store import Store

DEFAULT_RULESET = Path(__file__).parent.parent / "defaults" / "ruleset.toml"
HOST = "127.0.0.1"


@dataclass
class Outcome:
    key: str
    title: str
    expect: str
    state: str = "queued"
    replies: list[str] = field(default_factory=list)
    support_ids: list[str] = field(default_factory=list)
    #: per part: filename, result, deciding rule, reason
    parts: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Layout:
    """Everything the demo writes, under one directory."""

    root: Path

    @property
    def maildir(self) -> Path:
        return self.root / "Maildir"

    @property
    def verdict_log(self) -> Path:
        return self.root / "verdicts.log"

    @property
    def ruleset(self) -> Path:
        return self.root / "ruleset.toml"

    @property
    def yara(self) -> Path:
        return self.root / "yara"

    @property
    def report(self) -> Path:
        return self.root / "demo.json"


def free_port(preferred: int = 0) -> int:
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free port on the loopback interface")


def write_ruleset(layout: Layout) -> None:
    """The built-in ruleset with a YARA rule for EICAR, checked before the type lists (EICAR is plain text)."""
    layout.yara.mkdir(parents=True, exist_ok=True)
    (layout.yara / "eicar.yar").write_text(
        "rule EICAR_test_file {\n  strings:\n    $eicar = { " + eicar().hex(" ") + " }\n"
        "  condition:\n    $eicar at 0\n}\n")
    text = DEFAULT_RULESET.read_text()
    marker = '  "file_larger_than",\n'
    if marker not in text:
        raise RuntimeError("the built-in ruleset changed: the demo cannot place its YARA rule")
    text = text.replace(marker, marker + '  "yara",\n', 1)
    layout.ruleset.write_text(text + f"\n[yara]\ndirectory = {json.dumps(str(layout.yara))}\n")


def demo_config(layout: Layout, web: int, smtp: int, maildir: int, token: str, milter: int | None = None) -> Config:
    return load_config(None, environ={}, overrides={
        "server": {"listen": f"{HOST}:{web}", "data_dir": str(layout.root / "data"), "token": token},
        "milter": {"listen": f"{HOST}:{milter}" if milter else ""},
        "smtp": {"listen": f"{HOST}:{smtp}" if smtp else "", "next_hop": f"{HOST}:{maildir}"},
        # no waiting for verdicts: every new attachment is deferred once and its retry answered from the cache
        "mail": {"wait": 0},
        "log": {"target": f"file:{layout.verdict_log}"},
        "analysis": {"ruleset": str(layout.ruleset)},
    })


class DemoError(RuntimeError):
    pass


class Narrator:
    def __init__(self, console: Console, store: Store, total: int, postfix: bool = False) -> None:
        self.console = console
        self.store = store
        self.total = total
        self.postfix = postfix

    def begin(self, number: int, mail: DemoMail) -> None:
        names = [name for p in mail.message.walk() if (name := p.get_filename())]
        files = f" — {', '.join(names)}" if names else ""
        self.console.print(f"\n[bold][{number}/{self.total}] {escape(mail.title)}[/]"
                           f"[dim] (Subject: {escape(str(mail.message['Subject']))}{escape(files)})[/]")

    async def attempt(self, mail: Outgoing, attempt: Attempt) -> None:
        colour = "green" if attempt.code < 400 else "yellow" if attempt.code < 500 else "red"
        accepted = "accepted: Postfix relays it to the Maildir" if self.postfix else "delivered into the Maildir"
        what = {"delivered": accepted, "bounced": "rejected: the sender bounces it",
                "deferred": "deferred: the sender keeps it and tries again"}[mail.state]
        label = "sent" if len(mail.attempts) == 1 else f"retry {len(mail.attempts) - 1}"
        self.console.print(f"  {label:>8} ← [{colour}]{escape(attempt.reply)}[/]  [dim]{what}[/]")

    async def explain(self, outcome: Outcome) -> None:
        """Which rule decided each part, and why, from the stored decisions."""
        jobs: dict[int, int] = {}  # part index -> the job that analysed it (the first attempt's)
        final = None
        for support_id in outcome.support_ids:
            record = await self.store.get_message(support_id)
            if record is None:
                continue
            final = record
            for index, part in enumerate(record.parts):
                if part.get("job_id") and index not in jobs:
                    jobs[index] = part["job_id"]
        for index, part in enumerate(final.parts if final is not None else []):
            job = await self.store.get_job(jobs[index]) if index in jobs else None
            rule = job.rules[-1].rule if job is not None and job.rules else "known"
            cached = "" if index in jobs else " (from the verdict cache)"
            entry = {"filename": part.get("filename"), "result": part.get("result"), "rule": rule,
                     "reason": part.get("reason"), "job_id": jobs.get(index)}
            outcome.parts.append(entry)
            colour = {"bad": "red", "failed": "yellow"}.get(part.get("result") or "", "green")
            self.console.print(f"           [dim]why:[/] {escape(part.get('filename') or '(unnamed)')} is "
                               f"[{colour}]{escape(str(part.get('result')))}[/] by rule [bold]{escape(rule)}[/]"
                               f"{cached}: {escape(part.get('reason') or '')}")
        if final is not None and not final.parts:
            self.console.print("           [dim]why: no attachments, nothing to analyse[/]")


async def delivered_support_id(maildir: Path, message_id: str, timeout: float = 60) -> str | None:
    """Postfix answers "250 Ok: queued as ..."; the support id is in the header mailowl had it add."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in mailbox.Maildir(maildir, create=False):
            if message["Message-ID"] == message_id:
                header = str(message.get("X-Mailowl-Result", ""))
                return header.partition("support-id=")[2].strip() or None
        await asyncio.sleep(0.1)
    return None


async def tell_story(console: Console, store: Store, address: tuple[str, int], retry_delay: float,
                     maildir: Path | None = None) -> list[Outcome]:
    """``maildir`` set: a Postfix in between, whose 250 does not name the support id."""
    mails = demo_mails()
    narrator = Narrator(console, store, len(mails), postfix=maildir is not None)
    sender = Sender(address, retry_delay=retry_delay)
    outcomes = []
    for number, mail in enumerate(mails, 1):
        narrator.begin(number, mail)
        sent = await sender.deliver(Outgoing(SENDER, [RECIPIENT], mail.data), narrator.attempt)
        outcome = Outcome(mail.key, mail.title, mail.expect, sent.state, [a.reply for a in sent.attempts],
                          [a.support_id for a in sent.attempts if a.support_id])
        if maildir is not None and sent.state == "delivered":
            support_id = await delivered_support_id(maildir, str(mail.message["Message-ID"]))
            if support_id is None:
                raise DemoError(f"Postfix accepted {mail.title!r} but did not deliver it")
            outcome.support_ids.append(support_id)
            console.print(f"           [dim]in the Maildir, with[/] X-Mailowl-Result: …support-id={support_id}")
        await narrator.explain(outcome)
        outcomes.append(outcome)
    return outcomes


async def run(directory: Path, once: bool, token: str = "", port: int = 8100, retry_delay: float = 1.0,
              console: Console | None = None, postfix: bool = False) -> list[Outcome]:
    console = console or Console(highlight=False)
    if postfix and (why := available()) is not None:
        raise DemoError(f"--postfix: {why}")
    started = time.monotonic()
    layout = Layout(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_ruleset(layout)
    web, smtp, next_hop = free_port(port), free_port(), free_port()
    milter = free_port() if postfix else None
    config = demo_config(layout, web, 0 if postfix else smtp, next_hop, token, milter)
    if postfix:
        console.print(f"[bold]mailowl demo[/] in {escape(str(directory))}: a sending MTA → a private Postfix "
                      f"({HOST}:{smtp}) with mailowl's milter ({HOST}:{milter}) → a receiving MTA → Maildir")
    else:
        console.print(f"[bold]mailowl demo[/] in {escape(str(directory))}: a sending MTA → mailowl's SMTP ingress "
                      f"({HOST}:{smtp}) → a receiving MTA → Maildir; analysis, store and web interface in this "
                      "process")
    maildir = MaildirServer(layout.maildir)
    await maildir.start(HOST, next_hop)
    service = build_service(config)
    server = uvicorn.Server(uvicorn.Config(make_asgi(config, service), host=HOST, port=web, log_level="warning",
                                           access_log=False, lifespan="on"))
    serving = asyncio.create_task(server.serve())
    relay: PrivatePostfix | None = None
    try:
        while not server.started:
            if serving.done():
                serving.result()  # raises why it could not start
                raise RuntimeError("the web server stopped before it started")
            await asyncio.sleep(0.05)
        if postfix:
            assert milter is not None
            try:
                relay = PrivatePostfix(layout.root / "postfix", layout.root, smtp, (HOST, milter), (HOST, next_hop))
                await asyncio.to_thread(relay.start)
            except PostfixError as exc:
                raise DemoError(f"--postfix: {exc}") from None
        story = asyncio.create_task(tell_story(console, service.store, (HOST, smtp), retry_delay,
                                               layout.maildir if postfix else None))
        await asyncio.wait([story, serving], return_when=asyncio.FIRST_COMPLETED)
        if not story.done():  # Ctrl-C while sending: the server is stopping
            story.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await story
            return []
        outcomes = story.result()
        await service.store.flush()
        service.verdict_log.flush()
        elapsed = time.monotonic() - started
        _report(console, layout, outcomes, elapsed, web, token, once)
        if once:
            server.should_exit = True
        await serving
        return outcomes
    finally:
        if relay is not None:
            await asyncio.to_thread(relay.stop)
        if not serving.done():
            server.should_exit = True
            await serving
        await maildir.stop()


def _report(console: Console, layout: Layout, outcomes: list[Outcome], elapsed: float, web: int, token: str,
            once: bool) -> None:
    delivered = sum(o.state == "delivered" for o in outcomes)
    rejected = sum(o.state == "bounced" for o in outcomes)
    layout.report.write_text(json.dumps({"seconds": round(elapsed, 3), "web": f"http://{HOST}:{web}/ui/",
                                         "mails": [o.__dict__ for o in outcomes]}, indent=2))
    console.print(f"\n[bold]Done in {elapsed:.1f} s:[/] {len(outcomes)} mails, {delivered} delivered, "
                  f"{rejected} rejected.")
    console.print("Where to look:")
    console.print(f"  Maildir        {escape(str(layout.maildir))}  ({delivered} in new/)")
    console.print(f"  web interface  http://{HOST}:{web}/ui/" + ("  (log in with the token)" if token else ""))
    console.print(f"  verdict log    {escape(str(layout.verdict_log))}")
    if (layout.root / "postfix").exists():
        console.print(f"  Postfix's log  {escape(str(layout.root / 'postfix' / 'maillog'))}")
    console.print(f"  this story     {escape(str(layout.report))}")
    if not once:
        console.print("Serving the web interface until Ctrl-C.")
