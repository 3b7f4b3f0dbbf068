"""A report as one list of blocks (headings, paragraphs, bullet lists, tables, figures) rendered both to Markdown and
to a self-contained HTML page (figures inlined as base64 data URIs), so the two never disagree; and the writing of a
report folder (``report.md``, its PNGs beside it, ``report.html``), each file replaced atomically.
"""

from __future__ import annotations

import base64
import html
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from cli.report.wording import NA, number


@dataclass(frozen=True)
class Figure:
    name: str  # file name beside report.md
    png: bytes
    alt: str


class Doc:
    """Report blocks rendered to Markdown and to HTML from one list, so the two never disagree."""

    def __init__(self):
        self.blocks: list[tuple] = []
        self.figures: list[Figure] = []

    def heading(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def bullets(self, items) -> None:
        items = list(items)
        if items:
            self.blocks.append(("ul", items))

    def table(self, headers: list[str], rows: list[list]) -> None:
        self.blocks.append(("table", headers, [[number(c) if not isinstance(c, str) else c for c in r] for r in rows]))

    def figure(self, figure: Figure | None, missing: str = "") -> None:
        """Add ``figure``; without one, say ``missing: not available`` (when ``missing`` is given)."""
        if figure is None:
            if missing:
                self.para(f"{missing}: {NA}.")
            return
        if any(f.name == figure.name for f in self.figures):
            raise ValueError(f"two figures named {figure.name}")
        self.figures.append(figure)
        self.blocks.append(("img", figure))

    def markdown(self) -> str:
        cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")  # noqa: E731
        out = []
        for kind, *rest in self.blocks:
            if kind == "h":
                out.append(f"{'#' * rest[0]} {rest[1]}")
            elif kind == "p":
                out.append(rest[0])
            elif kind == "ul":
                out.append("\n".join(f"- {item}" for item in rest[0]))
            elif kind == "table":
                headers, rows = rest
                lines = ["| " + " | ".join(map(cell, headers)) + " |", "|" + "---|" * len(headers)]
                out.append("\n".join(lines + ["| " + " | ".join(map(cell, row)) + " |" for row in rows]))
            else:
                out.append(f"![{rest[0].alt}]({rest[0].name})")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        esc = html.escape
        out = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{esc(title)}</title>",
            "<style>body{font-family:sans-serif;max-width:72em;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse;margin:1em 0;font-size:90%}th,td{border:1px solid #ccc;padding:.2em .5em}"
            "th{background:#f3f3f3}td{text-align:right}img{max-width:100%}</style></head><body>",
        ]
        for kind, *rest in self.blocks:
            if kind == "h":
                out.append(f"<h{rest[0]}>{esc(rest[1])}</h{rest[0]}>")
            elif kind == "p":
                out.append(f"<p>{esc(rest[0])}</p>")
            elif kind == "ul":
                out.append("<ul>" + "".join(f"<li>{esc(str(i))}</li>" for i in rest[0]) + "</ul>")
            elif kind == "table":
                headers, rows = rest
                head = "".join(f"<th>{esc(str(h))}</th>" for h in headers)
                body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in rows)
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            else:
                data = base64.b64encode(rest[0].png).decode()
                out.append(f'<figure><img alt="{esc(rest[0].alt)}" src="data:image/png;base64,{data}"></figure>')
        return "\n".join(out + ["</body></html>", ""])


def _atomic_write(path: Path, data: bytes) -> Path:
    staging = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        staging.write_bytes(data)
        os.replace(staging, path)  # readers see the old file or the new one, never half of one
    finally:
        staging.unlink(missing_ok=True)
    return path


def write_report(doc: Doc, out_dir: Path, title: str) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Images first, pages last: a page never points at an image that is not there yet.
    images = [_atomic_write(out_dir / f.name, f.png) for f in doc.figures]
    md = _atomic_write(out_dir / "report.md", doc.markdown().encode())
    page = _atomic_write(out_dir / "report.html", doc.html(title).encode())
    return {"html": page, "md": md, "images": images}
