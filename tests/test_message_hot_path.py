"""The shortcuts on the POST /v2/messages hot path answer exactly what the code they replace answered:
the query parser (urllib's parse_qsl), the scan for Message-ID and Subject, the support ids."""

from __future__ import annotations

import os
import re
from urllib.parse import parse_qsl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailowl.api.messages import _MAX_FIELDS, MessageError, _pairs, parse_query
from mailowl.mail.policy import _top_headers, new_support_id


@given(st.text(alphabet="ab=&%+2F0é;\x00 ", max_size=60))
@settings(max_examples=1000, deadline=None)
def test_query_pairs_equal_parse_qsl(text: str) -> None:
    assert _pairs(text) == parse_qsl(text, keep_blank_values=True, max_num_fields=_MAX_FIELDS)


@pytest.mark.parametrize("fields", [_MAX_FIELDS - 1, _MAX_FIELDS, _MAX_FIELDS + 1])
def test_query_field_limit_as_parse_qsl(fields: int) -> None:
    text = "&".join(["rcpt=a"] * fields)
    try:
        expected: object = parse_qsl(text, keep_blank_values=True, max_num_fields=_MAX_FIELDS)
    except ValueError as exc:
        expected = str(exc)
    try:
        got: object = _pairs(text)
    except ValueError as exc:
        got = str(exc)
    assert got == expected
    if isinstance(expected, str):
        with pytest.raises(MessageError, match="Max number of fields exceeded"):
            parse_query(text.encode())


def _top_headers_reference(head: bytes, names: tuple[bytes, ...]) -> dict[bytes, str]:
    """The scan as it was: every line of the head, stopping at the first empty one."""
    found: dict[bytes, str] = {}
    current: bytes | None = None
    for line in head.split(b"\n"):
        line = line.rstrip(b"\r")
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                found[current] += " " + line.strip().decode("utf-8", "replace")
            continue
        name, colon, value = line.partition(b":")
        name = name.strip().lower()
        current = name if colon and name in names and name not in found else None
        if current is not None:
            found[current] = value.strip().decode("utf-8", "replace")
    return found


@given(st.lists(st.sampled_from([b"Subject: a", b"subject:b", b"Message-ID: <x@y>", b" folded", b"\t",
                                 b"", b"\r", b"\r\r", b"X: 1", b"Subject: =?utf-8?q?=C3=A9?="]), max_size=8),
       st.sampled_from([b"\n", b"\r\n"]), st.booleans())
@settings(max_examples=1000, deadline=None)
def test_top_headers_equal_the_full_scan(lines: list[bytes], eol: bytes, end_with_eol: bool) -> None:
    head = eol.join(lines) + (eol if end_with_eol else b"")
    names = (b"message-id", b"subject")
    assert _top_headers(head, names) == _top_headers_reference(head, names)


def test_support_ids_are_random_hex_and_differ_in_a_forked_child() -> None:
    ids = {new_support_id() for _ in range(3000)}  # across several refills
    assert len(ids) == 3000
    assert all(re.fullmatch(r"mo-[0-9a-f]{12}", i) for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child's next id must not be the parent's next one
        os.write(write, new_support_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert child != new_support_id()
