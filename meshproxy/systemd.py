# -*- test-case-name: tests.test_systemd -*-
"""
Tell systemd how the proxy is doing (C{sd_notify}), so that a
C{Type=notify} unit is "started" only once the proxy is ready, and
"stopping" while it drains.

Twisted has socket activation (the C{systemd:} endpoint strings) but no
notification, and the protocol is one datagram per state change on the
UNIX socket named by C{$NOTIFY_SOCKET}; this module speaks it with the
standard library rather than pull in libsystemd.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger

from .readiness import Readiness

__all__ = ["Notifier", "NotifyService"]


class Notifier:
    """
    Sends state datagrams to the service manager.

    @ivar address: the socket address, with a leading NUL for an abstract
        socket (written C{@name} in C{$NOTIFY_SOCKET}).
    """

    _log = Logger()

    def __init__(self, address: str | bytes) -> None:
        self.address = address

    @classmethod
    def fromEnvironment(cls, environ: Mapping[str, str] | None = None) -> Notifier | None:
        """
        The notifier C{$NOTIFY_SOCKET} asks for, or L{None} when the proxy
        does not run under a service manager that wants notifications.
        """
        path = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
        if not path:
            return None
        if path.startswith("@"):
            return cls("\0" + path[1:])
        return cls(path)

    def notify(self, state: str) -> bool:
        """
        Send one state, such as C{"READY=1"}.

        A manager that has gone away must not take the proxy down with it:
        a failure is logged and reported, never raised.

        @return: whether the datagram was sent.
        """
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(state.encode(), self.address)
        except OSError as e:
            self._log.warn("Could not notify the service manager of {state}: {error}", state=state, error=e)
            return False
        return True


class NotifyService(Service):
    """
    C{READY=1} once everything the proxy waits for is ready, C{STOPPING=1}
    when it begins to stop.

    @ivar _waiting: the readiness wait, while the proxy is not ready yet.
    """

    def __init__(self, notifier: Notifier, readiness: Readiness) -> None:
        self._notifier = notifier
        self._readiness = readiness
        self._waiting: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self._waiting = waiting = self._readiness.whenReady()
        waiting.addCallback(self._ready)
        # Stopping before ready cancels the wait: that is not an error.
        waiting.addErrback(lambda f: f.trap(CancelledError))

    def _ready(self, _: None) -> None:
        self._waiting = None
        self._notifier.notify("READY=1")

    def stopService(self) -> None:
        super().stopService()
        if self._waiting is not None:
            self._waiting.cancel()
        self._notifier.notify("STOPPING=1")
