# -*- test-case-name: tests.test_integration -*-
"""
The C{twistd meshproxy} command line: options, then the service tree.
"""

import signal
import sys

from twisted.python import usage

from .config import ConfigError, load


class ConfigOptions(usage.Options):
    """
    The options of a twistd plugin whose whole configuration is one file:
    C{--config FILE}, loaded and checked while the options are parsed.

    A bad configuration ends the process with exit status 1 and one line per
    problem on standard error.  (twistd reports a L{usage.UsageError} with
    its whole help text and exit status 0, which a supervisor would take
    for a clean stop.)

    @cvar command: the command name, for messages.
    @cvar loader: reads and checks the file; raises L{ConfigError}.
    """

    command = "meshproxy"
    loader = staticmethod(load)
    optParameters = [
        ["config", "c", "/etc/meshproxy/meshproxy.toml", "The configuration file."],
    ]

    def postOptions(self) -> None:
        try:
            self["loaded"] = self.loader(self["config"])
        except ConfigError as e:
            self.refuse(e)

    def refuse(self, error: ConfigError) -> None:
        """
        End the process over a configuration problem, found while reading
        the file or while building the service from it (a certificate file
        that does not hold a certificate, say).
        """
        sys.exit(f"{self.command}: the configuration is not valid:\n{error}")


Options = ConfigOptions


def makeService(options):
    """
    Build the proxy from the configuration that L{Options} loaded.

    The global reactor is imported here and only here: everything below
    takes it as a parameter.
    """
    from prometheus_client import disable_created_metrics
    from twisted.internet import reactor

    from .service import ProxyService
    from .systemd import Notifier

    # linkerd has no "_created" series, and they double the counters' series.
    disable_created_metrics()

    config = options["loaded"]
    try:
        if config.proxy.workers > 1:
            # The parent of N reactor processes sharing the listeners.
            from .workers import WorkerPool

            service = WorkerPool(config, reactor, notifier=Notifier.fromEnvironment())
        else:
            service = ProxyService(config, reactor, notifier=Notifier.fromEnvironment())
    except ConfigError as e:
        options.refuse(e)
    reloadOnHangup(service, reactor)
    return service


def reloadOnHangup(service, reactor, install=signal.signal) -> None:
    """
    Reload C{service}'s configuration file on SIGHUP, as daemons do
    (C{systemctl reload}, C{kill -HUP}).

    Python runs a signal handler between two bytecodes of whatever the
    main thread is doing, the reactor included: the handler only asks the
    reactor to reload at its next turn (C{callFromThread} is safe from
    anywhere, and wakes it), as Twisted's own SIGINT handler asks it to
    stop.

    @param service: the L{meshproxy.service.ProxyService}.
    @param install: installs a signal handler (L{signal.signal}).
    """
    install(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(service.reloadFile))
