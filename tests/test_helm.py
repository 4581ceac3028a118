"""The Helm chart (deploy/helm/mailowl), rendered and linted by Helm's own engine: helm-python-sdk loads
libhelm_c, Helm's Go SDK built as a C library, so no `helm` binary and no cluster are involved. Every
rendered manifest is validated against the Kubernetes OpenAPI schemas that kubernetes-validate ships (strict:
an unknown field is an error), for the oldest Kubernetes the chart supports and a recent one.

The chart must work with any release name in any namespace (PeekabooAV's chart broke unless the release was
called `pipeline`): names are rendered for several release names and namespaces, and every reference between
the resources (Secrets, ConfigMaps, claims, Services, selectors, probes) is followed to its target."""

from __future__ import annotations

import base64
import itertools
import re
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

import mailowl
from mailowl.config import load_config
from mailowl.rules.loader import load_engine

CHART = Path(__file__).parent.parent / "deploy" / "helm" / "mailowl"
KUBE_VERSIONS = ("1.25.0", "1.33.0")          # the chart's kubeVersion floor, and a recent release
LONGEST = "eu-west-1-production-mail-attachment-gateway-primary1"  # 53 characters: Helm's limit
RELEASES = [
    "pipeline",                   # the one name PeekabooAV's chart worked with
    "mailowl",                    # the chart's own name
    "a",
    "prod-mail-gateway-eu-west-1",
    LONGEST,
    "mailowl-" + "x" * 45,        # 53 characters holding the chart's name: used whole as the fullname
    "edge-mailowl",               # the chart's name at the end
    "2024.mail-edge",             # Helm allows a leading digit and dots; Service names do not
]
NAMESPACES = ["default", "mail", "n" * 63]
RULESET = """\
[rules]
rule.1 : known
rule.2 : file_larger_than
rule.3 : final_rule

[file_larger_than]
bytes : 5
"""
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "cluster": {   # replicas behind an external database, autoscaled, with a disruption budget
        "replicaCount": 3,
        "externalDatabase": {"url": "postgresql+asyncpg://mailowl:s3cret@db.example.internal:5432/mailowl"},
        "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 10,
                        "targetMemoryUtilizationPercentage": 80},
        "podDisruptionBudget": {"enabled": True, "minAvailable": 2, "maxUnavailable": None},
        "auth": {"token": "t0ken-for-the-api"},
    },
    "postgresql": {  # the optional database of the chart
        "replicaCount": 2,
        "postgresql": {"enabled": True},
        "auth": {"token": "t0ken-for-the-api"},
    },
    "token": {       # one pod on SQLite with a token, a mailowl.toml, a ruleset, Cortex and the content filter
        "auth": {"token": "t0ken-for-the-api"},
        "config": '[queue]\nworkers = 3\n\n[mail]\non_failed = "accept"\n\n[cortex]\nurl = "http://cortex:9001"\n',
        "cortex": {"apiToken": "cortex-key"},
        "ruleset": {"file": "ruleset.conf", "content": RULESET},
        "smtp": {"enabled": True, "nextHop": "postfix.mail.svc:10026"},
        "milter": {"enabled": False},
    },
}
TOKEN = "t0ken-for-the-api"

DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")                    # RFC 1035: Service names
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME = re.compile(r"^([a-z0-9.-]+/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


# rendering -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: helm.Chart, values: dict[str, Any], release: str = "pipeline",
           namespace: str = "mail") -> list[dict[str, Any]]:
    """The manifests Helm would send for an install: every document of every template, NOTES left out."""
    rendered = chart.render(values=values, name=release, namespace=namespace, is_install=True)
    docs = []
    for path, text in sorted(rendered.items()):
        if not path.endswith(".yaml"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} found"
    return found[0]


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


def mailowl_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "mailowl")


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def secret_data(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    secret = one(docs, "Secret", name)
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def render_error(chart: helm.Chart, values: dict[str, Any]) -> str:
    with pytest.raises(helm.HelmRenderError) as caught:
        chart.render(values=values, name="pipeline", namespace="mail", is_install=True)
    return str(caught.value)


# the chart as Helm sees it ---------------------------------------------------------------------------------

def test_release_names_are_ones_helm_accepts() -> None:
    """The names tested are real release names; one character more than the longest is not."""
    assert len(LONGEST) == 53 and len(RELEASES[5]) == 53
    for name in RELEASES:
        helm.validate_release_name(name)
    with pytest.raises(helm.HelmInvalidArgError):
        helm.validate_release_name(LONGEST + "x")


@pytest.mark.parametrize("values", VALUE_SETS.keys())
def test_helm_lint(values: str) -> None:
    for kube in KUBE_VERSIONS:
        report = helm.lint(CHART, VALUE_SETS[values], strict=True, namespace="mail", kube_version=f"v{kube}")
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert report["total_charts_linted"] == 1
        assert not problems and not report["errors"], report


def test_lint_reports_a_broken_chart(tmp_path: Path) -> None:
    """The lint above would see a mistake: a template referring to a helper that does not exist."""
    broken = Path(helm.Chart.load(CHART).save_dir(tmp_path))
    (broken / "templates" / "broken.yaml").write_text('{{ include "mailowl.nothing" . }}\n')
    report = helm.lint(broken, {}, strict=True)
    assert [m for m in report["messages"] if m["severity"] == 3], report


def test_chart_readme_links_resolve() -> None:
    from .test_docs_links import anchors, links

    readme = CHART / "README.md"
    for link in links(readme.read_text()):
        path, _, fragment = link.partition("#")
        target = (readme.parent / path).resolve()
        assert target.exists(), link
        if fragment:
            assert fragment in anchors(target.read_text()), link


def test_image_tag_is_mailowls_version(chart: helm.Chart) -> None:
    assert chart.metadata["appVersion"] == mailowl.__version__
    assert mailowl_container(render(chart, {}))["image"] == f"mailowl:{mailowl.__version__}"
    assert mailowl_container(render(chart, {"image": {"repository": "registry.example/mo", "tag": "1.2"}}))[
        "image"] == "registry.example/mo:1.2"


# every release name, namespace and values set ------------------------------------------------------------

def check_schemas(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        for kube in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, kube, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{doc['kind']} {doc['metadata'].get('name')} against Kubernetes {kube}: {exc}")


def check_names(docs: list[dict[str, Any]], release: str, namespace: str) -> None:
    seen: set[tuple[str, str]] = set()
    stem = release.replace(".", "-")[:36]
    for doc in docs:
        kind, meta = doc["kind"], doc["metadata"]
        name = meta["name"]
        assert (kind, name) not in seen, f"two {kind}s named {name}"
        seen.add((kind, name))
        assert meta.get("namespace") == namespace, f"{kind} {name} is not in the release's namespace"
        assert stem in name, f"{kind} {name} is not named after the release {release}"
        assert len(name) <= 63 and DNS_SUBDOMAIN.match(name), f"{kind} {name}: not a valid name"
        if kind == "Service":
            assert DNS_LABEL.match(name), f"Service {name}: not an RFC 1035 label"
        if kind == "StatefulSet":  # its pods' controller-revision-hash label is the name plus a hash
            assert len(name) <= 52, f"StatefulSet {name}: longer than 52 characters"
        labels = dict(meta.get("labels") or {})
        if doc["kind"] in ("Deployment", "StatefulSet"):
            labels.update(doc["spec"]["template"]["metadata"]["labels"])
        assert labels.get("app.kubernetes.io/instance") == release
        for key, value in labels.items():
            assert LABEL_NAME.match(key) and len(value) <= 63 and LABEL_VALUE.match(value), (key, value)


def check_selectors(docs: list[dict[str, Any]]) -> None:
    pods = {w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"] for w in workloads(docs)}
    for workload in workloads(docs):
        selector = workload["spec"]["selector"]["matchLabels"]
        mine = workload["metadata"]["name"]
        assert selects(selector, pods[mine]), f"{workload['kind']} {mine}: selector does not match its pods"
        others = [n for n, labels in pods.items() if n != mine and selects(selector, labels)]
        assert not others, f"{workload['kind']} {mine}'s selector also matches the pods of {others}"
    for service in by_kind(docs, "Service"):
        matched = [n for n, labels in pods.items() if selects(service["spec"]["selector"], labels)]
        assert len(matched) == 1, f"Service {service['metadata']['name']} selects the pods of {matched}"
        workload = next(w for w in workloads(docs) if w["metadata"]["name"] == matched[0])
        names = {p["name"]: p["containerPort"] for c in workload["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            assert target in names if isinstance(target, str) else target in names.values(), port
    for pdb in by_kind(docs, "PodDisruptionBudget"):
        assert selects(pdb["spec"]["selector"]["matchLabels"], pods[one(docs, "Deployment")["metadata"]["name"]])
        assert [n for n, labels in pods.items() if selects(pdb["spec"]["selector"]["matchLabels"], labels)] == [
            one(docs, "Deployment")["metadata"]["name"]]
    for hpa in by_kind(docs, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["apiVersion"]) == ("Deployment", "apps/v1")
        deployment = one(docs, "Deployment", target["name"])
        assert "replicas" not in deployment["spec"], "the HPA owns the replica count"


def check_references(docs: list[dict[str, Any]], external: Collection[str] = ()) -> None:
    """Everything a pod refers to exists in the rendered set (or is one of `external`, the Secrets the
    values name as the user's own)."""
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in by_kind(docs, "ConfigMap")}
    secrets = {d["metadata"]["name"]: d.get("data", {}) for d in by_kind(docs, "Secret")}
    for workload in workloads(docs):
        pod = workload["spec"]["template"]["spec"]
        what = f"{workload['kind']} {workload['metadata']['name']}"
        claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        account = pod.get("serviceAccountName", "default")
        assert account == "default" or ("ServiceAccount", account) in names, f"{what}: no ServiceAccount {account}"
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for volume in volumes.values():
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, f"{what}: no ConfigMap {volume['configMap']}"
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets, f"{what}: no Secret {volume['secret']}"
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in names, f"{what}: no PersistentVolumeClaim {claim}"
        for container in pod["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] in claims, f"{what}: no volume {mount['name']}"
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] not in external:
                    assert ref["name"] in secrets, f"{what}: {env['name']} from missing Secret {ref['name']}"
                    assert ref["key"] in secrets[ref["name"]], f"{what}: {env['name']}: no key {ref['key']}"
        if workload["kind"] == "StatefulSet":
            governing = one(docs, "Service", workload["spec"]["serviceName"])
            assert governing["spec"]["clusterIP"] == "None", "a StatefulSet's serviceName is a headless Service"


def check_pods(docs: list[dict[str, Any]]) -> None:
    """Non-root, read-only root filesystem, no privilege escalation, for every container; mailowl's probes
    reach /healthz on the port it listens on; /data and /tmp are volumes."""
    for workload in workloads(docs):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    container = mailowl_container(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    listen = env_of(container)["MAILOWL_SERVER_LISTEN"]["value"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/healthz"
        port = ports[get["port"]] if isinstance(get["port"], str) else get["port"]
        assert listen.endswith(f":{port}"), f"{probe} asks port {port}, mailowl listens on {listen}"
    mounts = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert {"/data", "/tmp"} <= mounts


CASES = [
    pytest.param(release, namespace, values, id=f"{release[:20]}-{namespace[:8]}-{values}")
    for release, namespace, values in itertools.product(RELEASES, NAMESPACES, VALUE_SETS)
]


@pytest.mark.parametrize(("release", "namespace", "values"), CASES)
def test_render(chart: helm.Chart, release: str, namespace: str, values: str) -> None:
    docs = render(chart, VALUE_SETS[values], release, namespace)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount"} <= kinds
    check_schemas(docs)
    check_names(docs, release, namespace)
    check_selectors(docs)
    check_references(docs)
    check_pods(docs)


def test_releases_in_one_namespace_do_not_collide(chart: helm.Chart) -> None:
    """Each release's resources are its own: no two releases of the list share a (kind, name)."""
    owner: dict[tuple[str, str], str] = {}
    for release, values in itertools.product(RELEASES, VALUE_SETS):
        for doc in render(chart, VALUE_SETS[values], release, "mail"):
            key = (doc["kind"], doc["metadata"]["name"])
            assert owner.setdefault(key, release) == release, f"{key} of {release} and {owner[key]}"


def test_names_of_the_longest_release_fit(chart: helm.Chart) -> None:
    docs = render(chart, VALUE_SETS["postgresql"], LONGEST)
    assert one(docs, "Deployment")["metadata"]["name"] == f"{LONGEST}-mailowl"
    statefulset = one(docs, "StatefulSet")["metadata"]["name"]
    assert statefulset.endswith("-postgresql") and statefulset.startswith(LONGEST[:30]) and len(statefulset) <= 52
    docs = render(chart, {}, RELEASES[5])
    assert one(docs, "Deployment")["metadata"]["name"] == RELEASES[5]     # holds "mailowl": used as it is
    docs = render(chart, {}, "2024.mail-edge")
    assert one(docs, "Service")["metadata"]["name"] == "mailowl-2024-mail-edge-mailowl"


# what mailowl makes of it ---------------------------------------------------------------------------------

def pod_environment(docs: list[dict[str, Any]], etc: Path) -> dict[str, str]:
    """The environment mailowl's container would get: Secret values filled in, $(VAR) expanded, and the
    ConfigMap's files written to `etc`, standing in for /etc/mailowl."""
    config_map = one(docs, "ConfigMap")
    for key, text in config_map["data"].items():
        (etc / key).write_text(text)
    environ: dict[str, str] = {}
    for env in mailowl_container(docs)["env"]:
        if "value" in env:
            value = re.sub(r"\$\((\w+)\)", lambda m: environ[m.group(1)], env["value"])
        else:
            ref = env["valueFrom"]["secretKeyRef"]
            value = secret_data(docs, ref["name"])[ref["key"]]
        environ[env["name"]] = value.replace("/etc/mailowl/", f"{etc}/")
    return environ


def service_links(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The variables the kubelet puts into every pod of the namespace for each Service with a cluster IP,
    unless the pod says enableServiceLinks: false (Docker links: NAME_SERVICE_HOST, NAME_PORT, ...)."""
    links: dict[str, str] = {}
    for service in by_kind(docs, "Service"):
        if service["spec"].get("clusterIP") == "None":
            continue
        name, ip = service["metadata"]["name"].upper().replace("-", "_"), "10.96.0.10"
        ports = service["spec"]["ports"]
        links[f"{name}_SERVICE_HOST"] = ip
        links[f"{name}_SERVICE_PORT"] = str(ports[0]["port"])
        links[f"{name}_PORT"] = f"tcp://{ip}:{ports[0]['port']}"
        for port in ports:
            links[f"{name}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(port["port"])
            prefix = f"{name}_PORT_{port['port']}_TCP"
            links.update({prefix: f"tcp://{ip}:{port['port']}", f"{prefix}_PROTO": "tcp",
                          f"{prefix}_PORT": str(port["port"]), f"{prefix}_ADDR": ip})
    return links


@pytest.mark.parametrize("release", ["pipeline", "mailowl"])
@pytest.mark.parametrize("values", VALUE_SETS.keys())
def test_mailowl_accepts_the_pods_configuration(chart: helm.Chart, values: str, release: str,
                                                tmp_path: Path) -> None:
    """The variables and files the chart gives mailowl are settings mailowl knows (an unknown MAILOWL_…
    variable stops it) with the values meant, read by mailowl's own configuration loader. The variables
    Kubernetes adds for the namespace's Services are included unless the pod turns them off."""
    docs = render(chart, VALUE_SETS[values], release)
    environ = pod_environment(docs, tmp_path)
    if one(docs, "Deployment")["spec"]["template"]["spec"].get("enableServiceLinks", True):
        environ = {**service_links(docs), **environ}
    config = load_config(environ=environ)
    container = mailowl_container(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert config.server.listen == f"0.0.0.0:{ports['http']}"
    assert str(config.server.data_dir) == "/data"
    assert config.server.token == VALUE_SETS[values].get("auth", {}).get("token", "")
    assert config.milter.listen == (f"0.0.0.0:{ports['milter']}" if "milter" in ports else "")
    assert config.smtp.listen == (f"0.0.0.0:{ports['smtp']}" if "smtp" in ports else "")
    if values == "defaults":
        assert config.store.url == "" and config.analysis.ruleset == "" and config.queue.workers == 2
    if values == "cluster":
        assert config.store.url == VALUE_SETS["cluster"]["externalDatabase"]["url"]
    if values == "postgresql":
        service = one(docs, "Service", one(docs, "StatefulSet")["metadata"]["name"])
        password = secret_data(docs, service["metadata"]["name"])["password"]
        assert config.store.url == f"postgresql+asyncpg://mailowl:{password}@{service['metadata']['name']}:5432/mailowl"
        postgres = one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
        assert env_of(postgres)["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": service["metadata"]["name"], "key": "password"}
    if values == "token":
        assert config.queue.workers == 3 and config.mail.on_failed == "accept"
        assert (config.cortex.url, config.cortex.api_token) == ("http://cortex:9001", "cortex-key")
        assert config.smtp.next_hop == "postfix.mail.svc:10026"
        assert config.ruleset_path == tmp_path / "ruleset.conf"
        assert load_engine(config.ruleset_path).rule_names == ["known", "file_larger_than", "final_rule"]


def test_service_links_do_not_stop_mailowl(chart: helm.Chart, tmp_path: Path) -> None:
    """With the release called "mailowl", its Service "mailowl" gives every pod of the namespace (mailowl's
    own pods too, where enableServiceLinks is left on, as by other deployment tools) MAILOWL_PORT,
    MAILOWL_SERVICE_HOST, ...: mailowl knows them for what they are and starts with its own settings."""
    docs = render(chart, {}, "mailowl")
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["enableServiceLinks"] is False
    links = service_links(docs)
    assert "MAILOWL_SERVICE_HOST" in links and "MAILOWL_PORT_8100_TCP_ADDR" in links
    config = load_config(environ={**links, **pod_environment(docs, tmp_path)})
    assert config.server.listen == "0.0.0.0:8100"


def test_cortex_key_is_wired_only_when_set(chart: helm.Chart) -> None:
    """[cortex] api_token reaches the pod as MAILOWL_CORTEX_API_TOKEN, from the Secret, only when a key is
    given (mailowl reads it above, in the "token" values)."""
    for values in VALUE_SETS.values():
        docs = render(chart, values)
        wired = "MAILOWL_CORTEX_API_TOKEN" in env_of(mailowl_container(docs))
        stored = any("cortex-api-token" in (s.get("data") or {}) for s in by_kind(docs, "Secret"))
        assert wired == stored == bool(values.get("cortex", {}).get("apiToken"))
    docs = render(chart, {"cortex": {"apiToken": "cortex-key"}})
    ref = env_of(mailowl_container(docs))["MAILOWL_CORTEX_API_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert secret_data(docs, ref["name"])[ref["key"]] == "cortex-key"
    check_references(docs)


def test_secrets_of_your_own(chart: helm.Chart) -> None:
    """existingSecret: the pod reads the named Secrets and keys; the chart makes no Secret of its own."""
    values = {
        "replicaCount": 2,
        "auth": {"existingSecret": "api-token", "existingSecretKey": "bearer"},
        "externalDatabase": {"existingSecret": "db-credentials", "existingSecretKey": "sqlalchemy-url"},
        "cortex": {"existingSecret": "cortex", "existingSecretKey": "key"},
    }
    docs = render(chart, values)
    env = env_of(mailowl_container(docs))
    assert env["MAILOWL_SERVER_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "api-token", "key": "bearer"}
    assert env["MAILOWL_STORE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "db-credentials",
                                                                       "key": "sqlalchemy-url"}
    assert env["MAILOWL_CORTEX_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "cortex", "key": "key"}
    assert not by_kind(docs, "Secret") and not by_kind(docs, "PersistentVolumeClaim")
    check_schemas(docs)
    check_references(docs, external={"api-token", "db-credentials", "cortex"})


# refusals ---------------------------------------------------------------------------------------------------

SHARED = "needs a database that every pod shares: the embedded SQLite on /data cannot be shared between pods"


@pytest.mark.parametrize("values", [
    {"replicaCount": 3},
    {"replicaCount": 2, "persistence": {"enabled": False}},
    {"autoscaling": {"enabled": True}},
    {"replicaCount": 1, "autoscaling": {"enabled": True, "minReplicas": 1}},
], ids=["replicas", "replicas-without-persistence", "autoscaling", "autoscaling-from-one"])
def test_several_pods_on_sqlite_are_refused(chart: helm.Chart, values: dict[str, Any]) -> None:
    message = render_error(chart, values)
    assert SHARED in message and "externalDatabase.url" in message and "postgresql.enabled=true" in message
    # the same with a database renders
    render(chart, {**values, "externalDatabase": {"url": "mysql+asyncmy://mailowl:pw@mariadb/mailowl"}})
    render(chart, {**values, "postgresql": {"enabled": True}})


@pytest.mark.parametrize(("values", "expected"), [
    ({"externalDatabase": {"url": "postgresql+asyncpg://u:p@h/d"}, "postgresql": {"enabled": True}},
     "set either externalDatabase or postgresql.enabled, not both"),
    ({"externalDatabase": {"url": "postgresql+asyncpg://u:p@h/d", "existingSecret": "db"}},
     "set only one of externalDatabase.url and externalDatabase.existingSecret"),
    ({"externalDatabase": {"url": "postgresql://u:p@h/d"}}, "must be an async SQLAlchemy URL"),
    ({"postgresql": {"enabled": True, "auth": {"password": "p@ss/word"}}}, "postgresql.auth.password may hold"),
    ({"postgresql": {"enabled": True, "auth": {"username": "mail@owl"}}}, "postgresql.auth.username and"),
    ({"smtp": {"enabled": True}}, "smtp.enabled needs smtp.nextHop"),
    ({"podDisruptionBudget": {"minAvailable": 1}}, "set only one of podDisruptionBudget.minAvailable"),
    ({"replicaCount": 2, "postgresql": {"enabled": True}, "autoscaling": {"enabled": True},
      "resources": {"requests": None}}, "autoscaling on CPU needs resources.requests.cpu"),
    ({"ruleset": {"file": "rules/x.conf", "content": "[rules]"}}, "ruleset.file must be a file name"),
])
def test_values_that_cannot_work_are_refused(chart: helm.Chart, values: dict[str, Any], expected: str) -> None:
    assert expected in render_error(chart, values)


# storage, roll-outs, the database -------------------------------------------------------------------------

def volume(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    return next(v for v in pod["volumes"] if v["name"] == name)


def test_sqlite_lives_on_a_claim(chart: helm.Chart) -> None:
    docs = render(chart, {})
    claim = one(docs, "PersistentVolumeClaim")
    assert volume(docs, "data")["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert one(docs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}   # one pod on the volume
    assert claim["spec"]["resources"]["requests"]["storage"] == "8Gi"

    docs = render(chart, {"persistence": {"existingClaim": "my-claim"}})
    assert volume(docs, "data")["persistentVolumeClaim"]["claimName"] == "my-claim"
    assert not by_kind(docs, "PersistentVolumeClaim")

    for values in ({"persistence": {"enabled": False}}, VALUE_SETS["cluster"], VALUE_SETS["postgresql"]):
        docs = render(chart, values)
        assert volume(docs, "data") == {"name": "data", "emptyDir": {}}
        assert not by_kind(docs, "PersistentVolumeClaim")
        assert "strategy" not in one(docs, "Deployment")["spec"]   # rolling updates


def test_a_changed_configuration_rolls_the_pods(chart: helm.Chart) -> None:
    def annotations(values: dict[str, Any]) -> dict[str, str]:
        return dict(one(render(chart, values), "Deployment")["spec"]["template"]["metadata"]["annotations"])

    base = annotations({"auth": {"token": "one"}})
    assert annotations({"auth": {"token": "one"}}) == base
    assert annotations({"auth": {"token": "two"}})["checksum/secret"] != base["checksum/secret"]
    assert annotations({"auth": {"token": "one"}, "config": "[queue]\nworkers = 4\n"})[
        "checksum/config"] != base["checksum/config"]


def test_database_password(chart: helm.Chart) -> None:
    """Generated (32 letters and digits) unless given; kept through `helm uninstall`, like the volume."""
    docs = render(chart, {"postgresql": {"enabled": True}})
    name = one(docs, "StatefulSet")["metadata"]["name"]
    assert re.fullmatch(r"[A-Za-z0-9]{32}", secret_data(docs, name)["password"])
    assert one(docs, "Secret", name)["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    docs = render(chart, {"postgresql": {"enabled": True, "auth": {"password": "chosen-pass_1"}}})
    assert secret_data(docs, name)["password"] == "chosen-pass_1"
    claim = one(docs, "StatefulSet")["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "8Gi"


def test_values_schema_rejects_typos(chart: helm.Chart) -> None:
    """values.schema.json: a misspelt key or a wrong type is an error, not silently ignored."""
    for values, expected in (({"replicas": 3}, "additional properties 'replicas' not allowed"),
                             ({"replicaCount": "three"}, "/replicaCount': got string, want integer"),
                             ({"auth": {"tokn": "x"}}, "/auth': additional properties 'tokn' not allowed")):
        with pytest.raises(helm.HelmValuesError, match=re.escape(expected)):
            chart.render(values=values, name="pipeline", namespace="mail", is_install=True)
    for values in VALUE_SETS.values():
        chart.validate_schema(values)
