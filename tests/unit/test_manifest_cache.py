"""The parsed live manifest kept in the spool: used only for the manifest it was made from."""

from __future__ import annotations

import hashlib
import marshal
from pathlib import Path

import pytest

from certbot_epages.deploy import manifest_cache
from certbot_epages.deploy.manifest import Manifest, SiteRecord, loads

pytestmark = pytest.mark.unit

FP = "ab" * 32


def _manifest() -> Manifest:
    sites = {
        "one.test.conf": SiteRecord("one.test", ("one.test", "www.one.test"), "7", "one.test",
                                    FP, "custom-domain", {"upstream": "10.0.0.1:80"}),
        "two.test.conf": SiteRecord("two.test", ("two.test",), "two.test (before shop ids)",
                                    "two.test", FP),
    }
    return Manifest(sites=sites, claims={n: r.owner for r in sites.values() for n in r.names},
                    generation="g" * 64, marker=FP, mode="shared")


def test_a_kept_manifest_reads_back_equal_for_its_checksum_only(tmp_path: Path) -> None:
    manifest = _manifest()
    data = manifest.dumps()
    sha = hashlib.sha256(data).hexdigest()
    path = tmp_path / "live-manifest.parsed"
    manifest_cache.store(path, sha, manifest)
    assert path.stat().st_mode & 0o077 == 0
    kept = manifest_cache.load(path, sha)
    assert kept == manifest == loads(data)
    assert kept is not None and kept.dumps() == data  # the kept JSON texts are the records'
    # Another load balancer's deploy changed the live manifest: its checksum differs.
    assert manifest_cache.load(path, "0" * 64) is None
    assert manifest_cache.load(path, None) is None
    assert manifest_cache.load(tmp_path / "missing", sha) is None


@pytest.mark.parametrize("damage", [
    lambda data: data[: len(data) // 2],  # cut short
    lambda data: b"not marshal at all",
    lambda data: marshal.dumps(("0 older", *marshal.loads(data)[1:])),  # another version
    # a record whose domain is no text: a miss, never a record
    lambda data: marshal.dumps((*marshal.loads(data)[:4],
                                [(r[0], 42, *r[2:]) for r in marshal.loads(data)[4]])),
])
def test_a_damaged_or_foreign_file_is_a_miss(tmp_path: Path, damage: object) -> None:
    manifest = _manifest()
    sha = hashlib.sha256(manifest.dumps()).hexdigest()
    path = tmp_path / "live-manifest.parsed"
    manifest_cache.store(path, sha, manifest)
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    assert manifest_cache.load(path, sha) is None


def test_equal_records_of_two_manifests_become_the_same_objects() -> None:
    first, second = _manifest(), _manifest()
    shared = manifest_cache.shared_records(second, first)
    assert shared == second
    assert all(shared.sites[s] is first.sites[s] for s in first.sites)


def test_records_whose_values_differ_in_type_stay_apart() -> None:
    """1 == True in Python, but the map value of one is 1 and of the other on."""
    one = SiteRecord("a.test", ("a.test",), "7", "a.test", FP, "custom-domain", {"flag": 1})
    on = SiteRecord("a.test", ("a.test",), "7", "a.test", FP, "custom-domain", {"flag": True})
    first = Manifest(sites={"a.test.conf": one}, claims={"a.test": "7"})
    second = Manifest(sites={"a.test.conf": on}, claims={"a.test": "7"})
    shared = manifest_cache.shared_records(second, first)
    assert shared.sites["a.test.conf"] is on and '"flag":true' in shared.dumps().decode()
