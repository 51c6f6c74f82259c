"""The verdict report's pages: one self-contained HTML file and its Markdown twin.

Presentation only: ``python -m studies.report`` collects the claims (one row per stored claim,
as a pandas DataFrame with the columns of :data:`COLUMNS`), each study's parameters, figures
and timings, and the run's provenance; :func:`render_html` and :func:`render_markdown` turn
them into pages. The HTML page needs nothing but itself: CSS inline, figures embedded as PNG
data URIs, no script, nothing fetched from the network. Claims are grouped by paper (one
table per paper), failing claims first, then the untested ones, then those that hold, and
each outcome has its own colour. A claim is *evidence* (a measurement against a prediction) or a
*consistency* check (the theory or the code against itself); the counts keep the two apart, and
each source that cites the theory notes links to its section (``source_url``). The page fits a
1366-pixel laptop window: the claims table has fixed column widths, long text wraps and very
long statements, sources and reasons fold into ``<details>``; nothing scrolls sideways.

``study`` records (a list of dicts) have the keys ``name``, ``paper``, ``command``, ``store``,
``params`` (a dict), ``figures`` (PNG paths), ``status`` (``ran``, ``reused`` or ``error: ...``),
``seconds`` and ``counts`` (claims by outcome). ``meta`` has ``title``, ``created``,
``git_sha``, ``git_dirty``, ``versions`` (a dict), ``device``, ``command``, ``results`` and
``total_seconds``.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

__all__ = ["COLUMNS", "OUTCOME_ORDER", "render_html", "render_markdown"]

COLUMNS = ("paper", "study", "claim", "where", "source", "statement", "prediction", "measured", "se", "lo",
           "hi", "test", "tolerance", "tolerance_source", "outcome", "reason", "role", "source_url")
FOLD = 220  # characters of a statement, source or reason shown before the rest folds away
OUTCOME_ORDER = {"fails": 0, "not tested": 1, "holds": 2}

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto; max-width: 1320px;
       color: #1d1d1d; line-height: 1.4; padding: 0 1em; overflow-wrap: anywhere; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; width: 100%; font-size: 0.84em; margin: 0.8em 0; }
table.claims { table-layout: fixed; }
th, td { border: 1px solid #c8c8c8; padding: 4px 5px; vertical-align: top; text-align: left;
         overflow-wrap: anywhere; word-break: break-word; }
th { background: #ececec; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.holds td.outcome { background: #d7f0d2; } tr.fails td.outcome { background: #f6c9c4; font-weight: bold; }
tr.not-tested td.outcome { background: #f1e7c3; }
tr.fails { background: #fdf0ee; }
.badge { display: inline-block; padding: 1px 7px; border-radius: 9px; margin-right: 4px; font-size: 0.9em; }
.b-holds { background: #d7f0d2; } .b-fails { background: #f6c9c4; } .b-not-tested { background: #f1e7c3; }
.b-consistency { background: #dfe6f3; }
.role { color: #47628f; font-size: 0.8em; }
.meta td:first-child { font-weight: 600; width: 14em; } .meta { width: auto; max-width: 100%; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 0.85em; white-space: pre-wrap; }
code { overflow-wrap: anywhere; }
details.fold summary { cursor: pointer; }
.small { color: #555; font-size: 0.85em; }
"""


def _esc(x) -> str:
    return html.escape("" if x is None else str(x))


def _num(v, digits=4) -> str:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return ""
    if v != v:  # NaN
        return ""
    return f"{v:.{digits}g}"


def _measured(row) -> str:
    m, se, lo, hi = (_num(row.get(k)) for k in ("measured", "se", "lo", "hi"))
    if not m:
        return ""
    out = m + (f" ± {se}" if se and float(row.get("se")) > 0 else "")
    if lo and hi:
        out += f" [{lo}, {hi}]"
    return out


def _counts_badges(counts: dict) -> str:
    badges = []
    for k in ("holds", "fails", "not tested"):
        text = f"{counts.get(k, 0)} {k}"
        if k == "holds" and "consistency" in counts:
            text += f" ({counts.get('evidence', 0)} evidence, {counts['consistency']} consistency)"
        badges.append(f'<span class="badge b-{k.replace(" ", "-")}">{text}</span>')
    return "".join(badges)


def _fold(text) -> str:
    """Escaped text; past :data:`FOLD` characters the rest folds into a ``<details>``."""
    text = "" if text is None else str(text)
    if len(text) <= FOLD:
        return _esc(text)
    cut = text.rfind(" ", 0, FOLD)
    cut = cut if cut > FOLD // 2 else FOLD
    return (f'<details class="fold"><summary>{_esc(text[:cut])} …</summary>{_esc(text[cut:])}</details>')


def _source(r) -> str:
    url = r.get("source_url") if hasattr(r, "get") else ""
    text = _fold(r["source"])
    return f'<a href="{_esc(url)}">{text}</a>' if url else text


def _sorted(df):
    return df.assign(_o=df["outcome"].map(OUTCOME_ORDER)).sort_values(["_o", "study", "claim", "where"],
                                                                      kind="stable").drop(columns="_o")


def _claims_table(df) -> str:
    cols = ("<colgroup><col style='width:7%'><col style='width:10%'><col style='width:17%'><col style='width:12%'>"
            "<col style='width:13%'><col style='width:11%'><col style='width:15%'><col style='width:15%'></colgroup>")
    head = (cols + "<tr><th>study</th><th>claim</th><th>statement</th><th>source</th><th>prediction (this run)</th>"
            "<th>measured ± SE [interval]</th><th>tolerance: source</th><th>outcome</th></tr>")
    rows = []
    previous = None
    for _, r in _sorted(df).iterrows():
        cls = r["outcome"].replace(" ", "-")
        same = previous == (r["study"], r["claim"], r["outcome"])
        previous = (r["study"], r["claim"], r["outcome"])
        statement = "<span class='small'>(as above)</span>" if same else _fold(r["statement"])
        source = "" if same else _source(r)
        claim = _esc(r["claim"]) + (f"<br><span class='small'>{_esc(r['where'])}</span>" if r["where"] else "")
        if r.get("role", "evidence") == "consistency":
            claim += "<br><span class='role'>consistency</span>"
        tol = ""
        if r["outcome"] != "not tested":
            tol = f"{_esc(_num(r['tolerance']))}: {_fold(r['tolerance_source'])}<br><span class='small'>{_esc(r['test'])}</span>"
        outcome = _esc(r["outcome"]) + (f"<br><span class='small'>{_fold(r['reason'])}</span>" if r["reason"] else "")
        pred = _esc(r["prediction"])
        rows.append(f'<tr class="{cls}"><td>{_esc(r["study"])}</td><td>{claim}</td><td>{statement}</td>'
                    f'<td class="small">{source}</td><td>{pred}</td><td class="num">{_esc(_measured(r))}</td>'
                    f'<td class="small">{tol}</td><td class="outcome">{outcome}</td></tr>')
    return f'<table class="claims">{head}{"".join(rows)}</table>'


def _img(path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{_esc(Path(path).name)}" src="data:image/png;base64,{data}">'


def _counts(df) -> dict:
    """Claims by outcome; those that hold split into evidence and consistency."""
    out = {k: int((df["outcome"] == k).sum()) for k in ("holds", "fails", "not tested")}
    role = df["role"] if "role" in df else None
    if role is not None:
        holds = df["outcome"] == "holds"
        out["evidence"] = int((holds & (role != "consistency")).sum())
        out["consistency"] = int((holds & (role == "consistency")).sum())
    return out


def render_html(meta: dict, claims, studies: list[dict]) -> str:
    """The report as one self-contained HTML page (see the module docstring)."""
    import pandas as pd

    df = claims if len(claims) else pd.DataFrame(columns=COLUMNS)
    total = _counts(df)
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_esc(meta['title'])}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>{_esc(meta['title'])}</h1><p>{_counts_badges(total)}</p>"]
    versions = ", ".join(f"{k} {v}" for k, v in sorted(meta.get("versions", {}).items()))
    timing = "; ".join(f"{s['name']}: {s['status']} {s['seconds']:.0f} s" for s in studies)
    parts.append('<table class="meta">'
                 f"<tr><td>created</td><td>{_esc(meta['created'])}</td></tr>"
                 f"<tr><td>git commit</td><td>{_esc(meta['git_sha'])}{' (uncommitted changes)' if meta.get('git_dirty') else ''}</td></tr>"
                 f"<tr><td>device</td><td>{_esc(meta['device'])}</td></tr>"
                 f"<tr><td>packages</td><td>{_esc(versions)}</td></tr>"
                 f"<tr><td>time per study</td><td>{_esc(timing)}</td></tr>"
                 f"<tr><td>total</td><td>{meta.get('total_seconds', 0):.0f} s</td></tr>"
                 f"<tr><td>reproduce</td><td><code>{_esc(meta['command'])}</code></td></tr>"
                 "</table>")
    parts.append("<h2>Claims by paper</h2><p class='small'>One row per claim: the prediction the theory makes "
                 "for this run's own parameters, the measurement with its standard error, the tolerance and where it "
                 "comes from, and the outcome. Failing claims first, then untested ones, then those that hold.</p>")
    for paper, sub in df.groupby("paper", sort=False):
        parts.append(f"<h3>{_esc(paper)}</h3><p>{_counts_badges(_counts(sub))}</p>{_claims_table(sub)}")
    stop = df[df["outcome"] != "holds"]
    parts.append("<h2>Where the theory stops holding</h2>")
    if len(stop):
        items = []
        for _, r in _sorted(stop).iterrows():
            key = f"{r['claim']}" + (f" [{r['where']}]" if r["where"] else "")
            items.append(f"<li><b>{_esc(r['outcome'])}</b> — {_esc(r['study'])}: {_esc(key)} — {_esc(r['reason'])}</li>")
        parts.append(f"<ul>{''.join(items)}</ul>")
    else:
        parts.append("<p>Every claim holds on these runs.</p>")
    parts.append("<h2>Studies</h2>")
    for s in studies:
        parts.append(f"<h3 id=\"{_esc(s['name'])}\">{_esc(s['name'])}</h3>"
                     f"<p>{_esc(s['paper'])} — {_counts_badges(s.get('counts', {}))} — {_esc(s['status'])} "
                     f"in {s['seconds']:.0f} s</p>"
                     f"<p>store: <a href=\"{_esc(Path(s['store']).resolve().as_uri())}\">{_esc(s['store'])}</a>; "
                     f"command: <code>{_esc(s['command'])}</code></p>")
        for fig in s.get("figures", []):
            parts.append(f"<figure>{_img(fig)}<figcaption class='small'>{_esc(Path(fig).name)}</figcaption></figure>")
        if s.get("params"):
            parts.append(f"<details><summary>parameters</summary><pre>{_esc(json.dumps(s['params'], indent=1, sort_keys=True))}</pre></details>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _md_cell(x) -> str:
    return str(x if x is not None else "").replace("|", "\\|").replace("\n", " ")


def render_markdown(meta: dict, claims, studies: list[dict], base=None) -> str:
    """The same content as Markdown (figures as links relative to ``base``, the folder the
    Markdown file is written in)."""
    import pandas as pd

    df = claims if len(claims) else pd.DataFrame(columns=COLUMNS)
    c = _counts(df)
    roles = f" ({c.get('evidence', 0)} evidence, {c.get('consistency', 0)} consistency)" if "evidence" in c else ""
    out = [f"# {meta['title']}", "",
           f"{c['holds']} hold{roles}, {c['fails']} fail, {c['not tested']} not tested — created {meta['created']}, "
           f"commit {meta['git_sha']}{' (dirty)' if meta.get('git_dirty') else ''}, device {meta['device']}, "
           f"total {meta.get('total_seconds', 0):.0f} s", "",
           f"Reproduce: `{meta['command']}`", "",
           "Packages: " + ", ".join(f"{k} {v}" for k, v in sorted(meta.get("versions", {}).items())), "",
           "## Claims by paper", ""]
    for paper, sub in df.groupby("paper", sort=False):
        k = _counts(sub)
        out += [f"### {paper}", "", f"{k['holds']} hold, {k['fails']} fail, {k['not tested']} not tested", "",
                "| outcome | study | claim | prediction | measured ± SE | tolerance (source) | reason |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        for _, r in _sorted(sub).iterrows():
            key = r["claim"] + (f" [{r['where']}]" if r["where"] else "")
            tol = f"{_num(r['tolerance'])} ({r['tolerance_source']})" if r["outcome"] != "not tested" else ""
            out.append("| " + " | ".join(_md_cell(v) for v in (
                r["outcome"].upper() if r["outcome"] == "fails" else r["outcome"], r["study"], key,
                r["prediction"], _measured(r), tol, r["reason"])) + " |")
        out.append("")
    out += ["## Where the theory stops holding", ""]
    stop = df[df["outcome"] != "holds"]
    for _, r in _sorted(stop).iterrows():
        key = r["claim"] + (f" [{r['where']}]" if r["where"] else "")
        out.append(f"- **{r['outcome']}** — {r['study']}: {key} — {r['reason']}")
    if not len(stop):
        out.append("Every claim holds on these runs.")
    out += ["", "## Studies", ""]
    for s in studies:
        k = s.get("counts", {})
        out += [f"### {s['name']}", "",
                f"{s['paper']} — {k.get('holds', 0)} hold, {k.get('fails', 0)} fail, {k.get('not tested', 0)} not "
                f"tested — {s['status']} in {s['seconds']:.0f} s", "",
                f"store `{s['store']}`; command `{s['command']}`", ""]
        for f in s.get("figures", []):
            rel = Path(f).resolve().relative_to(Path(base).resolve()) if base is not None else Path(f)
            out.append(f"![{Path(f).name}]({rel.as_posix()})")
        out.append("")
    return "\n".join(out) + "\n"
