"""Reading TOML and INI files with errors that name the file."""

from __future__ import annotations

import configparser
import tomllib
from pathlib import Path
from typing import Any


def load_toml(path: Path, error: type[Exception]) -> dict[str, Any]:
    """The file's contents; ``error`` (a ValueError subclass) says why it could not be had."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML: {exc}") from None


def load_ini(path: Path, error: type[Exception], what: str) -> configparser.ConfigParser:
    """A PeekabooAV-style INI file (no interpolation, no duplicate keys); ``what`` names the kind of file."""
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    try:
        with path.open(encoding="utf-8") as fh:
            parser.read_file(fh)
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from None
    except configparser.Error as exc:
        raise error(f"{path}: not a valid {what}: {exc}") from None
    return parser
