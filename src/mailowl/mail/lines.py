"""A message file read line by line the way the standard ``email`` parser reads it, without holding it.

Lines end at CRLF, a bare CR or a bare LF. Like the ``email`` feed parser, the reader keeps a stack of
"false end" conditions: the boundaries of the multiparts being read (and, inside message/delivery-status, a
blank line). A line meeting one of them ends the current entity and stays unread. Only offsets are kept;
bytes are read from the file when asked for, so a 200 MB body costs no memory to walk past.
"""

from __future__ import annotations

import re
from typing import IO, NamedTuple

#: how much of a line is read at once; longer lines are walked in pieces
PIECE = 1 << 16
_SCAN = 1 << 20
_BOUNDARY_TAIL = re.compile(rb"(--)?[ \t]*(?:\r\n|\r|\n)?")
_BLANKS = re.compile(rb"(--)?[ \t]*")
#: "a blank line ends the entity", as inside message/delivery-status
BLANK = b""


class Line(NamedTuple):
    start: int
    end: int
    #: the line's first bytes (all of it if shorter than PIECE), line end included
    head: bytes


#: a pushed-back end of input, as the feed parser pushes back an empty line
EOF = Line(-1, -1, b"")


class Lines:
    def __init__(self, source: IO[bytes]) -> None:
        self.f = source
        self.size = source.seek(0, 2)
        source.seek(0)
        self._fpos = 0
        self.pos = 0
        self.pushed: list[Line] = []
        #: active end conditions: a boundary separator (b"--" + boundary) or BLANK
        self.ends: list[bytes] = []

    # reading ----------------------------------------------------------------------------------------------
    def read(self, start: int, end: int) -> bytes:
        self.f.seek(start)
        self._fpos = -1
        return self.f.read(end - start)

    def _physical(self) -> Line | None:
        start = self.pos
        if start >= self.size:
            return None
        if self._fpos != start:
            self.f.seek(start)
        f = self.f
        head = b""
        end = start
        while True:
            piece = f.readline(PIECE)
            if not piece:
                break
            cut = len(piece)
            cr = piece.find(b"\r")
            if cr >= 0:
                if cr + 1 < len(piece):
                    cut = cr + 2 if piece[cr + 1] == 0x0A else cr + 1
                else:  # a CR at the end of what was read: CRLF if the next byte is LF
                    cut = cr + 2 if f.read(1) == b"\n" else cr + 1
                done = True
            else:
                done = piece.endswith(b"\n")
            if not head:
                head = piece[:cut]
            end += cut
            if done or cut < len(piece):
                break
        self.pos = self._fpos = end
        if self._fpos != f.tell():
            self._fpos = -1
        return Line(start, end, head)

    def readline(self) -> Line | None:
        """The next line, or None at the end of input or at a line meeting an end condition."""
        line = self.pushed.pop() if self.pushed else self._physical()
        if line is None or line is EOF:
            return None
        if self.ends and self._ends_here(line):
            self.pushed.append(line)
            return None
        return line

    def unread(self, line: Line | None) -> None:
        self.pushed.append(EOF if line is None else line)

    # end conditions ---------------------------------------------------------------------------------------
    def _ends_here(self, line: Line) -> bool:
        for end in self.ends:
            if end is BLANK:
                if line.head[:1] in (b"\r", b"\n"):
                    return True
            elif self.is_boundary(line, end):
                return True
        return False

    def is_boundary(self, line: Line, separator: bytes) -> bool:
        """Whether the line is ``separator``, optionally ``--``, blanks and a line end."""
        length = line.end - line.start
        head = line.head
        if len(head) < length:
            head = self.read(line.start, line.start + min(length, len(separator) + 2 + PIECE))
        if not head.startswith(separator):
            return False
        if length <= len(head):
            return _BOUNDARY_TAIL.fullmatch(head, len(separator)) is not None
        # a very long line: blanks all the way to its end?
        if _BLANKS.fullmatch(head, len(separator)) is None:
            return False
        for offset in range(line.start + len(head), line.end, _SCAN):
            if self.read(offset, min(offset + _SCAN, line.end)).rstrip(b"\r\n").strip(b" \t"):
                return False
        return True

    def is_close(self, line: Line, separator: bytes) -> bool:
        at = line.start + len(separator)
        return self.read(at, min(at + 2, line.end)) == b"--"

    def skip(self, extra: bytes | None = None) -> int:
        """Walk past lines up to the first one meeting an end condition (or ``extra``, a separator) or the
        end of input, without reading them one by one; that line stays unread. Returns where it starts.
        Only for when no line is pushed back."""
        assert not self.pushed
        ends = self.ends + ([extra] if extra is not None else [])
        separators = tuple(sorted({e for e in ends if e is not BLANK}))
        if BLANK in ends:  # inside a delivery-status report (small): line by line
            while (line := self._physical()) is not None:
                if line.head[:1] in (b"\r", b"\n") or any(self.is_boundary(line, s) for s in separators):
                    self.pos = line.start
                    return line.start
            return self.pos
        if separators:
            found = self._find_boundary(separators)
            if found >= 0:
                self.pos = found
                return found
        self.pos = self.size
        return self.size

    def _find_boundary(self, separators: tuple[bytes, ...]) -> int:
        """Where the first line at or after ``pos`` (a line start) that is a boundary starts, or -1.
        Whole boundary lines are found by one regular expression per block, so a hostile body full of
        near-boundaries costs no Python per line."""
        finders = _finders.get(separators)
        if finders is None:
            if len(_finders) > 256:
                _finders.clear()
            # the separator first (a fast literal search), then: not preceded by anything but a line end
            alternatives = b"(?:" + b"|".join(re.escape(s) + b"(?<![^\r\n]" + re.escape(s) + b")"
                                              for s in separators) + b")(?:--)?[ \t]*"
            finders = _finders[separators] = (re.compile(alternatives + b"(?:\r\n|\r|\n)"),
                                              re.compile(alternatives + b"(?:\r\n|\r|\n)?\\Z"))
        whole, unfinished = finders
        # blocks overlap by more than a usual boundary line, so such a line is seen whole in one block
        reach = max(len(s) for s in separators) + 2 + PIECE
        offset, first = self.pos, True
        while offset < self.size:
            block = self.read(offset, min(offset + _SCAN + reach, self.size))
            at_end = offset + len(block) >= self.size
            # line starts this block answers for: (0, own], and 0 itself when it is known to be a line start
            own, begin = (len(block) if at_end else _SCAN), (0 if first else 1)
            match = whole.search(block, begin)
            if match is not None and match.start() <= own:
                return offset + match.start()
            match = unfinished.search(block, begin)
            if match is not None and match.start() <= own:
                if at_end:
                    return offset + match.start()
                # a boundary-looking line running past the block (a long run of blanks): check it whole
                self.pos = offset + match.start()
                line = self._physical()
                assert line is not None
                if any(self.is_boundary(line, s) for s in separators):
                    return line.start
                offset, first = line.end, True
                continue
            offset, first = offset + own, False
        return -1


_finders: dict[tuple[bytes, ...], tuple[re.Pattern[bytes], re.Pattern[bytes]]] = {}
