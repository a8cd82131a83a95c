"""Reading epages.yaml: a safe YAML loader, and nodes that know their key path.

Every value is reached through a :class:`Node`, whose typed getters check it and raise a
:class:`~certbot_epages.errors.ConfigError` naming the file and the key path
(``dns.zones[0].primaries[1]: expected a string, got 5 (int)``), with a "did you mean" for
unknown keys. A secret's value is never shown.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Collection
from pathlib import Path
from typing import NoReturn

import yaml

from certbot_epages.config.model import ENV_VAR
from certbot_epages.errors import ConfigError
from certbot_epages.netaddr import HostPort


def read_yaml(source: Path) -> object:
    """The YAML document of ``source``: plain data only, duplicate keys refused."""
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{source}: config file not found; create it, or point {ENV_VAR} at the config "
            "file to use"
        ) from None
    except OSError as e:
        raise ConfigError(f"{source}: cannot read the config file: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: the config file is not UTF-8 text") from None
    try:
        return yaml.load(text, Loader=Loader)  # SafeLoader subclass: plain data only
    except yaml.MarkedYAMLError as e:
        # Build the message ourselves: str(e) quotes the offending line, which may hold a secret.
        where = ""
        if e.problem_mark is not None:
            where = f" at line {e.problem_mark.line + 1}, column {e.problem_mark.column + 1}"
        what = "; ".join(str(p) for p in (e.context, e.problem) if p)
        raise ConfigError(f"{source}: invalid YAML{where}: {what or 'syntax error'}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML: {e}") from None


_MERGE_TAG = "tag:yaml.org,2002:merge"


class Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys (the last one would silently win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[object, object]:
        """A mapping, refusing a key given twice."""
        seen: set[object] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r}", key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# --------------------------------------------------------------------------- reader helper

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


class Node:
    """One value from the YAML tree with its key path, and typed getters that check it."""

    def __init__(self, value: object, path: str, source: Path, *, secret: bool = False) -> None:
        self.value = value
        self.path = path
        self.source = source
        self.secret = secret

    @property
    def where(self) -> str:
        """``file: key.path`` for messages."""
        return f"{self.source}: {self.path}" if self.path else str(self.source)

    @property
    def base_dir(self) -> Path:
        """The directory relative paths are resolved against."""
        return self.source.parent

    def child(self, key: str | int, value: object, *, secret: bool = False) -> Node:
        """Return the node for ``key`` (a mapping key or a list index) below this one."""
        if isinstance(key, int):
            path = f"{self.path}[{key}]"
        elif _PLAIN_KEY.fullmatch(key):
            path = f"{self.path}.{key}" if self.path else key
        else:
            path = f"{self.path}[{key!r}]"
        return Node(value, path, self.source, secret=secret)

    def error(self, message: str) -> NoReturn:
        """Raise a ConfigError about this node."""
        raise ConfigError(f"{self.where}: {message}")

    def expected(self, what: str) -> NoReturn:
        """Raise "expected <what>, got <value> (<type>)"."""
        self.error(f"expected {what}, got {describe(self.value, secret=self.secret)}")

    def text(self, *, non_empty: bool = True) -> str:
        """Return the value as a string."""
        if not isinstance(self.value, str):
            self.expected("a string")
        if non_empty and not self.value.strip():
            self.expected("a non-empty string")
        return self.value

    def integer(self, minimum: int | None = None, maximum: int | None = None) -> int:
        """Return the value as an int (not a bool) within the bounds."""
        value = self.value
        if not isinstance(value, int) or isinstance(value, bool):
            self.expected("an integer")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            if maximum is None:
                self.expected(f"an integer >= {minimum}")
            self.expected(f"an integer from {minimum} to {maximum}")
        return value

    def positive_number(self) -> float:
        """Return the value as a finite number greater than zero."""
        value = self.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.expected("a number")
        if not math.isfinite(value) or value <= 0:
            self.expected("a number greater than 0")
        return float(value)

    def boolean(self) -> bool:
        """Return the value as a bool (true/false)."""
        if not isinstance(self.value, bool):
            self.expected("true or false")
        return self.value

    def items(self, *, non_empty: bool = False) -> list[Node]:
        """Return the value as a list of nodes."""
        if not isinstance(self.value, list):
            self.expected("a list")
        if non_empty and not self.value:
            self.expected("a non-empty list")
        return [self.child(i, item) for i, item in enumerate(self.value)]

    def strings(self, *, non_empty: bool = False) -> tuple[str, ...]:
        """Return the value as a list of strings (an argv or option list)."""
        return tuple(item.text(non_empty=False) for item in self.items(non_empty=non_empty))

    def hostport(self, default_port: int) -> HostPort:
        """Return the value as ``host[:port]``."""
        try:
            return HostPort.parse(self.text(), default_port)
        except ValueError as e:
            self.error(f"expected host[:port]: {e}")

    def hostports(self, default_port: int, *, non_empty: bool = False) -> tuple[HostPort, ...]:
        """Return the value as a list of ``host[:port]``."""
        return tuple(item.hostport(default_port) for item in self.items(non_empty=non_empty))

    def local_path(self) -> Path:
        """Return the value as a local path; relative ones are anchored at the config's dir."""
        text = self.text()
        if "\0" in text:
            self.expected("a path")
        return self.base_dir / text

    def mapping(self, allowed: Collection[str], *, what: str = "keys") -> Fields:
        """Return the value as a mapping whose keys must all be in ``allowed``."""
        if not isinstance(self.value, dict):
            self.expected("a mapping")
        fields: dict[str, object] = {}
        for key, value in self.value.items():
            if not isinstance(key, str):
                self.error(f"keys must be strings, got {describe(key, secret=False)}")
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                mean = f"did you mean {hint[0]!r}? " if hint else ""
                self.child(key, value).error(
                    f"unknown key; {mean}allowed {what}: {', '.join(sorted(allowed))}"
                )
            fields[key] = value
        return Fields(self, fields)

    def named_mapping(self) -> list[tuple[str, Node]]:
        """Return the value as a mapping of free-form names (strings) to nodes."""
        if not isinstance(self.value, dict):
            self.expected("a mapping")
        result = []
        for key, value in self.value.items():
            if not isinstance(key, str) or not key.strip():
                self.error(f"names must be non-empty strings, got {describe(key, secret=False)}")
            result.append((key, self.child(key, value)))
        return result


class Fields:
    """The checked keys of one mapping, with required/optional access."""

    def __init__(self, node: Node, values: dict[str, object]) -> None:
        self.node = node
        self.values = values

    def req(self, key: str, *, secret: bool = False) -> Node:
        """Return the node for a key that must be present (and not null)."""
        if key not in self.values:
            self.node.error(f"missing required key {key!r}")
        child = self.node.child(key, self.values[key], secret=secret)
        if child.value is None:
            child.error("a value is required (got null)")
        return child

    def opt(self, key: str, *, nullable: bool = False, secret: bool = False) -> Node | None:
        """Return the node for an optional key; None if absent (or null, when ``nullable``)."""
        if key not in self.values:
            return None
        if nullable and self.values[key] is None:
            return None
        return self.node.child(key, self.values[key], secret=secret)

    def has(self, key: str) -> bool:
        """Tell whether the key is present, even as null."""
        return key in self.values


def describe(value: object, *, secret: bool) -> str:
    """Describe a bad value for "got ..." (never showing the value itself if secret)."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    kind = type(value).__name__
    if secret:
        return f"a value of type {kind} (hidden)"
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{shown} ({kind})"
