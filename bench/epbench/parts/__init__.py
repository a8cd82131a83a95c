"""The parts of the benchmark: each measures one thing and returns its raw numbers."""

# In the order they run; ``--parts`` picks some. sites-10k, shared-10k and shared-100k are the
# deploy.mode comparison of issue 14 (parts/modes.py).
DNS_PARTS = ("issuance", "lag", "hooks")
MODE_PART_NAMES = ("sites-10k", "shared-10k", "shared-100k")
ALL_PARTS = (*DNS_PARTS, "deploy", "sync", *MODE_PART_NAMES)
# Names for several parts at once.
ALIASES = {"modes": ("sites-10k", "shared-10k"), "issue14": MODE_PART_NAMES, "dns": DNS_PARTS,
           "all": ALL_PARTS}
