"""The API token guards /ui too: either ``Authorization: Bearer <token>`` (scripts, as for the API) or the
cookie the login form sets (browsers). The cookie holds a keyed hash of the token, never the token."""

from __future__ import annotations

import hashlib
import hmac

COOKIE = "mailowl_ui"


def cookie_value(token: str) -> str:
    return hmac.new(token.encode(), b"mailowl web interface", hashlib.sha256).hexdigest()


def allowed(token: str, authorization: str | None, cookie: str | None) -> bool:
    """True without a token, or with the right bearer header or cookie (compared in constant time)."""
    if not token:
        return True
    if authorization is not None and hmac.compare_digest(authorization.encode(), f"Bearer {token}".encode()):
        return True
    return cookie is not None and hmac.compare_digest(cookie.encode(), cookie_value(token).encode())


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a page of /ui only, never another site (//evil.example, /\\evil)."""
    if target and target.startswith("/ui") and not target.startswith(("//", "/\\")) and "\\" not in target \
            and all(ord(c) > 31 for c in target):
        return target
    return "/ui/"
