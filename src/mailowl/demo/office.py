"""A Word 97-2003 document carrying a VBA project with an AutoOpen macro, written from the specifications
([MS-CFB] the compound file, [MS-OVBA] the VBA project) so that the demo needs no sample file.

The macro only shows a message box; what matters is that olevba finds a real VBA project with its source,
as it would in a document built by Word. Every stream is smaller than 4096 bytes, so all of them live in the
mini stream; the compound file then needs one FAT sector and no DIFAT.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

MACRO = ('Attribute VB_Name = "NewMacros"\r\n'
         "Sub AutoOpen()\r\n"
         '    MsgBox "This document would now download and run a program."\r\n'
         "End Sub\r\n")

_WORD_CLSID = bytes.fromhex("0609020000000000c000000000000046")  # {00020906-0000-0000-C000-000000000046}
_FREE, _END, _FATSECT, _NOSTREAM = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD, 0xFFFFFFFF
_SECTOR, _MINI = 512, 64


def compress(data: bytes) -> bytes:
    """[MS-OVBA] 2.4.1 compression, literal tokens only: one chunk, which holds up to about 3.6 KB."""
    body = bytearray()
    for start in range(0, len(data), 8):
        body += b"\x00" + data[start:start + 8]  # a flag byte of 0: the next eight tokens are literals
    if len(body) + 2 > 4098:
        raise ValueError("too much for one chunk")
    header = (len(body) + 2 - 3) | 0b011 << 12 | 1 << 15  # size - 3, signature 0b011, compressed
    return b"\x01" + struct.pack("<H", header) + bytes(body)


def _record(kind: int, data: bytes) -> bytes:
    return struct.pack("<HL", kind, len(data)) + data


def dir_stream(module: str) -> bytes:
    """The VBA project's information records ([MS-OVBA] 2.3.4.2), uncompressed."""
    name = module.encode("ascii")
    out = _record(0x01, struct.pack("<L", 1))  # syskind: 32-bit Windows
    out += _record(0x02, struct.pack("<L", 0x409)) + _record(0x14, struct.pack("<L", 0x409))  # LCIDs
    out += _record(0x03, struct.pack("<H", 1252))  # code page
    out += _record(0x04, b"Project")
    out += _record(0x05, b"") + _record(0x40, b"")  # doc string, then its Unicode form
    out += _record(0x06, b"") + _record(0x3D, b"")  # help file paths
    out += _record(0x07, struct.pack("<L", 0)) + _record(0x08, struct.pack("<L", 0))  # help context, flags
    out += struct.pack("<HLLH", 0x09, 4, 1, 0)  # version: a reserved size of 4, then major and minor
    out += _record(0x0C, b"") + _record(0x3C, b"")  # constants
    out += _record(0x0F, struct.pack("<H", 1))  # one module
    out += _record(0x13, struct.pack("<H", 0xFFFF))  # project cookie
    out += _record(0x19, name) + _record(0x47, module.encode("utf-16-le"))
    out += _record(0x1A, name) + _record(0x32, module.encode("utf-16-le"))  # stream name
    out += _record(0x1C, b"") + _record(0x48, b"")  # module doc string
    out += _record(0x31, struct.pack("<L", 0))  # the source starts at offset 0 of the module stream
    out += _record(0x1E, struct.pack("<L", 0)) + _record(0x2C, struct.pack("<H", 0xFFFF))
    out += struct.pack("<HL", 0x21, 0)  # a procedural module
    out += struct.pack("<HL", 0x2B, 0)  # end of the module
    out += struct.pack("<HL", 0x10, 0)  # end of the records
    return out


@dataclass
class _Entry:
    name: str
    kind: int  # 1 storage, 2 stream, 5 root
    data: bytes = b""
    children: list[_Entry] = field(default_factory=list)
    clsid: bytes = bytes(16)
    index: int = 0
    start: int = _END
    right: int = _NOSTREAM
    child: int = _NOSTREAM


def _order(entry: _Entry) -> tuple[int, str]:
    return len(entry.name), entry.name.upper()  # how [MS-CFB] orders siblings


def compound_file(root: _Entry) -> bytes:
    """[MS-CFB] version 3 with every stream in the mini stream."""
    entries: list[_Entry] = []

    def number(entry: _Entry) -> None:
        entry.index = len(entries)
        entries.append(entry)
        for child in entry.children:
            number(child)

    number(root)
    for entry in entries:
        # siblings as a chain of right links, in order: a valid (if unbalanced) search tree
        ordered = sorted(entry.children, key=_order)
        if ordered:
            entry.child = ordered[0].index
        for left, right in zip(ordered, ordered[1:], strict=False):
            left.right = right.index
    mini = bytearray()
    minifat: list[int] = []
    for entry in entries:
        if entry.kind == 2:
            entry.start = len(minifat)
            count = -(-len(entry.data) // _MINI)
            minifat += [entry.start + i + 1 for i in range(count - 1)] + [_END]
            mini += entry.data.ljust(count * _MINI, b"\x00")
    dir_sectors = -(-len(entries) * 128 // _SECTOR)
    minifat_sectors = -(-len(minifat) * 4 // _SECTOR)
    mini_sectors = -(-len(mini) // _SECTOR)
    # sector 0 is the FAT, then the directory, the mini FAT and the mini stream, each one chain
    fat = [_FATSECT]
    starts = []
    for count in (dir_sectors, minifat_sectors, mini_sectors):
        starts.append(len(fat))
        fat += [len(fat) + i + 1 for i in range(count - 1)] + [_END]
    if len(fat) > _SECTOR // 4:
        raise ValueError("too large for one FAT sector")
    root.start = starts[2]
    directory = b"".join(_dir_entry(e, len(mini) if e is root else len(e.data)) for e in entries)
    header = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(16) + struct.pack(
        "<HHHHH6xLLLLLLLLL", 0x3E, 3, 0xFFFE, 9, 6, 0, 1, starts[0], 0, 4096, starts[1], minifat_sectors, _END, 0)
    header += struct.pack("<L", 0) + struct.pack("<L", _FREE) * 108  # the DIFAT: the FAT is sector 0
    sectors = [
        struct.pack(f"<{_SECTOR // 4}L", *(fat + [_FREE] * (_SECTOR // 4 - len(fat)))),
        directory.ljust(dir_sectors * _SECTOR, b"\x00"),
        struct.pack(f"<{len(minifat)}L", *minifat).ljust(minifat_sectors * _SECTOR, b"\xff"),
        bytes(mini).ljust(mini_sectors * _SECTOR, b"\x00"),
    ]
    return header + b"".join(sectors)


def _dir_entry(entry: _Entry, size: int) -> bytes:
    name = entry.name.encode("utf-16-le") + b"\x00\x00"
    return struct.pack("<64sHBBLLL16sL8s8sLLL", name, len(name), entry.kind, 1, _NOSTREAM, entry.right,
                       entry.child, entry.clsid, 0, bytes(8), bytes(8), entry.start if size else _END, size, 0)


def word_document_with_macro(source: str = MACRO) -> bytes:
    module = "NewMacros"
    project = (f'ID="{{00000000-0000-0000-0000-000000000000}}"\r\nModule={module}\r\nName="Project"\r\n'
               'HelpContextID="0"\r\nVersionCompatible32="393222000"\r\nCMG=""\r\nDPB=""\r\nGC=""\r\n').encode()
    vba = _Entry("VBA", 1, children=[
        _Entry("_VBA_PROJECT", 2, struct.pack("<HHBH", 0x61CC, 0xFFFF, 0, 0x0003)),
        _Entry("dir", 2, compress(dir_stream(module))),
        _Entry(module, 2, compress(source.encode("cp1252"))),
    ])
    # a Word file information block starts with its magic number; Word itself would need much more
    fib = struct.pack("<HH", 0xA5EC, 0x00C1).ljust(1024, b"\x00")
    root = _Entry("Root Entry", 5, clsid=_WORD_CLSID, children=[
        _Entry("WordDocument", 2, fib), _Entry("1Table", 2, bytes(512)),
        _Entry("Macros", 1, children=[_Entry("PROJECT", 2, project), vba]),
    ])
    return compound_file(root)
