"""Every claim of every paper, predicted against measured: ``python -m studies.report``.

Collects the stores of every study (:mod:`studies.catalog`) under ``--results`` (default
``results/``; ``results/quick/`` with ``--quick``), runs each study whose store is missing or
holds a run with other parameters (a store of the same run is reused -- the study resumes it
and recomputes nothing), and writes three views of all the claims next to the stores:

* ``report.html`` -- one self-contained page (CSS inline, figures embedded, no script, nothing
  fetched): provenance header, one claims table per paper, "where the theory stops holding"
  (every claim that fails or is not tested, with the reason), and per study its figure,
  parameters and store;
* ``report.md`` -- the same in Markdown;
* ``claims.csv`` -- one tidy row per claim (``pandas.read_csv``).

Each study's own output goes to ``<results>/logs/<name>.log``; the terminal shows which study
runs and how long the rest should take (from the previous report in that folder, else the
README's measured times). Exit status: 0 when no claim fails, 1 when a claim fails or a study
could not run (the failing claims are printed), 2 for usage errors.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import importlib
import io
import json
import sys
import time
from pathlib import Path

from studies.catalog import PAPERS, STUDIES
from studies.lock import store_lock
from studies.cli import StudyParser, UsageError, executor_options, positive_int, run_main, store_errors, use_device
from studies.guards import check_output
from studies.parsing import out_path

__all__ = ["main", "collect", "select"]

TIMES_FILE = "report_times.json"
# what the report writes in its --results folder besides the studies' stores
OWN_FILES = ("report.html", "report.md", "claims.csv", TIMES_FILE, "logs", "figures", "*.png")

EXAMPLES = """\
examples:
  python -m studies.report --quick                 # every study, small (about 2 minutes), results/quick/
  python -m studies.report                         # the default runs (about 10 minutes on 2 cores)
  python -m studies.report --only convergence,icl-train
  python -m studies.report --skip tensor_attention --workers 2
studies: """ + ", ".join(e.name for e in STUDIES)


def _names(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(t.strip().replace("-", "_") for t in text.split(",") if t.strip()))
    known = {e.name for e in STUDIES}
    bad = [n for n in names if n not in known]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"unknown study {', '.join(bad) or repr(text)}; choose from "
                                         + ", ".join(sorted(known)))
    return names


def build_parser() -> argparse.ArgumentParser:
    p = StudyParser(prog="python -m studies.report", description=__doc__.split("\n")[0],
                    epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=out_path, default=None,
                   help="folder of the stores and the report (default results/, or results/quick/ with --quick)")
    p.add_argument("--quick", action="store_true", help="pass --quick to every study (small runs, seconds each)")
    p.add_argument("--only", type=_names, default=None, metavar="LIST", help="run and report only these studies")
    p.add_argument("--skip", type=_names, default=(), metavar="LIST", help="leave these studies out")
    p.add_argument("--workers", type=positive_int, default=1, help="worker processes, passed to every study "
                                                                    "that takes them (default 1)")
    p.add_argument("--dask-local", type=positive_int, default=None, metavar="N", help="passed to the studies")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS", help="passed to the studies")
    p.add_argument("--device", choices=("cpu", "gpu", "auto"), default="cpu", help="passed to the studies")
    p.add_argument("--no-progress", action="store_true", help="no progress bars inside the studies")
    p.add_argument("--no-wait", action="store_true",
                   help="refuse at once when another report or study is writing the same --results")
    p.add_argument("--reanalyze", action="store_true",
                   help="re-derive the analysis and claims of every store found (python -m studies.reanalyze "
                        "--write) instead of running its study; studies without a store still run")
    return p


def select(only, skip, results: Path | None = None) -> list:
    """The catalogue entries to report, in catalogue order, with the studies they read added.
    A study left out with ``--skip`` that a chosen one reads is not run: its store must already
    be in ``results`` (it is reported from there), else that is a usage error."""
    chosen = [e for e in STUDIES if (only is None or e.name in only) and e.name not in skip]
    names = {e.name for e in chosen}
    for e in list(chosen):
        if e.reads and e.reads not in names:
            if e.reads in skip:
                store = None if results is None else Path(results) / f"{e.reads}.zarr"
                if store is None or not (store / "zarr.json").exists():
                    raise UsageError(f"{e.name} reads the store of {e.reads}, which --skip leaves out and "
                                     f"{store or 'the results folder'} does not hold: skip {e.name} too, or run "
                                     f"{e.reads}")
                continue
            names.add(e.reads)
    return [e for e in STUDIES if e.name in names]


def _pass_through(entry, args) -> list[str]:
    out = []
    if entry.executor:
        if args.workers > 1:
            out += ["--workers", str(args.workers)]
        if args.dask_local:
            out += ["--dask-local", str(args.dask_local)]
        if args.scheduler:
            out += ["--scheduler", args.scheduler]
    if args.device != "cpu" and "gpu" in entry.devices:
        out += ["--device", args.device]
    if args.no_progress:
        out.append("--no-progress")
    return out


def _run(entry, argv: list[str], log: Path) -> tuple[int, str]:
    """Run one study in this process, its output into ``log``; returns (exit status, stderr)."""
    mod = importlib.import_module(entry.runner)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = mod.main(argv)
        except SystemExit as e:  # argparse
            rc = e.code if isinstance(e.code, int) else 2
        except Exception as e:  # noqa: BLE001 - reported, the other studies still run
            import traceback

            traceback.print_exc(file=err)
            rc = 1
            err.write(f"{type(e).__name__}: {e}\n")
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ python -m {entry.runner} {' '.join(argv)}\n{out.getvalue()}{err.getvalue()}\n")
    return int(rc or 0), err.getvalue()


def _reanalyze(store: Path, log: Path) -> tuple[int, str]:
    """Re-derive a store's analysis and claims in place (:mod:`studies.reanalyze`), its output
    into ``log``; returns (exit status, stderr)."""
    from studies import reanalyze

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = reanalyze.main([str(store), "--write"])
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ python -m studies.reanalyze {store} --write\n{out.getvalue()}{err.getvalue()}\n")
    return int(rc or 0), err.getvalue()


def _estimates(results: Path, quick: bool) -> dict:
    times = {e.name: (e.quick_s if quick else e.default_s) for e in STUDIES}
    with contextlib.suppress(OSError, ValueError):
        times.update(json.loads((results / TIMES_FILE).read_text()))
    return times


def _fmt_s(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min"


def run_all(entries, args, results: Path) -> list[dict]:
    """Run (or resume) every study; one record per study for the report."""
    logs = results / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    est = _estimates(results, args.quick)
    records = []
    measured = {}
    for i, entry in enumerate(entries):
        left = sum(est.get(e.name, 60) for e in entries[i:])
        print(f"[{i + 1}/{len(entries)}] {entry.name}: running (about {_fmt_s(est.get(entry.name, 60))}; "
              f"about {_fmt_s(left)} for the rest)", flush=True)
        argv = entry.argv(results, quick=args.quick) + _pass_through(entry, args)
        log = logs / f"{entry.name}.log"
        log.write_text("")
        t0 = time.perf_counter()
        store = results / f"{entry.name}.zarr"
        if getattr(args, "reanalyze", False) and (store / "zarr.json").exists():
            rc, err = _reanalyze(store, log)
            status = "re-analysed" if rc == 0 else f"error: {err.strip().splitlines()[-1] if err.strip() else rc}"
            print(f"   {entry.name}: {status} in {_fmt_s(time.perf_counter() - t0)}", flush=True)
            records.append({"entry": entry, "argv": argv, "status": status, "seconds": time.perf_counter() - t0,
                            "log": str(log)})
            continue
        rc, err = _run(entry, argv, log)
        status = "ran"
        if rc == 2 and "--overwrite" in err:
            print(f"   {entry.name}: its store holds a run with other parameters; replacing it", flush=True)
            rc, err = _run(entry, argv + ["--overwrite"], log)
        seconds = time.perf_counter() - t0
        if rc != 0:
            last = [ln for ln in err.strip().splitlines() if ln.strip()][-1:] or [f"exit status {rc}"]
            status = f"error: {last[0]}"
            print(f"   {entry.name}: could not run ({last[0]}); see {log}", flush=True)
        else:
            with contextlib.suppress(OSError):
                status = "reused" if "(0 computed" in log.read_text() else "ran"
            if status == "ran":  # the time a rerun from scratch would take
                measured[entry.name] = round(seconds, 1)
            print(f"   {entry.name}: {status} in {_fmt_s(seconds)}", flush=True)
        records.append({"entry": entry, "argv": argv, "status": status, "seconds": seconds, "log": str(log)})
    with contextlib.suppress(OSError, ValueError):
        old = json.loads((results / TIMES_FILE).read_text()) if (results / TIMES_FILE).exists() else {}
        (results / TIMES_FILE).write_text(json.dumps({**old, **measured}, indent=1, sort_keys=True))
    return records


def collect(records: list[dict], results: Path):
    """Claims (a DataFrame, one row per stored claim), study records and provenance, and the
    figures drawn from each store into ``<results>/figures/``."""
    import pandas as pd
    import zarr

    from studies.claims import counts, read_claims

    rows, studies, devices, versions, shas = [], [], set(), {}, set()
    figdir = results / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    for rec in records:
        entry = rec["entry"]
        store = results / f"{entry.name}.zarr"
        command = f"python -m {entry.runner} {' '.join(rec['argv'])}"
        info = {"name": entry.name, "paper": entry.paper, "command": command, "store": str(store),
                "params": {}, "figures": [], "status": rec["status"], "seconds": rec["seconds"], "counts": {}}
        studies.append(info)
        if rec["status"].startswith("error") or not (store / "zarr.json").exists():
            rows.append({"paper": entry.paper, "study": entry.name, "claim": f"{entry.name}.(run)", "where": "",
                         "source": "", "statement": "the study runs to completion", "prediction": "exit status 0",
                         "measured": float("nan"), "se": float("nan"), "lo": float("nan"), "hi": float("nan"),
                         "test": "", "tolerance": float("nan"), "tolerance_source": "", "outcome": "fails",
                         "reason": rec["status"], "role": "evidence", "source_url": ""})
            info["counts"] = {"fails": 1}
            continue
        attrs = dict(zarr.open_group(str(store), mode="r").attrs)
        devices.add(str(attrs.get("device", "cpu")))
        shas.add((attrs.get("git_sha", "unknown"), int(attrs.get("git_dirty", 0))))
        with contextlib.suppress(ValueError, TypeError):
            versions.update(json.loads(attrs.get("versions", "{}")))
        with contextlib.suppress(ValueError, TypeError):
            info["params"] = json.loads(attrs.get("params_json", "{}"))
        claims = read_claims(store)
        info["counts"] = counts(claims)
        for c in claims:
            rows.append({"paper": entry.paper, "study": entry.name, "claim": c.name, "where": c.where,
                         "source": c.source, "statement": c.statement,
                         "prediction": c.prediction_text or (f"{c.prediction:.4g}" if c.prediction == c.prediction else ""),
                         "measured": c.measured, "se": c.se, "lo": c.lo, "hi": c.hi, "test": c.test,
                         "tolerance": c.tolerance, "tolerance_source": c.tolerance_source, "outcome": c.outcome,
                         "reason": c.reason, "role": c.role, "source_url": _source_url(c.source)})
        fig = importlib.import_module(entry.figure)
        try:
            info["figures"] = [str(p) for p in fig.draw(store, figdir / f"{entry.name}.png", dpi=90)]
        except Exception as e:  # noqa: BLE001 - a figure that cannot be drawn is reported, not fatal
            info["status"] += f" (figure not drawn: {type(e).__name__}: {e})"
    claims = pd.DataFrame(rows, columns=["paper", "study", "claim", "where", "source", "statement", "prediction",
                                         "measured", "se", "lo", "hi", "test", "tolerance", "tolerance_source",
                                         "outcome", "reason", "role", "source_url"])
    order = {p: i for i, p in enumerate(PAPERS.values())}
    claims = claims.sort_values("paper", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)
    return claims, studies, {"devices": devices, "versions": versions, "shas": shas}


def _source_url(source: str) -> str:
    """A link to the theory-note section a claim's source cites first (``notes PAGE §N``), or ""
    when it cites none that resolves."""
    from studies import citations

    for page, section in citations.find(source):
        if citations.resolves(page, section):
            return citations.url(page, section)
    return ""


def _meta(args, results: Path, prov: dict, total: float) -> dict:
    from studies.sweep import _git_info, _versions

    sha, dirty = _git_info()
    cmd = "python -m studies.report" + (" --quick" if args.quick else "")
    if args.results is not None:
        cmd += f" --results {args.results}"
    if args.only:
        cmd += " --only " + ",".join(args.only)
    if args.skip:
        cmd += " --skip " + ",".join(args.skip)
    return {"title": "Attention-theory workbench: every claim, predicted against measured"
                     + (" (quick runs)" if args.quick else ""),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "git_sha": sha, "git_dirty": dirty, "versions": json.loads(_versions()),
            "device": ", ".join(sorted(prov["devices"])) or "cpu", "command": cmd, "results": str(results),
            "total_seconds": total}


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    results = args.results or (Path("results") / "quick" if args.quick else Path("results"))
    check_output(results, kind="folder", option="--results", allowed=OWN_FILES)
    executor_options(args)  # the executor options' own checks
    use_device(args.device)  # --device gpu without a usable GPU is one line, before anything runs
    entries = select(args.only, set(args.skip), results)
    if not entries:
        raise UsageError("--only/--skip leave no study to report")
    results.mkdir(parents=True, exist_ok=True)
    with store_errors(results), store_lock(results, wait=not args.no_wait):
        return _report(args, entries, results)


def _report(args, entries, results: Path) -> int:
    t0 = time.perf_counter()
    records = run_all(entries, args, results)
    claims, studies, prov = collect(records, results)
    from paper_figs.report import render_html, render_markdown

    meta = _meta(args, results, prov, time.perf_counter() - t0)
    (results / "report.html").write_text(render_html(meta, claims, studies), encoding="utf-8")
    (results / "report.md").write_text(render_markdown(meta, claims, studies, base=results), encoding="utf-8")
    claims.to_csv(results / "claims.csv", index=False)
    n = {k: int((claims["outcome"] == k).sum()) for k in ("holds", "fails", "not tested")}
    ev = int(((claims["outcome"] == "holds") & (claims["role"] == "evidence")).sum())
    print(f"claims: {n['holds']} hold ({ev} evidence, {n['holds'] - ev} consistency), {n['fails']} fail, "
          f"{n['not tested']} not tested ({len(studies)} studies, {time.perf_counter() - t0:.0f} s)")
    for paper, sub in claims.groupby("paper", sort=False):
        k = {o: int((sub["outcome"] == o).sum()) for o in ("holds", "fails", "not tested")}
        print(f"  {paper}: {k['holds']} hold, {k['fails']} fail, {k['not tested']} not tested")
    failing = claims[claims["outcome"] == "fails"]
    for _, r in failing.iterrows():
        where = f"[{r['where']}]" if r["where"] else ""
        print(f"  FAILS {r['study']}: {r['claim']}{where}: {r['reason']}")
    print(f"wrote {results / 'report.html'}, {results / 'report.md'}, {results / 'claims.csv'}")
    return 1 if len(failing) else 0


def main(argv=None) -> int:
    return run_main(_main, argv, prog="python -m studies.report")


if __name__ == "__main__":
    sys.exit(main())
