# -*- test-case-name: tests.test_discovery_etcd -*-
"""
A small client of etcd's JSON gateway (C{/v3/...}), with Twisted's
L{Agent}: no gRPC, no thread.

The gateway takes every call as a POST of a JSON body, with keys and
values in base64 and 64-bit integers as JSON strings.  A watch is a POST
whose response never ends: one JSON object a line, for as long as the
connection lasts.

With several member URLs, a call that fails moves to the next one, so a
resolver that retries after a failure tries the members in turn.  With a
username, the client gets a token from C{/v3/auth/authenticate} before its
first call, and again after any failure, since an expired or revoked token
looks like any other refusal.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from io import BytesIO
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.protocols.basic import LineOnlyReceiver
from twisted.web.client import Agent, FileBodyProducer, ResponseDone, readBody
from twisted.web.http_headers import Headers

__all__ = ["EtcdError", "EtcdGateway"]

#: Seconds a call may take, and a watch until its response starts.
CALL_TIMEOUT = 5.0


class EtcdError(Exception):
    """
    A call to etcd failed: no member answered, one refused, or a watch
    stream ended or reported an error.
    """


class _Lines(LineOnlyReceiver):
    """
    Receives a watch response body, handing each line's JSON object on.

    @ivar done: fails when the stream ends, with L{EtcdError} or with what
        the handler raised (which also ends the stream).  Cancelling it
        closes the stream.
    """

    delimiter = b"\n"
    # One line is one watch response, which may carry many events.
    MAX_LENGTH = 64 * 1024 * 1024

    def __init__(self, received: Callable[[dict], None]) -> None:
        self._received = received
        self._error: Exception | None = None
        self.done: Deferred[None] = Deferred(lambda d: self.transport.stopProducing())

    def lineReceived(self, line: bytes) -> None:
        if self._error is not None or not line.strip():
            return
        try:
            self._received(json.loads(line))
        except Exception as e:
            self._error = e
            self.transport.stopProducing()

    def lineLengthExceeded(self, line: bytes) -> None:
        # The body's transport has no loseConnection to call, as the base
        # class does.
        self._error = EtcdError(f"a watch response of more than {self.MAX_LENGTH} bytes")
        self.transport.stopProducing()

    def connectionLost(self, reason) -> None:
        if self.done.called:
            return
        if self._error is not None:
            self.done.errback(self._error)
        elif reason.check(ResponseDone):
            self.done.errback(EtcdError("etcd ended the watch stream"))
        else:
            self.done.errback(EtcdError(f"the watch stream broke: {reason.getErrorMessage()}"))


class EtcdGateway:
    """
    Calls and watches against one etcd cluster; see the module docstring.

    @ivar urls: the members' client URLs, without a trailing slash.
    @ivar _current: the index in L{urls} of the member to use next.
    @ivar _token: the auth token, while it is believed valid.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        urls: Sequence[str],
        username: str | None = None,
        password: str | None = None,
        agent: Agent | None = None,
    ) -> None:
        self.urls = list(urls)
        self._reactor = reactor
        self._username = username
        self._password = password
        self._agent = Agent(reactor) if agent is None else agent
        self._current = 0
        self._token: str | None = None

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """
        POST C{body} to C{path} (such as C{/v3/kv/range}) and decode the
        answer.

        @raise EtcdError: if the call failed.
        """
        response = await self._post(path, body)
        try:
            return json.loads(await readBody(response))
        except ValueError as e:
            raise EtcdError(f"{path}: not JSON: {e}") from None

    async def watch(self, body: dict[str, Any], received: Callable[[dict], None]) -> None:
        """
        POST a watch request and hand every JSON object of the stream to
        C{received} until the stream ends.  If C{received} raises, the
        stream is closed and the exception raised here.

        @raise EtcdError: when the stream ends (it never ends well).
        """
        response = await self._post("/v3/watch", body)
        lines = _Lines(received)
        response.deliverBody(lines)
        await lines.done

    async def _post(self, path: str, body: dict[str, Any]):
        url = self.urls[self._current]
        try:
            if self._username is not None and self._token is None:
                response = await self._request(url, "/v3/auth/authenticate", {"name": self._username, "password": self._password})
                self._token = json.loads(await readBody(response))["token"]
            return await self._request(url, path, body)
        except CancelledError:
            raise
        except Exception as e:
            self._token = None
            self._current = (self._current + 1) % len(self.urls)
            if isinstance(e, EtcdError):
                raise
            raise EtcdError(f"{url}{path}: {e.__class__.__name__}: {e}") from None

    async def _request(self, url: str, path: str, body: dict[str, Any]):
        headers = Headers({b"content-type": [b"application/json"]})
        if self._token is not None and path != "/v3/auth/authenticate":
            headers.addRawHeader(b"authorization", self._token.encode())
        producer = FileBodyProducer(BytesIO(json.dumps(body).encode()))
        request = self._agent.request(b"POST", (url + path).encode(), headers, producer)
        request.addTimeout(CALL_TIMEOUT, self._reactor)
        response = await request
        if response.code != 200:
            text = (await readBody(response)).decode("utf-8", "replace")
            raise EtcdError(f"{url}{path}: HTTP {response.code}: {_message(text)}")
        return response


def _message(text: str) -> str:
    """
    The message of a gateway error body, or the body itself.
    """
    try:
        return json.loads(text).get("message") or text
    except (ValueError, AttributeError):
        return text
