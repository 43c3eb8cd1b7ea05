# -*- test-case-name: tests.test_http_server -*-
"""
One request and its response, whatever the client and the endpoint speak.

L{Exchange} is what an HTTP/1 connection (L{meshproxy.http.server}, one
exchange at a time) and an HTTP/2 stream (L{meshproxy.http.h2server}) share:
the route, the balancer's pick, the connection attempts and their retries,
the choice of upstream, the response timeout, the loss of an upstream, the
metrics.  What differs, reading the request and writing the response, is
the subclass's.

The upstream is chosen per request, once the endpoint is known:

  - a request that arrived as HTTP/2 (version C{b"2"}) stays HTTP/2 all the
    way, over the endpoint's multiplexed connection (mTLS to a meshed
    endpoint, h2c to an application);
  - an HTTP/1 request to a meshed endpoint of a route that upgrades
    travels as HTTP/2 too, marked with C{meshproxy-orig-proto}, unless it
    asks to leave HTTP (C{Upgrade}, C{CONNECT}): those need a connection of
    their own, which becomes a tunnel;
  - every other request goes over HTTP/1.1, on a pooled connection.

An upstream (L{meshproxy.http.client.UpstreamConnection}, or a stream of
L{meshproxy.http.h2client.H2ClientConnection}) takes the request with
C{attach}, its body with C{sendData} and C{sendEnd}, and gives the response
back by calling the exchange's C{responseEvents} handlers, indexed by the
event kinds of L{meshproxy.http.h1}, and C{upstreamThrottled} and
C{upstreamLost}.  C{pauseReading} and C{resumeReading} hold its response
back while the client cannot take more; C{finish} and C{abandon} end its
part.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionRefusedError
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..limits import REQUEST_BODY
from .h1 import ProtocolError, RequestHead, ResponseHead

__all__ = ["CLIENT_FULL", "CLIENT_ID", "CONNECTING", "Exchange", "THROTTLED"]

#: The header carrying the verified identity of an inbound mTLS client.
CLIENT_ID = b"meshproxy-client-id"

# Why the request body is held back from the exchange (bits of _setPaused):
# the protocol stops reading (HTTP/1) or acknowledging (HTTP/2) until none
# is left.
THROTTLED = 2  # the upstream cannot take more body yet
CONNECTING = 4  # body arrived before there was an upstream to send it to

# Why the upstream's response is held back (bits of _responsePaused).
CLIENT_FULL = 1  # the client's transport buffer is full

_NOTHING = frozenset()


class Exchange:
    """
    The protocol-independent state and steps of one exchange.

    A subclass provides C{responseEvents} and the handlers in it,
    C{_respondError(status, reason)}, C{_exchangeDone()},
    C{_setPaused(reason, paused)}, C{_cutShort()} (a response that started
    cannot be completed) and C{_watch(timeout)} (call L{_checkDeadline} at
    C{_deadline} or after).

    @ivar _context: the listener's L{meshproxy.http.server.ServerContext}.
    @ivar _responsePaused: why the upstream's response is held back
        (C{CLIENT_FULL} ...); outlives an exchange on an HTTP/1 connection.

    State of the exchange in progress, reset by L{_reset}:

    @ivar _head: the request, or L{None} between requests.
    @ivar _route: its route.
    @ivar _metrics: the HTTP metrics it is counted in, once counted.
    @ivar _target: the request target to send (origin form).
    @ivar _headers: the fields to send.
    @ivar _trailers: request trailers that came before there was an
        upstream.
    @ivar _pending: body pieces received before there was an upstream.
    @ivar _pick: the balancer's pick, until told how the exchange went.
    @ivar _tried: endpoints a connection attempt failed on.
    @ivar _error: why the last connection attempt failed.
    @ivar _connecting: the L{Deferred} of a wait for an endpoint or of a
        connection attempt.
    @ivar _upstream: the upstream the request went to.
    @ivar _reused: whether it was there before the request (a pooled
        connection, a stream of an open HTTP/2 connection).
    @ivar _bodySent: whether any body byte went to the upstream.
    @ivar _retried: whether the request was already retried.
    @ivar _requestDone: whether the whole request was read.
    @ivar _status: the status of the final response, 0 before its head.
    @ivar _keepUpstream: whether the endpoint keeps its connection open.
    @ivar _untilClose: whether the response body ends when the endpoint
        closes the connection.
    @ivar _closeAfter: whether the client's HTTP/1 connection closes after
        the response.
    @ivar _deadline: when the endpoint must have started its response, or
        0 when no response is awaited.
    @ivar _started: when the request head arrived.
    @ivar _bodyLeft: one more than the request body bytes still allowed
        by C{[proxy] max_request_body}, or 0 when there is no cap.
    @ivar _admitted: whether the exchange counts against C{[proxy]
        max_requests}; it stops counting when it ends or is abandoned.
    """

    _log = Logger()
    _responsePaused = 0
    _admitted = False

    def _reset(self) -> None:
        if self._admitted:
            self._release()
        self._head: RequestHead | None = None
        self._route = None
        self._metrics = None
        self._target = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._trailers = None
        self._pending: list[bytes] | None = None
        self._pick = None
        self._tried = _NOTHING
        self._error = ""
        self._connecting = None
        self._upstream = None
        self._reused = False
        self._bodySent = False
        self._retried = False
        self._requestDone = False
        self._status = 0
        self._keepUpstream = False
        self._untilClose = False
        self._closeAfter = False
        self._deadline = 0.0
        self._started = 0.0
        self._bodyLeft = 0

    # The request.

    def _routeTo(self, authority: bytes | None) -> bool:
        """
        Find the route of C{authority} and count the request there.

        @return: whether there is one; if not, the request was answered
            with 404.
        """
        route = self._route = self._context.router.route(authority)
        if route is None:
            self._respondError(404, f"no service for authority {(authority or b'').decode('latin-1')!r}")
            return False
        metrics = self._metrics = route.metrics
        metrics.request()
        if not self._context.limits.requestBegan():
            self._respondError(503, "too many requests in progress")
            return False
        self._admitted = True
        return True

    def _release(self) -> None:
        """
        The exchange no longer counts against C{[proxy] max_requests}.
        """
        self._admitted = False
        self._context.limits.requestEnded()

    def _forward(self, target: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """
        Send the routed request on, as C{target} with C{headers}.

        On the inbound side C{meshproxy-client-id} is the proxy's to say:
        a client's own is dropped, and the identity the client proved over
        mTLS, if any, is set.
        """
        context = self._context
        if context.direction == "inbound":
            headers = [field for field in headers if field[0].lower() != CLIENT_ID]
            if context.clientId:
                headers.append((CLIENT_ID, context.clientId.encode()))
        self._target = target
        self._headers = headers
        limit = context.limits.maxRequestBody
        if limit:
            length = self._head.contentLength
            if length is not None and length > limit:
                self._bodyTooLarge()
                return
            # One more than the cap, so that reaching zero means over it.
            self._bodyLeft = limit + 1
        self._dispatch(False)

    def _bodyTooLarge(self) -> None:
        """
        Refuse a request whose body is over C{[proxy] max_request_body}:
        413 if no response began (the client's connection closes, as the
        rest of the body is not read), else the response is cut short.
        """
        self._context.limits.refused(REQUEST_BODY)
        self._abandon(True)
        if self._status:
            self._cutShort()
            return
        self._closeAfter = True
        self._respondError(413, "request body too large")

    def _requestData(self, data: bytes) -> None:
        if self._bodyLeft:
            self._bodyLeft -= len(data)
            if self._bodyLeft <= 0:
                self._bodyLeft = 0
                self._bodyTooLarge()
                return
        upstream = self._upstream
        if upstream is None:
            if self._pending is None:
                self._pending = []
            self._pending.append(data)
            self._setPaused(CONNECTING, True)
        else:
            upstream.sendData(data)
            self._bodySent = True

    def _requestEnd(self, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        self._requestDone = True
        upstream = self._upstream
        if upstream is None:
            self._trailers = trailers
        else:
            upstream.sendEnd(trailers)
            self._awaitResponse()

    # Endpoints.

    def _dispatch(self, fresh: bool) -> None:
        """
        Pick an endpoint and send the request on an upstream to it, reused
        or new.  With no usable endpoint the request waits, up to the
        failfast time, in the route's L{Waiter}; after a failed connection
        attempt it does not: the error is the answer.

        @param fresh: whether a new connection is required (a retry, a
            C{CONNECT}).
        """
        route = self._route
        pick = route.balancer.pick(self._tried)
        if pick is not None:
            self._send(pick, fresh)
        elif self._tried:
            self._respondError(502, self._error)
        else:
            waiting = self._connecting = route.waiter.pick()
            waiting.addCallbacks(self._picked, self._notPicked, (fresh,))

    def _picked(self, pick, fresh: bool) -> None:
        self._connecting = None
        self._send(pick, fresh)

    def _notPicked(self, reason: Failure) -> None:
        self._connecting = None
        if not reason.check(CancelledError):
            # NoEndpointsReady: "no endpoints ready".
            self._respondError(503, str(reason.value))

    def _send(self, pick, fresh: bool) -> None:
        """
        Send the request to C{pick}'s endpoint, over HTTP/2 or HTTP/1.1
        (see the module docstring).
        """
        self._pick = pick
        endpoint = pick.endpoint
        context = self._context
        head = self._head
        if head.version == b"2" or (
            endpoint.identity is not None and self._route.upgrade and head.upgrade is None and head.method != b"CONNECT"
        ):
            pool = context.h2
        else:
            pool = context.pool
        if not fresh:
            upstream = pool.idle(endpoint)
            if upstream is not None:
                self._attach(upstream, True)
                return
        # Endpoints with an identity are reached over mTLS (see
        # meshproxy.endpoint.MeshConnector); others carry what the client
        # sent.
        metrics = context.metrics.tcp(
            context.direction,
            "dst",
            self._route.service,
            "true" if endpoint.identity else context.tls,
            "",
            endpoint.identity or "",
        )
        self._connecting = pool.connect(endpoint, metrics)
        self._connecting.addCallbacks(self._connected, self._connectFailed)

    def _connected(self, upstream) -> None:
        self._connecting = None
        self._setPaused(CONNECTING, False)
        self._attach(upstream, False)

    def _connectFailed(self, reason: Failure) -> None:
        self._connecting = None
        pick, self._pick = self._pick, None
        if pick is None:
            # Cancelled by _abandon, which settled the pick.
            return
        pick.finished(False, reason.check(ConnectionRefusedError) is not None)
        self._tried = self._tried | {pick.endpoint}
        self._error = f"connect to {pick.endpoint.address}: {reason.getErrorMessage()}"
        if len(self._tried) < self._context.attempts:
            self._dispatch(True)
        else:
            self._respondError(502, self._error)

    def _attach(self, upstream, reused: bool) -> None:
        """
        Hand the request to C{upstream}: its head, the body that came
        meanwhile, and its end if it came too.
        """
        self._upstream = upstream
        self._reused = reused
        pending, self._pending = self._pending, None
        done = self._requestDone
        end = done and not pending and self._trailers is None
        upstream.attach(self, self._head, self._target, self._headers, end)
        if pending:
            for data in pending:
                upstream.sendData(data)
            self._bodySent = True
        if done and not end:
            upstream.sendEnd(self._trailers)
        if self._responsePaused:
            upstream.pauseReading()
        if done:
            self._awaitResponse()

    def _awaitResponse(self) -> None:
        """
        The whole request went upstream: start the response timeout.
        """
        timeout = self._context.responseTimeout
        if timeout and not self._status:
            self._deadline = self._context.clock.seconds() + timeout
            self._watch(timeout)

    def _checkDeadline(self) -> float:
        """
        Answer 504 if the response deadline passed.

        @return: seconds left until the deadline, if one is still ahead;
            else 0.
        """
        deadline = self._deadline
        if not deadline:
            return 0.0
        left = deadline - self._context.clock.seconds()
        if left > 0:
            return left
        timeout = self._context.responseTimeout
        self._log.info("No response from {endpoint} within {timeout}s", endpoint=str(self._pick.endpoint.address), timeout=timeout)
        self._abandon(False)
        self._respondError(504, f"no response within {timeout:g}s")
        return 0.0

    def _abandon(self, success: bool) -> None:
        """
        Drop the exchange's wait, connection attempt or upstream, and settle
        the pick.

        @param success: what the balancer is told: C{True} when the client,
            not the endpoint, ended the exchange.
        """
        self._deadline = 0.0
        if self._admitted:
            self._release()
        pick, self._pick = self._pick, None
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            upstream.abandon()
        if pick is not None:
            pick.finished(success)

    # Responses, called by the upstream.

    def upstreamThrottled(self, throttled: bool) -> None:
        self._setPaused(THROTTLED, throttled)

    def _responseStarted(self, head: ResponseHead) -> None:
        """
        The final response's head came: the balancer hears of its latency.
        """
        self._deadline = 0.0
        self._pick.responded()
        self._status = head.status
        self._keepUpstream = head.keepAlive
        self._untilClose = head.contentLength is None and not head.chunked

    def _pauseResponse(self, reason: int, paused: bool) -> None:
        """
        Hold the upstream's response back, or let it come again, for
        C{reason}.
        """
        before = self._responsePaused
        after = before | reason if paused else before & ~reason
        self._responsePaused = after
        upstream = self._upstream
        if upstream is not None and bool(before) != bool(after):
            if after:
                upstream.pauseReading()
            else:
                upstream.resumeReading()

    def _responseComplete(self) -> None:
        """
        The response went to the client whole: give the upstream back and
        count the exchange.
        """
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            keep = self._keepUpstream and self._requestDone
            if keep and self._responsePaused:
                upstream.resumeReading()
            upstream.finish(keep)
        pick, self._pick = self._pick, None
        pick.finished(True)
        self._account(self._status)
        self._exchangeDone()

    def responseFailed(self, error: ProtocolError) -> None:
        """
        The endpoint's response cannot be forwarded.
        """
        self._log.info(
            "Bad response from {endpoint}: {reason}", endpoint=str(self._pick.endpoint.address), reason=error.reason
        )
        status = self._status
        self._abandon(False)
        if status:
            self._cutShort()
        else:
            self._closeAfter = True
            self._respondError(502, f"bad response: {error.reason}")

    def upstreamLost(self, reason: Failure) -> None:
        """
        The upstream ended during the exchange.

        A response running to the close ends here.  A request that met a
        reused upstream ending before it sent any body and before any
        response byte is sent again, once, on a new one: that is an
        application closing an idle connection as the request was written
        (or an HTTP/2 peer refusing the stream), which the request must not
        pay for.
        """
        self._upstream = None
        self._deadline = 0.0
        status = self._status
        if status and self._untilClose:
            self.responseEnd(None)
        elif status:
            # The response was cut short: the client must see the
            # truncation.
            self._abandon(False)
            self._cutShort()
        elif self._reused and not self._bodySent and not self._retried:
            self._retried = True
            pick, self._pick = self._pick, None
            pick.finished(True)
            self._dispatch(True)
        else:
            self._abandon(False)
            self._respondError(502, f"connection closed by {self._route.service} endpoint")

    def _responseHandlers(self) -> tuple:
        """
        The handlers of response events, by event kind, for the upstream:
        its C{responseEvents}, bound once per exchange (per connection for
        HTTP/1), so that an event costs no lookup.
        """
        return (
            self.responseHead,
            self.responseData,
            self.responseEnd,
            self.responseUpgraded,
            self.responseInformational,
            self.responseFailed,
        )

    # Accounting.

    def _account(self, status: int) -> None:
        self._metrics.responded(status, (self._context.clock.seconds() - self._started) * 1000)

    def _accountError(self, status: int) -> None:
        """
        Count a response the proxy made itself, under the route's metrics
        or, for a request refused before it was routed, the listener's.
        """
        if self._metrics is None:
            self._metrics = self._context.unrouted
            self._metrics.request()
        self._account(status)
