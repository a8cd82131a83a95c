r"""The shop inventory: which domains the platform serves, read from the shop software.

The inventory is UNTRUSTED input: shop owners choose their domains, and whatever lands in it
ends up in nginx configs on every load balancer.  It is a YAML or JSON list of entries (or a
mapping ``{"shops": [...]}``), read from a file or fetched from an http(s) URL::

    - domain: shop.example.com
      aliases: [www.shop.example.com]
      template: custom-domain            # <templates>/nginx/custom-domain.conf.j2
      vars: {upstream: "10.0.0.5:8080"}
      status: active                     # active | suspended | deleted (default active)
      shop: "4711"                       # the shop's stable id (optional, see below)

Every entry is checked on its own: a bad entry becomes a :class:`Problem` and is skipped while
the others load, so one shop cannot stop certificates for all of them.  A file that cannot be
read or parsed at all raises :class:`InventoryError`.

What an entry may contain:

* ``domain`` and ``aliases``: host names by :func:`~certbot_epages.names.validate_domain`
  (normalised to lowercase A-labels, IDNA 2008).  Who may have which name is decided by
  :mod:`certbot_epages.ownership`, against what the load balancers serve.
* ``template``: the name of an available shop template (``^[a-z0-9][a-z0-9_-]*$``).
* ``vars``: names ``^[a-z_][a-z0-9_]*$``, values strings, integers or booleans.  A string must
  not be able to break out of an nginx directive: no ``; { } " ' \ $ #``, no whitespace, no
  control characters, not empty -- unless the template declares that variable safe (see
  :mod:`certbot_epages.deploy.render`), and even then no control characters or line breaks.
* ``status``: ``active``, ``suspended`` or ``deleted``.
* ``shop``: the shop's stable id in the shop software (1 to 128 of letters, digits and
  ``. _ : @ / + = -``, starting with a letter or digit).  It names the *owner* of the entry's
  names; an entry without it is its own owner, identified by its domain.

The package: :mod:`.model` (the checked result), :mod:`.entries` (the checks of an entry),
:mod:`.fetch` (a file or a URL, within limits), :mod:`.cache` (the checked result kept between
runs), :mod:`.load` (the three together).
"""

from __future__ import annotations

from certbot_epages.inventory.entries import (
    ENTRY_KEYS,
    STATUSES,
    TEMPLATE_NAME_RE,
    VAR_NAME_RE,
    parse_inventory,
    validate_var,
)
from certbot_epages.inventory.load import Source, load_configured, load_inventory, read_configured
from certbot_epages.inventory.model import Inventory, InventoryError, Problem, Shop, VarValue
from certbot_epages.names import printable, site_file, validate_domain

__all__ = ["ENTRY_KEYS", "STATUSES", "TEMPLATE_NAME_RE", "VAR_NAME_RE", "Inventory",
           "InventoryError", "Problem", "Shop", "Source", "VarValue", "load_configured",
           "load_inventory", "parse_inventory", "printable", "read_configured", "site_file",
           "validate_domain", "validate_var"]
