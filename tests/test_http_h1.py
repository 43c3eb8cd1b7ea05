"""
Tests for L{meshproxy.http.h1}, the sans-I/O HTTP/1 codec.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.http.h1 import (
    DATA,
    END,
    ERROR,
    HEAD,
    INFORMATIONAL,
    UPGRADE,
    RequestReader,
    ResponseReader,
    chunk,
    forwardedResponseHead,
    requestHead,
    responseHead,
)

#: Requests that must never be forwarded, each with the status it gets.
SMUGGLING = {
    "content-length and transfer-encoding": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "transfer-encoding and content-length": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    "duplicate content-length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "conflicting content-length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "content-length list": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
    "signed content-length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
    "gzip transfer-encoding": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    "chunked not last": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\nabc",
    "another coding before chunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "xchunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "transfer-encoding twice": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "transfer-encoding in HTTP/1.0": b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bare LF": b"GET / HTTP/1.1\nHost: a\n\n",
    "bare LF after a field": b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n",
    "NUL in a value": b"GET / HTTP/1.1\r\nHost: a\r\nX: b\x00c\r\n\r\n",
    "CR in a value": b"GET / HTTP/1.1\r\nHost: a\r\nX: b\rc\r\n\r\n",
    "space before the colon": b"GET / HTTP/1.1\r\nHost: a\r\nX : b\r\n\r\n",
    "bad chunk size": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3x\r\nabc\r\n0\r\n\r\n",
    "LF after a chunk size": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n",
    "no host": b"GET / HTTP/1.1\r\n\r\n",
    "two hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "upgrade with a body": b"POST / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: x\r\nContent-Length: 1\r\n\r\nx",
    "HTTP/1.2": b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
}


def feed(reader, *pieces: bytes) -> list:
    events = []
    for piece in pieces:
        events += reader.feed(piece)
    return events


class RequestReaderTests(SynchronousTestCase):
    """
    L{RequestReader} turns bytes into checked request events.
    """

    def test_simple(self):
        """
        A request without a body is a head and an end; its fields keep
        their case and order, minus the hop-by-hop ones.
        """
        events = feed(
            RequestReader(),
            b"GET /x?y HTTP/1.1\r\nHost: web\r\nX-A: 1\r\nConnection: keep-alive, X-Drop\r\n"
            b"X-Drop: 2\r\nKeep-Alive: 5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nX-B: 3\r\n\r\n",
        )
        self.assertEqual([kind for kind, _ in events], [HEAD, END])
        head = events[0][1]
        self.assertEqual((head.method, head.target, head.version, head.host), (b"GET", b"/x?y", b"1.1", b"web"))
        self.assertEqual(head.headers, [(b"Host", b"web"), (b"X-A", b"1"), (b"X-B", b"3")])
        self.assertTrue(head.keepAlive)
        self.assertEqual((head.contentLength, head.chunked, head.upgrade), (None, False, None))

    def test_splitAnywhere(self):
        """
        A request split byte by byte gives the same head and body.
        """
        data = b"POST /p HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\nhello"
        events = feed(RequestReader(), *(data[i : i + 1] for i in range(len(data))))
        self.assertEqual(events[0][1].target, b"/p")
        self.assertEqual(b"".join(v for k, v in events if k is DATA), b"hello")
        self.assertEqual(events[-1], (END, None))

    def test_chunkedTrailersDropped(self):
        """
        A chunked body comes out unframed; chunk extensions and trailers are
        dropped.
        """
        events = feed(
            RequestReader(),
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n",
        )
        head = events[0][1]
        self.assertTrue(head.chunked)
        self.assertEqual(head.headers, [(b"Host", b"a")])
        self.assertEqual(b"".join(v for k, v in events if k is DATA), b"abcde")
        self.assertEqual(events[-1], (END, None))

    def test_pipelined(self):
        """
        Two requests in one read give both, in order.
        """
        events = feed(RequestReader(), b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual([k for k, _ in events], [HEAD, END, HEAD, END])
        self.assertEqual([events[0][1].target, events[2][1].target], [b"/1", b"/2"])

    def test_errorAfterGoodRequest(self):
        """
        A malformed request after a good one in the same read does not lose
        the good one: the error is the last event.
        """
        events = feed(RequestReader(), b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\nHost: a\n\n")
        self.assertEqual([k for k, _ in events], [HEAD, END, ERROR])

    def test_http10(self):
        """
        HTTP/1.0 needs no Host and is not kept alive unless it asks.
        """
        (_, head), _ = feed(RequestReader(), b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual((head.version, head.host, head.keepAlive), (b"1.0", None, False))
        (_, head), _ = feed(RequestReader(), b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        self.assertTrue(head.keepAlive)

    def test_upgrade(self):
        """
        An upgrade request ends at its head; the bytes after it come in the
        C{UPGRADE} event.
        """
        events = feed(RequestReader(), b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nxyz")
        self.assertEqual([k for k, _ in events], [HEAD, END, UPGRADE])
        self.assertEqual(events[0][1].upgrade, b"websocket")
        self.assertEqual(events[2][1], b"xyz")

    def test_connect(self):
        """
        A CONNECT request ends at its head too.
        """
        events = feed(RequestReader(), b"CONNECT web:443 HTTP/1.1\r\nHost: web:443\r\n\r\n\x16\x03")
        self.assertEqual([k for k, _ in events], [HEAD, END, UPGRADE])
        self.assertEqual((events[0][1].target, events[2][1]), (b"web:443", b"\x16\x03"))

    def test_smuggling(self):
        """
        Every ambiguous framing and malformed field is refused with 400.
        """
        for name, data in SMUGGLING.items():
            events = RequestReader().feed(data)
            self.assertEqual(events[-1][0], ERROR, name)
            self.assertEqual(events[-1][1].status, 400, name)

    def test_targetTooLong(self):
        """
        A request target over the limit is 414, whether it arrives at once
        or in pieces.
        """
        self.assertEqual(RequestReader(maxLine=100).feed(b"GET /" + b"a" * 200 + b" HTTP/1.1\r\n")[-1][1].status, 414)
        reader = RequestReader(maxLine=100)
        events = feed(reader, b"GET /", *[b"a" * 10] * 20)
        self.assertEqual([v.status for k, v in events if k is ERROR][0], 414)

    def test_headTooLarge(self):
        """
        A header section over the limit is 431, whether in many fields or
        in one field arriving slowly.
        """
        many = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Field: 0123456789\r\n" * 100
        self.assertEqual(RequestReader(maxHead=1000).feed(many)[-1][1].status, 431)
        reader = RequestReader(maxHead=1000)
        events = feed(reader, b"GET / HTTP/1.1\r\nHost: a\r\nX: ", *[b"v" * 100] * 20)
        self.assertEqual([v.status for k, v in events if k is ERROR][0], 431)


class ResponseReaderTests(SynchronousTestCase):
    """
    L{ResponseReader} turns bytes into response events.
    """

    def test_lengths(self):
        """
        Content-Length, chunked and close-delimited bodies are told apart.
        """
        (kind, head), (_, data), end = ResponseReader().feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual((head.status, head.reason, head.contentLength, head.keepAlive), (200, b"OK", 2, True))
        events = ResponseReader().feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
        self.assertTrue(events[0][1].chunked)
        self.assertEqual(events[-1], (END, None))
        events = ResponseReader().feed(b"HTTP/1.1 200 OK\r\n\r\nabc")
        head = events[0][1]
        self.assertEqual((head.contentLength, head.chunked, head.keepAlive), (None, False, False))
        self.assertEqual(events[1:], [(DATA, b"abc")])

    def test_head(self):
        """
        A response to HEAD ends at its head whatever its length says, and
        the reader reads the next response afresh.
        """
        reader = ResponseReader()
        reader.expectBodiless()
        events = reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        self.assertEqual([k for k, _ in events], [HEAD, END])
        events = reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual([k for k, _ in events], [HEAD, DATA, END])

    def test_informational(self):
        """
        1xx responses come before the final one, without an end of their own;
        204 and 304 have no body.
        """
        events = ResponseReader().feed(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"
        )
        self.assertEqual([k for k, _ in events], [INFORMATIONAL, HEAD, END, HEAD, END])

    def test_switching(self):
        """
        A 101 ends HTTP: no end event, and the bytes after it come in the
        C{UPGRADE} event.
        """
        events = ResponseReader().feed(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nxyz")
        self.assertEqual([k for k, _ in events], [HEAD, UPGRADE])
        self.assertEqual((events[0][1].upgrade, events[1][1]), (b"websocket", b"xyz"))


def outcome(events: list) -> list:
    """
    What a list of events says, comparable across readers: heads as their
    attributes, body pieces joined, errors as their status, up to the
    first error (a reader answers every later read with one) or upgrade.
    """
    result: list = []
    for kind, value in events:
        if kind is HEAD or kind is INFORMATIONAL:
            attributes = ("method", "target", "version", "host", "status", "reason")
            result.append((kind, [getattr(value, name, None) for name in attributes], list(value.headers),
                           value.keepAlive, value.contentLength, value.chunked, value.upgrade))
        elif kind is DATA and result and result[-1][0] is DATA:
            result[-1] = (DATA, result[-1][1] + value)
        elif kind is ERROR:
            result.append((ERROR, value.status))
            break
        elif kind is UPGRADE:
            result.append((UPGRADE, None))
            break
        else:
            result.append((kind, value))
    return result


#: Messages the fast paths read when they come whole, two in a row.
FAST_REQUESTS = [
    b"GET /x?y=1 HTTP/1.1\r\nHost: web\r\nX-A:  1 \r\nConnection: keep-alive\r\nTE: trailers\r\n\r\n",
    b"HEAD / HTTP/1.0\r\nConnection: Keep-Alive\r\nX: y\r\n\r\n",
    b"DELETE /a/b HTTP/1.1\r\nhost: web:80\r\nKeep-Alive: 5\r\n\r\n",
]
FAST_RESPONSES = [
    b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 3\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\nabc",
    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nX-Empty:\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nDate: now\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
]


class FastPathTests(SynchronousTestCase):
    """
    The readers' fast paths (a message that came whole, read without
    llhttp) give what llhttp gives for the same bytes fed one at a time.
    """

    def assertSameAsLLHTTP(self, make, data: bytes) -> list:
        whole = feed(make(), data)
        byteByByte = feed(make(), *(data[i : i + 1] for i in range(len(data))))
        self.assertEqual(outcome(whole), outcome(byteByByte), data)
        return whole

    def test_requests(self):
        """
        Bodiless requests, pipelined, keep their fields but the hop-by-hop
        ones, with the value's trailing white space as llhttp keeps it.
        """
        for request in FAST_REQUESTS:
            events = self.assertSameAsLLHTTP(RequestReader, request + request)
            self.assertEqual([kind for kind, _ in events], [HEAD, END, HEAD, END])
        head = feed(RequestReader(), FAST_REQUESTS[0])[0][1]
        self.assertEqual(head.headers, [(b"Host", b"web"), (b"X-A", b"1 ")])

    def test_responses(self):
        """
        Responses with a length, or none because of their status, and the
        hop-by-hop fields left out of what is forwarded.
        """
        for response in FAST_RESPONSES:
            self.assertSameAsLLHTTP(ResponseReader, response + response)
        head = ResponseReader().feed(FAST_RESPONSES[0])[0][1]
        self.assertEqual(forwardedResponseHead(head), b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 3\r\n\r\n")
        self.assertEqual(head.headers, [(b"Server", b"x"), (b"Content-Length", b"3")])

    def test_others(self):
        """
        Messages that are not the fast path's (a body, a close, a
        connection option naming a field, an upgrade, a target or method
        outside its subset) give llhttp's events even when whole, followed
        by another.
        """
        requests = [
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-a\r\nX-A: 1\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"PURGE / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: \xff\r\n\r\n",
        ]
        for request in requests + list(SMUGGLING.values()):
            self.assertSameAsLLHTTP(RequestReader, request + FAST_REQUESTS[0])
        responses = [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ]
        for response in responses:
            self.assertSameAsLLHTTP(ResponseReader, response + FAST_RESPONSES[0])

    def test_bodyOverReads(self):
        """
        A body that comes after its head, over several reads, is data
        events and one end; only a head whose body came with it is
        C{whole}, which lets the server write both at once.
        """
        reader = ResponseReader()
        (_, head), (_, first) = reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
        self.assertFalse(head.whole)
        self.assertEqual(reader.feed(b"cd"), [(DATA, b"cd")])
        events = reader.feed(b"e" + FAST_RESPONSES[1])
        self.assertEqual(events[:2], [(DATA, b"e"), (END, None)])
        self.assertEqual([kind for kind, _ in events[2:]], [HEAD, END])
        head = ResponseReader().feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")[0][1]
        self.assertTrue(head.whole)

    def test_sameHeadAgain(self):
        """
        The same head again on one connection is read as new each time:
        the body it frames, whether the response answers C{HEAD}, and a
        different head after it.
        """
        response = FAST_RESPONSES[0]
        reader = ResponseReader()
        first = reader.feed(response)
        self.assertEqual(outcome(reader.feed(response)), outcome(first))
        reader.expectBodiless()
        events = reader.feed(response[: response.index(b"\r\n\r\n") + 4])
        self.assertEqual([kind for kind, _ in events], [HEAD, END])
        self.assertEqual(events[0][1].contentLength, 3)
        events = reader.feed(response + FAST_RESPONSES[1])
        self.assertEqual(outcome(events), outcome(first) + outcome(ResponseReader().feed(FAST_RESPONSES[1])))
        reader.expectBodiless()
        self.assertEqual(outcome(reader.feed(response))[1:], [(END, None), (ERROR, 502)])

    def test_bodyToHead(self):
        """
        Body bytes after the head of a response to HEAD that says it has a
        body are an error; after one that says none, the next response.
        """
        reader = ResponseReader()
        reader.expectBodiless()
        events = reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(outcome(events)[1:], [(END, None), (ERROR, 502)])
        reader = ResponseReader()
        reader.expectBodiless()
        events = reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" + FAST_RESPONSES[0])
        self.assertEqual([kind for kind, _ in events], [HEAD, END, HEAD, DATA, END])


class SerialiseTests(SynchronousTestCase):
    """
    Heads and chunks serialise as HTTP/1.1.
    """

    def test_heads(self):
        self.assertEqual(
            requestHead(b"GET", b"/", [(b"Host", b"a")], b"Transfer-Encoding: chunked\r\n"),
            b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        self.assertEqual(responseHead(204, b"No Content", []), b"HTTP/1.1 204 No Content\r\n\r\n")

    def test_chunk(self):
        self.assertEqual(b"".join(chunk(b"x" * 26)), b"1a\r\n" + b"x" * 26 + b"\r\n")
