"""Keep secrets off disk: credentials in URLs, API keys and auth headers echoed in error text.

Everything a run writes that can carry text from outside — the endpoint URL (run.json, the
``worker`` column), error bodies and exception messages (the ``error`` column), log lines — goes
through :func:`redact_url` or :class:`Scrubber` first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
# user[:password]@ inside any URL in free text
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")
# Header echoes: "Authorization: Bearer x", "api-key=x", "'x-api-key': 'x'" ...
_AUTH_HEADER = re.compile(
    r"(?i)(['\"]?\b(?:proxy-)?(?:authorization|x-api-key|api[-_]key|apikey|x-auth-token)\b['\"]?"
    r"\s*[:=]\s*['\"]?)(?:(?:bearer|basic|token)\s+)?[^\s'\",;}]+")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{4,}")


# query parameters that carry credentials (?api_key=..., &token=..., &sig=...)
_SECRET_PARAM = re.compile(r"(?i)(^|&)([^=&]*(?:key|token|secret|passw|auth|sig|credential)"
                           r"[^=&]*=)[^&]*")


def redact_url(url: str | None) -> str | None:
    """``http://user:pw@host/p?api_key=k`` -> ``http://***@host/p?api_key=***``: the user
    information and the values of query parameters named like credentials (key, token,
    secret, password, auth, signature); anything else unchanged."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return _URL_USERINFO.sub(rf"\1{MASK}@", url)
    if "@" in parts.netloc:
        parts = parts._replace(netloc=f"{MASK}@{parts.netloc.rsplit('@', 1)[1]}")
    if parts.query:
        parts = parts._replace(query=_SECRET_PARAM.sub(rf"\1\2{MASK}", parts.query))
    return urlunsplit(parts)


def url_and_auth(url: str) -> tuple[str, dict[str, str]]:
    """(the URL without ``user:password@``, an Authorization header carrying them): urllib
    cannot fetch a URL with user information in it ("Name or service not known")."""
    import base64
    from urllib.parse import unquote

    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, {}
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
    return urlunsplit(parts._replace(netloc=host)), {"Authorization": f"Basic {token}"}


class Scrubber:
    """Removes known secret values and any auth-header echo from a piece of text."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        # Longest first, so a secret containing another is masked whole; very short values
        # (a one-letter header value) would mask ordinary text and are not secrets anyway.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str | None) -> str | None:
        if not text:
            return text
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        text = _URL_USERINFO.sub(rf"\1{MASK}@", text)
        text = _AUTH_HEADER.sub(rf"\1{MASK}", text)
        return _BEARER.sub(rf"\1 {MASK}", text)


    def cut(self, text: str | None, limit: int) -> str | None:
        """``text[:limit]`` scrubbed, with a secret cut off at the end masked too: a cut
        through an echoed key left a prefix of it that no exact match recognises (14 of a
        24-character key reached disk in an audit, 2026-12-01)."""
        if not text:
            return text
        out = self(text[:limit])
        for secret in self.secrets:
            for k in range(min(len(secret) - 1, len(out)), 3, -1):
                if out.endswith(secret[:k]):
                    return out[:-k] + MASK
        return out


scrub_text = Scrubber()  # no known values: URL credentials and header echoes only
