# -*- test-case-name: tests.test_discovery -*-
"""
Endpoints from a watched JSON file: a list of endpoint objects with the
keys of a service's C{endpoints} in the configuration.

The file is read again whenever anything changes in its directory (inotify,
where the platform has it) or every half second otherwise.  Watching the
directory rather than the file catches the ways files get replaced: an
editor's or a config-management tool's write-then-rename, and Kubernetes'
swap of a ConfigMap volume's C{..data} symlink, both of which leave a
watch on the old file's inode seeing nothing.  A read that finds the same
bytes as the last one does nothing, so spurious events are cheap.

A file that is missing, unreadable, not JSON or not a valid list keeps the
last good set in use, and the reason is logged once per change of the
file: a half-written file must never empty a service.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.filepath import FilePath
from zope.interface import implementer

from ..config import ConfigError, readEndpoints
from ._interfaces import IEndpointSink, IResolver

__all__ = ["POLL_INTERVAL", "FileResolver", "watchINotify", "watchPolling"]

#: Seconds between two reads of a file that is polled: changes are picked
#: up within a second.
POLL_INTERVAL = 0.5

#: A watch: given the file and what to call when it may have changed, start
#: watching and return what stops it.
Watch = Callable[[FilePath, Callable[[], None]], Callable[[], None]]


def watchPolling(clock: IReactorTime, interval: float = POLL_INTERVAL) -> Watch:
    """
    A watch that calls back every C{interval} seconds: the fallback where
    there is no inotify.
    """

    def watch(path: FilePath, changed: Callable[[], None]) -> Callable[[], None]:
        loop = LoopingCall(changed)
        loop.clock = clock
        loop.start(interval, now=False)
        return loop.stop

    return watch


def watchINotify(reactor) -> Watch | None:
    """
    A watch that calls back on inotify events in the file's directory, or
    L{None} where inotify is not available.
    """
    try:
        from twisted.internet import inotify
    except ImportError:
        return None

    def watch(path: FilePath, changed: Callable[[], None]) -> Callable[[], None]:
        notifier = inotify.INotify(reactor)
        notifier.startReading()
        mask = (
            inotify.IN_CLOSE_WRITE
            | inotify.IN_MOVED_TO
            | inotify.IN_MOVED_FROM
            | inotify.IN_CREATE
            | inotify.IN_DELETE
            | inotify.IN_MODIFY
        )
        notifier.watch(path.parent(), mask, callbacks=[lambda ignored, filepath, mask: changed()])
        return notifier.loseConnection

    return watch


@implementer(IResolver)
class FileResolver:
    """
    Pushes the endpoints listed in one JSON file; see the module docstring.

    @ivar _content: the bytes of the last read, so that a read that finds
        nothing new does nothing; L{None} after a failed read.
    @ivar _reported: the last problem logged, so that a file that stays
        broken is reported once.
    @ivar _stop: stops the watch while running.
    """

    source = "file"
    _log = Logger()

    def __init__(self, path: FilePath, mtls: bool, watch: Watch) -> None:
        """
        @param mtls: whether endpoints may have an identity.
        @param watch: how to learn that the file may have changed:
            L{watchINotify} or L{watchPolling}.
        """
        self._path = path
        self._mtls = mtls
        self._watch = watch
        self._content: bytes | None = None
        self._reported: str | None = None
        self._sink: IEndpointSink | None = None
        self._stop: Callable[[], None] | None = None

    def start(self, sink: IEndpointSink) -> None:
        self._sink = sink
        self._stop = self._watch(self._path, self.check)
        self.check()

    def stop(self) -> None:
        stop, self._stop = self._stop, None
        if stop is not None:
            stop()

    def check(self) -> None:
        """
        Read the file, and push its endpoints if it changed and is valid.
        """
        try:
            content = self._path.getContent()
        except OSError as e:
            self._content = None
            self._problem(f"cannot read it: {e.strerror}")
            return
        if content == self._content:
            return
        self._content = content
        try:
            endpoints = readEndpoints(self._path.path, json.loads(content), self._mtls)
        except ValueError as e:
            self._problem(f"not JSON: {e}")
            return
        except ConfigError as e:
            self._problem(f"not a valid list of endpoints: {'; '.join(e.errors)}")
            return
        self._reported = None
        self._log.info("{path}: {count} endpoint(s)", path=self._path.path, count=len(endpoints))
        self._sink.replace(endpoints)

    def _problem(self, reason: str) -> None:
        if reason != self._reported:
            self._reported = reason
            self._log.warn("{path}: {reason}; the last good endpoints stay in use", path=self._path.path, reason=reason)
