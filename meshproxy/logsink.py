# -*- test-case-name: tests.test_logsink -*-
"""
A log destination that never blocks the reactor.

twistd writes each log event to standard output (C{--logfile=-}, or
C{--nodaemon} with no C{--logfile}) from the reactor's thread, with a
blocking C{write}.  When nobody reads the other end (a stalled journald
socket, a pipe into a hung C{logger}, a terminal paused with ^S) the pipe
fills after about 64 KiB and the next C{write} blocks the reactor, and with
it every connection of the proxy.  Any client can make the proxy log (a
malformed request is one line), so any client could stop the proxy once
the log reader stalls.

L{LogSink} is the file twistd writes to instead: C{write} only appends the
text to a L{LogQueue} in memory, and a thread of its own does the blocking
writes.  The queue holds at most L{QUEUE_LIMIT} bytes; past that, events
are dropped and counted (C{log_lines_dropped_total} on C{/metrics}), and
where they went missing the log gets one line saying how many, written
once the reader takes lines again.  A write that fails (C{/dev/full}, a
reader that closed the pipe) loses what it carried, which counts as
dropped too.

L{logThroughSink} installs it where twistd looks for standard output, from
the plugins' C{makeService}: twistd opens its log after making the
service.  A log file named with C{--logfile FILE} is written as twistd
writes it (a regular file's write does not wait for a reader), and so is
syslog.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily
from twisted.logger import LogLevel, formatEventAsClassicLogText

__all__ = ["FLUSH_TIMEOUT", "QUEUE_LIMIT", "DroppedLines", "LogQueue", "LogSink", "logThroughSink"]

#: The most bytes of log waiting for the reader: a few thousand lines, enough
#: for a reader that pauses for a moment, and little memory for one that
#: never comes back.
QUEUE_LIMIT = 256 * 1024

#: How long the process waits at exit for the queued log to be written, in
#: seconds: a reader that has stalled for good must not keep it from exiting.
FLUSH_TIMEOUT = 5.0


class _Gap:
    """
    Where events were dropped, in the queue: written as one notice line.

    @ivar count: the events dropped here.
    @ivar since: when the first of them was dropped, in seconds since the
        epoch.
    """

    __slots__ = ("count", "since")

    def __init__(self, since: float) -> None:
        self.count = 0
        self.since = since

    def notice(self) -> bytes:
        """
        The line that takes the dropped events' place, formatted as twistd
        formats every other line.
        """
        text = formatEventAsClassicLogText(
            {
                "log_format": "{count} log lines dropped: the log reader did not keep up",
                "log_time": self.since,
                "log_namespace": __name__,
                "log_level": LogLevel.warn,
                "count": self.count,
            }
        )
        return text.encode("utf-8")


class LogQueue:
    """
    The log text waiting for the reader, at most C{limit} bytes of it, and
    the count of what did not fit.  Not thread-safe: L{LogSink} locks
    around it.

    @ivar limit: the most bytes held.
    @ivar size: the bytes held.
    @ivar lines: the events held (the notices of gaps aside).
    @ivar dropped: every event dropped since the queue was made.
    @ivar _items: the encoded events and the gaps, oldest first.
    @ivar _now: the current time, for the notices.
    """

    def __init__(self, limit: int = QUEUE_LIMIT, now: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self.size = 0
        self.lines = 0
        self.dropped = 0
        self._items: deque[bytes | _Gap] = deque()
        self._now = now

    def put(self, text: str) -> None:
        """
        Queue one event's text, or drop it if the queue is full.
        """
        data = text.encode("utf-8", "backslashreplace")
        if self.size + len(data) > self.limit:
            self._gap(len(self._items)).count += 1
            self.dropped += 1
            return
        self._items.append(data)
        self.size += len(data)
        self.lines += 1

    def take(self) -> tuple[bytes, int]:
        """
        Empty the queue.

        @return: everything queued, a notice in place of each gap, and the
            number of events in it.
        """
        data = b"".join(item.notice() if isinstance(item, _Gap) else item for item in self._items)
        lines = self.lines
        self._items.clear()
        self.size = self.lines = 0
        return data, lines

    def lost(self, lines: int) -> None:
        """
        C{lines} events taken could not be written: they count as dropped,
        before anything queued since.
        """
        self._gap(0).count += lines
        self.dropped += lines

    def _gap(self, index: int) -> _Gap:
        """
        The gap just before C{index}, a new one unless the item there is
        one already: consecutive drops make a single notice, and the gaps
        are never more than the events queued, one more at most.
        """
        if index > 0 and isinstance(self._items[index - 1], _Gap):
            return self._items[index - 1]
        if index < len(self._items) and isinstance(self._items[index], _Gap):
            return self._items[index]
        gap = _Gap(self._now())
        self._items.insert(index, gap)
        return gap


def _writeAll(fd: int, data: bytes) -> None:
    """
    Write all of C{data} to C{fd}, blocking as long as it takes.
    """
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class LogSink:
    """
    A file for L{twisted.logger.FileLogObserver} whose C{write} never
    blocks: see the module docstring.

    @ivar _fd: the descriptor written to, by the writer thread only.
    @ivar _queue: what waits to be written.
    @ivar _condition: guards L{_queue} and L{_writing}, and wakes the
        writer and whoever waits in L{drain}.
    @ivar _writing: whether the writer thread is in a write.
    """

    def __init__(self, fd: int, limit: int = QUEUE_LIMIT, now: Callable[[], float] = time.time) -> None:
        """
        Start the writer thread.  It is a daemon thread: one blocked for
        good in a write must not keep the process from exiting.

        @param fd: the descriptor to write to; the sink owns it.
        """
        self._fd = fd
        self._queue = LogQueue(limit, now)
        self._condition = threading.Condition()
        self._writing = False
        threading.Thread(target=self._write, name="meshproxy log writer", daemon=True).start()

    @property
    def dropped(self) -> int:
        """
        The events dropped since the sink was made.
        """
        return self._queue.dropped

    def write(self, text: str) -> None:
        """
        Queue C{text} for the writer thread, or drop it if the queue is
        full.
        """
        with self._condition:
            self._queue.put(text)
            self._condition.notify_all()

    def flush(self) -> None:
        """
        Nothing to do: the writer thread writes as soon as it can.
        (L{twisted.logger.FileLogObserver} flushes after every event.)
        """

    def drain(self, timeout: float) -> bool:
        """
        Wait until everything queued has been written, or C{timeout}
        seconds have passed.

        @return: whether everything was written.
        """
        with self._condition:
            return self._condition.wait_for(lambda: not (self._queue.lines or self._writing), timeout)

    def _write(self) -> None:
        """
        The writer thread: write whatever is queued, as one batch, for as
        long as the process runs.  Only events wake it: a notice alone
        waits for the next event, so that a descriptor that fails every
        write is not retried in a loop.
        """
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._queue.lines)
                data, lines = self._queue.take()
                self._writing = True
            try:
                _writeAll(self._fd, data)
            except OSError:
                with self._condition:
                    self._queue.lost(lines)
            with self._condition:
                self._writing = False
                self._condition.notify_all()


class DroppedLines:
    """
    C{log_lines_dropped_total}, read from a L{LogSink} at each scrape.
    """

    def __init__(self, sink: LogSink) -> None:
        self._sink = sink

    def collect(self) -> list[CounterMetricFamily]:
        return [
            CounterMetricFamily(
                "log_lines_dropped",
                "Log events dropped because the log reader did not keep up, or the log could not be written.",
                value=self._sink.dropped,
            )
        ]


def logThroughSink(
    serverOptions: Mapping, registry: CollectorRegistry | None, system=sys, atExit=atexit.register
) -> LogSink | None:
    """
    If twistd is going to log to standard output, make it log to a
    L{LogSink} writing there instead: replace C{sys.stdout}, which twistd
    opens as its log file when it starts logging, after the plugin made
    the service.  At exit, wait up to L{FLUSH_TIMEOUT} for the queued log.

    @param serverOptions: twistd's options (the plugin options' C{parent}).
    @param registry: where to count the dropped events, if anywhere.
    @param system: the L{sys} module, whose C{stdout} is replaced.
    @param atExit: registers a function to run at exit (L{atexit.register}).
    @return: the sink, or L{None} if twistd logs elsewhere.
    """
    if serverOptions.get("syslog") or serverOptions.get("logger") is not None:
        return None
    # A daemon's standard output is /dev/null (twistd refuses "-" for one).
    if not serverOptions.get("nodaemon") or serverOptions.get("logfile") not in (None, "", "-"):
        return None
    system.stdout.flush()
    # A descriptor of its own, written with os.write: sys.stdout's buffer
    # is flushed as the interpreter exits, which would wait on its lock
    # if the writer thread held it in a blocked write.
    sink = LogSink(os.dup(system.stdout.fileno()))
    system.stdout = sink
    atExit(sink.drain, FLUSH_TIMEOUT)
    if registry is not None:
        registry.register(DroppedLines(sink))
    return sink
