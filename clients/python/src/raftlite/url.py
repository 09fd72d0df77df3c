"""The connection URL: `raftlite://[NAME:TOKEN@]host:port[,host:port...][?tls_ca=PATH]`.

One string carries everything a client needs to reach a cluster, so it can live in one
environment variable or secret; the `raftlite` CLI accepts the same syntax. Several nodes may
be listed: the client fails over between them. NAME only labels the credential (the server
logs tokens by the name in its auth file); TOKEN is sent as `authorization: Bearer TOKEN`.
`tls_ca` turns TLS on and verifies the nodes' certificates with that CA file; without it the
connection is plaintext (fine on loopback). Both parts of the credential are percent-decoded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import InterfaceError

SCHEME = "raftlite://"


@dataclass(frozen=True)
class Target:
    """A parsed URL. Its repr never shows the token."""

    nodes: tuple[str, ...]
    name: str | None = None
    token: str | None = field(default=None, repr=False)
    tls_ca: str | None = None


def parse_url(url: str) -> Target:
    """Parses a connection URL; raises InterfaceError saying what is wrong with it.

    The rules are the Rust client's (`raftlite_client::ClusterUrl`), so a URL means the same
    to the CLI and to Python: the scheme in any case; no fragment, no path (a trailing `/` is
    fine); credentials are everything before the last `@`, `NAME:TOKEN` with both non-empty;
    `%XX` escapes are decoded in NAME, TOKEN and the CA path (`+` stays `+`); the only
    parameter is `tls_ca`, at most once.

    >>> parse_url("raftlite://app:s3cret@10.0.0.1:7000,10.0.0.2:7000?tls_ca=/etc/ca.crt")
    Target(nodes=('10.0.0.1:7000', '10.0.0.2:7000'), name='app', tls_ca='/etc/ca.crt')
    """
    if not isinstance(url, str) or not url.strip()[: len(SCHEME)].lower() == SCHEME:
        raise _invalid(url, f"it must start with {SCHEME}")
    rest = url.strip()[len(SCHEME) :]
    if "#" in rest:
        raise _invalid(url, "a fragment (#...) is not allowed; write # in a value as %23")
    authority, _, query = rest.partition("?")
    if "://" in authority:
        raise _invalid(url, "expected host:port after raftlite://, not another scheme")
    authority = authority[:-1] if authority.endswith("/") else authority
    if "/" in authority:
        raise _invalid(url, "a path is not allowed after the nodes")
    credentials, at, hosts = authority.rpartition("@")
    name = token = None
    if at:
        raw_name, colon, raw_token = credentials.partition(":")
        if not colon:
            raise _invalid(url, "credentials must be NAME:TOKEN@ (the name is only a label)")
        name, token = _decode(url, raw_name, "NAME"), _decode(url, raw_token, "TOKEN")
        if not name:
            raise _invalid(url, "credentials must be NAME:TOKEN@: the NAME is empty")
        if not token.strip():
            raise _invalid(url, "credentials must be NAME:TOKEN@: the TOKEN is empty")
    nodes = tuple(_host_port(url, part.strip()) for part in hosts.split(","))
    tls_ca = None
    for pair in query.split("&"):
        if not pair:
            continue
        key, _, value = pair.partition("=")
        if key != "tls_ca":
            raise _invalid(url, f"unknown parameter {key!r} (the only one is tls_ca)")
        if tls_ca is not None:
            raise _invalid(url, "tls_ca given twice")
        tls_ca = _decode(url, value, "tls_ca")
        if not tls_ca:
            raise _invalid(url, "tls_ca needs the path of a CA certificate file")
    return Target(nodes=nodes, name=name, token=token, tls_ca=tls_ca)


def _decode(url: str, part: str, what: str) -> str:
    """Strict %XX decoding (a bad escape is an error, not kept as is); `+` is not a space."""
    out = bytearray()
    raw = part.encode()
    i = 0
    while i < len(raw):
        if raw[i] == ord("%"):
            pair = raw[i + 1 : i + 3]
            try:
                if len(pair) != 2:
                    raise ValueError
                out.append(int(pair, 16))
            except ValueError:
                raise _invalid(url, f"{what}: '%' is not followed by two hex digits") from None
            i += 3
        else:
            out.append(raw[i])
            i += 1
    try:
        return out.decode()
    except UnicodeDecodeError:
        raise _invalid(url, f"{what}: %-escapes do not decode to UTF-8") from None


def _host_port(url: str, part: str) -> str:
    """Checks one `host:port` (an IPv6 host in brackets) and returns it."""
    host, colon, port = part.rpartition(":")
    if not part:
        raise _invalid(url, "a node address is empty (expected host:port[,host:port...])")
    if not colon or not host:
        raise _invalid(url, f"{part!r} is not host:port")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise _invalid(url, f"{part!r}: write an IPv6 address as [addr]:port")
    if any(c in host for c in "/ #"):
        raise _invalid(url, f"{part!r} is not host:port")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise _invalid(url, f"{part!r}: the port must be a number in 1..65535")
    return f"{host}:{int(port)}"


def _invalid(url: object, why: str) -> InterfaceError:
    # The message must not leak the token: show the URL with it masked.
    shown = url
    if isinstance(url, str) and "@" in url:
        head, _, tail = url.strip().partition("://")
        creds, _, hosts = tail.rpartition("@")
        shown = f"{head}://{creds.partition(':')[0]}:***@{hosts}"
    return InterfaceError(f"invalid raftlite URL {shown!r}: {why}")
