"""
Workload identity: the certificate authority, join tokens and the issuer
service that turns a join token (or a still-valid certificate) and a
certificate signing request into a short-lived certificate.

  - L{meshproxy.identity.ca}: C{meshproxy ca init} and the loaded authority
    that signs leaf certificates.
  - L{meshproxy.identity.tokens}: signed, expiring join tokens.
  - L{meshproxy.identity.certify}: the certify exchange's wire format and the
    client's half of it (key, CSR, response checks).
  - L{meshproxy.identity.issuer}: the issuing policy (sans-I/O) and its
    HTTPS service, run by C{twistd meshproxy-identity}.
"""
