"""Number formats of results.md."""

from __future__ import annotations

from pathlib import Path

import jinja2


def num(value: float | None, digits: int = 2) -> str:
    """A number with ``digits`` decimals, a dash for none."""
    return "–" if value is None else f"{value:.{digits}f}"


def mib(kb: int | None) -> str:
    """KiB as whole MiB, a dash for none."""
    return "–" if not kb else f"{kb / 1024:.0f}"


def kib(n: int | None) -> str:
    """Bytes as KiB, or MiB from 10 MiB on."""
    if n is None:
        return "–"
    return f"{n / 1024:.0f} KiB" if n < 10 * 1024 * 1024 else f"{n / 1024 / 1024:.1f} MiB"


def table(head: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def text(name: str, **values: object) -> list[str]:
    """The prose of a section: ``text/<name>.md.j2`` filled with ``values``, as lines."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "text"),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        keep_trailing_newline=True, autoescape=False)
    return environment.get_template(f"{name}.md.j2").render(**values).splitlines()
