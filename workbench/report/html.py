"""``report.html``: one self-contained file (PNG plots as base64, a few lines of inline JS/CSS).

No server, no network, no external asset: it opens from a file:// URL, from an e-mail
attachment or from a CI artifact alike.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}
.summary{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}
.summary dt{font-weight:600}.summary dd{margin:0}
.rec{background:#eef6ee;border-left:4px solid #3a3;padding:.6em 1em}
.tie{background:#fff8e6;border-left-color:#c90}
table.trials{border-collapse:collapse;font-size:12px}
table.trials th,table.trials td{border:1px solid #ddd;padding:2px 5px;white-space:nowrap}
table.trials th{background:#f0f0f0;cursor:pointer;position:sticky;top:0}
table.trials th.asc::after{content:" \\25B2"}table.trials th.desc::after{content:" \\25BC"}
table.trials tr.best td{background:#e3f3e3;font-weight:600}
table.trials tr.infeasible td{color:#a33}
.wrap{overflow:auto;max-height:70vh}
.plots figure{display:inline-block;margin:.5em;vertical-align:top}
.plots img{max-width:100%;border:1px solid #eee}
"""

# Click a header to sort by it (numbers numerically, then text; blanks last); again to reverse.
JS = """
document.querySelectorAll('table.trials').forEach(function(t){
  var ths=t.tHead.rows[0].cells;
  Array.prototype.forEach.call(ths,function(th,i){th.addEventListener('click',function(){
    var asc=!th.classList.contains('asc');
    Array.prototype.forEach.call(ths,function(h){h.classList.remove('asc','desc')});
    th.classList.add(asc?'asc':'desc');
    var rows=Array.prototype.slice.call(t.tBodies[0].rows);
    rows.sort(function(a,b){
      var x=a.cells[i].getAttribute('data-v'),y=b.cells[i].getAttribute('data-v');
      if(x===''&&y==='')return 0;if(x==='')return 1;if(y==='')return -1;
      var nx=parseFloat(x),ny=parseFloat(y),r;
      if(!isNaN(nx)&&!isNaN(ny)&&isFinite(x)&&isFinite(y))r=nx-ny;else r=x<y?-1:x>y?1:0;
      return asc?r:-r;});
    rows.forEach(function(r){t.tBodies[0].appendChild(r)});
  })});
});
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A table cell as text: blanks for missing, 4 significant digits for floats."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _sort_key(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (bool,)):
        return str(int(value))
    return str(value)


def table(df, best_trial: str | None = None, table_id: str = "") -> str:
    """A sortable table of ``df``; every cell carries its raw value for sorting."""
    head = "".join(f"<th title='click to sort'>{esc(c)}</th>" for c in df.columns)
    body = []
    for row in df.itertuples(index=False):
        d = row._asdict()
        cls = []
        if best_trial is not None and str(d.get("trial")) == str(best_trial):
            cls.append("best")
        if d.get("feasible") is False:
            cls.append("infeasible")
        cells = "".join(f"<td data-v='{esc(_sort_key(v))}'>{esc(fmt(v))}</td>" for v in row)
        body.append(f"<tr class='{' '.join(cls)}'>{cells}</tr>")
    ident = f" id='{esc(table_id)}'" if table_id else ""
    return (f"<div class='wrap'><table class='trials'{ident}><thead><tr>{head}</tr></thead><tbody>"
            + "".join(body) + "</tbody></table></div>")


def image(path: Path, title: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f"<figure><img alt='{esc(title)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{esc(title)}</figcaption></figure>")


def definition_list(items: list[tuple[str, str]]) -> str:
    return "<dl class='summary'>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items) + "</dl>"


def page(title: str, sections: list[tuple[str, str]]) -> str:
    """A whole document from (heading, inner HTML) sections."""
    parts = [f"<h2>{esc(h)}</h2>\n{body}" if h else body for h, body in sections]
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n"
            f"<h1>{esc(title)}</h1>\n" + "\n".join(parts) +
            f"\n<script>{JS}</script>\n</body></html>\n")
