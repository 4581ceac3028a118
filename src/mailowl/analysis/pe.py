"""Facts about Windows PE executables, from pefile."""

from __future__ import annotations

from dataclasses import dataclass, field

import pefile

from mailowl.analysis.sample import Sample

# Section names that packers leave behind; a hint, not proof.
_PACKER_SECTIONS = {
    "upx0": "UPX", "upx1": "UPX", "upx2": "UPX", ".aspack": "ASPack", ".adata": "ASPack",
    ".mpress1": "MPRESS", ".mpress2": "MPRESS", ".petite": "Petite", ".themida": "Themida",
    ".vmp0": "VMProtect", ".vmp1": "VMProtect", ".nsp0": "NsPack", ".nsp1": "NsPack",
    "pec2": "PECompact", "pec2to": "PECompact", ".packed": "generic", ".enigma1": "Enigma",
}
_HIGH_ENTROPY = 7.2


@dataclass(slots=True)
class PeReport:
    FIELDS = frozenset({"is_pe", "is_dll", "is_64bit", "imports", "dlls", "sections", "max_entropy",
                        "has_signature", "packed", "packer_hints", "error"})

    is_pe: bool = False
    is_dll: bool = False
    is_64bit: bool = False
    imports: list[str] = field(default_factory=list)
    dlls: list[str] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)
    max_entropy: float = 0.0
    has_signature: bool = False
    packer_hints: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def packed(self) -> bool:
        return bool(self.packer_hints)


def pe_report(sample: Sample) -> PeReport:
    report = PeReport()
    if not sample.content.startswith(b"MZ"):
        return report
    try:
        pe = pefile.PE(data=bytes(sample.content), fast_load=True)
    except pefile.PEFormatError as exc:
        report.error = str(exc)
        return report
    try:
        report.is_pe = True
        report.is_dll = pe.is_dll()
        report.is_64bit = pe.OPTIONAL_HEADER.Magic == 0x20B
        pe.parse_data_directories(directories=[pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_IMPORT"]])
        for entry in getattr(pe, "DIRECTORY_ENTRY_IMPORT", []):
            dll = entry.dll.decode("ascii", "replace").lower()
            report.dlls.append(dll)
            for imp in entry.imports:
                if imp.name:
                    report.imports.append(f"{dll}!{imp.name.decode('ascii', 'replace')}")
        for section in pe.sections:
            name = section.Name.rstrip(b"\x00").decode("ascii", "replace")
            report.sections.append(name)
            entropy = section.get_entropy()
            report.max_entropy = max(report.max_entropy, round(entropy, 3))
            hint = _PACKER_SECTIONS.get(name.lower())
            if hint and hint not in report.packer_hints:
                report.packer_hints.append(hint)
            if entropy > _HIGH_ENTROPY and "high entropy" not in report.packer_hints:
                report.packer_hints.append("high entropy")
        security = pe.OPTIONAL_HEADER.DATA_DIRECTORY[pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_SECURITY"]]
        report.has_signature = security.VirtualAddress != 0 and security.Size > 0
        if report.is_pe and not report.dlls and report.sections:
            report.packer_hints.append("no imports")
    except Exception as exc:  # damaged headers: keep what was read
        report.error = str(exc)
    finally:
        pe.close()
    return report
