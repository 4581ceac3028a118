"""What every benchmark report starts with: when, on what machine, and how loaded it was."""

from __future__ import annotations

import os
import platform
import sys
from datetime import UTC, datetime


def run_header() -> dict[str, object]:
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, "
                       f"Python {platform.python_version()}",
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "command": " ".join(sys.argv)}
