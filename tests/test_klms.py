"""KLMS verdict lines: the reference examples (groundwork for the log analytics issue)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mailowl.logs.klms import format_line, parse


def test_reference_lines() -> None:
    doc = parse('not processed: message-id="<666@from.hell>": relay-ip="1.6.6.6": kt-reason="blacklist", '
                'av-reason="blacklist": action="Rejected": rules="2": size=1111: mail-from="goat@from.hell": '
                'rcpt-to="angel@firma.ru"')
    assert doc == {"status_letter": "not processed", "message_id": "<666@from.hell>", "relay_ip": "1.6.6.6",
                   "kt_reason": "blacklist", "av_reason": "blacklist", "action": "Rejected", "rules": 2,
                   "size": 1111, "mail_from": "goat@from.hell", "rcpt_to": ["angel@firma.ru"]}
    parts = parse('Nov 23 10:00:00 mx1 klms[12]: infected: message-id="<a@b>": relay-ip="10.0.0.1": '
                  'action="Skipped, Put in backup": backup-reason="AntiSpam": size=5: mail-from="": '
                  'rcpt-to="a@x.ru, b@y.ru": av-status="Infected": part "Смета.xlsx", av-status="Encrypted": '
                  'part "P.xlsx", av-status="Infected", threats="HEUR:Exploit.MSOffice.CVE-2018-0802.gen, UDS:x"')
    assert parts["host"] == "mx1" and parts["pid"] == 12 and parts["mail_from"] == "NULL_SENDER_RFC5321"
    assert parts["rcpt_to"] == ["a@x.ru", "b@y.ru"] and parts["backup_reason"] == "AntiSpam"
    assert parts["part"] == [{"name": "Смета.xlsx", "av_status": "Encrypted"},
                             {"name": "P.xlsx", "av_status": "Infected",
                              "threats": ["HEUR:Exploit.MSOffice.CVE-2018-0802.gen", "UDS:x"]}]


def test_garbage_is_kept_with_a_tag() -> None:
    for line in ["", "hello world", 'clean: message-id="x": oops "broken', "clean: =: :"]:
        doc = parse(line)
        assert doc["tags"] == ["_grokparsefailure"] and doc["message"] == line


def test_written_lines_parse_back() -> None:
    line = format_line("infected", [("message-id", "<m@x>"), ("relay-ip", "192.0.2.1"), ("action", "Rejected"),
                                    ("size", 42), ("mail-from", 'odd "name": here'), ("rcpt-to", ["a@x", "b@y"])],
                       [("in: voice, 1.bat", [("av-status", "Infected"), ("threats", ["expressions"])])])
    doc = parse(line)
    assert doc["mail_from"] == 'odd "name": here' and doc["rcpt_to"] == ["a@x", "b@y"] and doc["size"] == 42
    assert doc["part"] == [{"name": "in: voice, 1.bat", "av_status": "Infected", "threats": ["expressions"]}]


def test_logs_parse_command(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text('Nov 23 10:00:00 mx1 klms[12]: clean: message-id="<a@b>": relay-ip="10.0.0.1": action="Skipped": '
                   'size=5: mail-from="x@y": rcpt-to="a@x.ru, b@y.ru"\nnot a verdict line\n')
    flat = subprocess.run([sys.executable, "-m", "mailowl.cli", "logs", "parse", "--schema", "klms", str(log)],
                          capture_output=True, text=True, check=True).stdout.splitlines()
    assert [json.loads(line).get("rcpt_to") for line in flat] == [["a@x.ru", "b@y.ru"], None]
    assert json.loads(flat[1])["tags"] == ["_grokparsefailure"]
    ecs = subprocess.run([sys.executable, "-m", "mailowl.cli", "logs", "parse"], input=log.read_text(),
                         capture_output=True, text=True, check=True).stdout.splitlines()
    doc = json.loads(ecs[0])
    assert doc["email"]["to"]["address"] == ["a@x.ru", "b@y.ru"] and doc["source"]["ip"] == "10.0.0.1"
    assert doc["klms"]["status_letter"] == "clean" and doc["host"]["hostname"] == "mx1"
