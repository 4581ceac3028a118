"""Configuration: validated up front, every error names the key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailowl.config import ConfigError, load_config, parse_duration, parse_size


def test_defaults_are_safe() -> None:
    config = load_config(environ={})
    assert config.server.listen == "127.0.0.1:8100"
    assert config.server.token == ""
    assert config.store_url.startswith("sqlite+aiosqlite:///")
    assert config.ruleset_path is None


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "mailowl.toml"
    path.write_text('[server]\nlisten = "127.0.0.1:9000"\nmax_sample_size = "10MiB"\n[store]\nmax_age = "7d"\n')
    config = load_config(path, environ={})
    assert config.server.listen == "127.0.0.1:9000"
    assert config.server.max_sample_size == 10 * 2**20
    assert config.store.max_age == 7 * 86400
    config = load_config(path, environ={"MAILOWL_SERVER_LISTEN": "127.0.0.1:9001", "MAILOWL_QUEUE_WORKERS": "4"})
    assert config.server.listen == "127.0.0.1:9001" and config.queue.workers == 4
    config = load_config(path, environ={"MAILOWL_SERVER_LISTEN": "127.0.0.1:9001"},
                         overrides={"server": {"listen": "127.0.0.1:9002"}})
    assert config.server.listen == "127.0.0.1:9002"
    assert load_config(environ={"MAILOWL_CONFIG": str(path)}).server.listen == "127.0.0.1:9000"


@pytest.mark.parametrize(("toml", "env", "message"), [
    ('[server]\nlisten = "nowhere"\n', {}, "[server] listen: expected HOST:PORT"),
    ('[server]\nlisten = "127.0.0.1:99999"\n', {}, "[server] listen: expected HOST:PORT"),
    ('[server]\nlisen = "x"\n', {}, "[server] lisen: unknown setting (allowed: listen, token"),
    ('[sever]\nlisten = "x"\n', {}, "sever: unknown setting (allowed: server, log, milter, smtp, mail, store, queue, analysis, clamav, cortex)"),
    ('[queue]\nworkers = 0\n', {}, "[queue] workers: Input should be greater than or equal to 1"),
    ('[store]\nmax_age = "forever"\n', {}, "[store] max_age: expected a duration such as 90s"),
    ('[server]\nmax_sample_size = "lots"\n', {}, "[server] max_sample_size: expected a size"),
    ('[store]\nurl = "sqlite:///x.db"\n', {}, "[store] url: expected an async SQLAlchemy URL"),
    ("", {"MAILOWL_QUEUE_WORKERS": "many"}, "[queue] workers: Input should be a valid integer"),
    ("", {"MAILOWL_SERVER_PORT": "1"}, "environment variable MAILOWL_SERVER_PORT: no such setting"),
    ("[server\n", {}, "not valid TOML"),
])
def test_errors_name_the_key(tmp_path: Path, toml: str, env: dict[str, str], message: str) -> None:
    path = tmp_path / "mailowl.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=env)
    assert message in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml", environ={})


@pytest.mark.parametrize(("text", "value"), [("10", 10), ("10k", 10_000), ("10KiB", 10240), ("2MB", 2_000_000),
                                             ("64MiB", 64 * 2**20), ("1GiB", 2**30), (5, 5)])
def test_sizes(text: str | int, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(("text", "value"), [("90s", 90), ("15m", 900), ("12h", 43200), ("30d", 2592000),
                                             ("2w", 1209600), ("3600", 3600), (0, 0)])
def test_durations(text: str | int, value: int) -> None:
    assert parse_duration(text) == value


def test_kubernetes_service_variables_are_not_settings() -> None:
    """A Service named mailowl (or mailowl-server) in the namespace gives every pod these variables."""
    env = {"MAILOWL_SERVICE_HOST": "10.0.0.7", "MAILOWL_SERVICE_PORT": "8100", "MAILOWL_SERVICE_PORT_HTTP": "8100",
           "MAILOWL_PORT": "tcp://10.0.0.7:8100", "MAILOWL_PORT_8100_TCP": "tcp://10.0.0.7:8100",
           "MAILOWL_PORT_8100_TCP_PROTO": "tcp", "MAILOWL_PORT_8100_TCP_PORT": "8100",
           "MAILOWL_PORT_8100_TCP_ADDR": "10.0.0.7", "MAILOWL_SERVER_SERVICE_HOST": "10.0.0.8",
           "MAILOWL_SERVER_PORT_8101_TCP_ADDR": "10.0.0.8", "MAILOWL_SERVER_LISTEN": "0.0.0.0:8100"}
    assert load_config(environ=env).server.listen == "0.0.0.0:8100"
    for typo in ({"MAILOWL_SERVER_LISTN": "0.0.0.0:8100"}, {"MAILOWL_SERVER_PORT": "8100"}):
        with pytest.raises(ConfigError, match=f"{next(iter(typo))}: no such setting"):
            load_config(environ=typo)


def test_every_time_setting_takes_a_duration(tmp_path: Path) -> None:
    (tmp_path / "m.toml").write_text('[server]\nreport_wait = "0.5"\n[mail]\nwait = "20s"\n[log]\nsend_timeout = "1m"\n'
                                     '[analysis]\ntimeout = "2m"\n')
    config = load_config(tmp_path / "m.toml", environ={})
    assert (config.server.report_wait, config.mail.wait, config.log.send_timeout, config.analysis.timeout) == (
        0.5, 20.0, 60.0, 120.0)
