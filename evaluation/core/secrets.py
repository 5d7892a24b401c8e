"""Keep secrets out of messages: API keys, bearer tokens and credentials written into URLs. No network."""
from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
# Shorter "keys" ("x", "no") are placeholders, not secrets; masking them would garble every message.
MIN_SECRET_CHARS = 4

# RFC 3986 userinfo holds no "/", "?", "#" or "@"; anything between "scheme://" and "@" is credentials.
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#@\s]*@")
_AUTH_TOKEN = re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]+")


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """Return ``text`` with each secret, bearer or basic token and URL credentials replaced by ``***``."""
    for secret in sorted({s for s in secrets if s and len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _URL_CREDENTIALS.sub(rf"\1{MASK}@", text)
    return _AUTH_TOKEN.sub(rf"\1\2{MASK}", text)


def url_without_credentials(url: str) -> str:
    """Return ``url`` without the ``user:password@`` part, for display."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return scrub(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
