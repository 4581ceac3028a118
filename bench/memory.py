"""Peak memory of a 100 MB upload: how much does the server's peak RSS (VmHWM) grow?

usage: .venv/bin/python bench/memory.py [--mib 100]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from rest import ROOT, free_port, stop, wait_http  # noqa: E402


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def upload(port: int, size: int) -> dict[str, object]:
    boundary = "memboundary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    chunk = os.urandom(1 << 20)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    conn.putrequest("POST", "/v2/scan")
    conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
    conn.putheader("Content-Length", str(len(head) + size + len(tail)))
    conn.endheaders()
    conn.send(head)
    for _ in range(size >> 20):
        conn.send(chunk)
    conn.send(tail)
    response = conn.getresponse()
    job = json.loads(response.read())
    conn.request("GET", f"/v2/jobs/{job['job_id']}?wait=120")
    return dict(json.loads(conn.getresponse().read()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "mailowl"), "serve", "--listen", f"127.0.0.1:{port}",
                                 "--data-dir", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "MAILOWL_SERVER_MAX_SAMPLE_SIZE": f"{args.mib + 1}MiB",
                                     "MAILOWL_MILTER_LISTEN": ""})
        try:
            wait_http(port, proc)
            upload(port, 1 << 20)  # warm up every analyser once
            time.sleep(0.5)
            before = peak_rss_mib(proc.pid)
            job = upload(port, args.mib << 20)
            after = peak_rss_mib(proc.pid)
        finally:
            stop(proc)
    print(json.dumps({"upload_mib": args.mib, "peak_rss_before_mib": round(before, 1),
                      "peak_rss_after_mib": round(after, 1), "peak_growth_mib": round(after - before, 1),
                      "result": job.get("result"), "reason": job.get("reason")}, indent=2))


if __name__ == "__main__":
    main()
