"""Milter benchmark: the same Postfix with and without mailowl's milter, verdicts cached, one run.

smtp-source sends 4 KB messages with one attachment over 20 concurrent sessions to a private Postfix
whose transport discards everything. usage: .venv/bin/python bench/milter.py [--messages 4000]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.header import run_header  # noqa: E402
from tests.postfix import Postfix  # noqa: E402
from tests.server import Server, free_port  # noqa: E402


def message_file(directory: Path) -> Path:
    attachment = base64.encodebytes(b"%PDF-1.4\n" + b"0123456789abcdef" * 170).decode()
    text = ("From: <bench@example.org>\nTo: <sink@example.net>\nSubject: bench\nMIME-Version: 1.0\n"
            'Content-Type: multipart/mixed; boundary="XyZ"\n\n--XyZ\nContent-Type: text/plain\n\nreport attached\n'
            '--XyZ\nContent-Type: application/pdf; name="report.pdf"\nContent-Disposition: attachment; '
            f'filename="report.pdf"\nContent-Transfer-Encoding: base64\n\n{attachment}--XyZ--\n')
    path = directory / "message.eml"
    path.write_text(text)
    return path


def run_source(postfix: Postfix, message: Path, count: int, sessions: int) -> dict[str, float | int]:
    before = postfix.log.read_text().count("status=sent")
    started = time.perf_counter()
    subprocess.run(["smtp-source", "-s", str(sessions), "-m", str(count), "-F", str(message),
                    "-f", "bench@example.org", "-t", "sink@example.net", f"127.0.0.1:{postfix.port}"],
                   check=True, capture_output=True)
    seconds = time.perf_counter() - started
    log = postfix.log.read_text()
    # wait until the queue manager has handed every accepted message to the discard transport
    deadline = time.monotonic() + 60
    while log.count("status=sent") - before < count and time.monotonic() < deadline:
        time.sleep(0.2)
        log = postfix.log.read_text()
    return {"messages": count, "seconds": round(seconds, 2), "msgs_per_s": round(count / seconds, 1),
            "discarded": log.count("status=sent") - before, "milter_rejects": log.count("milter-reject")}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternate bare and milter runs this many times; the ratio of the medians counts")
    args = parser.parse_args()
    report: dict[str, object] = {
        **run_header(),
    }
    bare_runs: list[dict[str, float | int]] = []
    milter_runs: list[dict[str, float | int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        message = message_file(Path(tmp))
        milter = free_port()
        owl = Server(Path(tmp) / "owl", f'[milter]\nlisten = "127.0.0.1:{milter}"\n')
        bare = Postfix(Path(tmp) / "bare", f"bare{free_port()}", ["default_transport = discard"], [])
        with_milter = Postfix(Path(tmp) / "milter", f"milter{free_port()}",
                              ["default_transport = discard", f"smtpd_milters = inet:127.0.0.1:{milter}",
                               "milter_protocol = 6", "milter_default_action = tempfail"], [])
        try:
            # prime the verdict cache with the very message smtp-source sends
            with smtplib.SMTP("127.0.0.1", with_milter.port) as client:
                client.sendmail("bench@example.org", ["sink@example.net"], message.read_bytes())
            # the same two Postfix instances, alternately, so machine noise hits both alike
            for _ in range(args.rounds):
                bare_runs.append(run_source(bare, message, args.messages, args.sessions))
                cpu_before = _cpu_seconds(owl.proc.pid)
                run = run_source(with_milter, message, args.messages, args.sessions)
                run["mailowl_cpu_ms_per_msg"] = round((_cpu_seconds(owl.proc.pid) - cpu_before) * 1000
                                                      / args.messages, 2)
                milter_runs.append(run)
        finally:
            bare.stop()
            with_milter.stop()
            owl.stop()
    report["postfix_alone"] = bare_runs
    report["postfix_with_mailowl_milter"] = milter_runs
    alone = statistics.median(r["msgs_per_s"] for r in bare_runs)
    with_owl = statistics.median(r["msgs_per_s"] for r in milter_runs)
    report["median_msgs_per_s"] = {"postfix_alone": alone, "postfix_with_mailowl_milter": with_owl}
    report["ratio"] = round(with_owl / alone, 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
