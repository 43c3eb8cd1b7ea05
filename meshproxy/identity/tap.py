# -*- test-case-name: tests.test_identity_issuer -*-
"""
The C{twistd meshproxy-identity} command line: options, then the service.
"""

from ..tap import ConfigOptions
from .config import load


class Options(ConfigOptions):
    """
    C{twistd meshproxy-identity --config FILE}.
    """

    command = "meshproxy-identity"
    loader = staticmethod(load)
    optParameters = [
        ["config", "c", "/etc/meshproxy/identity.toml", "The issuer configuration file."],
    ]


def makeService(options):
    """
    Build the issuer from the configuration that L{Options} loaded; the
    global reactor is imported here and only here.
    """
    from twisted.internet import reactor

    from ..systemd import Notifier
    from .service import IssuerService

    return IssuerService(options["loaded"], reactor, notifier=Notifier.fromEnvironment())
