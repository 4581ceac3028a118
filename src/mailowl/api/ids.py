"""Job ids in URLs: the one parser every route uses.

Python's int() is far too lenient for a URL: it accepts "+1", "1_0", " 1", "٣" (Arabic-Indic three)
and raises on 5,000 digits. A job id here is 1 to 19 ASCII digits without a leading zero, from 1 to
the largest BIGINT, so every job has exactly one spelling and every id fits the database column.
"""

from __future__ import annotations

import re

MAX_JOB_ID = 2**63 - 1
_CANONICAL = re.compile(r"[1-9][0-9]{0,18}")
_SHOWN = 40


class BadId(ValueError):
    """An id in a URL that is not one; ``message`` says what is wrong, for the client."""

    def __init__(self, message: str, zero: bool = False) -> None:
        super().__init__(message)
        self.message = message
        #: the id was 0 (PeekabooAV answers that with its own text)
        self.zero = zero


def shown(raw: str) -> str:
    """The client's text, quoted and cut short, for an error message."""
    return repr(raw if len(raw) <= _SHOWN else raw[:_SHOWN] + "...")


def parse_job_id(raw: str) -> int:
    """The job id in ``raw``, or BadId saying why it is not one."""
    if _CANONICAL.fullmatch(raw):
        value = int(raw)
        if value <= MAX_JOB_ID:
            return value
        raise BadId(f"Job id {raw} is too large: ids go up to {MAX_JOB_ID}")
    if not raw:
        raise BadId("Job id missing from request", zero=True)
    if raw.isascii() and raw.isdigit():
        if raw.strip("0") == "":
            raise BadId("Job id must be 1 or more, got 0", zero=True)
        if raw.startswith("0"):
            raise BadId(f"Job id {shown(raw)} has a leading zero: write it without")
        raise BadId(f"Job id of {len(raw)} digits is too large: ids go up to {MAX_JOB_ID}")
    raise BadId(f"Job id must be a whole number written with the digits 0-9 only (no sign, space or "
                   f"underscore), got {shown(raw)}")


_SUPPORT_ID = re.compile(r"[A-Za-z0-9._-]{1,32}")


def parse_support_id(raw: str) -> str:
    """A message's support id as mailowl hands them out ("mo-" and 12 hex digits; the column holds 32
    characters), or BadId: a NUL byte or a megabyte of text never reaches the database."""
    if _SUPPORT_ID.fullmatch(raw):
        return raw
    raise BadId(f"Support id must be 1 to 32 of the characters A-Z a-z 0-9 . _ -, got {shown(raw)}")
