"""The image's HEALTHCHECK: GET /healthz on the address mailowl listens on (MAILOWL_SERVER_LISTEN);
exits 0 when it answers 200, 1 otherwise. /healthz needs no token."""

import os
import sys
import urllib.request

host, _, port = os.environ.get("MAILOWL_SERVER_LISTEN", "127.0.0.1:8100").rpartition(":")
host = host.strip("[]")
if host in ("", "0.0.0.0"):
    host = "127.0.0.1"
elif host == "::":
    host = "::1"
url = f"http://[{host}]:{port}/healthz" if ":" in host else f"http://{host}:{port}/healthz"
try:
    with urllib.request.urlopen(url, timeout=8) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as exc:  # URLError and HTTPError (non-2xx) included
    print(f"unhealthy: {url}: {exc}", file=sys.stderr)
    sys.exit(1)
