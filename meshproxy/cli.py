# -*- test-case-name: tests.test_cli -*-
"""
The C{meshproxy} command: tools around the proxy that runs under twistd.
"""

import argparse
import sys

from .config import ConfigError, load


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


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="meshproxy",
        description="A service-mesh sidecar proxy. Run the proxy itself with: twistd -n meshproxy --config FILE",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    checking = commands.add_parser("check", help="validate a configuration file")
    checking.add_argument("config", help="the TOML configuration file")
    checking.set_defaults(run=check)
    return top


def main(argv: list[str] | None = None) -> int:
    arguments = parser().parse_args(argv)
    return arguments.run(arguments)


if __name__ == "__main__":
    sys.exit(main())
