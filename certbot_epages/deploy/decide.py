"""What a release holds: which shops ship, which live sites stay and why, which go and why.

Pure decisions, no ssh, no files. The base of every decision is what a load balancer serves
now (its live release's manifest, :class:`Base`), never the deploy host's own memory of it,
so a lost or stale spool cannot make a deploy drop what serves.

A full deploy (``deploy --all``, sync) renders every active shop that a certificate covers and
keeps, of what serves now, each site whose shop cannot be deployed now (no certificate covers
its names yet, its entry is invalid, its template fails): only the inventory removes a site
(suspended, deleted, no longer listed). A partial deploy (the deploy hook, ``--pending``,
``--lineage``) renders the shops of the renewed lineages and carries everything else over.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from certbot_epages.deploy import lineages as lineage_rules
from certbot_epages.deploy.lineages import Lineage
from certbot_epages.deploy.manifest import Manifest, SiteRecord
from certbot_epages.errors import EpagesError
from certbot_epages.inventory import Inventory, Shop
from certbot_epages.names import is_legacy_owner, site_file
from certbot_epages.ownership import Resolution

NEW = "new"  # a certificate from certbot's lineage
LIVE = "live"  # a certificate kept from the live release


class DecisionError(EpagesError):
    """The release cannot be decided safely (e.g. the live manifest is unreadable)."""


@dataclass(frozen=True)
class Base:
    """What one load balancer serves: its live release and that release's manifest.

    ``manifest`` is None when nothing serves yet (``release`` None too) or when the live
    manifest could not be read (``problem`` says why; ``recovered`` then holds what could be
    read off the release's files, if anything).
    """

    release: str | None
    manifest: Manifest | None
    problem: str | None = None
    recovered: Manifest | None = None
    missing: bool = False  # `current` names a release that is not there

    @property
    def known(self) -> Manifest:
        """The best knowledge of what serves: the manifest, else what was recovered."""
        return self.manifest or self.recovered or Manifest()


@dataclass(frozen=True)
class Candidate:
    """An active shop, the lineage it is served with, and its site file name."""

    shop: Shop
    lineage: Lineage
    site: str

    def record(self) -> SiteRecord:
        """The manifest record of the site once shipped."""
        return SiteRecord(domain=self.shop.domain, names=self.shop.server_names,
                          owner=self.shop.owner, lineage=self.lineage.name,
                          fingerprint=self.lineage.fingerprint, template=self.shop.template,
                          vars=dict(self.shop.vars))


@dataclass
class Selection:
    """The shops to render, and the active shops that cannot ship now (owner -> reason).

    ``inventory`` holds the entries that may have their names; ``claims`` who holds which name
    (suspended shops included) and ``held`` the names nobody may claim now.
    """

    inventory: Inventory
    candidates: list[Candidate] = field(default_factory=list)
    unready: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    full: bool = True
    renewed: frozenset[str] | None = None  # a partial deploy's lineages
    known: dict[str, Lineage] = field(default_factory=dict)  # every lineage certbot has
    unready_domains: dict[str, str] = field(default_factory=dict)  # domain -> reason
    claims: dict[str, str] = field(default_factory=dict)
    held: frozenset[str] = frozenset()


@dataclass
class Composition:
    """One load balancer's next release, decided."""

    sites: dict[str, SiteRecord] = field(default_factory=dict)
    rendered: dict[str, Candidate] = field(default_factory=dict)  # site -> shipped candidate
    kept: dict[str, str] = field(default_factory=dict)  # site -> why it stays as it is
    dropped: dict[str, str] = field(default_factory=dict)  # site -> why it goes
    certs: dict[str, str] = field(default_factory=dict)  # lineage -> NEW | LIVE
    lineages: dict[str, Lineage] = field(default_factory=dict)  # the NEW ones
    claims: dict[str, str] = field(default_factory=dict)  # name -> owner
    notes: list[str] = field(default_factory=list)


def select(
    resolution: Resolution,
    known: Sequence[Lineage],
    *,
    renewed: Collection[str] | None = None,
    only: Collection[str] | None = None,
    certbot_dir: str = "the certbot directory",
) -> Selection:
    """The shops to render: all active ones a certificate covers, or those of ``renewed``.

    ``only`` (sync --domain) renders just those shops (by domain) of the renewed lineages;
    the others stay as they serve and get their lineage's new certificate, if it has one.

    Only entries that may have their names (``resolution``) ship; a refused entry keeps what
    its owner serves. A shop is served by the lineage that covers it best (its own before a
    wildcard), so a wildcard renewal moves no shop.
    """
    inventory = resolution.inventory
    selection = Selection(inventory=inventory, full=renewed is None,
                          renewed=None if renewed is None else frozenset(renewed),
                          known={lin.name: lin for lin in known},
                          claims=dict(resolution.claims), held=frozenset(resolution.held))
    for conflict in resolution.conflicts:
        line = f"{conflict}; fix: {conflict.fix}"
        selection.notes.append(line)
        if conflict.shop.is_active:
            selection.unready.setdefault(conflict.shop.owner, line)
            selection.unready_domains.setdefault(conflict.shop.domain, line)
    used: set[str] = set()
    index = lineage_rules.Index(known)
    for shop in inventory.active():
        lineage = index.covering(shop)
        if lineage is None:
            if renewed is None:
                why = (f"{shop.domain}: no certificate in {certbot_dir}/live covers "
                       f"{', '.join(shop.server_names)} yet; its current config (if any) stays")
                selection.unready[shop.owner] = why
                selection.unready_domains[shop.domain] = why
                selection.notes.append(why)
            continue
        if renewed is not None and lineage.name not in renewed:
            continue
        used.add(lineage.name)
        if only is not None and shop.domain not in only:
            continue  # carried over: compose gives it its lineage's new certificate, if any
        selection.candidates.append(Candidate(shop, lineage, site_file(shop.domain)))
    for name in sorted(set(renewed or ()) - used):
        selection.notes.append(f"lineage {name}: no active shop in the inventory uses it")
    return selection


def compose(
    base: Base,
    selection: Selection,
    *,
    failures: Mapping[str, str] | None = None,
) -> Composition:
    """The next release of one load balancer.

    ``failures`` holds the sites whose rendering failed on this load balancer (site -> why):
    they keep what they serve, like shops no certificate covers yet.
    """
    failed = dict(failures or {})
    if not selection.full and base.release is not None and base.problem is not None:
        raise DecisionError(
            f"the manifest of the live release {base.release} cannot be read ({base.problem}): "
            "a deploy of only some shops would not know what else serves there; run "
            "'certbot-epages deploy --all', which rebuilds it from what the release holds"
        )
    comp = Composition()
    for cand in selection.candidates:
        if cand.site not in failed:
            comp.rendered[cand.site] = cand
            comp.sites[cand.site] = cand.record()
    _carry_over(base.known, selection, failed, comp)
    _choose_certificates(selection, comp)
    # Who holds what: the settled claims (suspended shops included), names held as this load
    # balancer records them, and whatever its sites serve.
    comp.claims.update(selection.claims)
    comp.claims.update({n: o for n, o in base.known.claims.items() if n in selection.held})
    for record in comp.sites.values():
        comp.claims.update(dict.fromkeys(record.names, record.owner))
    for site, why in sorted(failed.items()):
        if site in comp.sites and site not in comp.rendered:
            comp.kept.setdefault(site, why)
    return comp


def _carry_over(live: Manifest, selection: Selection, failed: Mapping[str, str],
                comp: Composition) -> None:
    """Decide, for every live site not rendered anew, whether it stays (and why) or goes."""
    inventory = selection.inventory
    served_by_new = {name: site for site, rec in comp.sites.items() for name in rec.names}
    shops = {site_file(shop.domain): shop for shop in inventory.shops}
    # An entry that cannot ship keeps what serves for its owner (and, for a site recorded
    # before shop ids, what serves for its domain).
    unready = dict(selection.unready)
    unready_domains = dict(selection.unready_domains)
    for cand in selection.candidates:
        if cand.site in failed:
            unready.setdefault(cand.shop.owner, failed[cand.site])
            unready_domains[cand.shop.domain] = failed[cand.site]
    held_by_problem = [p for p in inventory.problems if p.status in (None, "active")]
    invalid = {p.owner: str(p) for p in held_by_problem if p.owner is not None}
    invalid_domains = {p.name: str(p) for p in held_by_problem if p.name is not None}

    for site, record in sorted(live.sites.items()):
        if site in comp.rendered:
            continue
        overlap = sorted(set(record.names) & set(served_by_new))
        if overlap:
            if not selection.full:
                raise DecisionError(
                    f"{', '.join(overlap)} moved from {site} to "
                    f"{served_by_new[overlap[0]]}: a deploy of only some shops cannot re-render "
                    f"{site} without them; run 'certbot-epages deploy --all'")
            comp.dropped[site] = (f"{', '.join(overlap)} now served by "
                                  f"{served_by_new[overlap[0]]}")
            continue
        shop = shops.get(site)
        legacy = is_legacy_owner(record.owner)  # recorded before shop ids: known by domain
        if shop is not None and not shop.is_active and (
                shop.owner == record.owner or (legacy and shop.domain == record.domain)):
            comp.dropped[site] = f"the shop is {shop.status}"
            continue
        if not selection.full:
            comp.sites[site] = record
            continue
        why = unready.get(record.owner) or invalid.get(record.owner)
        if why is None and legacy:
            why = unready_domains.get(record.domain) or invalid_domains.get(record.domain)
        if why is None:
            comp.dropped[site] = "no longer in the inventory"
            continue
        comp.sites[site] = record
        comp.kept[site] = why


def _choose_certificates(selection: Selection, comp: Composition) -> None:
    """Each site's certificate: its new one, certbot's renewal of a kept one, or the live one."""
    comp.lineages = {c.lineage.name: c.lineage for c in comp.rendered.values()}
    for site, record in comp.sites.items():
        if site in comp.rendered:
            comp.certs[record.lineage] = NEW
            continue
        fresh = comp.lineages.get(record.lineage) or _renewed(record, selection)
        if fresh is None:
            comp.certs.setdefault(record.lineage, LIVE)
            continue
        comp.lineages[fresh.name] = fresh
        comp.certs[record.lineage] = NEW
        # The lineage ships anew for another site: this one gets the new certificate too.
        comp.sites[site] = dataclasses.replace(record, fingerprint=fresh.fingerprint)
        uncovered = [n for n in record.names if not fresh.covers(n)]
        if uncovered:
            comp.notes.append(f"{site}: the new certificate of {record.lineage} no longer "
                              f"covers {', '.join(uncovered)}")


def removal_problem(base: Base, comp: Composition, *, force: bool) -> str | None:
    """Why this release removes too much (more than half of the live sites), or None.

    A truncated inventory (or a lost deploy state) must not empty a load balancer: removing
    at least two sites and more than half of them needs ``force``.
    """
    if base.missing and not force:
        return (f"{base.problem}; to rebuild it from the inventory alone, run "
                "'certbot-epages deploy --all --force'")
    before = set(base.known.sites)
    gone = before - set(comp.sites)
    if force or len(gone) < 2 or len(gone) * 2 <= len(before):
        return None
    return (f"this deploy would remove {len(gone)} of {len(before)} sites; if the inventory "
            "really dropped them, run 'certbot-epages deploy --all --force'")


def describe_divergence(bases: Mapping[str, Base]) -> str | None:
    """A line saying that the load balancers serve different shops or certificates, or None.

    Release ids differ between load balancers by design; what they serve must not.
    """
    known = [base.known for base in bases.values()]
    if all(k.sites == known[0].sites and k.claims == known[0].claims for k in known[1:]):
        return None
    shown = ", ".join(f"{name} {base.release or 'nothing'} ({len(base.known.sites)} sites)"
                      for name, base in sorted(bases.items()))
    return (f"the load balancers serve different configurations ({shown}); each one's next "
            "release builds on what it serves")



def _renewed(record: SiteRecord, selection: Selection) -> Lineage | None:
    """certbot's newer certificate of a site that stays as it is, if it still fits the site.

    A refused or unready shop keeps its config but not an expiring certificate: its lineage's
    renewal ships (in a partial deploy, only the renewed lineages').
    """
    fresh = selection.known.get(record.lineage)
    if fresh is None or fresh.fingerprint == record.fingerprint:
        return None
    if selection.renewed is not None and fresh.name not in selection.renewed:
        return None
    return fresh if all(fresh.covers(n) for n in record.names) else None
