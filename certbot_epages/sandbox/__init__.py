"""The local platform: BIND, pebble, nginx load balancers, sshd and a challenge service on loopback.

Used by ``make demo``, the integration tests and operators who want to try things by hand
(``certbot-epages sandbox up|env|down``).
"""
