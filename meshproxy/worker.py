# -*- test-case-name: tests.test_workers -*-
"""
The entry point of one worker process of C{[proxy] workers = N} (see
L{meshproxy.workers}).

Its own module, which imports nothing at the top, because Twisted's
C{systemd:} endpoint parser reads C{LISTEN_FDS} once, when
L{twisted.internet.endpoints} is first imported: the environment must name
the inherited sockets before that.
"""

import os
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] = sys.argv[1:]) -> None:
    """
    A worker: C{python -m meshproxy.worker CONFIG ADMIN DOMAIN...}, run by
    L{meshproxy.workers.WorkerPool} with the listening sockets on descriptors 3 and up.
    """
    path, admin, *domains = argv
    # The inherited sockets, announced the way systemd announces them, for
    # the systemd: endpoint parser, which reads them when it is imported.
    # (Twisted wants as many names as descriptors, as systemd 227 and later
    # always gives.)
    os.environ.update(
        LISTEN_PID=str(os.getpid()),
        LISTEN_FDS=str(len(domains)),
        LISTEN_FDNAMES=":".join(f"listener{index}" for index in range(len(domains))),
    )

    from prometheus_client import disable_created_metrics
    from twisted.internet import reactor
    from twisted.logger import FileLogObserver, eventAsText, globalLogBeginner

    from .config import load
    from .service import ProxyService
    from .tap import reloadOnHangup
    from .workers import workerConfig

    # One line per event on standard output; the parent adds the time and
    # the worker's number.
    globalLogBeginner.beginLoggingTo(
        [FileLogObserver(sys.stdout, lambda event: eventAsText(event, includeTimestamp=False) + "\n")],
        redirectStandardIO=False,
    )
    disable_created_metrics()
    service = ProxyService(workerConfig(load(path), domains, admin), reactor)
    reloadOnHangup(service, reactor)
    service.privilegedStartService()
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()


if __name__ == "__main__":
    main()
