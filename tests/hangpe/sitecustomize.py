"""Loaded by a `mailowl serve` under test started with this folder on PYTHONPATH: pereport hangs (a real
sleep of an hour) on content starting with MZHANG, after writing its process id to $HANGPE_MARKER, so a
test knows the analysis is stuck inside an analyser."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from mailowl.analysis.table import ANALYSERS

_real = ANALYSERS["pereport"]


def _hanging(sample: Any, resources: Any, budget: Any) -> Any:
    if bytes(sample.content[:6]) == b"MZHANG":
        Path(os.environ["HANGPE_MARKER"]).write_text(str(os.getpid()))
        time.sleep(3600)
    return _real.run(sample, resources, budget)


ANALYSERS["pereport"] = dataclasses.replace(_real, run=_hanging)
