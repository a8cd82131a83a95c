"""Which shops ship, which live sites stay and which go: every keep/drop rule, without servers."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from certbot_epages import ownership
from certbot_epages.deploy import decide
from certbot_epages.deploy.decide import Base
from certbot_epages.deploy.lineages import Lineage
from certbot_epages.deploy.manifest import Manifest, ManifestError, SiteRecord, loads
from certbot_epages.inventory import Inventory, Problem, Shop, parse_inventory, site_file
from certbot_epages.names import implicit_owner, legacy_owner
from certbot_epages.ownership import Resolution

pytestmark = pytest.mark.unit

FP_OLD = "a" * 64
FP_NEW = "b" * 64


def lineage(name: str, names: list[str], fingerprint: str = FP_NEW) -> Lineage:
    return Lineage(name=name, live=Path("/le/live") / name, names=tuple(sorted(names)),
                   not_after=datetime(2030, 1, 1, tzinfo=timezone.utc), fingerprint=fingerprint)


def shop(domain: str, status: str = "active", shop_id: str | None = None,
         aliases: tuple[str, ...] | None = None) -> Shop:
    return Shop(domain=domain, aliases=(f"www.{domain}",) if aliases is None else aliases,
                template="custom-domain", vars={"upstream": "10.0.0.5:80"}, status=status,
                shop=shop_id)


def record(domain: str, owner: str | None = None, fingerprint: str = FP_OLD) -> SiteRecord:
    return SiteRecord(domain, (domain, f"www.{domain}"), owner or implicit_owner(domain), domain,
                      fingerprint)


def base(*records: SiteRecord, release: str = "20260101T000000Z-0001") -> Base:
    sites = {site_file(r.domain): r for r in records}
    return Base(release, Manifest(sites=sites,
                                  claims={n: r.owner for r in records for n in r.names}))


def inventory(*shops: Shop, problems: tuple[Problem, ...] = ()) -> Inventory:
    return Inventory(shops=shops, problems=problems)


def resolved(inv: Inventory, live: Base | None = None) -> Resolution:
    recorded = [] if live is None else [live.known.claims]
    return ownership.resolve(inv, recorded, ownership.Rules())


def full(inv: Inventory, known: list[Lineage], live: Base,
         failures: dict[str, str] | None = None) -> decide.Composition:
    return decide.compose(live, decide.select(resolved(inv, live), known), failures=failures)


def partial(inv: Inventory, known: list[Lineage], live: Base,
            renewed: set[str]) -> decide.Composition:
    return decide.compose(live, decide.select(resolved(inv, live), known, renewed=renewed))


def test_a_first_deploy_ships_every_covered_active_shop() -> None:
    inv = inventory(shop("one.test"), shop("two.test"))
    comp = full(inv, [lineage("one.test", ["one.test", "www.one.test"])], Base(None, None))
    assert set(comp.rendered) == {"one.test.conf"}
    assert comp.certs == {"one.test": decide.NEW}
    # Only what serves is recorded: two.test's names become its own once it serves them.
    owner = implicit_owner("one.test")
    assert comp.claims == {"one.test": owner, "www.one.test": owner}
    assert comp.kept == {} and comp.dropped == {}


def test_an_active_shop_without_a_covering_certificate_keeps_what_serves() -> None:
    inv = inventory(shop("one.test", aliases=("www.one.test", "new.one.test")))
    comp = full(inv, [lineage("one.test", ["one.test", "www.one.test"])],
                base(record("one.test")))
    assert comp.rendered == {}
    assert "no certificate" in comp.kept["one.test.conf"]
    # Its config stays; its lineage's newer certificate still fits what it serves: it ships.
    assert comp.sites["one.test.conf"] == record("one.test", fingerprint=FP_NEW)
    assert comp.certs == {"one.test": decide.NEW}
    stale = full(inv, [lineage("one.test", ["one.test"])], base(record("one.test")))
    assert stale.certs == {"one.test": decide.LIVE}  # it would not cover www.one.test


def test_an_invalid_entry_keeps_what_serves_even_with_a_long_name() -> None:
    long_name = "a" * 60 + "." + "b" * 30 + ".test"
    inv = parse_inventory([{"domain": long_name, "template": "custom-domain",
                            "vars": {"upstream": "x;y"}}], templates=["custom-domain"])
    assert inv.problems[0].name == long_name
    comp = full(inv, [], base(record(long_name)))
    assert f"{long_name}.conf" in comp.kept


def test_an_invalid_entry_with_a_shop_id_keeps_every_site_of_that_shop() -> None:
    inv = parse_inventory([{"domain": "new-name.test", "shop": "42", "template": "nope"}],
                          templates=["custom-domain"])
    comp = full(inv, [], base(record("old-name.test", owner="42"), record("other.test")))
    assert "old-name.test.conf" in comp.kept
    assert comp.dropped == {"other.test.conf": "no longer in the inventory"}


def test_a_template_failure_keeps_what_serves() -> None:
    inv = inventory(shop("one.test"))
    comp = full(inv, [lineage("one.test", ["one.test", "www.one.test"])],
                base(record("one.test")), failures={"one.test.conf": "lb1: undefined x"})
    assert comp.rendered == {}
    assert comp.kept == {"one.test.conf": "lb1: undefined x"}
    assert comp.sites["one.test.conf"].fingerprint == FP_NEW  # the renewal still ships


@pytest.mark.parametrize("status", ["suspended", "deleted"])
def test_suspended_and_deleted_shops_are_dropped(status: str) -> None:
    inv = inventory(shop("one.test", status=status), shop("two.test"))
    live = base(record("one.test"), record("two.test"))
    comp = full(inv, [lineage("two.test", ["two.test", "www.two.test"])], live)
    assert comp.dropped == {"one.test.conf": f"the shop is {status}"}
    comp = partial(inv, [], live, {"two.test"})
    assert comp.dropped == {"one.test.conf": f"the shop is {status}"}


def test_a_partial_deploy_carries_everything_else_over() -> None:
    inv = inventory(shop("one.test"), shop("two.test"))
    known = [lineage("one.test", ["one.test", "www.one.test"]),
             lineage("two.test", ["two.test", "www.two.test"])]
    live = base(record("one.test"), record("two.test"), record("unlisted.test"))
    comp = partial(inv, known, live, {"two.test"})
    assert set(comp.rendered) == {"two.test.conf"}
    assert set(comp.sites) == {"one.test.conf", "two.test.conf", "unlisted.test.conf"}
    assert comp.certs == {"one.test": decide.LIVE, "two.test": decide.NEW,
                          "unlisted.test": decide.LIVE}


def test_a_partial_deploy_on_an_unreadable_manifest_refuses() -> None:
    inv = inventory(shop("one.test"))
    broken = Base("20260101T000000Z-0001", None, "not valid JSON")
    with pytest.raises(decide.DecisionError, match="deploy --all"):
        partial(inv, [lineage("one.test", ["one.test", "www.one.test"])], broken, {"one.test"})


def test_a_full_deploy_on_a_recovered_manifest_takes_owners_from_the_inventory() -> None:
    recovered = Manifest(sites={"one.test.conf": record("one.test", legacy_owner("one.test"))})
    live = Base("20260101T000000Z-0001", None, "not valid JSON", recovered)
    inv = parse_inventory([{"domain": "one.test", "shop": "7", "template": "nope"}],
                          templates=["custom-domain"])
    comp = full(inv, [], live)
    assert "one.test.conf" in comp.kept


def test_a_shop_that_moved_to_a_new_domain_drops_its_old_site() -> None:
    moved = shop("b.test", aliases=("a.test",))
    comp = full(inventory(moved), [lineage("b.test", ["a.test", "b.test"])],
                base(SiteRecord("a.test", ("a.test",), moved.owner, "a.test", FP_OLD)))
    assert set(comp.rendered) == {"b.test.conf"}
    assert comp.dropped == {"a.test.conf": "a.test now served by b.test.conf"}


def test_a_kept_site_whose_lineage_ships_anew_gets_the_new_fingerprint() -> None:
    wildcard = lineage("wildcard.p.test", ["*.p.test"])
    inv = parse_inventory(
        [{"domain": "a.p.test", "template": "custom-domain", "vars": {"upstream": "h:1"}},
         {"domain": "b.p.test", "template": "bad"}], templates=["custom-domain"])
    live = base(SiteRecord("a.p.test", ("a.p.test",), implicit_owner("a.p.test"),
                           "wildcard.p.test", FP_OLD),
                SiteRecord("b.p.test", ("b.p.test",), implicit_owner("b.p.test"),
                           "wildcard.p.test", FP_OLD))
    comp = full(inv, [wildcard], live)
    assert comp.sites["b.p.test.conf"].fingerprint == FP_NEW
    assert comp.certs == {"wildcard.p.test": decide.NEW}


def test_the_removal_guard_counts_what_the_load_balancer_serves() -> None:
    live = base(*(record(f"s{i}.test") for i in range(5)))
    inv = inventory(shop("s0.test"))
    comp = full(inv, [lineage("s0.test", ["s0.test", "www.s0.test"])], live)
    problem = decide.removal_problem(live, comp, force=False)
    assert problem is not None and "remove 4 of 5 sites" in problem
    assert decide.removal_problem(live, comp, force=True) is None
    one_gone = full(inventory(*(shop(f"s{i}.test") for i in range(4))),
                    [lineage(f"s{i}.test", [f"s{i}.test", f"www.s{i}.test"]) for i in range(4)],
                    live)
    assert decide.removal_problem(live, one_gone, force=False) is None


def test_load_balancers_that_diverged_are_named() -> None:
    same = {"lb1": base(record("one.test"), release="20260101T000000Z-0001"),
            "lb2": base(record("one.test"), release="20260101T000000Z-0002")}
    assert decide.describe_divergence(same) is None
    other = {**same, "lb2": base(record("one.test", fingerprint=FP_NEW))}
    line = decide.describe_divergence(other)
    assert line is not None and "lb1" in line and "lb2" in line


# --------------------------------------------------------------------------- manifests


def test_a_manifest_round_trips_and_format_one_still_reads() -> None:
    manifest = Manifest(sites={"one.test.conf": record("one.test", owner="42")},
                        claims={"one.test": "42", "www.one.test": "42", "held.test": "42"},
                        generation="g" * 8, marker=FP_NEW)
    assert loads(manifest.dumps()) == manifest
    old = loads(b'{"one.test.conf": {"domain": "one.test", "lineage": "one.test", '
                b'"fingerprint": "' + FP_OLD.encode() + b'", "names": ["one.test"]}}')
    assert old.format == 1
    assert old.sites["one.test.conf"].owner == legacy_owner("one.test")
    assert old.claims == {"one.test": legacy_owner("one.test")}


def test_a_manifest_is_written_as_sorted_compact_json() -> None:
    """The bytes stay what json.dumps(sort_keys) makes (releases compare them byte for byte)."""
    import json

    shared = SiteRecord("ü.test", ("ü.test", "www.ü.test"), "42", "ü.test", FP_NEW,
                        template="custom-domain", vars={"upstream": "10.0.0.1:80", "q": 'a"b'})
    manifest = Manifest(sites={"z.test.conf": record("z.test", owner="7"), "ü.test.conf": shared},
                        claims={"z.test": "7", "www.z.test": "7", "ü.test": "42",
                                "www.ü.test": "42"},
                        generation=None, marker=FP_OLD, mode="shared")
    plain = {"format": 2, "generation": None, "marker": FP_OLD, "mode": "shared",
             "sites": {n: r.as_json() for n, r in manifest.sites.items()},
             "claims": dict(manifest.claims)}
    expected = (json.dumps(plain, sort_keys=True, separators=(",", ":")) + "\n").encode()
    assert manifest.dumps() == expected
    assert loads(manifest.dumps()) == manifest


@pytest.mark.parametrize("data, message", [
    (b'{"format": 2, "sites": {', "not valid JSON"),
    (b"[]", "expected a JSON object"),
    (b'{"format": 3, "sites": {}}', "unknown format 3"),
    (b'{"format": 2, "sites": {"../x.conf": {}}}', "expected a file name"),
    (b'{"one.test.conf": {"domain": "one.test", "lineage": "x", "fingerprint": "zz"}}',
     "sha256 fingerprint"),
])
def test_a_corrupt_manifest_raises_never_reads_as_empty(data: bytes, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        loads(data, "lb1 manifest")


def test_a_missing_live_release_refuses_partial_deploys_and_needs_force() -> None:
    inv = inventory(shop("one.test"))
    known = [lineage("one.test", ["one.test", "www.one.test"])]
    missing = Base("20260101T000000Z-0001", None, "current points at a missing release",
                   missing=True)
    with pytest.raises(decide.DecisionError, match="deploy --all"):
        partial(inv, known, missing, {"one.test"})
    comp = full(inv, known, missing)
    problem = decide.removal_problem(missing, comp, force=False)
    assert problem is not None and "--force" in problem
    assert decide.removal_problem(missing, comp, force=True) is None


def test_sites_recorded_before_shop_ids_are_kept_by_domain() -> None:
    # A format-1 manifest names owners by domain; the entry now carries a shop id.
    inv = parse_inventory(
        [{"domain": "one.test", "shop": "42", "template": "custom-domain", "vars": {"x": "a;"}},
         {"domain": "two.test", "shop": "43", "template": "custom-domain",
          "aliases": ["new.two.test"], "vars": {"upstream": "h:1"}}],
        templates=["custom-domain"])
    comp = full(inv, [lineage("two.test", ["two.test"])],
                base(record("one.test", legacy_owner("one.test")),
                     record("two.test", legacy_owner("two.test"))))
    assert set(comp.kept) == {"one.test.conf", "two.test.conf"}


def test_an_invalid_entry_that_says_suspended_is_not_kept() -> None:
    inv = parse_inventory([{"domain": "one.test", "template": "gone", "status": "suspended"}],
                          templates=["custom-domain"])
    comp = full(inv, [], base(record("one.test"), record("two.test"), record("three.test")))
    assert "one.test.conf" in comp.dropped


def test_a_partial_deploy_that_would_take_names_from_another_site_refuses() -> None:
    # Shop 7 moves x.test from its site a.test to its site b.test: a.test must be rendered
    # again without it, which only a full deploy does.
    live = base(SiteRecord("a.test", ("a.test", "x.test"), "7", "a.test", FP_OLD))
    inv = inventory(shop("a.test", shop_id="7", aliases=()),
                    shop("b.test", shop_id="7", aliases=("x.test",)))
    with pytest.raises(decide.DecisionError, match="moved from a.test.conf"):
        partial(inv, [lineage("b.test", ["b.test", "x.test"])], live, {"b.test"})
