"""Shared test helpers."""

from __future__ import annotations

from email.message import EmailMessage
from typing import Any

from mailowl.analysis.sample import Sample
from mailowl.rules.engine import Engine, Verdict
from mailowl.rules.loader import build_engine
from mailowl.store.journal import KnownReport


def engine(rules: list[str], **sections: dict[str, Any]) -> Engine:
    return build_engine({"rules": rules, **sections}, "test ruleset")


def run(eng: Engine, content: bytes, filename: str | None = None, type_declared: str | None = None,
        disposition: str | None = None, journal: KnownReport | None = None) -> Verdict:
    sample = Sample(content, filename=filename, type_declared=type_declared, content_disposition=disposition)
    return eng.run(sample, (lambda identity: journal) if journal is not None else (lambda identity: KnownReport()))


def mail_with(*attachments: tuple[str, bytes], message_id: str = "<t@x>") -> bytes:
    """A small message with the given (filename, content) attachments."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"], msg["Message-ID"] = "a@example.org", "b@example.net", "t", message_id
    msg.set_content("body\n")
    for name, data in attachments:
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return msg.as_bytes()
