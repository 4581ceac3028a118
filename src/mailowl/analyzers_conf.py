"""PeekabooAV's analyzers.conf, read unchanged: its ``[cortex]`` section becomes mailowl's ``[cortex]``.

A ``[cuckoo]`` section is refused: mailowl has no Cuckoo backend, and silently ignoring it would leave
a ruleset that relies on Cuckoo without the analysis it expects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mailowl.config import ConfigError
from mailowl.tomlfile import load_ini

#: PeekabooAV's keys of [cortex]; their defaults are mailowl's [cortex] defaults
CORTEX_KEYS = ("url", "tlp", "api_token", "poll_interval", "submit_original_filename", "maximum_job_age")
_DEFAULT_URL = "http://127.0.0.1:9001"


def read_analyzers_conf(path: Path) -> dict[str, Any]:
    """The ``[cortex]`` settings of an analyzers.conf, as overrides of mailowl's ``[cortex]``."""
    parser = load_ini(path, ConfigError, "analyzers.conf")
    if parser.has_section("cuckoo"):
        raise ConfigError(f"{path}: [cuckoo]: Cuckoo is not supported by mailowl; remove the [cuckoo] section "
                          "(a Cuckoo or CAPE sandbox can still be reached through a Cortex analyzer)")
    unknown = sorted(set(parser.sections()) - {"cortex"})
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(unknown)} (allowed: cortex)")
    settings: dict[str, Any] = {"url": _DEFAULT_URL}  # PeekabooAV's default: the file enables Cortex
    if parser.has_section("cortex"):
        for key, value in parser.items("cortex"):
            if key not in CORTEX_KEYS:
                raise ConfigError(f"{path}: [cortex] {key}: unknown setting (allowed: {', '.join(CORTEX_KEYS)})")
            settings[key] = value.strip()
    if not settings["url"]:
        settings["url"] = _DEFAULT_URL
    return settings
