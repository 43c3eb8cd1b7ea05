"""
Tests for L{meshproxy.discovery._etcd} and L{meshproxy.discovery._gateway}:
the mirror's handling of etcd's JSON, and L{EtcdResolver}'s list, watch,
resume and re-list against an in-memory gateway.
"""

from __future__ import annotations

import json
from base64 import b64encode
from random import Random

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone
from zope.interface.verify import verifyObject

from meshproxy.config import Address, Endpoint
from meshproxy.discovery import Changes, Compacted, EtcdError, EtcdMirror, EtcdResolver, IResolver, prefixEnd
from meshproxy.discovery._gateway import _Lines

from .test_discovery import RecordingSink

PREFIX = "/meshproxy/services/web/"


def b64(text: str) -> str:
    return b64encode(text.encode()).decode()


def kv(name: str, port: int | None = None, value: str | None = None) -> dict:
    """
    A key-value pair as the gateway renders it: the key under L{PREFIX},
    the value an endpoint object for 127.0.0.1:C{port} (or C{value}).
    """
    if value is None:
        value = json.dumps({"address": f"127.0.0.1:{port}"})
    return {"key": b64(PREFIX + name), "value": b64(value), "mod_revision": "1"}


def put(revision: int, *kvs: dict) -> dict:
    # A PUT event has no "type": the enum's default is left out.
    return {"result": {"header": {"revision": str(revision)}, "events": [{"kv": kv} for kv in kvs]}}


def delete(revision: int, name: str) -> dict:
    return {
        "result": {"header": {"revision": str(revision)}, "events": [{"type": "DELETE", "kv": {"key": b64(PREFIX + name)}}]}
    }


def listing(revision: int, *kvs: dict) -> dict:
    response = {"header": {"revision": str(revision)}, "count": str(len(kvs))}
    if kvs:
        response["kvs"] = list(kvs)
    return response


def at(port: int) -> Endpoint:
    return Endpoint(Address("127.0.0.1", port))


class PrefixEndTests(SynchronousTestCase):
    def test_prefixEnd(self):
        self.assertEqual(prefixEnd(b"/m/web/"), b"/m/web0")
        self.assertEqual(prefixEnd(b"a\xff\xff"), b"b")
        self.assertEqual(prefixEnd(b"\xff"), b"\0")


class EtcdMirrorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.problems: list[str] = []
        self.mirror = EtcdMirror(PREFIX.encode(), "etcd", False, self.problems.append)

    def test_requests(self):
        key, end = b64(PREFIX), b64("/meshproxy/services/web0")
        self.assertEqual(self.mirror.rangeRequest(), {"key": key, "range_end": end})
        self.mirror.listed(listing(41))
        self.assertEqual(
            self.mirror.watchRequest(), {"create_request": {"key": key, "range_end": end, "start_revision": "42"}}
        )

    def test_listThenWatch(self):
        """
        A listing is the whole set; watch events add and remove, and the
        revision follows the responses' headers.
        """
        self.assertEqual(self.mirror.listed(listing(5, kv("a", 1), kv("b", 2))), (at(1), at(2)))
        self.assertEqual(self.mirror.watched({"result": {"header": {"revision": "5"}, "created": True}}), Changes())
        self.assertEqual(self.mirror.watched(put(6, kv("c", 3))), Changes(added=(at(3),)))
        self.assertEqual(self.mirror.watched(delete(7, "a")), Changes(removed=(at(1),)))
        self.assertEqual(self.mirror.watched(put(8, kv("b", 4))), Changes((at(4),), (at(2),)))
        self.assertEqual(self.mirror.revision, 8)
        self.assertEqual(self.mirror.listed(listing(9, kv("b", 4))), (at(4),))

    def test_sameEndpointTwoKeys(self):
        """
        An endpoint stays while any key names it.
        """
        self.mirror.listed(listing(5, kv("a", 1), kv("a2", 1)))
        self.assertEqual(self.mirror.watched(delete(6, "a")), Changes())
        self.assertEqual(self.mirror.watched(delete(7, "a2")), Changes(removed=(at(1),)))

    def test_badValueKeepsKey(self):
        """
        A value that is not a valid endpoint object is reported, naming the
        key, and the key keeps the endpoint it had.
        """
        self.mirror.listed(listing(5, kv("a", 1)))
        self.assertEqual(self.mirror.watched(put(6, kv("a", value="{not json"))), Changes())
        self.assertEqual(self.mirror.watched(put(7, kv("a", value='{"adress": "x"}'))), Changes())
        self.assertEqual(self.mirror.listed(listing(8, kv("a", value="[]"), kv("b", value="[]"))), (at(1),))
        self.assertIn(f"etcd key {PREFIX}a: not JSON", self.problems[0])
        self.assertIn(f"etcd key {PREFIX}a: adress: unknown key", self.problems[1])
        self.assertEqual(len(self.problems), 4)

    def test_compacted(self):
        self.mirror.listed(listing(5))
        with self.assertRaises(Compacted):
            self.mirror.watched(
                {"result": {"header": {"revision": "20"}, "canceled": True, "compact_revision": "10"}}
            )

    def test_errors(self):
        with self.assertRaises(EtcdError):
            self.mirror.watched({"result": {"header": {"revision": "20"}, "canceled": True}})
        with self.assertRaises(EtcdError) as caught:
            self.mirror.watched({"error": {"grpc_code": 16, "message": "etcdserver: invalid auth token"}})
        self.assertIn("invalid auth token", str(caught.exception))


class FakeGateway:
    """
    An in-memory L{meshproxy.discovery.EtcdGateway}: each call and watch
    waits for the test to answer it.

    @ivar calls: (path, body, Deferred) of each call.
    @ivar watches: (body, received, Deferred) of each watch.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict, Deferred]] = []
        self.watches: list[tuple[dict, object, Deferred]] = []

    def call(self, path, body):
        d = Deferred()
        self.calls.append((path, body, d))
        return d

    def watch(self, body, received):
        d = Deferred()
        self.watches.append((body, received, d))
        return d


class EtcdResolverTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.gateway = FakeGateway()
        self.clock = Clock()
        self.resolver = EtcdResolver(self.gateway, PREFIX, False, self.clock, Random(1))
        self.sink = RecordingSink()

    def start(self, *kvs) -> None:
        self.resolver.start(self.sink)
        path, _, d = self.gateway.calls[-1]
        self.assertEqual(path, "/v3/kv/range")
        d.callback(listing(10, *kvs))

    def received(self, message) -> None:
        self.gateway.watches[-1][1](message)

    def startRevision(self) -> str:
        return self.gateway.watches[-1][0]["create_request"]["start_revision"]

    def test_interface(self):
        self.assertTrue(verifyObject(IResolver, self.resolver))

    def test_listThenWatch(self):
        """
        The listing replaces the set; the watch starts at the next revision
        and its events add and remove.
        """
        self.start(kv("a", 1))
        self.assertEqual(self.sink.calls, [("replace", (at(1),))])
        self.assertEqual(self.startRevision(), "11")
        self.received(put(11, kv("b", 2)))
        self.received(delete(12, "a"))
        self.assertEqual(self.sink.calls[1:], [("add", (at(2),)), ("remove", (at(1),))])

    def test_dropResumes(self):
        """
        A dropped stream is watched again after a backoff, from the
        revision after the last one seen, and the set is kept meanwhile;
        the backoff grows while attempts fail and starts again after a
        response.
        """
        self.start(kv("a", 1))
        self.received(put(14, kv("b", 2)))
        self.gateway.watches[-1][2].errback(EtcdError("the watch stream broke"))
        self.assertEqual(len(self.gateway.watches), 1)
        (timer,) = self.clock.getDelayedCalls()
        self.assertTrue(0.25 <= timer.getTime() <= 0.375)
        self.clock.advance(timer.getTime())
        self.assertEqual(self.startRevision(), "15")
        self.gateway.watches[-1][2].errback(EtcdError("connection refused"))
        self.assertTrue(0.5 <= self.clock.getDelayedCalls()[0].getTime() - self.clock.seconds() <= 0.75)
        self.clock.advance(1)
        self.received({"result": {"header": {"revision": "15"}, "created": True}})
        self.assertEqual(self.resolver.failures, 0)
        self.assertEqual(self.sink.endpoints, [at(1), at(2)])

    def test_compactionLists(self):
        """
        A watch cancelled for compaction lists again at once, and the new
        listing replaces the set (with the deletions whose tombstones the
        compaction dropped).
        """
        self.start(kv("a", 1), kv("b", 2))
        self.gateway.watches[-1][2].errback(Compacted("compacted"))
        path, _, d = self.gateway.calls[-1]
        self.assertEqual((path, len(self.gateway.calls)), ("/v3/kv/range", 2))
        d.callback(listing(31, kv("b", 2)))
        self.assertEqual(self.sink.endpoints, [at(2)])
        self.assertEqual(self.startRevision(), "32")

    def test_listFailureRetries(self):
        self.resolver.start(self.sink)
        self.gateway.calls[-1][2].errback(EtcdError("connection refused"))
        self.assertEqual(self.sink.calls, [])
        self.clock.advance(1)
        self.assertEqual(len(self.gateway.calls), 2)

    def test_stop(self):
        """
        Stopping cancels the watch and leaves no timer.
        """
        self.start()
        stream = self.gateway.watches[-1][2]
        self.resolver.stop()
        self.assertTrue(stream.called)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.resolver.start(self.sink)
        self.gateway.calls[-1][2].errback(EtcdError("down"))
        self.resolver.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class _Producer:
    """
    The transport a response body's protocol gets, as far as L{_Lines}
    uses it.
    """

    stopped = False
    disconnecting = False

    def stopProducing(self):
        self.stopped = True


class LinesTests(SynchronousTestCase):
    """
    L{_Lines} splits a watch stream into JSON objects.
    """

    def setUp(self) -> None:
        self.received = []
        self.lines = _Lines(self.received.append)
        self.lines.makeConnection(_Producer())

    def test_split(self):
        self.lines.dataReceived(b'{"result": {"a": 1}}\n{"res')
        self.lines.dataReceived(b'ult": 2}\n\n')
        self.assertEqual(self.received, [{"result": {"a": 1}}, {"result": 2}])
        self.lines.connectionLost(Failure(ResponseDone()))
        failure = self.failureResultOf(self.lines.done, EtcdError)
        self.assertEqual(str(failure.value), "etcd ended the watch stream")

    def test_handlerRaises(self):
        """
        What the handler raises stops the stream and fails C{done}.
        """

        def received(message):
            raise Compacted("compacted")

        lines = _Lines(received)
        producer = _Producer()
        lines.makeConnection(producer)
        lines.dataReceived(b'{"result": {}}\n{"result": {}}\n')
        self.assertTrue(producer.stopped)
        lines.connectionLost(Failure(ResponseDone()))
        self.failureResultOf(lines.done, Compacted)

    def test_cancel(self):
        self.lines.done.cancel()
        self.assertTrue(self.lines.transport.stopped)
        self.lines.connectionLost(Failure(ResponseDone()))
        self.failureResultOf(self.lines.done, CancelledError)
