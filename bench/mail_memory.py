"""Peak memory of a 50 MB message through the milter: how much does mailowl's peak RSS (VmHWM) grow?

usage: .venv/bin/python bench/mail_memory.py [--mib 50]
"""

from __future__ import annotations

import argparse
import json
import os
import smtplib
import sys
import tempfile
from email.message import EmailMessage
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from memory import peak_rss_mib  # noqa: E402
from tests.postfix import Postfix  # noqa: E402
from tests.server import Server, free_port  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=50)
    args = parser.parse_args()
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@example.org", "b@example.net", "big"
    msg.set_content("big attachment follows\n")
    # base64 grows content by 4/3: this attachment makes a message of about --mib MiB
    msg.add_attachment(os.urandom((args.mib << 20) * 3 // 4), maintype="application", subtype="octet-stream",
                       filename="big.bin")
    raw = msg.as_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        milter = free_port()
        owl = Server(Path(tmp) / "owl", f'[milter]\nlisten = "127.0.0.1:{milter}"\n[server]\nmax_sample_size = "100MiB"\n')
        rx = Postfix(Path(tmp) / "rx", f"mem{free_port()}",
                     ["default_transport = discard", f"smtpd_milters = inet:127.0.0.1:{milter}", "milter_protocol = 6",
                      "milter_default_action = tempfail", "message_size_limit = 200000000"], [])
        try:
            with smtplib.SMTP("127.0.0.1", rx.port) as client:  # warm up every code path once
                client.sendmail("a@example.org", ["b@example.net"], b"Subject: hi\r\n\r\nhello\r\n")
            before = peak_rss_mib(owl.proc.pid)
            code = 250
            try:
                with smtplib.SMTP("127.0.0.1", rx.port, timeout=300) as client:
                    client.sendmail("a@example.org", ["b@example.net"], raw)
            except smtplib.SMTPDataError as exc:
                code = exc.smtp_code
            after = peak_rss_mib(owl.proc.pid)
        finally:
            rx.stop()
            owl.stop()
    print(json.dumps({"message_mib": round(len(raw) / 2**20, 1), "reply": code,
                      "peak_rss_before_mib": round(before, 1), "peak_rss_after_mib": round(after, 1),
                      "peak_growth_mib": round(after - before, 1)}, indent=2))


if __name__ == "__main__":
    main()
