"""The showcase's cortex-setup job: makes a fresh Cortex ready for mailowl with no manual step.

Through Cortex's REST API it creates the database, a superadmin, the organisation, a user of that
organisation allowed to run analyzers, and that user's API key, and enables the FileInfo analyzer; then it
writes the key into an analyzers.conf (PeekabooAV's format, which `mailowl serve --analyzers` reads), so the
key reaches mailowl without copy and paste. Run again (every `docker compose up`), it changes nothing and
writes the same file. It runs in mailowl's image (Python with httpx) and reads these variables:

  CORTEX_URL            http://cortex:9001
  CORTEX_ADMIN_PASSWORD the superadmin's password (.env, made by generate-env)
  CORTEX_ORGANISATION   the organisation mailowl's user belongs to (default mailowl)
  CORTEX_USER           mailowl's user in Cortex (default mailowl)
  CORTEX_TLP            tlp of mailowl's submissions (default amber)
  CORTEX_ANALYZER       the analyzer to enable (default FileInfo_8_0)
  ANALYZERS_CONF        where to write the file (default /data/analyzers.conf)
  CORTEX_SETUP_TIMEOUT  seconds to keep trying while Cortex is not ready yet (default 600)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import httpx

ADMIN = "admin"
# the analyzer's settings when enabled for the organisation (Cortex's defaults for FileInfo)
ANALYZER_CONFIG = {"auto_extract_artifacts": False, "check_tlp": True, "max_tlp": 2, "check_pap": True,
                   "max_pap": 2}


class SetupError(Exception):
    pass


def check(response: httpx.Response, what: str) -> httpx.Response:
    if response.status_code >= 300:
        raise SetupError(f"{what}: HTTP {response.status_code}: {response.text[:300]}")
    return response


def admin_client(base: str, password: str, transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """A superadmin session: the database migrated, the superadmin created if Cortex has no user yet."""
    client = httpx.Client(base_url=base, timeout=30, transport=transport)
    migrate = client.post("/api/maintenance/migrate", json={})
    # once Cortex has users, migrating asks for a login: then its database exists already
    if migrate.status_code not in (401, 403):
        check(migrate, "migrating Cortex's database")
    # Cortex accepts the first user without authentication, and only while it has none
    client.post("/api/user", json={"login": ADMIN, "name": "Administrator", "roles": ["superadmin"],
                                   "organization": "cortex", "password": password})
    check(client.post("/api/login", json={"user": ADMIN, "password": password}), "logging in as superadmin")
    # a session must send Cortex's anti-CSRF token back as a header
    token = client.cookies.get("CORTEX-XSRF-TOKEN")
    if token:
        client.headers["X-CORTEX-XSRF-TOKEN"] = token
    return client


def ensure_user(client: httpx.Client, organisation: str, login: str) -> str:
    """The organisation and its user exist; returns the user's API key (made once, then kept)."""
    if client.get(f"/api/organization/{organisation}").status_code == 404:
        check(client.post("/api/organization", json={"name": organisation, "status": "Active",
                                                      "description": "mailowl's analyses"}),
              f"creating organisation {organisation}")
    if client.get(f"/api/user/{login}").status_code == 404:
        check(client.post("/api/user", json={"login": login, "name": "mailowl", "organization": organisation,
                                             "roles": ["read", "analyze", "orgadmin"]}),
              f"creating user {login}")
    key = client.get(f"/api/user/{login}/key")
    if key.status_code == 200 and key.text.strip():
        return key.text.strip()
    return check(client.post(f"/api/user/{login}/key/renew"), f"making {login}'s API key").text.strip()


def ensure_analyzer(base: str, key: str, analyzer: str, transport: httpx.BaseTransport | None = None) -> None:
    """The analyzer is enabled in the user's organisation (as that user, an orgadmin, with its key)."""
    with httpx.Client(base_url=base, timeout=30, transport=transport,
                      headers={"Authorization": f"Bearer {key}"}) as client:
        found = check(client.post("/api/analyzer/_search", params={"range": "0-1"},
                                  json={"query": {"_field": "name", "_value": analyzer}}), "searching analyzers")
        if found.json():
            return
        check(client.post(f"/api/organization/analyzer/{analyzer}",
                          json={"name": analyzer, "configuration": ANALYZER_CONFIG, "jobCache": 10}),
              f"enabling {analyzer}")


def analyzers_conf(url: str, key: str, tlp: str) -> str:
    return ("# written by the showcase's cortex-setup job (deploy/compose/setup/cortex_setup.py)\n"
            f"[cortex]\nurl : {url}\ntlp : {tlp}\napi_token : {key}\n")


def write_private(path: Path, text: str) -> None:
    """Written whole or not at all, readable by its owner only (mailowl runs as the same user)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def setup(env: dict[str, str], transport: httpx.BaseTransport | None = None) -> Path:
    base = env.get("CORTEX_URL", "http://cortex:9001").rstrip("/")
    password = env.get("CORTEX_ADMIN_PASSWORD", "")
    if not password:
        raise SetupError("CORTEX_ADMIN_PASSWORD is empty: run deploy/compose/generate-env")
    client = admin_client(base, password, transport)
    try:
        key = ensure_user(client, env.get("CORTEX_ORGANISATION", "mailowl"), env.get("CORTEX_USER", "mailowl"))
    finally:
        client.close()
    ensure_analyzer(base, key, env.get("CORTEX_ANALYZER", "FileInfo_8_0"), transport)
    path = Path(env.get("ANALYZERS_CONF", "/data/analyzers.conf"))
    write_private(path, analyzers_conf(base, key, env.get("CORTEX_TLP", "amber")))
    return path


def main() -> int:
    env = dict(os.environ)
    deadline = time.monotonic() + float(env.get("CORTEX_SETUP_TIMEOUT", "600"))
    while True:
        # Cortex answers /api/status before it has loaded its analyzer catalogue: keep trying a while
        try:
            path = setup(env)
        except (SetupError, httpx.HTTPError) as exc:
            if time.monotonic() > deadline:
                print(f"cortex-setup: giving up: {exc}", file=sys.stderr)
                return 1
            print(f"cortex-setup: {exc}; trying again in 10 s", file=sys.stderr)
            time.sleep(10)
            continue
        print(f"cortex-setup: Cortex is ready; mailowl's key is in {path}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
