"""certbot-epages: certificate automation for multi-tenant shop platforms.

certbot stays the issuing engine; this package adds the ``epages-dns`` authenticator
(CNAME-aware RFC 2136 DNS-01), manual hooks, nginx deploys to load balancers and fleet runs.
"""

__version__ = "0.1.0"
