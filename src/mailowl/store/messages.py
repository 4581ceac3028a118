"""Message records: what was decided about one mail (mail/policy.py), found again by its support id."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from mailowl.store.database import reading
from mailowl.store.lru import Lru
from mailowl.store.models import messages
from mailowl.store.rows import aware, storable_text

#: columns whose value is JSON text in the table
_JSON = ("rcpt_to", "parts", "findings")
_LIMITS = {key: getattr(messages.c[key].type, "length", None) for key in ("message_id", "mail_from", "subject")}


@dataclass(slots=True)
class MessageRecord:
    support_id: str
    created_at: datetime
    ingress: str
    action: str
    message_id: str | None = None
    subject: str | None = None
    mail_from: str | None = None
    rcpt_to: list[str] = field(default_factory=list)
    client_ip: str | None = None
    size: int | None = None
    reply: str | None = None
    #: one entry per attachment: filename, content_type, disposition, size, sha256, job_id, result, reason, findings
    parts: list[dict[str, Any]] = field(default_factory=list)
    findings: list[Any] = field(default_factory=list)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> MessageRecord:
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})

    def as_dict(self) -> dict[str, Any]:
        """The API's JSON shape (``created_at`` stays a datetime: the caller formats it)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def row(self) -> dict[str, Any]:
        row = self.as_dict()
        for key in _JSON:
            row[key] = orjson.dumps(row[key] or []).decode()
        for key, value in row.items():
            if isinstance(value, str):
                row[key] = storable_text(value)
        for key, limit in _LIMITS.items():
            # a header's Message-ID and Subject and the envelope sender come from strangers: never let one
            # stall writes
            if limit and isinstance(row[key], str):
                row[key] = row[key][:limit]
        return row

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> MessageRecord:
        values = dict(row)
        for key in _JSON:
            values[key] = orjson.loads(values[key] or "[]")
        values["created_at"] = aware(values["created_at"])
        return cls.from_mapping(values)


class MessageRepository:
    """Recent records from memory (a client asks right after the decision, before the write), older ones
    from the table. Writing is the group commit's (writer.py), so a record costs no commit of its own."""

    def __init__(self, recent: int = 10_000) -> None:
        self._recent: Lru[str, MessageRecord] = Lru(recent)

    def remember(self, record: MessageRecord) -> None:
        self._recent.put(record.support_id, record)

    def forget_recent(self) -> None:
        self._recent.clear()

    async def get(self, engine: AsyncEngine | None, support_id: str) -> MessageRecord | None:
        record = self._recent.get(support_id)
        if record is not None:
            return dataclasses.replace(record)  # the caller may change its copy
        if engine is None:
            return None
        with reading():
            async with engine.connect() as conn:
                row = (await conn.execute(select(messages).where(messages.c.support_id == support_id))).mappings().first()
        return MessageRecord.from_row(row) if row is not None else None
