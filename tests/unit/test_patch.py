"""The renewal fast path's patch (deploy.patch): what it changes, and when it refuses."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import cast

import pytest

from certbot_epages.deploy import manifest as manifest_module
from certbot_epages.deploy import marker, patch, shared
from certbot_epages.deploy.lineages import Lineage
from certbot_epages.deploy.manifest import Manifest, SiteRecord

pytestmark = pytest.mark.unit

ROOT = "/etc/nginx/epages"
OLD, NEW, OTHER = "a" * 64, "b" * 64, "c" * 64
OLD_DIR = f"{ROOT}/certs/one.test/{OLD[:16]}/"


def _lineage(name: str, names: tuple[str, ...], fingerprint: str) -> Lineage:
    when = datetime(2030, 1, 1, tzinfo=timezone.utc)
    return Lineage(name, Path("/nonexistent") / name, names, when, fingerprint)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Live:
    """A live shared-mode release in a directory, and the base a clean deploy kept of it."""

    def __init__(self, tmp: Path, note: str = OLD_DIR, key: str = "note") -> None:
        self.dir = tmp / "release"
        (self.dir / "sites").mkdir(parents=True)
        self.records = {
            "one.test.conf": SiteRecord("one.test", ("one.test", "www.one.test"), "id-1",
                                        "one.test", OLD, "custom-domain", {"upstream": "u:80"}),
            # A tenant's value that happens to hold one.test's certificate directory.
            "two.test.conf": SiteRecord("two.test", ("two.test",), "id-2", "two.test", OTHER,
                                        "custom-domain", {"upstream": "u:80", key: note}),
        }
        entries = [shared.Entry(r.domain, r.names, "custom-domain", dict(r.vars or {}),
                                r.lineage, r.fingerprint) for r in self.records.values()]
        config, refused = shared.plan(entries, ROOT)
        assert not refused
        self.conf = shared.render_maps(config, f"{ROOT}/certs/_default/{'d' * 16}/").encode()
        release_conf = b"server {}\n"
        files = {f"sites/{shared.SITE}": self.conf, f"sites/{marker.SITE}": release_conf}
        generation = marker.generation(files.items(), [OLD, OTHER])
        self.manifest = Manifest(sites=self.records, claims={}, generation=generation,
                                 marker="e" * 64, mode="shared").dumps()
        files[manifest_module.FILENAME] = self.manifest
        files[shared.VERSIONS] = "".join(
            f"{v}\n" for v in sorted([f"_default/{'d' * 16}", f"one.test/{OLD[:16]}",
                                      f"two.test/{OTHER[:16]}"])).encode()
        for rel, data in files.items():
            (self.dir / rel).write_bytes(data)
        self.state = patch.LbState("r1", _sha(self.manifest), generation, "e" * 64, {
            rel: _sha(data) for rel, data in files.items() if rel.startswith("sites/")},
            patch.file_stats(self.dir))
        certs = {"one.test": _lineage("one.test", ("one.test", "www.one.test"), OLD),
                 "two.test": _lineage("two.test", ("two.test",), OTHER)}
        self.base = patch.PatchBase(
            "inputs", {"lb1": self.state},
            patch.describe_lineages(self.records, set(), certs, self.conf, ROOT),
            frozenset(), frozenset({OLD, OTHER}))

    def renewal(self) -> list[tuple[Lineage, patch.LineageInfo]]:
        return self.base.changes([_lineage("one.test", ("www.one.test", "one.test"), NEW)])


def test_a_patch_changes_only_the_renewed_lineage_and_leaves_tenant_values_alone(
    tmp_path: Path,
) -> None:
    live = Live(tmp_path)
    info = live.base.lineages["one.test"]
    assert (info.records, info.map_lines, info.probe) == (1, 2, ("one.test", "www.one.test"))
    out = patch.patch(live.dir, live.state, live.base, ROOT, live.renewal())
    conf = out.files[f"sites/{shared.SITE}"].read().decode()
    new_dir = f"{ROOT}/certs/one.test/{NEW[:16]}/"
    assert f"    one.test {new_dir};\n" in conf and f"    www.one.test {new_dir};\n" in conf
    # The tenant's value (a map of its own) is not the certificate map: untouched.
    assert f"    two.test {OLD_DIR};\n" in conf
    assert conf.replace(new_dir, OLD_DIR) == live.conf.decode()
    versions = out.files[shared.VERSIONS].read().decode().split()
    assert f"one.test/{NEW[:16]}" in versions and f"one.test/{OLD[:16]}" not in versions
    manifest = manifest_module.loads(out.files[manifest_module.FILENAME].read())
    assert manifest.sites["one.test.conf"].fingerprint == NEW
    assert manifest.sites["two.test.conf"] == live.records["two.test.conf"]
    # The generation is what a full build computes from the patched files.
    sites = {rel: spec.read() for rel, spec in out.files.items() if rel.startswith("sites/")}
    assert manifest.generation == out.generation == marker.generation(sites.items(),
                                                                      [NEW, OTHER])
    assert manifest.marker == out.marker != live.state.marker
    assert _sha(out.files[manifest_module.FILENAME].read()) == out.manifest_sha256


def test_a_tenant_value_that_holds_the_fingerprint_stays_as_it_is(tmp_path: Path) -> None:
    live = Live(tmp_path, note=OLD)
    out = patch.patch(live.dir, live.state, live.base, ROOT, live.renewal())
    manifest = manifest_module.loads(out.files[manifest_module.FILENAME].read())
    assert manifest.sites["one.test.conf"].fingerprint == NEW
    assert manifest.sites["two.test.conf"] == live.records["two.test.conf"]
    assert f"    two.test {OLD};\n" in out.files[f"sites/{shared.SITE}"].read().decode()
    # A variable named like the record's key is counted with the records: no patch.
    live = Live(tmp_path / "again", note=OLD, key="fingerprint")
    with pytest.raises(patch.NoPatch, match="fingerprint 2 times, not 1"):
        patch.patch(live.dir, live.state, live.base, ROOT, live.renewal())


def test_live_files_that_are_not_what_the_base_says_refuse_the_patch(tmp_path: Path) -> None:
    live = Live(tmp_path)
    manifest = live.dir / manifest_module.FILENAME
    manifest.write_bytes(manifest.read_bytes().replace(b"id-2", b"id-3"))
    with pytest.raises(patch.NoPatch, match="not what went live"):
        patch.patch(live.dir, live.state, live.base, ROOT, live.renewal())
    live = Live(tmp_path / "again")
    conf = live.dir / "sites" / shared.SITE
    conf.write_bytes(conf.read_bytes() + b"# edited\n")
    with pytest.raises(patch.NoPatch, match="not what went live"):
        patch.patch(live.dir, live.state, live.base, ROOT, live.renewal())
    # The files the base recorded are not hashed again; an edit of the same size that even
    # puts the modification time back still moves the change time, and is caught.
    live = Live(tmp_path / "third")
    manifest = live.dir / manifest_module.FILENAME
    before = manifest.stat()
    manifest.write_bytes(manifest.read_bytes().replace(b"id-2", b"id-3"))
    os.utime(manifest, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(patch.NoPatch, match="not what went live"):
        patch.patch(live.dir, live.state, live.base, ROOT, live.renewal())


def test_renewals_the_base_cannot_vouch_for_are_refused(tmp_path: Path) -> None:
    live = Live(tmp_path)
    base = live.base
    with pytest.raises(patch.NoPatch, match="serves no shop"):
        base.changes([_lineage("three.test", ("three.test",), NEW)])
    with pytest.raises(patch.NoPatch, match="names of lineage one.test changed"):
        base.changes([_lineage("one.test", ("one.test",), NEW)])
    contested = patch.PatchBase(base.inputs, base.lbs, base.lineages,
                                frozenset({"one.test"}), base.fingerprints)
    with pytest.raises(patch.NoPatch, match="another lineage covers"):
        contested.changes([_lineage("one.test", ("one.test", "www.one.test"), NEW)])
    own = dict(base.lineages)
    own["one.test"] = patch.LineageInfo(**{**own["one.test"].__dict__, "own_server": True})
    with pytest.raises(patch.NoPatch, match="server of its own"):
        patch.PatchBase(base.inputs, base.lbs, own, frozenset(), base.fingerprints).changes(
            [_lineage("one.test", ("one.test", "www.one.test"), NEW)])
    # The certificate it serves already: nothing to change.
    assert base.changes([_lineage("one.test", ("one.test", "www.one.test"), OLD)]) == []


def test_the_base_reads_back_only_as_written(tmp_path: Path) -> None:
    live = Live(tmp_path)
    path = tmp_path / "patch-base"
    patch.store(path, live.base)
    assert path.stat().st_mode & 0o777 == 0o600
    assert patch.load(path) == live.base
    path.write_bytes(path.read_bytes()[:-5])
    assert patch.load(path) is None
    path.write_bytes(json.dumps(["not", "marshal"]).encode())
    assert patch.load(path) is None
    patch.forget(path)
    assert not path.exists() and patch.load(path) is None


def test_one_pass_for_many_lineages_swaps_what_a_pass_per_lineage_swaps() -> None:
    fingerprints = [f"{i:x}" * 64 for i in range(8)]
    manifest = "".join(f'{{"fingerprint":"{fp}","vars":{{"x":"{fp}"}}}},' for fp in
                       fingerprints * 3).encode()
    block = "".join(f"    n{i}.test {ROOT}/certs/l{i % 8}/{fingerprints[i % 8][:16]}/;\n"
                    for i in range(24)).encode()
    swaps = {fp.encode(): fp[::-1].upper().encode() for fp in fingerprints[:6]}
    values = {f"{ROOT}/certs/l{i}/{fp[:16]}/;".encode(): f"{ROOT}/certs/l{i}/new/;".encode()
              for i, fp in enumerate(fingerprints[:6])}
    one_pass = (patch._swap_fingerprints(manifest, swaps),
                patch._swap_map_values(block, values))
    each: list[tuple[bytes, dict[bytes, int]]] = []
    for data, table, swap in ((manifest, swaps, patch._swap_fingerprints),
                              (block, values, patch._swap_map_values)):
        counts: dict[bytes, int] = {}
        for old, new in table.items():
            data, found = swap(data, {old: new})
            counts.update(found)
        each.append((data, counts))
    assert list(one_pass) == each
    assert one_pass[0][1] == dict.fromkeys(swaps, 3)
    assert one_pass[1][1] == dict.fromkeys(values, 3)
    assert fingerprints[0].encode() in one_pass[0][0]  # the tenant's value stays


def test_a_patched_release_never_sent_is_removed_once_built_and_nothing_waits(
    tmp_path: Path,
) -> None:
    from concurrent.futures import Future

    from certbot_epages.deploy import release
    from certbot_epages.deploy.deployer import Deployer, _PatchPlan

    def built(name: str) -> tuple[patch.Patched, release.Built]:
        (tmp_path / name).mkdir()
        return cast(patch.Patched, None), release.Built(name, tmp_path / name)

    running: Future[tuple[patch.Patched, release.Built]] = Future()
    finished: Future[tuple[patch.Patched, release.Built]] = Future()
    finished.set_result(built("finished"))
    refused: Future[tuple[patch.Patched, release.Built]] = Future()
    refused.set_exception(patch.NoPatch("the spool's copy changed"))
    plan = _PatchPlan(Live(tmp_path / "live").base, [], [], {},
                      {"lb1": running, "lb2": finished, "lb3": refused})
    Deployer._patch_abandon(plan)  # returns at once, although lb1's build still runs
    assert not plan.builds and not (tmp_path / "finished").exists()
    running.set_result(built("late"))  # the build ends after the run gave up on it
    assert not (tmp_path / "late").exists()
