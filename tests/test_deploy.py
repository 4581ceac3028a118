"""The Logstash pipeline and Kibana saved objects in deploy/ (neither can run here: checked for shape)."""

from __future__ import annotations

import json
import re
from pathlib import Path

DEPLOY = Path(__file__).parent.parent / "deploy"


def test_kibana_saved_objects_are_consistent() -> None:
    objects = [json.loads(line) for line in (DEPLOY / "kibana" / "mailowl-dashboard.ndjson").read_text().splitlines()]
    ids = {(o["type"], o["id"]) for o in objects}
    assert {o["type"] for o in objects} == {"index-pattern", "visualization", "dashboard"}
    for obj in objects:
        assert obj["attributes"]["title"]
        for ref in obj["references"]:
            assert (ref["type"], ref["id"]) in ids, ref
        if obj["type"] == "visualization":
            state = json.loads(obj["attributes"]["visState"])
            fields = [a["params"].get("field") for a in state["aggs"] if "field" in a["params"]]
            assert all(f and not f.startswith("klms.part") for f in fields)
        if obj["type"] == "dashboard":
            panels = json.loads(obj["attributes"]["panelsJSON"])
            assert len(panels) == 4 and {p["panelRefName"] for p in panels} == {r["name"] for r in obj["references"]}


def test_logstash_pipeline_mirrors_the_parser() -> None:
    conf = (DEPLOY / "logstash" / "mailowl.conf").read_text()
    for section in ("input", "filter", "output"):
        assert re.search(rf"^{section} \{{", conf, re.M)
    assert conf.count("{") == conf.count("}")
    assert "_grokparsefailure" in conf and 'action => "create"' in conf and "fingerprint" in conf
    # the same token grammar as the Python parser
    from mailowl.logs import klms

    assert "(?:[,:](?! )[^,:\"]*)*" in klms._TOKEN.pattern and "[,:](?! )[^,:\"]*" in conf


RUBY_HARNESS = r"""
require "json"
class Event
  def initialize(body) @data = {"[@metadata][body]" => body}; @tags = [] end
  def get(key) @data[key] end
  def set(key, value) @data[key] = value end
  def tag(name) @tags << name end
  def to_h() @data.reject { |k, _| k.start_with?("[@metadata]") }.merge("tags" => @tags) end
end
code = File.read(ARGV[0])
STDIN.each_line do |line|
  event = Event.new(line.chomp)
  eval(code)
  puts JSON.generate(event.to_h)
end
"""


def test_logstash_ruby_filter_parses_like_mailowl(tmp_path: Path) -> None:
    import shutil
    import subprocess

    import pytest

    from mailowl.logs.klms import parse, to_ecs

    if shutil.which("ruby") is None:
        pytest.skip("ruby is not installed (scripts/bootstrap --test installs it)")
    conf = (DEPLOY / "logstash" / "mailowl.conf").read_text()
    code = conf.split("code => '", 1)[1].split("\n    '\n", 1)[0]
    (tmp_path / "filter.rb").write_text(code)
    (tmp_path / "harness.rb").write_text(RUBY_HARNESS)
    bodies = [
        'infected: message-id="<c@d>": relay-ip="10.0.0.2": action="Rejected": rules="2": size=9: mail-from="": '
        'rcpt-to="b@y.ru, c@y.ru": part "Pay, ment: x.xlsx", av-status="Infected", threats="HEUR:Exploit, UDS:x"',
        'clean: message-id="<a@b>": relay-ip="10.0.0.1": action="Skipped": size=5: mail-from="x@y": rcpt-to="a@x.ru"',
        "not a verdict line",
    ]
    out = subprocess.run(["ruby", str(tmp_path / "harness.rb"), str(tmp_path / "filter.rb")], input="\n".join(bodies),
                         capture_output=True, text=True, check=True).stdout.splitlines()
    for body, line in zip(bodies, out, strict=True):
        ruby = json.loads(line)
        ours = to_ecs(parse(body))
        if "tags" in ours:
            assert ruby["tags"] == ["_grokparsefailure"]
            continue
        assert ruby["[email][to][address]"] == ours["email"]["to"]["address"]
        assert ruby["[email][from][address]"] == ours["email"]["from"]["address"]
        assert ruby["[source][ip]"] == ours["source"]["ip"]
        assert ruby["[klms]"] == ours["klms"]
        assert ruby.get("[email][attachments]") == ours["email"].get("attachments")
