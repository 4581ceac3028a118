"""REST benchmark: mailowl (embedded SQLite) against the do-nothing ceiling and PeekabooAV 2.1, one run.

usage: .venv/bin/python bench/rest.py [--samples 10000] [--clients 16] [--peekaboo-samples 2000]

Prints one JSON document. Every server runs as its own process on loopback, sharing the machine with
the load client, as the issue's targets assume.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from header import run_header  # noqa: E402
from load import fresh_and_cached  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "bench"
RULESET = ROOT / "bench" / "ruleset.conf"
PEEKABOO = ROOT / ".venv-peekaboo" / "bin" / "peekaboo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(port: int, proc: subprocess.Popen[bytes], path: str = "/ping", timeout: float = 60) -> None:
    import http.client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not come up")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def mailowl_server(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    data = tmp / f"data-{port}"
    proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "mailowl"), "serve", "--ruleset", str(RULESET),
                             "--listen", f"127.0.0.1:{port}", "--data-dir", str(data)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "MAILOWL_MILTER_LISTEN": ""})
    wait_http(port, proc)
    return proc, port


def peekaboo_server(tmp: Path) -> tuple[subprocess.Popen[bytes], int, str]:
    db = f"peekaboo_bench_{os.getpid()}"
    subprocess.run(["mariadb", "-uroot", "-h127.0.0.1", "-e", f"DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db}"],
                   check=True)
    port = free_port()
    (tmp / "reports").mkdir(exist_ok=True)
    (tmp / "analyzers.conf").write_text("")
    (tmp / "peekaboo.conf").write_text(
        f"[global]\nuser : root\ngroup : root\nhost : 127.0.0.1\nport : {port}\nworker_count : 3\n"
        f"processing_info_dir : {tmp / 'reports'}\n[ruleset]\nconfig : {RULESET}\n"
        f"[analyzers]\nconfig : {tmp / 'analyzers.conf'}\n[logging]\nlog_level : WARNING\n"
        f"[db]\nurl : mysql+pymysql://root@127.0.0.1/{db}\n")
    proc = subprocess.Popen([str(PEEKABOO), "-c", str(tmp / "peekaboo.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_http(port, proc)
    return proc, port, db


def shared_client(port: int, n: int, clients: int) -> object:
    script = SHARED / "rest_load.py"
    if not script.exists():
        return "not available"
    out = subprocess.run([sys.executable, str(script), f"http://127.0.0.1:{port}", str(n), str(clients)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--peekaboo-samples", type=int, default=2000)
    args = parser.parse_args()
    report: dict[str, object] = {
        **run_header(), "samples": args.samples, "clients": args.clients,
    }
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        proc, port = mailowl_server(tmp)
        try:
            report["mailowl_sqlite"] = fresh_and_cached("127.0.0.1", port, args.samples, args.clients, seed=1)
        finally:
            stop(proc)
        proc, port = mailowl_server(tmp)
        try:
            report["mailowl_sqlite_shared_client"] = shared_client(port, args.samples, args.clients)
        finally:
            stop(proc)
        null = SHARED / "null_service.py"
        if null.exists():
            port = free_port()
            nproc = subprocess.Popen([sys.executable, str(null), str(port)], stdout=subprocess.DEVNULL)
            time.sleep(1)
            try:
                report["null_service"] = fresh_and_cached("127.0.0.1", port, args.samples, args.clients, seed=2)
            finally:
                stop(nproc)
        if PEEKABOO.exists() and shutil.which("mariadb"):
            pdir = tmp / "peekaboo"
            pdir.mkdir()
            try:
                pproc, pport, db = peekaboo_server(pdir)
            except (RuntimeError, subprocess.CalledProcessError) as exc:
                report["peekaboo_2_1_mariadb"] = f"not run: PeekabooAV did not start ({exc})"
            else:
                try:
                    report["peekaboo_2_1_mariadb"] = fresh_and_cached("127.0.0.1", pport, args.peekaboo_samples,
                                                                       args.clients, seed=3)
                finally:
                    stop(pproc)
                    subprocess.run(["mariadb", "-uroot", "-h127.0.0.1", "-e", f"DROP DATABASE IF EXISTS {db}"])
        else:
            report["peekaboo_2_1_mariadb"] = "not run: .venv-peekaboo or the mariadb client is missing"
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
