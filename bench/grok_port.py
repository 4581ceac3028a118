"""A Python port of the single-regex grok approach to KLMS lines (the baseline the parser is measured against).

Built from the stock grok pattern definitions (logstash-patterns-core) the usual KLMS pattern uses:
SYSLOGBASE for the prefix, DATA (``.*?``) for each value, IP (IPv6 tried before IPv4) for relay-ip, INT
for rules and size, optional groups for the keys that may be missing, a ``($|: )`` barrier after rcpt-to
and one GREEDYDATA that swallows all part blocks into one string.
"""

from __future__ import annotations

import re
from typing import Any

_DEC8 = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_V4IN6 = rf"{_DEC8}(?:\.{_DEC8}){{3}}"
_H = r"[0-9A-Fa-f]{1,4}"
IPV6 = (rf"(?:(?:(?:{_H}:){{7}}(?:{_H}|:))|(?:(?:{_H}:){{6}}(?::{_H}|{_V4IN6}|:))|"
        rf"(?:(?:{_H}:){{5}}(?:(?:(?::{_H}){{1,2}})|:{_V4IN6}|:))|"
        rf"(?:(?:{_H}:){{4}}(?:(?:(?::{_H}){{1,3}})|(?:(?::{_H})?:{_V4IN6})|:))|"
        rf"(?:(?:{_H}:){{3}}(?:(?:(?::{_H}){{1,4}})|(?:(?::{_H}){{0,2}}:{_V4IN6})|:))|"
        rf"(?:(?:{_H}:){{2}}(?:(?:(?::{_H}){{1,5}})|(?:(?::{_H}){{0,3}}:{_V4IN6})|:))|"
        rf"(?:(?:{_H}:){{1}}(?:(?:(?::{_H}){{1,6}})|(?:(?::{_H}){{0,4}}:{_V4IN6})|:))|"
        rf"(?::(?:(?:(?::{_H}){{1,7}})|(?:(?::{_H}){{0,5}}:{_V4IN6})|:)))(?:%.+)?")
IPV4 = r"(?<![0-9])(?:(?:[0-1]?[0-9]{1,2}|2[0-4][0-9]|25[0-5])[.](?:[0-1]?[0-9]{1,2}|2[0-4][0-9]|25[0-5])[.]" \
       r"(?:[0-1]?[0-9]{1,2}|2[0-4][0-9]|25[0-5])[.](?:[0-1]?[0-9]{1,2}|2[0-4][0-9]|25[0-5]))(?![0-9])"
IP = f"(?:{IPV6}|{IPV4})"
MONTH = (r"\b(?:[Jj]an(?:uary|uar)?|[Ff]eb(?:ruary|ruar)?|[Mm](?:a|ä)?r(?:ch|z)?|[Aa]pr(?:il)?|[Mm]a(?:y|i)?|"
         r"[Jj]un(?:e|i)?|[Jj]ul(?:y|i)?|[Aa]ug(?:ust)?|[Ss]ep(?:tember)?|[Oo](?:c|k)?t(?:ober)?|[Nn]ov(?:ember)?|"
         r"[Dd]e(?:c|z)(?:ember)?)\b")
MONTHDAY = r"(?:(?:0[1-9])|(?:[12][0-9])|(?:3[01])|[1-9])"
TIME = r"(?!<[0-9])(?:2[0123]|[01]?[0-9]):(?:[0-5][0-9])(?::(?:(?:[0-5]?[0-9]|60)(?:[:.,][0-9]+)?))(?![0-9])"
HOSTNAME = r"\b(?:[0-9A-Za-z][0-9A-Za-z-]{0,62})(?:\.(?:[0-9A-Za-z][0-9A-Za-z-]{0,62}))*(?:\.?|\b)"
PROG = r"[\x21-\x5a\x5c\x5e-\x7e]+"
SYSLOGBASE = (rf"(?P<timestamp>{MONTH} +{MONTHDAY} {TIME}) (?:<(?P<facility>\d+).(?P<priority>\d+)> )?"
              rf"(?P<logsource>{IP}|{HOSTNAME}) (?P<program>{PROG})(?:\[(?P<pid>\b(?:[1-9][0-9]*)\b)\])?:")
INT = r"(?:[+-]?(?:[0-9]+))"
DATA = ".*?"

_REASONS = "".join(f'(?:{m}-reason="(?P<{m}_reason>{DATA})"(?:, |: ))?' for m in ("kt", "av", "ap", "as", "ma", "cf"))
_STATUSES = "".join(f'(?:(?:, )?{k}="(?P<{k.replace("-", "_")}>{DATA})")?'
                    for k in ("kt-status", "av-status", "ap-status", "as-status", "as-method", "ma-status", "dmarc",
                              "spf", "dkim", "cf-status"))
GROK = re.compile(
    rf"^(?:{SYSLOGBASE} )?(?P<status_letter>{DATA}): message-id=\"?(?P<message_id>{DATA})\"?: "
    rf"relay-ip=\"?(?P<relay_ip>{IP})\"?: {_REASONS}action=\"(?P<action>{DATA})\": "
    rf"(?:backup-reason=\"(?P<backup_reason>{DATA})\": )?(?:rules=\"?(?P<rules>{INT})\"?: )?"
    rf"size=\"?(?P<size>{INT})\"?: mail-from=\"?(?P<mail_from>{DATA})\"?: rcpt-to=\"?(?P<rcpt_to>{DATA})\"?($|: )"
    rf"{_STATUSES}(?:: )?(?P<part>.*)$")


def grok(line: str) -> dict[str, Any]:
    match = GROK.match(line)
    if match is None:
        return {"message": line, "tags": ["_grokparsefailure"]}
    doc = {k: v for k, v in match.groupdict().items() if v is not None}
    if doc.get("mail_from") == "":
        doc["mail_from"] = "NULL_SENDER_RFC5321"
    return doc
