"""Deploying certificates and nginx site configs to the load balancers."""
