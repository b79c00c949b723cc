"""RESP2 as the hot path speaks it (router.adapters.resp): commands packed, replies parsed from a buffer that
may end anywhere. Pure functions: no server."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from router.adapters.resp import INCOMPLETE, MAX_DEPTH, ProtocolError, ReplyError, Script, pack, parse


def whole(data: bytes | bytearray) -> Any:
    """The one reply `data` holds, checked to use every byte."""
    reply, after = parse(data)
    assert reply is not INCOMPLETE
    assert after == len(data)
    return reply


def test_a_command_is_an_array_of_bulk_strings() -> None:
    assert pack(("SET", "k", "v")) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n"
    assert pack(("PING",)) == b"*1\r\n$4\r\nPING\r\n"
    assert pack(("ECHO", "")) == b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n"


def test_integers_are_sent_as_decimal_text() -> None:
    assert pack(("INCRBY", "k", -42)) == b"*3\r\n$6\r\nINCRBY\r\n$1\r\nk\r\n$3\r\n-42\r\n"
    big = 2**70
    assert pack(("X", big)) == b"*2\r\n$1\r\nX\r\n$%d\r\n%d\r\n" % (len(str(big)), big)


def test_non_ascii_text_is_counted_in_bytes_not_characters() -> None:
    text = "héllo ✓ 🙂"
    data = text.encode()
    assert len(data) != len(text)
    assert pack(("ECHO", text)) == b"*2\r\n$4\r\nECHO\r\n$%d\r\n%s\r\n" % (len(data), data)


def test_binary_arguments_go_verbatim_even_with_crlf_and_nul_inside() -> None:
    blob = bytes(range(256)) + b"\r\n$5\r\n*1\r\n"
    packed = pack(("SET", "k", blob))
    assert packed.endswith(b"$%d\r\n%s\r\n" % (len(blob), blob))
    # what a server reads back: the same three arguments
    assert whole(packed) == [b"SET", b"k", blob]


def test_a_megabyte_sized_argument_round_trips_through_pack_and_parse() -> None:
    blob = bytes(range(256)) * 4096 * 4  # 4 MiB
    assert whole(pack(("SET", "k", blob)))[2] == blob


@pytest.mark.parametrize("bad", [True, False, 1.5, None, bytearray(b"x"), ["a"], object()])
def test_an_argument_of_another_type_is_a_type_error_naming_it(bad: Any) -> None:
    with pytest.raises(TypeError, match=type(bad).__name__):
        pack(("SET", "k", bad))


def test_a_script_is_named_by_the_sha1_of_its_text() -> None:
    text = "return 'é'"
    assert Script(text).sha == hashlib.sha1(text.encode()).hexdigest()


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (b"+OK\r\n", b"OK"),
        (b"+\r\n", b""),
        (b":0\r\n", 0),
        (b":-17\r\n", -17),
        (b":9223372036854775807\r\n", 2**63 - 1),
        (b"$0\r\n\r\n", b""),
        (b"$-1\r\n", None),
        (b"$4\r\na\r\nb\r\n", b"a\r\nb"),
        (b"*0\r\n", []),
        (b"*-1\r\n", None),
        (b"*3\r\n:1\r\n$-1\r\n+x\r\n", [1, None, b"x"]),
        (b"*2\r\n*2\r\n:1\r\n*1\r\n$1\r\nz\r\n*0\r\n", [[1, [b"z"]], []]),
    ],
)
def test_each_reply_type(data: bytes, reply: Any) -> None:
    assert whole(data) == reply
    assert whole(bytearray(data)) == reply


def test_an_error_reply_is_a_value_not_raised() -> None:
    reply = whole(b"-NOSCRIPT No matching script\r\n")
    assert isinstance(reply, ReplyError)
    assert str(reply) == "NOSCRIPT No matching script"


def test_an_error_inside_an_array_leaves_its_neighbours_readable() -> None:
    first, error, last = whole(b"*3\r\n:1\r\n-ERR no\r\n:3\r\n")
    assert (first, last) == (1, 3)
    assert isinstance(error, ReplyError)


def test_an_error_reply_that_is_not_utf8_is_still_an_error() -> None:
    reply = whole(b"-ERR \xff\xfe\r\n")
    assert isinstance(reply, ReplyError)
    assert str(reply).startswith("ERR ")


STREAM = (
    b"+OK\r\n"
    b":42\r\n"
    b"$5\r\nh\r\n\r\n\r\n"
    b"-ERR oops\r\n"
    b"*3\r\n$3\r\nabc\r\n*2\r\n:1\r\n$-1\r\n*0\r\n"
    b"$-1\r\n"
    b"$3\r\n\xe2\x9c\x93\r\n"
)


def replies(data: bytes | bytearray) -> list[Any]:
    out: list[Any] = []
    pos = 0
    while True:
        reply, pos = parse(data, pos)
        if reply is INCOMPLETE:
            return out
        out.append(reply)


def test_a_buffer_cut_anywhere_yields_the_whole_replies_before_the_cut_and_no_more() -> None:
    expected = replies(STREAM)
    assert len(expected) == 7
    for cut in range(len(STREAM) + 1):
        got = replies(STREAM[:cut])
        assert [repr(r) for r in got] == [repr(r) for r in expected[: len(got)]], cut
        if cut < len(STREAM):
            assert len(got) < len(expected), cut


def test_an_incomplete_reply_leaves_the_position_where_it_started() -> None:
    for partial in (b"", b"$", b"$5\r\nab", b"$5\r\nabcde", b"$5\r\nabcde\r", b"*2\r\n:1\r\n", b"*1\r\n*1\r\n$1\r\n"):
        assert parse(b":1\r\n" + partial, 4) == (INCOMPLETE, 4)


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 400 Bad Request\r\n",
        b"\r\n",
        b"$abc\r\n",
        b":1.5\r\n",
        b"*x\r\n",
        b"$\r\n",
        b"%1\r\n",  # RESP3's map: never asked for
        b"*1\r\n?\r\n",
    ],
)
def test_bytes_that_are_not_resp_are_a_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse(data)


@pytest.mark.parametrize("data", [b"$3\r\nabcXY", b"$3\r\nabcd\r\n", b"$1\r\nab\r\n", b"*1\r\n$1\r\nxyz\r\n"])
def test_a_bulk_string_longer_than_it_says_is_a_protocol_error(data: bytes) -> None:
    """The two bytes after a bulk string's data must be CRLF: anything else means the length lied, and every
    reply after it would be read from the wrong place (matched to the wrong call)."""
    with pytest.raises(ProtocolError):
        parse(data)


def test_arrays_nested_past_the_bound_are_a_protocol_error() -> None:
    ok = b"*1\r\n" * MAX_DEPTH + b":1\r\n"
    reply = whole(ok)
    for _ in range(MAX_DEPTH):
        reply = reply[0]
    assert reply == 1
    with pytest.raises(ProtocolError):
        parse(b"*1\r\n" * (MAX_DEPTH + 1) + b":1\r\n")
    with pytest.raises(ProtocolError):  # without its end: still refused, not waited for
        parse(b"*1\r\n" * 10_000)
