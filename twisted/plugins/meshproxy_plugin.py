"""
The twistd plugins of meshproxy: C{twistd meshproxy}.

L{ServiceMaker} imports L{meshproxy.tap} only when the plugin is used, so
listing plugins (C{twistd --help}) neither imports meshproxy nor installs a
reactor.
"""

from twisted.application.service import ServiceMaker

meshproxy = ServiceMaker(
    "meshproxy",
    "meshproxy.tap",
    "A service-mesh sidecar proxy: protocol detection, mTLS, balancing, metrics.",
    "meshproxy",
)
