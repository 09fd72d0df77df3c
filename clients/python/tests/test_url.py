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
        ("raftlite://:tok@a:1", "the NAME is empty"),
        ("raftlite://a:t%zz@h:1", "two hex digits"),
        ("raftlite://a:1?tls_ca=/x&tls_ca=/y", "tls_ca given twice"),
        ("raftlite://a:1#frag", "fragment"),
        ("raftlite://https://a:1", "another scheme"),
        ("raftlite://a:1?tls-ca=/x", "unknown parameter 'tls-ca'"),
        ("raftlite://a:1?tls_ca=", "tls_ca needs"),
        ("raftlite://a:1/db", "a path is not allowed"),
    ],
)
def test_malformed_urls_say_what_is_wrong(url, why):
    with pytest.raises(InterfaceError, match="invalid raftlite URL") as e:
        parse_url(url)
    assert why in str(e.value)


def test_same_rules_as_the_rust_client():
    # Scheme in any case, a trailing slash, spaces around nodes, strict %-decoding, '+' kept.
    t = parse_url(" RaftLite://a%40b:t%3Ak%25+@h:1, h2:2/?tls_ca=/my%20dir/c+a.crt ")
    assert t.nodes == ("h:1", "h2:2")
    assert (t.name, t.token, t.tls_ca) == ("a@b", "t:k%+", "/my dir/c+a.crt")
    # The credentials end at the LAST '@': a token may hold an '@' unescaped.
    assert parse_url("raftlite://app:to@ken@h:1").token == "to@ken"
