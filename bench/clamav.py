"""ClamAV: samples/s through mailowl's `clamav` rule against clamdscan --stream on the same files, same clamd.

usage: .venv/bin/python bench/clamav.py [--files 1000]

Starts a private clamd on the tests' signature database, writes FILES samples (2-64 KiB, every tenth
carrying the test pattern) and scans them three ways, one after another: clamdscan --stream (clamd's own
client, one process for all files), mailowl's rule (Engine.run, its kept-open IDSESSION connection), and
a bare client opening one connection per scan (the alternative mailowl's client could use). Prints one
JSON document.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.header import run_header  # noqa: E402
from tests.clamd import MARKER, Clamd  # noqa: E402

from mailowl.analysis.clamav import Clamd as Client  # noqa: E402
from mailowl.analysis.contract import Resources  # noqa: E402
from mailowl.analysis.sample import Sample  # noqa: E402
from mailowl.rules.loader import build_engine  # noqa: E402


def connection_per_scan(path: str, items: list[bytes]) -> tuple[float, int]:
    found = 0
    started = time.perf_counter()
    for data in items:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(path)
            sock.sendall(b"zINSTREAM\0" + struct.pack(">I", len(data)) + data + struct.pack(">I", 0))
            reply = b""
            while not reply.endswith(b"\0"):
                reply += sock.recv(4096)
            found += reply.endswith(b"FOUND\0")
    return time.perf_counter() - started, found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=1000)
    args = parser.parse_args()
    rnd = random.Random(7)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        clamd = Clamd(tmp / "clamd", stream_max="25M")
        try:
            files = tmp / "files"
            files.mkdir()
            items = []
            for i in range(args.files):
                data = rnd.randbytes(rnd.randint(2048, 65536))
                if i % 10 == 0:
                    data = data[:1000] + MARKER + data[1000:]
                (files / f"f{i:05d}.bin").write_bytes(data)
                items.append(data)
            paths = sorted(str(p) for p in files.iterdir())
            report: dict[str, object] = {
                **run_header(), "files": args.files,
                "bytes": sum(len(d) for d in items), "expected_detections": (args.files + 9) // 10,
            }
            started = time.perf_counter()
            out = subprocess.run([shutil.which("clamdscan") or "clamdscan", "--stream", "--no-summary",
                                  f"--config-file={tmp / 'clamd' / 'clamd.conf'}", *paths],
                                 capture_output=True, text=True)
            took = time.perf_counter() - started
            report["clamdscan_stream"] = {"seconds": round(took, 3), "samples_per_s": round(args.files / took, 1),
                                          "detections": out.stdout.count(" FOUND")}
            engine = build_engine({"rules": ["clamav", "final_rule"]}, "bench",
                                  Resources(clamd=Client(clamd.socket)))
            started = time.perf_counter()
            bad = sum(engine.run(Sample(data, f"f{i}.bin")).result.name == "bad" for i, data in enumerate(items))
            took_rule = time.perf_counter() - started
            report["mailowl_rule"] = {"seconds": round(took_rule, 3),
                                      "samples_per_s": round(args.files / took_rule, 1), "detections": bad,
                                      "overhead_ms_per_sample": round((took_rule - took) / args.files * 1e3, 3)}
            took_plain, found = connection_per_scan(clamd.socket, items)
            report["raw_connection_per_scan"] = {"seconds": round(took_plain, 3),
                                                 "samples_per_s": round(args.files / took_plain, 1),
                                                 "detections": found}
        finally:
            clamd.stop()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
