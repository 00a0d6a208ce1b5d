"""A self-contained HTML page of dedup groups: one row of thumbnails per group, the kept image
marked, scores to the kept image, paged (arrow keys turn pages) so a person can go through
thousands of groups quickly. Thumbnails are embedded once each as base64 JPEGs."""

from __future__ import annotations

import base64
import html
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from ..errors import ImageError, InputError
from ..fileio import atomic_write, json_text, printable
from ..report import thumbnail_jpeg

if TYPE_CHECKING:
    from .result import DedupResult

DEFAULT_PAGE_SIZE = 20


def _thumbs(paths: list[Path], size: int, progress: bool) -> list[str]:
    def one(path: Path) -> str:
        try:
            return base64.b64encode(thumbnail_jpeg(path, size)).decode("ascii")
        except (ImageError, OSError):
            return ""

    quiet = not progress or not sys.stderr.isatty()
    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        return list(
            tqdm(pool.map(one, paths), total=len(paths), desc="thumbnails", unit="img", disable=quiet)
        )


def _script_json(data: object) -> str:
    """JSON that cannot end or confuse the <script> element it sits in."""
    text = json_text(data, indent=None, compact=True)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def write_dedup_report(
    result: DedupResult,
    out_html: str | Path,
    *,
    page_size: int = DEFAULT_PAGE_SIZE,
    thumb_size: int = 128,
    title: str | None = None,
    progress: bool = True,
) -> Path:
    """Write the page for ``result`` to ``out_html`` atomically; returns the path."""
    if page_size < 1:
        raise InputError(f"page size must be positive, not {page_size}")
    out = Path(out_html)
    if out.is_dir():
        raise InputError(f"--report {out}: is a folder; give the page's file name (e.g. dedup.html)")
    used = sorted({m for g in result.groups for m in g.members})
    slot = {m: n for n, m in enumerate(used)}
    groups = []
    for g in result.doc_groups():
        groups.append(
            [
                [
                    slot[m["id"]],
                    printable(result.items[m["id"]].name),
                    int(m["kept"]),
                    result.items[m["id"]].set == "reference",
                    m["score_to_kept"],
                ]
                for m in sorted(g["members"], key=lambda m: (not m["kept"], result.items[m["id"]].name))
            ]
        )
    cut = result.threshold
    data = {
        "title": title or "lookalike dedup",
        "subtitle": (
            f"{len(result.groups)} group(s), {len(result.duplicates())} duplicate(s) · model "
            f"{result.settings.get('model', {}).get('name')} · {cut.score} threshold {cut.value:g} ({cut.source})"
        ),
        "page_size": int(page_size),
        "thumb": int(thumb_size),
        "thumbs": _thumbs([Path(result.items[m].path) for m in used], thumb_size, progress),
        "groups": groups,
    }
    page = _PAGE.replace("__TITLE__", html.escape(printable(data["title"]))).replace(
        "__DATA__", _script_json(data)
    )
    atomic_write(out, lambda h: h.write(page.encode("utf-8")))
    return out


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font:14px system-ui,sans-serif;margin:1em 2em;background:#fafafa;color:#222}
h1{font-size:1.3em;margin:0}.sub{color:#666;margin:.2em 0 1em}
.bar{position:sticky;top:0;background:#fafafa;padding:.5em 0;display:flex;gap:.6em;align-items:center}
.group{background:#fff;border:1px solid #ddd;border-radius:6px;margin:.6em 0;padding:.5em}
.group h2{font-size:.95em;margin:0 0 .4em;color:#444}
.row{display:flex;flex-wrap:wrap;gap:.6em}
.card{width:var(--t);font-size:.78em;word-break:break-all;border:3px solid transparent;border-radius:4px;padding:2px}
.card img{width:var(--t);height:var(--t);object-fit:contain;background:#eee;display:block}
.card.kept{border-color:#2a9d2a}.tag{font-weight:bold;color:#2a9d2a}.lib{color:#1d5fbf;font-weight:bold}
.score{color:#555}
</style></head><body>
<h1 id="title"></h1><div class="sub" id="sub"></div>
<div class="bar"><button id="prev">&larr; previous</button><span id="where"></span>
<button id="next">next &rarr;</button><input id="filter" placeholder="filter by name"></div>
<div id="groups"></div>
<script>
const D = __DATA__;
document.getElementById('title').textContent = D.title;
document.getElementById('sub').textContent = D.subtitle;
document.body.style.setProperty('--t', D.thumb + 'px');
let page = 0, shown = D.groups.map((g, i) => i);
function card(m) {
  const [slot, name, kept, lib, score] = m;
  const div = document.createElement('div');
  div.className = 'card' + (kept ? ' kept' : '');
  const img = document.createElement('img');
  if (D.thumbs[slot]) img.src = 'data:image/jpeg;base64,' + D.thumbs[slot];
  img.alt = name; img.title = name; div.appendChild(img);
  const label = document.createElement('div');
  if (kept) { const t = document.createElement('span'); t.className = 'tag'; t.textContent = 'KEEP '; label.appendChild(t); }
  if (lib) { const t = document.createElement('span'); t.className = 'lib'; t.textContent = 'library '; label.appendChild(t); }
  label.appendChild(document.createTextNode(name));
  if (score !== null) { const s = document.createElement('div'); s.className = 'score'; s.textContent = 'score ' + score; label.appendChild(s); }
  div.appendChild(label);
  return div;
}
function render() {
  const pages = Math.max(1, Math.ceil(shown.length / D.page_size));
  page = Math.min(Math.max(page, 0), pages - 1);
  const box = document.getElementById('groups');
  box.replaceChildren();
  for (const i of shown.slice(page * D.page_size, (page + 1) * D.page_size)) {
    const g = document.createElement('div'); g.className = 'group';
    const h = document.createElement('h2'); h.textContent = 'group ' + i + ' \\u00b7 ' + D.groups[i].length + ' images';
    const row = document.createElement('div'); row.className = 'row';
    for (const m of D.groups[i]) row.appendChild(card(m));
    g.appendChild(h); g.appendChild(row); box.appendChild(g);
  }
  document.getElementById('where').textContent = 'page ' + (page + 1) + ' of ' + pages + ' (' + shown.length + ' groups)';
}
document.getElementById('prev').onclick = () => { page--; render(); };
document.getElementById('next').onclick = () => { page++; render(); };
document.getElementById('filter').oninput = (e) => {
  const q = e.target.value.toLowerCase();
  shown = D.groups.map((g, i) => i).filter(i => !q || D.groups[i].some(m => m[1].toLowerCase().includes(q)));
  page = 0; render();
};
document.addEventListener('keydown', (e) => {
  if (e.target.tagName === 'INPUT') return;
  if (e.key === 'ArrowRight') { page++; render(); } else if (e.key === 'ArrowLeft') { page--; render(); }
});
render();
</script></body></html>
"""
