"""Content-Transfer-Encoding decoders that take a body in pieces and give exactly the bytes
``email.message.Message.get_payload(decode=True)`` gives for the whole body.

Each decoder writes to ``out`` as it goes and says at the end whether the encoding held; when it did not,
``get_payload`` answers the body undecoded (base64: with its line ends removed), and so does the caller.
"""

from __future__ import annotations

import binascii
from typing import Protocol

_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_NOT_B64 = bytes(c for c in range(256) if c not in _B64_ALPHABET)
#: beyond this, quoted-printable text without a line end is decoded in pieces anyway
_QP_HOLD = 1 << 22


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


class Decoder(Protocol):
    def write(self, data: bytes) -> None: ...

    def finish(self) -> bool:
        """Flush; False if the body must be taken undecoded instead."""
        ...


class Identity:
    def __init__(self, out: Sink) -> None:
        self.out = out

    def write(self, data: bytes) -> None:
        self.out.write(data)

    def finish(self) -> bool:
        return True


class Base64:
    """binascii's lenient decoding of the whole body plus two padding characters, as the ``email`` package
    ends up doing for any body that its stricter first attempts refuse: characters outside the alphabet
    are skipped, a '=' completing a group ends the data, and a lone character in a last group is an error."""

    def __init__(self, out: Sink) -> None:
        self.out = out
        self.group = b""
        self.pads = 0
        self.done = False
        #: characters outside the alphabet (or misplaced padding) were skipped
        self.skipped = False

    def write(self, data: bytes) -> None:
        if self.done:
            return
        kept = data.translate(None, _NOT_B64)
        if len(kept) != len(data) - data.count(b"\r") - data.count(b"\n"):  # counting copies nothing
            self.skipped = True
        while kept:
            pad = kept.find(b"=")
            run = kept if pad < 0 else kept[:pad]
            if run:
                self.pads = 0
                if self.group:
                    run = self.group + run
                cut = len(run) - len(run) % 4
                if cut:
                    self.out.write(binascii.a2b_base64(run if cut == len(run) else run[:cut]))
                self.group = run[cut:]
            if pad < 0:
                return
            if len(self.group) >= 2:
                self.pads += 1
                if len(self.group) + self.pads >= 4:
                    self._end()
                    return
            else:
                self.skipped = True
            kept = kept[pad + 1:]

    def _end(self) -> None:
        if self.group:
            self.out.write(binascii.a2b_base64(self.group + b"=" * (4 - len(self.group))))
        self.group, self.done = b"", True

    def finish(self) -> bool:
        if not self.done:
            if len(self.group) == 1:
                return False
            self._end()
        return True


class QuotedPrintable:
    """binascii.a2b_qp over the whole body, fed in pieces cut only where it reads no further than the cut."""

    def __init__(self, out: Sink) -> None:
        self.out = out
        self.rest = b""

    def write(self, data: bytes) -> None:
        data = self.rest + data
        cut = data.rfind(b"\n") + 1
        if not cut and len(data) > _QP_HOLD:
            skip = _skip_start(data)
            if skip >= 0:
                # a2b_qp drops what follows '=' CR up to the next LF: keep only those two bytes
                self.out.write(binascii.a2b_qp(data[:skip]))
                self.rest = b"=\r"
                return
            # a2b_qp reads at most two bytes past a '=': cut where neither of the last two is one
            cut = len(data) - 2
            while cut > 0 and b"=" in data[max(0, cut - 2):cut]:
                cut -= 1
        self.rest = data[cut:]
        if cut:
            self.out.write(binascii.a2b_qp(data[:cut]))

    def finish(self) -> bool:
        if self.rest:
            self.out.write(binascii.a2b_qp(self.rest))
        return True


def _skip_start(data: bytes) -> int:
    """Where a2b_qp starts skipping to a line end: a '=' CR whose '=' is not the second of a '==' pair."""
    at = data.find(b"=\r")
    while at >= 0:
        first = at
        while first > 0 and data[first - 1] == 0x3D:
            first -= 1
        if (at - first) % 2 == 0:
            return at
        at = data.find(b"=\r", at + 1)
    return -1


class Uuencode:
    """The ``email`` package's uudecoding, line by line: text up to a ``begin <octal mode>`` line is
    ignored, an empty line is an error, an ``end`` line or the end of the body ends the data."""

    def __init__(self, out: Sink) -> None:
        self.out = out
        self.rest = b""
        self.state = "before"  # before | data | after
        self.broken = False

    def write(self, data: bytes) -> None:
        data = self.rest + data
        # the last line may go on in the next piece; so may a CR at the very end (the first half of CRLF)
        last = len(data) - 1 if data.endswith(b"\r") else len(data)
        end = max(data.rfind(b"\n", 0, last), data.rfind(b"\r", 0, last)) + 1
        self.rest = data[end:]
        self._lines(data[:end].splitlines())

    def _lines(self, lines: list[bytes]) -> None:
        for line in lines:
            if self.state == "after" or self.broken:
                return
            if self.state == "before":
                if line.startswith(b"begin "):
                    mode = line[6:].partition(b" ")[0]
                    try:
                        int(mode, 8)
                    except ValueError:
                        continue
                    self.state = "data"
                continue
            if not line:
                self.broken = True
            elif line.strip(b" \t\r\n\f") == b"end":
                self.state = "after"
            else:
                try:
                    self.out.write(binascii.a2b_uu(line))
                except binascii.Error:
                    # what broken encoders need: the length the line's first byte announces
                    try:
                        self.out.write(binascii.a2b_uu(line[:(((line[0] - 32) & 63) * 4 + 5) // 3]))
                    except binascii.Error:
                        self.broken = True

    def finish(self) -> bool:
        if self.rest:
            self._lines(self.rest.splitlines())
        return self.state != "before" and not self.broken


def decoder(cte: str, out: Sink) -> Decoder:
    """The decoder ``get_payload(decode=True)`` would use for this Content-Transfer-Encoding value."""
    if cte == "base64":
        return Base64(out)
    if cte == "quoted-printable":
        return QuotedPrintable(out)
    if cte in ("x-uuencode", "uuencode", "uue", "x-uue"):
        return Uuencode(out)
    return Identity(out)
