# -*- test-case-name: tests.test_discovery -*-
"""
The endpoints written in the configuration, as a resolver like any other.
"""

from __future__ import annotations

from collections.abc import Iterable

from zope.interface import implementer

from ..config import Endpoint
from ._interfaces import IEndpointSink, IResolver

__all__ = ["StaticResolver"]


@implementer(IResolver)
class StaticResolver:
    """
    Answers once, at start, with a service's C{endpoints}.
    """

    source = "static"

    def __init__(self, endpoints: Iterable[Endpoint]) -> None:
        self._endpoints = tuple(endpoints)

    def start(self, sink: IEndpointSink) -> None:
        sink.replace(self._endpoints)

    def stop(self) -> None:
        pass
