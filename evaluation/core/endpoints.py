"""Check the base URL of an OpenAI-compatible endpoint, describe its replies without echoing them, and apply the
operator's allow-list of endpoint hosts (AVENGERS_MODEL_URL_ALLOW). No network: name resolution is passed in."""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST = re.compile(rf"^(\[[0-9a-fA-F:.]+\]|{_LABEL}(\.{_LABEL})*)$")
_NAME = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")
_MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,40}/[a-z0-9][a-z0-9!#$&^_.+-]{0,60}$")
ALLOW_SETTING = "AVENGERS_MODEL_URL_ALLOW"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def normalise_base_url(url: str) -> str:
    """Return ``url`` without a trailing slash; raise ValueError saying what is wrong with it.

    Internal host names without a dot (``gpu1``, a Docker service ``vllm``) are valid here, unlike
    in Django's URLValidator. Credentials (``user:pass@``) are refused: they would be shown wherever the
    URL is, so the key goes in the API key field.
    """
    url = url.strip()
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError("must start with http:// or https://, e.g. http://gpu1:8000/v1")
    if "@" in parts.netloc:
        raise ValueError("must not contain a user name or password (user:pass@); put the key in the API key field")
    host = parts.netloc
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


def media_type(content_type: str | None) -> str:
    """Return the media type of a Content-Type header ("text/html"), or "no content type" for a missing or odd one.

    The header is the server's text too: only a well-formed, short type is repeated.
    """
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    return kind if _MEDIA_TYPE.match(kind) else "no content type"


def describe_reply(status_code: int, content_type: str | None) -> str:
    """Return "HTTP 404 (text/html)": what a reply was, never what it said."""
    return f"HTTP {status_code} ({media_type(content_type)})"


# --- AVENGERS_MODEL_URL_ALLOW -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AllowRule:
    """One entry: a host name (``*.`` for subdomains), a network, or any host (both None); any port when None."""

    name: str | None = None
    network: IPNetwork | None = None
    port: int | None = None

    def matches_name(self, host: str) -> bool:
        if self.name is None:
            return self.network is None
        if self.name.startswith("*."):
            return host.endswith(self.name[1:])
        return host == self.name

    def matches_address(self, address: IPAddress) -> bool:
        if self.network is None:
            return self.name is None
        return address.version == self.network.version and address in self.network


@dataclass(frozen=True)
class AllowList:
    """Hosts, networks and ports that model and embedding endpoints may be at; no rules allows every endpoint."""

    rules: tuple[AllowRule, ...] = ()

    def refusal(self, url: str, *, resolve: Callable[[str], Sequence[str]]) -> str | None:
        """Return why ``url`` is outside the list, or None when it may be called.

        An IP literal must be in a listed network; a name must be listed, or every address it resolves to
        (``resolve`` returns them) must be in a listed network. A rule with a port matches that port only.
        """
        if not self.rules:
            return None
        host, port = host_and_port(url)
        where = f"{host} port {port}"
        rules = [rule for rule in self.rules if rule.port in (None, port)]
        if not rules:
            return f"{where} is outside {ALLOW_SETTING} (no entry allows port {port})"
        literal = _ip(host)
        if literal is not None:
            if any(rule.matches_address(literal) for rule in rules):
                return None
            return f"{where} is outside {ALLOW_SETTING}"
        if any(rule.matches_name(host) for rule in rules):
            return None
        other_ports = sorted({r.port for r in self.rules if r.port is not None and r.name and r.matches_name(host)})
        problem = (f"{where} is outside {ALLOW_SETTING}, which lists {host} for port "
                   f"{', '.join(map(str, other_ports))} only" if other_ports else f"{where} is outside {ALLOW_SETTING}")
        if not any(rule.network is not None for rule in rules):
            return problem
        try:
            addresses = [_ip(a) for a in resolve(host)]
        except OSError:
            addresses = []
        if not addresses or None in addresses:
            return problem if other_ports else (f"{host} could not be resolved, so it cannot be checked against "
                                                f"{ALLOW_SETTING}")
        outside = [str(a) for a in addresses if a is not None and not any(r.matches_address(a) for r in rules)]
        if outside:
            return problem if other_ports else f"{where} resolves to {', '.join(outside)}, outside {ALLOW_SETTING}"
        return None


def parse_allow_list(text: str) -> AllowList:
    """Parse comma-separated entries: ``gpu1``, ``*.gpu.internal``, ``10.0.0.0/8``, ``[fd00::/8]:8000``,
    ``gpu1:8000``, ``:8000``; raise ValueError naming a bad one."""
    return AllowList(tuple(_rule(entry.strip()) for entry in text.split(",") if entry.strip()))


def host_and_port(url: str) -> tuple[str, int]:
    """Return the lower-case host (IPv6 without brackets) and the port of ``url``, the scheme's default if none."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").rstrip(".")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r} has an invalid port") from None
    if not host:
        raise ValueError(f"{url!r} has no host")
    return host, port if port is not None else (443 if parts.scheme == "https" else 80)


def _rule(entry: str) -> AllowRule:
    bad = ValueError(f"{ALLOW_SETTING}: {entry!r} is not a host, *.domain, IP, CIDR, host:port or :port")
    host, port_text = entry, ""
    if entry.startswith("["):
        host, sep, rest = entry[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise bad
        port_text = rest[1:] if rest else ""
        if rest and not port_text:
            raise bad
    elif entry.count(":") == 1:
        host, port_text = entry.split(":")
        if not port_text:
            raise bad
    port = None
    if port_text:
        if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
            raise bad
        port = int(port_text)
    if not host:
        return AllowRule(port=port)
    try:
        network = ipaddress.ip_network(host, strict=False)
    except ValueError:
        if ":" in host or "/" in host or not _NAME.match(host):
            raise bad from None
        return AllowRule(name=host.lower().rstrip("."), port=port)
    return AllowRule(network=network, port=port)


def _ip(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
