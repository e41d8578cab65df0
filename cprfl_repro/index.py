"""INDEX.md of a results folder: every table and every figure with its caption and its files.

A table's caption is the first line of its Markdown (``write_table`` puts it there in bold); a
figure's is in ``figures/<name>.json`` (``save_figure``). A figure saved without a caption, or
without that file, is listed as such, never left out.
"""

from __future__ import annotations

from pathlib import Path

from cprfl_lib.io import atomic_write_text

INDEX = "INDEX.md"
NO_CAPTION = "(no caption)"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def table_caption(md: Path) -> str:
    first = md.read_text().split("\n", 1)[0].strip()
    return first[2:-2] if first.startswith("**") and first.endswith("**") and len(first) > 4 else NO_CAPTION


def figure_caption(sidecar: Path) -> str:
    import json

    if not sidecar.is_file():
        return NO_CAPTION
    return json.loads(sidecar.read_text()).get("caption") or NO_CAPTION


def _links(folder: str, name: str, exts, present) -> str:
    return " · ".join(f"[{ext}]({folder}/{name}.{ext})" for ext in exts if f"{name}.{ext}" in present)


def index_rows(output_dir: str | Path) -> dict[str, list[tuple[str, str, str]]]:
    """{"tables": [(name, caption, links)], "figures": [...]}, each sorted by name."""
    out = Path(output_dir)
    rows: dict[str, list[tuple[str, str, str]]] = {"tables": [], "figures": []}
    for kind, key_ext, exts, caption in (("tables", "md", ("md", "csv", "tex"), table_caption),
                                         ("figures", "png", ("png", "pdf"), None)):
        folder = out / kind
        present = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
        for path in sorted(folder.glob(f"*.{key_ext}")) if folder.is_dir() else []:
            name = path.stem
            text = caption(path) if caption else figure_caption(folder / f"{name}.json")
            rows[kind].append((name, text, _links(kind, name, exts, present)))
    return rows


def write_index(output_dir: str | Path, name: str | None = None) -> Path:
    """Write <output_dir>/INDEX.md: a Markdown table of the tables and one of the figures, with captions; ``name``
    (default: the folder's) is the results folder it heads (a staging folder is named by its final name)."""
    out = Path(output_dir)
    rows = index_rows(out)
    lines = [f"# Tables and figures of results/{name or out.name}", "",
             f"{len(rows['tables'])} tables and {len(rows['figures'])} figures, each with its caption.", ""]
    for kind in ("tables", "figures"):
        lines += [f"## {kind.capitalize()}", ""]
        if not rows[kind]:
            lines += [f"No {kind}.", ""]
            continue
        lines += [f"| {kind[:-1]} | caption | files |", "|---|---|---|"]
        lines += [f"| `{name}` | {_cell(caption)} | {links} |" for name, caption, links in rows[kind]]
        lines.append("")
    path = out / INDEX
    atomic_write_text(path, "\n".join(lines))
    return path
