"""
The twistd plugins of meshproxy: C{twistd meshproxy} and
C{twistd meshproxy-identity}.

L{ServiceMaker} imports L{meshproxy.tap} (L{meshproxy.identity.tap}) only
when the plugin is used, so listing plugins (C{twistd --help}) neither
imports meshproxy nor installs a reactor.
"""

from twisted.application.service import ServiceMaker

meshproxy = ServiceMaker(
    "meshproxy",
    "meshproxy.tap",
    "A service-mesh sidecar proxy: protocol detection, mTLS, balancing, metrics.",
    "meshproxy",
)

meshproxyIdentity = ServiceMaker(
    "meshproxy-identity",
    "meshproxy.identity.tap",
    "The meshproxy identity issuer: certificates for join tokens and renewals.",
    "meshproxy-identity",
)
