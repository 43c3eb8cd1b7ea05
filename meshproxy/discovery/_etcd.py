# -*- test-case-name: tests.test_discovery_etcd -*-
"""
Endpoints from etcd v3: one key per endpoint under a prefix, its value
the endpoint object as JSON.

The resolver lists the prefix (C{/v3/kv/range}), then watches it
(C{/v3/watch}) from the revision after the listing's, so no change falls
between the two.  Every watch response moves the revision on; when the
stream drops (etcd restarted, a member died), the resolver waits a jittered
backoff and watches again from the revision after the last one it saw, on
the next member: etcd replays whatever happened meanwhile, and the
endpoint set is never emptied by an outage.  If that revision has been
compacted away, etcd cancels the watch with C{compact_revision}; the
replay would miss deletions (compaction drops tombstones), so the resolver
lists the prefix again instead.

L{EtcdMirror} is the state (the endpoint of each key and the revision),
with no I/O; L{EtcdResolver} drives it with an L{EtcdGateway}.

Gateway details that shape the parsing: keys and values are base64; 64-bit
integers are JSON strings; a PUT event has no C{type} (the enum's default
is left out) and only DELETE is named; a stream reports a failure as a
line with an C{error} object.

An endpoint object that is not valid is logged and ignored: the key keeps
the endpoint it had, as a watched file with an error keeps its last good
set.
"""

from __future__ import annotations

import json
from base64 import b64decode, b64encode
from collections.abc import Callable
from random import Random
from typing import Any

from attrs import frozen
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from ..backoff import backoffPolicy
from ..config import ConfigError, Endpoint, readEndpoint
from ._gateway import EtcdError, EtcdGateway
from ._interfaces import IEndpointSink, IResolver

__all__ = ["Changes", "Compacted", "EtcdMirror", "EtcdResolver", "prefixEnd"]


def prefixEnd(prefix: bytes) -> bytes:
    """
    The C{range_end} that makes a range or watch cover every key starting
    with C{prefix}: the prefix with its last byte plus one (dropping
    trailing C{0xff} bytes first, which cannot be incremented).
    """
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _b64(data: bytes) -> str:
    return b64encode(data).decode("ascii")


@frozen
class Changes:
    """
    What one watch response changed in the endpoint set.
    """

    added: tuple[Endpoint, ...] = ()
    removed: tuple[Endpoint, ...] = ()


class Compacted(Exception):
    """
    etcd cancelled the watch because its start revision was compacted:
    the prefix must be listed again.
    """


class EtcdMirror:
    """
    The endpoints under one prefix, as of one revision; see the module
    docstring.

    @ivar revision: the store revision the mirror reflects; 0 before the
        first listing.
    @ivar byKey: the endpoint of each key.
    """

    def __init__(self, prefix: bytes, source: str, mtls: bool, problem: Callable[[str], None]) -> None:
        """
        @param source: names the cluster in messages.
        @param mtls: whether endpoints may have an identity.
        @param problem: called with a message for each key whose value is
            not a valid endpoint object.
        """
        self._range = {"key": _b64(prefix), "range_end": _b64(prefixEnd(prefix))}
        self._source = source
        self._mtls = mtls
        self._problem = problem
        self.revision = 0
        self.byKey: dict[bytes, Endpoint] = {}

    def rangeRequest(self) -> dict[str, Any]:
        """
        The body of the C{/v3/kv/range} call that lists the prefix.
        """
        return dict(self._range)

    def watchRequest(self) -> dict[str, Any]:
        """
        The body of the C{/v3/watch} call that follows the prefix from the
        revision after the last one seen.
        """
        return {"create_request": {**self._range, "start_revision": str(self.revision + 1)}}

    def listed(self, response: dict[str, Any]) -> tuple[Endpoint, ...]:
        """
        Take a C{/v3/kv/range} response as the whole truth.

        @return: every endpoint now.
        """
        self.revision = int(response["header"]["revision"])
        old, self.byKey = self.byKey, {}
        for kv in response.get("kvs", ()):
            key = b64decode(kv["key"])
            endpoint = self._decode(key, kv) or old.get(key)
            if endpoint is not None:
                self.byKey[key] = endpoint
        return tuple(dict.fromkeys(self.byKey.values()))

    def watched(self, message: dict[str, Any]) -> Changes:
        """
        Apply one line of a watch stream.

        @return: the endpoints it added and removed (none for the stream's
            C{created} line and progress notifications).
        @raise Compacted: if the watch was cancelled for compaction.
        @raise EtcdError: if the line reports an error or a cancellation.
        """
        if "error" in message:
            raise EtcdError(f"the watch failed: {message['error'].get('message', message['error'])}")
        result = message["result"]
        if result.get("canceled"):
            if "compact_revision" in result:
                raise Compacted(f"revision {self.revision + 1} was compacted (now {result['compact_revision']})")
            raise EtcdError(f"etcd cancelled the watch: {result.get('cancel_reason', 'no reason given')}")
        before = dict.fromkeys(self.byKey.values())
        for event in result.get("events", ()):
            kv = event["kv"]
            key = b64decode(kv["key"])
            if event.get("type") == "DELETE":
                self.byKey.pop(key, None)
            else:
                endpoint = self._decode(key, kv)
                if endpoint is not None:
                    self.byKey[key] = endpoint
        self.revision = max(self.revision, int(result["header"]["revision"]))
        after = dict.fromkeys(self.byKey.values())
        return Changes(
            tuple(e for e in after if e not in before),
            tuple(e for e in before if e not in after),
        )

    def _decode(self, key: bytes, kv: dict[str, Any]) -> Endpoint | None:
        """
        The endpoint a key's value describes, or L{None} (with the problem
        reported) if it does not describe one.
        """
        source = f"{self._source} key {key.decode('utf-8', 'replace')}"
        try:
            return readEndpoint(source, json.loads(b64decode(kv.get("value", ""))), self._mtls)
        except ValueError as e:
            self._problem(f"{source}: not JSON: {e}")
        except ConfigError as e:
            self._problem("; ".join(e.errors))
        return None


@implementer(IResolver)
class EtcdResolver:
    """
    Pushes the endpoints under one etcd prefix; see the module docstring.

    @ivar mirror: the L{EtcdMirror}.
    @ivar failures: the failed attempts in a row, for the backoff; reset by
        every watch response.
    @ivar _running: the list-and-watch loop, while started.
    """

    source = "etcd"
    _log = Logger()

    def __init__(self, gateway: EtcdGateway, prefix: str, mtls: bool, clock: IReactorTime, random: Random) -> None:
        self._gateway = gateway
        self._prefix = prefix
        self._clock = clock
        self._backoff = backoffPolicy(random, minimum=0.25, maximum=10.0)
        self.mirror = EtcdMirror(prefix.encode("utf-8"), "etcd", mtls, self._problem)
        self.failures = 0
        self._sink: IEndpointSink | None = None
        self._running: Deferred[None] | None = None

    def start(self, sink: IEndpointSink) -> None:
        self._sink = sink
        self._running = Deferred.fromCoroutine(self._run())

    def stop(self) -> None:
        running, self._running = self._running, None
        if running is not None:
            running.addErrback(lambda failure: failure.trap(CancelledError))
            running.cancel()

    async def _run(self) -> None:
        """
        List, watch, and on every failure wait and watch again (or list
        again, after a compaction), until cancelled.
        """
        listed = False
        while True:
            try:
                if not listed:
                    response = await self._gateway.call("/v3/kv/range", self.mirror.rangeRequest())
                    self._sink.replace(self.mirror.listed(response))
                    listed = True
                    self._log.info(
                        "etcd {prefix}: {count} endpoint(s) at revision {revision}",
                        prefix=self._prefix,
                        count=len(self.mirror.byKey),
                        revision=self.mirror.revision,
                    )
                await self._gateway.watch(self.mirror.watchRequest(), self._received)
            except CancelledError:
                raise
            except Compacted as e:
                self._log.warn("etcd {prefix}: {reason}; listing again", prefix=self._prefix, reason=str(e))
                listed = False
                continue
            except EtcdError as e:
                reason = str(e)
            except Exception as e:
                self._log.failure("Unexpected error following etcd {prefix}", prefix=self._prefix)
                reason = repr(e)
            delay = self._backoff(self.failures)
            self.failures += 1
            self._log.warn(
                "etcd {prefix}: {reason}; {action} in {delay:.2f}s",
                prefix=self._prefix,
                reason=reason,
                action=f"watching again from revision {self.mirror.revision + 1}" if listed else "listing again",
                delay=delay,
            )
            await deferLater(self._clock, delay)

    def _received(self, message: dict[str, Any]) -> None:
        changes = self.mirror.watched(message)
        self.failures = 0
        if changes.removed:
            self._sink.remove(changes.removed)
        if changes.added:
            self._sink.add(changes.added)

    def _problem(self, message: str) -> None:
        self._log.warn("{message}: ignored", message=message)
