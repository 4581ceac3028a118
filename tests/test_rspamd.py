"""The seed pipeline with real parts: a private Postfix hands mail to a private rspamd 3.4 (its milter proxy
worker, self_scan) whose plugin integrations/rspamd/mailowl.lua asks a real `mailowl serve` (mode "message")
or PeekabooAV 2.1 (mode "parts")."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import server as server_module
from .postfix import Postfix, receiver, sender
from .rspamd import PLUGIN, STANDALONE, Rspamd
from .server import Process, Server, free_port
from .test_differential import PEEKABOO
from .test_differential import peekaboo as start_peekaboo
from .test_postfix_milter import BAT, PDF, mail, send, support_id, wait_analysed

DEBIAN = Path(__file__).parent.parent / "integrations/rspamd/debian"


def settle(condition: object, what: str, timeout: float = 60, flush: Postfix | None = None) -> None:
    """Wait until ``condition()`` is true, flushing a sending Postfix's queue meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        if flush is not None:
            flush.flush()
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def owl(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "owl")
    yield srv
    srv.stop()


def pipeline(owl_url: str, options: str = "") -> tuple[Rspamd, Postfix]:
    rspamd = Rspamd(f'url = "{owl_url}";\n{options}')
    try:
        return rspamd, receiver(Path(tempfile.gettempdir()), rspamd.port)
    except BaseException:
        rspamd.stop()
        raise


def test_standalone_config_passes_configtest(owl: Server) -> None:
    rspamd = Rspamd(f'url = "http://127.0.0.1:{owl.port}";\nmode = "parts";\ntimeout = 5;\n')
    try:
        result = rspamd.configtest()
        assert result.returncode == 0 and "syntax OK" in result.stdout, result.stdout + result.stderr
        rspamd.wait_log("mailowl: asking http://127.0.0.1:")
        assert "(mode parts, timeout 5 s)" in rspamd.log_text()
    finally:
        rspamd.stop()


def test_debian_snippet_passes_configtest_against_the_stock_config(tmp_path: Path) -> None:
    """The README's Debian install: /etc/rspamd copied, the snippet files placed into the copy."""
    etc = tmp_path / "etc-rspamd"
    shutil.copytree("/etc/rspamd", etc)
    shutil.copy(DEBIAN / "rspamd.conf.local", etc / "rspamd.conf.local")
    shutil.copy(DEBIAN / "local.d" / "mailowl.conf", etc / "local.d" / "mailowl.conf")
    local = (etc / "rspamd.conf.local").read_text()
    assert 'lua = "/usr/local/share/mailowl/mailowl.lua";' in local
    (etc / "rspamd.conf.local").write_text(local.replace("/usr/local/share/mailowl/mailowl.lua", str(PLUGIN)))
    args = ["rspamadm", f"--var=CONFDIR={etc}", f"--var=LOCAL_CONFDIR={etc}"]
    result = subprocess.run([*args, "configtest", "-c", str(etc / "rspamd.conf")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "syntax OK" in result.stdout, result.stdout + result.stderr
    # the section reaches rspamd with the settings from local.d/mailowl.conf
    dump = subprocess.run([*args, "configdump", "-c", str(etc / "rspamd.conf"), "mailowl"], capture_output=True,
                          text=True, timeout=120)
    assert 'url = "http://127.0.0.1:8100";' in dump.stdout, dump.stdout + dump.stderr
    lua = subprocess.run([*args, "configdump", "-c", str(etc / "rspamd.conf"), "lua"], capture_output=True,
                         text=True, timeout=120)
    assert str(PLUGIN) in lua.stdout, lua.stdout + lua.stderr


def test_standalone_config_is_what_the_docs_show() -> None:
    docs = (Path(__file__).parent.parent / "docs/rspamd.md").read_text()
    for line in ("milter = yes;", "self_scan = yes;", 'lua = "$MAILOWL_PLUGIN";'):
        assert line in STANDALONE.read_text() and line in docs, line


def test_downloader_gets_451_then_554_and_pdf_is_delivered(owl: Server) -> None:
    # wait = 0: every verdict takes longer than wait, so first sight of an attachment is always a 451
    rspamd, rx = pipeline(f"http://127.0.0.1:{owl.port}", "wait = 0;\n")
    try:
        data = mail(BAT, "cat.png.bat", subject="cute cat")
        code, text = send(rx.port, data)
        assert code == 451 and text.startswith("4.7.1 Attachment analysis in progress"), text
        first = support_id(text)
        wait_analysed(owl, text)
        code, text = send(rx.port, data)  # the sender's retry, answered from mailowl's cache
        assert code == 554 and text.startswith("5.7.1 Message rejected: it carries a malicious attachment"), text
        second = support_id(text)
        status, record, _ = owl.request("GET", f"/v2/messages/{second}")
        assert status == 200 and record["action"] == "reject" and record["ingress"] == "api", record
        assert record["mail_from"] == "alice@example.org" and record["rcpt_to"] == ["bob@example.net"]
        assert record["client_ip"] == "127.0.0.1" and record["message_id"] == "<cute.cat@example.org>"
        assert record["parts"][0]["filename"] == "cat.png.bat" and record["parts"][0]["result"] == "bad"
        # rspamd's own log shows the flow with mailowl's symbols
        log = rspamd.wait_log(f"MAILOWL_BAD(0.00){{cat.png.bat:bad;support-id:{second};}}")
        assert f"MAILOWL_IN_PROCESS(0.00){{cat.png.bat:pending;support-id:{first};}}" in log
        assert re.search(r"\(default: F \(soft reject\).*MAILOWL_IN_PROCESS", log)
        assert re.search(r"\(default: T \(reject\).*MAILOWL_BAD", log)

        pdf = mail(PDF, "report.pdf", "application/pdf", "quarterly report")
        code, text = send(rx.port, pdf)
        assert code == 451, text
        wait_analysed(owl, text)
        code, text = send(rx.port, pdf)
        assert code == 250, text
        (delivered,) = rx.wait_delivered(1)
        header = re.search(rb"X-Mailowl-Result: unknown; support-id=(mo-[0-9a-f]+)", delivered)
        assert header, delivered
        assert b"Please see the attachment." in delivered and b"Subject: quarterly report" in delivered
        rspamd.wait_log(f"MAILOWL_CLEAN(0.00){{report.pdf:unknown;support-id:{header.group(1).decode()};}}")
    finally:
        rx.stop()
        rspamd.stop()


def test_verdict_within_wait_is_answered_at_once(owl: Server) -> None:
    rspamd, rx = pipeline(f"http://127.0.0.1:{owl.port}", "wait = 30;\ntimeout = 45;\n")
    try:
        code, text = send(rx.port, mail(BAT, "invoice.pdf.bat", subject="invoice"))
        assert code == 554 and "(support-id: mo-" in text, text
        code, text = send(rx.port, mail(PDF, "minutes.pdf", "application/pdf", "minutes"))
        assert code == 250, text
        assert b"X-Mailowl-Result: unknown; support-id=mo-" in rx.wait_delivered(1)[0]
    finally:
        rx.stop()
        rspamd.stop()


def test_mailowl_stopped_keeps_mail_queued_until_it_is_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()  # mailowl's REST port; nothing listens there at first
    rspamd, rx = pipeline(f"http://127.0.0.1:{port}", "wait = 30;\ntimeout = 45;\n")
    tx = sender(tmp_path / "tx", rx.port)
    owl: Server | None = None
    try:
        code, text = send(rx.port, mail(PDF, "direct.pdf", "application/pdf", "direct"))
        assert code == 451 and text == "4.7.1 Attachment scanner unavailable, try again later", text
        rspamd.wait_log("MAILOWL_FAIL(0.00){")
        assert send(tx.port, mail(PDF, "minutes.pdf", "application/pdf", "minutes"))[0] == 250
        assert send(tx.port, mail(BAT, "invoice.pdf.bat", subject="invoice"))[0] == 250
        tx.flush()
        settle(lambda: tx.log.read_text().count("451 4.7.1 Attachment scanner unavailable") >= 2,
               "both mails deferred by the receiver")
        entries = tx.queue_entries()
        assert len(entries) == 2, entries
        assert rx.delivered() == []
        # mailowl comes back on the port rspamd asks
        ports = iter([port, free_port()])  # the REST port, then one for the milter
        monkeypatch.setattr(server_module, "free_port", lambda: next(ports))
        owl = Server(tmp_path / "owl")
        assert owl.port == port
        settle(lambda: not tx.queue_entries(), "the sender's queue to empty", timeout=120, flush=tx)
        delivered = rx.wait_delivered(1)
        minutes = [m for m in delivered if b"Subject: minutes" in m.split(b"\n\n", 1)[0]]
        assert len(minutes) == 1 and b"X-Mailowl-Result: unknown; support-id=mo-" in minutes[0]
        assert not [m for m in delivered if b"Subject: invoice" in m.split(b"\n\n", 1)[0]]
        assert "554 5.7.1 Message rejected: it carries a malicious attachment (support-id: mo-" in tx.log.read_text()
    finally:
        if owl is not None:
            owl.stop()
        tx.stop()
        rx.stop()
        rspamd.stop()


@pytest.fixture(scope="module")
def peekaboo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    assert PEEKABOO.exists(), "PeekabooAV 2.1 must be installed in .venv-peekaboo (.ci/run installs it)"
    pk = start_peekaboo(tmp_path_factory.mktemp("peekaboo"))
    yield pk
    pk.stop()


def test_slow_mailowl_is_a_soft_reject_or_what_fail_action_says(tmp_path: Path) -> None:
    """mailowl answering later than the plugin's timeout: a verdict held back by the slow rule."""
    rules = Path(__file__).parent.parent / "src/mailowl/defaults/ruleset.toml"
    ruleset = tmp_path / "ruleset.toml"
    ruleset.write_text(rules.read_text().replace('rules = [\n  "known",', 'rules = [\n  "known",\n  "hold_until_released",'))
    release = tmp_path / "release"
    owl = Server(tmp_path / "owl", ruleset=str(ruleset),
                 env={"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent / "slowrule"),
                                                     os.environ.get("PYTHONPATH", "")]),
                      "SLOWRULE_RELEASE": str(release)})
    url = f"http://127.0.0.1:{owl.port}"
    # mailowl is asked to wait 30 s for a verdict that does not come; the plugin gives up after 2 s
    rspamd, rx = pipeline(url, "wait = 30;\ntimeout = 2;\n")
    lenient, rx2 = pipeline(url, 'wait = 30;\ntimeout = 2;\nfail_action = "no action";\n')
    try:
        code, text = send(rx.port, mail(PDF, "slow-report.pdf", "application/pdf", "slow report"))
        assert code == 451 and text == "4.7.1 Attachment scanner unavailable, try again later", text
        assert "timeout" in rspamd.wait_log("MAILOWL_FAIL(0.00){")
        # fail_action = "no action": the mail goes through, without mailowl's header
        code, text = send(rx2.port, mail(PDF, "slow-minutes.pdf", "application/pdf", "slow minutes"))
        assert code == 250, text
        (delivered,) = rx2.wait_delivered(1)
        assert b"Subject: slow minutes" in delivered and b"X-Mailowl-Result" not in delivered
        lenient.wait_log("MAILOWL_FAIL(0.00){")
    finally:
        release.touch()
        for postfix, instance in ((rx, rspamd), (rx2, lenient)):
            postfix.stop()
            instance.stop()
        owl.stop()


def test_parts_mode_against_peekaboo(peekaboo: Process) -> None:
    """mode = "parts" speaks only PeekabooAV's v1 API: the same flow against PeekabooAV 2.1 itself."""
    rspamd, rx = pipeline(f"http://127.0.0.1:{peekaboo.port}", 'mode = "parts";\n')
    try:
        data = mail(BAT, "cat.png.bat", subject="cute cat")
        code, text = send(rx.port, data)
        for _ in range(10):  # the sender's retries: PeekabooAV may need more than the plugin's polls at first
            if code != 451:
                break
            assert text.startswith("4.7.1 Attachment analysis in progress, try again later "
                                   "(support-id: peekaboo-job "), text
            for job in text.split("peekaboo-job ")[1].rstrip(")").split(","):
                settle(lambda job=job: peekaboo.client.request("GET", f"/v1/report/{job}")[0] == 200,
                       f"PeekabooAV's verdict for job {job}")
            rspamd.wait_log("MAILOWL_IN_PROCESS(0.00){cat.png.bat:pending;")
            code, text = send(rx.port, data)
        assert code == 554 and text.startswith("5.7.1 Message rejected: it carries a malicious attachment "
                                               "(support-id: peekaboo-job "), text
        job = text.split("peekaboo-job ")[1].rstrip(")")
        status, report, _ = peekaboo.client.request("GET", f"/v1/report/{job}")
        assert status == 200 and report["result"] == "bad", report
        rspamd.wait_log(f"MAILOWL_BAD(0.00){{cat.png.bat:bad;support-id:peekaboo-job {job};}}")

        pdf = mail(PDF, "report.pdf", "application/pdf", "report")
        code, text = send(rx.port, pdf)
        for _ in range(10):
            if code != 451:
                break
            for job in text.split("peekaboo-job ")[1].rstrip(")").split(","):
                settle(lambda job=job: peekaboo.client.request("GET", f"/v1/report/{job}")[0] == 200,
                       f"PeekabooAV's verdict for job {job}")
            code, text = send(rx.port, pdf)
        assert code == 250, text
        (delivered,) = rx.wait_delivered(1)
        assert re.search(rb"X-Mailowl-Result: \w+; support-id=peekaboo-job \d+", delivered), delivered
        assert "MAILOWL_CLEAN(0.00){report.pdf:" in rspamd.wait_log("MAILOWL_CLEAN(0.00){report.pdf:")
    finally:
        rx.stop()
        rspamd.stop()


@pytest.mark.parametrize("mode", ["message", "parts"])
@pytest.mark.parametrize("url", ["closed", "http://mailowl.invalid:8100", "http://mail owl:8100"])
def test_a_request_that_fails_or_cannot_start_is_a_soft_reject(mode: str, url: str) -> None:
    """Nothing listening (mailowl, or PeekabooAV in parts mode, down) and a name that does not resolve fail
    in the request's callback; a URL rspamd cannot parse makes the request never start, so its callback never
    runs. Either way the mail is soft-rejected, never passed unchecked."""
    if url == "closed":
        url = f"http://127.0.0.1:{free_port()}"
    rspamd, rx = pipeline(url, f'mode = "{mode}";\n')
    try:
        code, text = send(rx.port, mail(BAT, "cat.png.bat", subject="cute cat"))
        assert code == 451 and text == "4.7.1 Attachment scanner unavailable, try again later", text
        rspamd.wait_log("MAILOWL_FAIL(0.00){")
        assert rx.delivered() == []
    finally:
        rx.stop()
        rspamd.stop()
