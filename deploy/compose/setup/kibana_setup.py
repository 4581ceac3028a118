"""The showcase's kibana-setup job (`logs` profile): imports the project's Kibana objects
(deploy/kibana/mailowl-dashboard.ndjson: the index pattern mailowl-verdicts* and the verdict dashboard)
through Kibana's saved-objects API, overwriting earlier copies, so the dashboard is there to look at.

  KIBANA_URL       http://kibana:5601
  KIBANA_OBJECTS   the ndjson file (default /setup/mailowl-dashboard.ndjson)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx


def import_objects(base: str, objects: Path, transport: httpx.BaseTransport | None = None) -> int:
    """Returns the number of objects Kibana imported; raises when it refused any."""
    with httpx.Client(base_url=base.rstrip("/"), timeout=60, transport=transport) as client:
        response = client.post("/api/saved_objects/_import", params={"overwrite": "true"},
                               headers={"kbn-xsrf": "mailowl"},  # Kibana refuses writes without it
                               files={"file": (objects.name, objects.read_bytes(), "application/ndjson")})
    if response.status_code != 200:
        raise RuntimeError(f"Kibana answered HTTP {response.status_code}: {response.text[:300]}")
    result = response.json()
    if not result.get("success"):
        raise RuntimeError(f"Kibana refused objects: {result.get('errors')}")
    return int(result.get("successCount", 0))


def main() -> int:
    objects = Path(os.environ.get("KIBANA_OBJECTS", "/setup/mailowl-dashboard.ndjson"))
    try:
        count = import_objects(os.environ.get("KIBANA_URL", "http://kibana:5601"), objects)
    except (RuntimeError, httpx.HTTPError) as exc:
        print(f"kibana-setup: {exc}", file=sys.stderr)
        return 1
    print(f"kibana-setup: {count} objects imported from {objects.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
