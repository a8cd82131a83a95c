"""The checked inventory kept between runs: used only while content, templates and code match."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest
import yaml

from certbot_epages import inventory_cache
from certbot_epages.inventory import Inventory, load_inventory

pytestmark = pytest.mark.unit

TEMPLATES = ("custom-domain", "platform-wildcard")
SHOPS = [
    {"domain": "shop.example.com", "aliases": ["www.shop.example.com"],
     "template": "custom-domain", "vars": {"upstream": "10.0.0.5:8080", "n": 3, "on": True},
     "shop": "4711"},
    {"domain": "Straße.example", "template": "custom-domain", "status": "suspended"},
    {"domain": "odd.example.com", "template": "custom-domain",
     "vars": {"note": "say \"hi\"; ok"}},  # unsafe unless the template declares it safe
    {"domain": "bad..example.com", "template": "custom-domain", "shop": "66"},
]


@pytest.fixture
def inventory_file(tmp_path: Path) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(SHOPS))
    return path


def load(path: Path, cache: Path | None, templates: tuple[str, ...] = TEMPLATES,
         safe: dict[str, list[str]] | None = None) -> Inventory:
    return load_inventory(path, templates=templates, safe_vars=safe, cache=cache)


def parses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the YAML parses (a cache hit has none)."""
    import certbot_epages.inventory as module

    calls: list[int] = []
    real = module._yaml_document

    def counting(raw: bytes, where: str) -> object:
        calls.append(1)
        return real(raw, where)

    monkeypatch.setattr(module, "_yaml_document", counting)
    return calls


def test_a_hit_gives_the_same_inventory_without_parsing(
    inventory_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "spool"
    calls = parses(monkeypatch)
    first = load(inventory_file, cache)
    assert len(calls) == 1
    cached = cache / inventory_cache.FILENAME
    assert stat.S_IMODE(cached.stat().st_mode) == 0o600
    second = load(inventory_file, cache)
    assert len(calls) == 1  # not parsed again
    assert second == first == load(inventory_file, None)
    assert [s.domain for s in second.shops] == ["shop.example.com", "xn--strae-oqa.example"]
    assert second.shops[0].vars == {"upstream": "10.0.0.5:8080", "n": 3, "on": True}
    assert second.shops[0].vars["on"] is True and second.shops[0].aliases == (
        "www.shop.example.com",)
    assert [(p.index, p.owner) for p in second.problems] == [(2, "odd.example.com (no shop id)"),
                                                             (3, "66")]


def test_changed_content_is_a_miss(inventory_file: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "spool"
    load(inventory_file, cache)
    calls = parses(monkeypatch)
    inventory_file.write_text(yaml.safe_dump(SHOPS[:1]))
    assert [s.domain for s in load(inventory_file, cache).shops] == ["shop.example.com"]
    assert len(calls) == 1
    load(inventory_file, cache)
    assert len(calls) == 1  # the new content is cached now


def test_changed_templates_or_safe_vars_are_a_miss(
    inventory_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "spool"
    load(inventory_file, cache)
    calls = parses(monkeypatch)
    # The same bytes, checked against other templates: another result.
    only_wildcard = load(inventory_file, cache, templates=("platform-wildcard",))
    assert len(calls) == 1 and not only_wildcard.shops
    safe = load(inventory_file, cache, safe={"custom-domain": ["note"]})
    assert len(calls) == 2
    assert "odd.example.com" in [s.domain for s in safe.shops]
    assert load(inventory_file, cache, safe={"custom-domain": ["note"]}) == safe
    assert len(calls) == 2


def test_changed_checking_code_is_a_miss(monkeypatch: pytest.MonkeyPatch) -> None:
    before = inventory_cache.key(b"x", TEMPLATES, None)
    assert inventory_cache.key(b"x", TEMPLATES, None) == before
    assert inventory_cache.key(b"y", TEMPLATES, None) != before
    monkeypatch.setattr(inventory_cache, "__version__", "0.0.0-other")
    assert inventory_cache.key(b"x", TEMPLATES, None) != before


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "header", "empty"])
def test_a_corrupt_cache_is_ignored_and_rebuilt(
    inventory_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, damage: str,
) -> None:
    cache = tmp_path / "spool"
    good = load(inventory_file, cache)
    cached = cache / inventory_cache.FILENAME
    data = cached.read_bytes()
    header, _, payload = data.partition(b"\n")
    broken = {
        "truncate": data[: len(data) - 20],
        # Still valid JSON of the right shape, one name changed: only the checksum tells.
        "flip": header + b"\n" + payload.replace(b"shop.example.com", b"shop.example.net", 1),
        "garbage": b"\x00\xff" * 50,
        "header": b"{not json\n" + payload,
        "empty": b"",
    }[damage]
    cached.write_bytes(broken)
    calls = parses(monkeypatch)
    with caplog.at_level(logging.INFO, logger="certbot_epages.inventory_cache"):
        assert load(inventory_file, cache) == good
    assert len(calls) == 1
    assert "not used" in caplog.text
    assert cached.read_bytes() == data  # rebuilt
    load(inventory_file, cache)
    assert len(calls) == 1


def test_a_cache_others_may_write_is_not_used(
    inventory_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "spool"
    load(inventory_file, cache)
    (cache / inventory_cache.FILENAME).chmod(0o666)
    calls = parses(monkeypatch)
    load(inventory_file, cache)
    assert len(calls) == 1
    assert stat.S_IMODE((cache / inventory_cache.FILENAME).stat().st_mode) == 0o600


def test_an_unwritable_cache_only_costs_the_parse(
    inventory_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING):
        inventory = load(inventory_file, blocker / "spool")  # cannot be a directory
    assert [s.domain for s in inventory.shops][0] == "shop.example.com"
    assert "cannot write the inventory cache" in caplog.text


def test_an_unreadable_inventory_is_not_cached(tmp_path: Path) -> None:
    from certbot_epages.inventory import InventoryError

    path = tmp_path / "inventory.yaml"
    path.write_text("- [unclosed\n")
    with pytest.raises(InventoryError, match="not valid YAML"):
        load(path, tmp_path / "spool")
    assert not (tmp_path / "spool" / inventory_cache.FILENAME).exists()
