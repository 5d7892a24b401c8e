"""Check the base URL of an OpenAI-compatible endpoint."""
from __future__ import annotations

import re
from urllib.parse import urlsplit

_HOST = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*)$")


def normalise_base_url(url: str) -> str:
    """Return ``url`` without a trailing slash; raise ValueError saying what is wrong with it.

    Internal host names without a dot (``gpu1``, a Docker service ``vllm``) are valid here, unlike
    in Django's URLValidator.
    """
    url = url.strip()
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError("must start with http:// or https://, e.g. http://gpu1:8000/v1")
    host = parts.netloc.rsplit("@", 1)[-1]
    hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if not hostname or not _HOST.match(hostname):
        raise ValueError(f"has no valid host name ({host or 'empty'})")
    try:
        parts.port
    except ValueError:
        raise ValueError("has an invalid port") from None
    if parts.query or parts.fragment:
        raise ValueError("must not have a query string or fragment")
    return url.rstrip("/")
