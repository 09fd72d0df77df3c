"""The connection URL (no server needed)."""

import pytest

from raftlite import InterfaceError
from raftlite.url import Target, parse_url


def test_plain_single_node():
    assert parse_url("raftlite://127.0.0.1:7401") == Target(nodes=("127.0.0.1:7401",))


def test_credentials_several_nodes_and_tls():
    t = parse_url("raftlite://app:s%40cret@a:7000,b:7001,[::1]:7002?tls_ca=/etc/raftlite/ca.crt")
    assert t.nodes == ("a:7000", "b:7001", "[::1]:7002")
    assert (t.name, t.token, t.tls_ca) == ("app", "s@cret", "/etc/raftlite/ca.crt")


def test_the_token_never_shows():
    t = parse_url("raftlite://app:topsecret@a:1")
    assert "topsecret" not in repr(t)
    with pytest.raises(InterfaceError) as e:
        parse_url("raftlite://app:topsecret@a:notaport")
    assert "topsecret" not in str(e.value) and "app:***@" in str(e.value)


@pytest.mark.parametrize(
    "url, why",
    [
        ("http://a:1", "must start with raftlite://"),
        ("raftlite://", "empty"),
        ("raftlite://a", "not host:port"),
        ("raftlite://a:0", "port must be"),
        ("raftlite://a:99999", "port must be"),
        ("raftlite://a:1,", "empty"),
        ("raftlite://::1:7000", "IPv6"),
        ("raftlite://tokenonly@a:1", "NAME:TOKEN@"),
        ("raftlite://app:@a:1", "NAME:TOKEN@"),
        ("raftlite://a:1?tls-ca=/x", "unknown parameter 'tls-ca'"),
        ("raftlite://a:1?tls_ca=", "tls_ca needs"),
        ("raftlite://a:1/db", "port must be"),
    ],
)
def test_malformed_urls_say_what_is_wrong(url, why):
    with pytest.raises(InterfaceError, match="invalid raftlite URL") as e:
        parse_url(url)
    assert why in str(e.value)
