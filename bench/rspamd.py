"""rspamd benchmark: Postfix -> rspamd alone vs Postfix -> rspamd + mailowl.lua -> mailowl serve, one run.

Two private Postfix instances (transport discard) hand every message to a private rspamd 3.4 milter proxy
each (standalone config, self_scan); the second rspamd loads the plugin, which posts each message to
POST /v2/messages. smtp-source sends the same 4 KB message with one attachment (verdict cached) over 20
sessions; the two pipelines run alternately, and the ratio of the medians counts.
usage: .venv/bin/python bench/rspamd.py [--messages 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import smtplib
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.header import run_header  # noqa: E402
from bench.milter import _cpu_seconds, message_file, run_source  # noqa: E402
from tests.postfix import Postfix  # noqa: E402
from tests.rspamd import Rspamd  # noqa: E402
from tests.server import Server, free_port  # noqa: E402


def _rspamd_cpu(rspamd: Rspamd) -> float:
    """CPU seconds of rspamd's main process and its workers."""
    assert rspamd.proc is not None
    total = 0.0
    for pid in [rspamd.proc.pid, *_children(rspamd.proc.pid)]:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += _cpu_seconds(pid)
    return total


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError):
                pass
    return out


def milter_postfix(root: Path, name: str, port: int) -> Postfix:
    return Postfix(root, f"{name}{free_port()}", ["default_transport = discard", f"smtpd_milters = inet:127.0.0.1:{port}",
                                                   "milter_protocol = 6", "milter_default_action = tempfail"], [])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    report: dict[str, object] = {
        **run_header(),
    }
    alone_runs: list[dict[str, float | int]] = []
    owl_runs: list[dict[str, float | int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        message = message_file(Path(tmp))
        owl = Server(Path(tmp) / "owl")
        bare_rspamd = Rspamd("", "bench-alone", plugin=False)
        owl_rspamd = Rspamd(f'url = "http://127.0.0.1:{owl.port}";\n', "bench-owl")
        alone = milter_postfix(Path(tmp) / "alone", "alone", bare_rspamd.port)
        with_owl = milter_postfix(Path(tmp) / "owl", "owl", owl_rspamd.port)
        try:
            # prime mailowl's verdict cache with the very message smtp-source sends (a 451 first, then 250)
            status, answer, _ = owl.request("POST", "/v2/messages?wait=60", message.read_bytes(),
                                            {"Content-Type": "message/rfc822"})
            assert status == 200 and answer["action"] == "accept", answer
            with smtplib.SMTP("127.0.0.1", with_owl.port) as client:
                client.sendmail("bench@example.org", ["sink@example.net"], message.read_bytes())
            for _ in range(args.rounds):
                cpu_rspamd = _rspamd_cpu(bare_rspamd)
                run = run_source(alone, message, args.messages, args.sessions)
                run["rspamd_cpu_ms_per_msg"] = round((_rspamd_cpu(bare_rspamd) - cpu_rspamd) * 1000 / args.messages, 2)
                alone_runs.append(run)
                cpu_owl, cpu_rspamd = _cpu_seconds(owl.proc.pid), _rspamd_cpu(owl_rspamd)
                run = run_source(with_owl, message, args.messages, args.sessions)
                run["mailowl_cpu_ms_per_msg"] = round((_cpu_seconds(owl.proc.pid) - cpu_owl) * 1000 / args.messages, 2)
                run["rspamd_cpu_ms_per_msg"] = round((_rspamd_cpu(owl_rspamd) - cpu_rspamd) * 1000 / args.messages, 2)
                owl_runs.append(run)
            report["mailowl_symbols_in_rspamd_log"] = owl_rspamd.log_text().count("MAILOWL_CLEAN(")
        finally:
            alone.stop()
            with_owl.stop()
            bare_rspamd.stop()
            owl_rspamd.stop()
            owl.stop()
    report["postfix_rspamd_alone"] = alone_runs
    report["postfix_rspamd_mailowl"] = owl_runs
    median_alone = statistics.median(r["msgs_per_s"] for r in alone_runs)
    median_owl = statistics.median(r["msgs_per_s"] for r in owl_runs)
    report["median_msgs_per_s"] = {"rspamd_alone": median_alone, "rspamd_with_mailowl": median_owl}
    report["ratio"] = round(median_owl / median_alone, 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
