"""DNS side of DNS-01: CNAME chains, signed RFC 2136 updates, propagation checks, TSIG keys."""
