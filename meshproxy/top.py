# -*- test-case-name: tests.test_top -*-
"""
C{meshproxy top --admin HOST:PORT}: a live table of what one running proxy
does, read from its admin C{/metrics}.

Two sections: the HTTP routes (requests per second, success rate, median
and 99th percentile latency, from linkerd's C{request_total},
C{response_total} and C{response_latency_ms}), and the endpoints of each
balanced service (share of the service's traffic, requests per second,
success rate, requests in flight, peak-EWMA round-trip time and ejection,
from the C{balancer_endpoint_*} metrics).  Rates need two scrapes, so each
table covers the interval since the previous one.

A plain terminal is enough: on a TTY each table replaces the previous one
with two ANSI control sequences (home, clear), elsewhere (a pipe, a log)
the tables follow each other.  C{--once} prints one table and exits, for
scripts.
"""

from __future__ import annotations

import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import TextIO

from .stats import Scrape, Table, compare

__all__ = ["render", "show", "watch"]

#: Move the cursor home and clear the screen: redraw in place on a TTY.
_REDRAW = "\x1b[H\x1b[2J"

#: How long a scrape may take before C{top} gives up, in seconds.
_TIMEOUT = 5.0


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.1f}%"


def _milliseconds(value: float | None) -> str:
    """
    A latency in milliseconds, with a decimal where it matters.
    """
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value / 1000:.2f}s"
    return f"{value:.1f}ms" if value < 10 else f"{value:.0f}ms"


def _grid(header: Sequence[str], rows: Sequence[Sequence[str]], left: int) -> list[str]:
    """
    Lay out cells in columns as wide as their widest cell: the first
    C{left} columns (names) aligned left, the others (figures) right.
    """
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    lines = []
    for row in (header, *rows):
        cells = [
            cell.ljust(width) if i < left else cell.rjust(width) for i, (cell, width) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def render(table: Table, title: str, names: Mapping[str, str] = {}) -> str:
    """
    The table as fixed-width text.

    @param title: the first line, naming the proxy.
    @param names: how to show some endpoints, by address: the demo names
        its instances.
    """
    lines = [f"{title}    interval {table.seconds:.1f}s", ""]
    if table.routes:
        lines += _grid(
            ("DIRECTION", "AUTHORITY", "TLS", "RPS", "SUCCESS", "P50", "P99"),
            [
                (
                    row.direction,
                    row.authority or "-",
                    row.tls,
                    f"{row.rps:.1f}",
                    _percent(row.success),
                    _milliseconds(row.p50),
                    _milliseconds(row.p99),
                )
                for row in table.routes
            ],
            3,
        )
        lines.append("")
    if table.endpoints:
        lines += _grid(
            ("SERVICE", "ENDPOINT", "SHARE", "RPS", "SUCCESS", "IN-FLIGHT", "EWMA", "EJECTED"),
            [
                (
                    row.service,
                    names.get(row.endpoint, row.endpoint),
                    _percent(row.share),
                    f"{row.rps:.1f}",
                    _percent(row.success),
                    str(row.inFlight),
                    _milliseconds(row.rtt * 1000),
                    "yes" if row.ejected else "no",
                )
                for row in sorted(table.endpoints, key=lambda row: (row.service, names.get(row.endpoint, row.endpoint)))
            ],
            2,
        )
    if not (table.routes or table.endpoints):
        lines.append("no HTTP routes and no balanced services yet")
    return "\n".join(lines)


def show(out: TextIO, text: str) -> None:
    """
    Write one table: in place of the previous one on a terminal, after it
    otherwise.
    """
    if out.isatty():
        out.write(_REDRAW + text + "\n")
    else:
        out.write(text + "\n\n")
    out.flush()


def watch(
    fetch: Callable[[], str],
    title: str,
    interval: float,
    once: bool,
    out: TextIO,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """
    Scrape every C{interval} seconds and show the table of each interval,
    for ever or, if C{once}, for the first interval only.

    @param fetch: returns the text of C{/metrics}.
    """
    before, then = Scrape.parse(fetch()), clock()
    while True:
        sleep(interval)
        after, now = Scrape.parse(fetch()), clock()
        text = render(compare(before, after, now - then), title)
        if once:
            out.write(text + "\n")
            return
        show(out, text)
        before, then = after, now


def _fetcher(url: str) -> Callable[[], str]:
    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=_TIMEOUT) as response:
            return response.read().decode()

    return fetch


def top(arguments, out: TextIO = sys.stdout) -> int:
    """
    C{meshproxy top}: watch one proxy until interrupted, or print one
    table with C{--once}.  A proxy that cannot be reached or answers with
    something other than metrics is an error, exit status 1.
    """
    url = f"http://{arguments.admin}/metrics"
    try:
        watch(_fetcher(url), f"meshproxy top {arguments.admin}", arguments.interval, arguments.once, out)
    except KeyboardInterrupt:
        pass
    except (OSError, ValueError) as e:
        print(f"meshproxy top: {url}: {e}", file=sys.stderr)
        return 1
    return 0
