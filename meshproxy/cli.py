# -*- test-case-name: tests.test_cli -*-
"""
The C{meshproxy} command: tools around the proxy that runs under twistd.
"""

import argparse
import sys
import time

from twisted.python.filepath import FilePath

from .config import ConfigError, load, parseDuration
from .demo import demo as runDemo
from .identity.ca import CAError, CertificateAuthority, initialize
from .identity.tokens import mintToken
from .top import top as runTop


def check(arguments: argparse.Namespace) -> int:
    """
    C{meshproxy check CONFIG}: every problem of a configuration file, one a
    line on standard error and exit status 1; or a one-line summary and 0.
    """
    try:
        config = load(arguments.config)
    except ConfigError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        print(f"{len(e.errors)} problem(s) found", file=sys.stderr)
        return 1
    endpoints = sum(len(s.endpoints) for s in config.services.values())
    print(
        f"{config.path.path}: ok: {len(config.inbound)} inbound listener(s), "
        f"{len(config.upstreams)} upstream listener(s), "
        f"{len(config.services)} service(s) with {endpoints} endpoint(s), "
        f"admin on {config.admin.listen}"
    )
    return 0


def caInit(arguments: argparse.Namespace) -> int:
    """
    C{meshproxy ca init DIR}: make a new CA, and say what to do with it.
    """
    directory = FilePath(arguments.directory)
    try:
        authority = initialize(directory, arguments.trust_domain, time.time())
    except CAError as e:
        print(f"meshproxy ca init: {e}", file=sys.stderr)
        return 1
    print(
        f"{directory.path}: a new CA for the trust domain {authority.trustDomain}.\n"
        f"Give {directory.child('ca.pem').path} to every proxy as its trust_anchors; "
        f"the issuer's identity is {authority.issuerIdentity}.\n"
        f"The issuer never reads {directory.child('root.key').path}: keep it offline."
    )
    return 0


def caToken(arguments: argparse.Namespace) -> int:
    """
    C{meshproxy ca token IDENTITY --ca DIR}: print a join token, and only
    the token, on standard output, so it can be redirected to a file.
    """
    try:
        authority = CertificateAuthority.load(FilePath(arguments.ca))
        authority.checkIdentity(arguments.identity)
        token = mintToken(authority.tokenKey, arguments.identity, time.time(), arguments.ttl)
    except (CAError, ValueError) as e:
        print(f"meshproxy ca token: {e}", file=sys.stderr)
        return 1
    print(token)
    return 0


def _duration(text: str) -> float:
    try:
        return parseDuration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="meshproxy",
        description="A service-mesh sidecar proxy. Run the proxy itself with: twistd -n meshproxy --config FILE",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    checking = commands.add_parser("check", help="validate a configuration file")
    checking.add_argument("config", help="the TOML configuration file")
    checking.set_defaults(run=check)
    ca = commands.add_parser("ca", help="the mesh's certificate authority")
    caCommands = ca.add_subparsers(dest="caCommand", required=True, metavar="COMMAND")
    initializing = caCommands.add_parser("init", help="make a new CA directory")
    initializing.add_argument("directory", help="the directory to make it in (created if missing)")
    initializing.add_argument(
        "--trust-domain", default="mesh.local", help="the DNS suffix of every identity (default: %(default)s)"
    )
    initializing.set_defaults(run=caInit)
    minting = caCommands.add_parser("token", help="print a join token for one identity")
    minting.add_argument("identity", help="the identity the token grants, a DNS name in the trust domain")
    minting.add_argument("--ca", required=True, help="the CA directory")
    minting.add_argument(
        "--ttl", type=_duration, default=3600.0, help="how long the token is valid, e.g. 10m, 1h (default: 1h)"
    )
    minting.set_defaults(run=caToken)
    watching = commands.add_parser("top", help="a live per-endpoint view of a running proxy")
    watching.add_argument("--admin", required=True, metavar="HOST:PORT", help="the proxy's admin listener")
    watching.add_argument(
        "--interval", type=_positive, default=1.0, help="seconds between scrapes (default: %(default)s)"
    )
    watching.add_argument("--once", action="store_true", help="print one table, over one interval, and exit")
    watching.set_defaults(run=runTop)
    demonstrating = commands.add_parser("demo", help="run a whole mesh on 127.0.0.1 and watch it balance")
    demonstrating.add_argument("--duration", type=_positive, help="stop after this many seconds (default: at Ctrl-C)")
    demonstrating.add_argument(
        "--rate", type=_positive, default=100.0, help="requests per second sent through the mesh (default: %(default)s)"
    )
    demonstrating.set_defaults(run=runDemo)
    return top


def main(argv: list[str] | None = None) -> int:
    arguments = parser().parse_args(argv)
    return arguments.run(arguments)


if __name__ == "__main__":
    sys.exit(main())
