"""Re-derive the analysis and the claims of finished stores: ``python -m studies.reanalyze STORE...``.

A store holds every parameter its analysis needs (:mod:`studies`: ``analyze(ds)`` reads them from
the store), so its claims can be derived again with no command line but the path -- after a fix
in ``theory/``, say, without simulating anything again. For each store this finds its study in
the catalogue by the stored name, runs the study's own ``analyze`` on every group of the store,
prints each group's table and the claims in the one summary format, and says which claims
differ from the ones stored. ``--write`` replaces the stored analysis and claims with the new
ones (the raw data is never touched).

Errors are one line and exit status 2: a path that is not a store, a store of no study in the
catalogue, a store whose stored parameters this version cannot read (written by another
version of its study).
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import fields
from pathlib import Path

from studies.cli import StudyParser, UsageError, analyze_quietly, run_main

__all__ = ["reanalyze", "compare", "main"]

EXAMPLES = """\
examples:
  python -m studies.reanalyze results/convergence.zarr
  python -m studies.reanalyze results/*.zarr --write     # store the re-derived claims
"""


def build_parser() -> argparse.ArgumentParser:
    p = StudyParser(prog="python -m studies.reanalyze",
                    description="Re-derive the analysis and claims of finished study stores from their data and "
                                "stored parameters alone, and show what changed.",
                    epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stores", nargs="+", type=Path, metavar="STORE", help="a study's Zarr store (results/NAME.zarr)")
    p.add_argument("--write", action="store_true",
                   help="replace the stored analysis and claims with the re-derived ones (data untouched)")
    return p


def _groups(path: Path) -> tuple[str, list[str]]:
    """(study name, groups holding data: [""] for a store of one part)."""
    import zarr

    if not path.exists():
        raise UsageError(f"{path}: no such store")
    try:
        grp = zarr.open_group(str(path), mode="r", use_consolidated=False)
        attrs = dict(grp.attrs)
    except Exception as e:  # noqa: BLE001 - not a store, or unreadable metadata
        raise UsageError(f"{path}: not a readable study store ({type(e).__name__})") from None
    study = str(attrs.get("study", ""))
    if not study:
        raise UsageError(f"{path}: not a study store (no 'study' attribute)")
    names = list(attrs.get("groups", []))
    present = set(grp.group_keys())
    return study, ([g for g in names if g in present] if names else [""])


def reanalyze(path, *, write: bool = False):
    """Re-derive the claims of the store at ``path``: returns ``(text, claims)``, the printed
    tables and the list of :class:`studies.claims.Claim` (every group's), and with ``write``
    stores them in place of the old analysis."""
    import xarray as xr

    from studies import claims as cl
    from studies.catalog import by_name
    from studies.sweep import write_analysis

    path = Path(path)
    study, groups = _groups(path)
    try:
        module = by_name(study).load()
    except KeyError:
        raise UsageError(f"{path}: a store of {study!r}, which is not a study of the catalogue") from None
    texts, every = [], []
    for group in groups:
        where = path / group if group else path
        try:
            with xr.open_zarr(str(path), group=group or None, consolidated=False) as ds:
                ds = ds.load()
        except Exception as e:  # noqa: BLE001 - damaged data: the study's --repair is the remedy
            raise UsageError(f"{where}: cannot be read ({type(e).__name__}); rerun its study with --repair") from None
        try:
            analysis, claims = analyze_quietly(module.analyze, ds)
        except KeyError as e:
            raise UsageError(f"{where}: no variable {e.args[0]!r} that {study}'s analysis needs: the store was "
                             "written by another version of the study; rerun it (with --overwrite)") from None
        texts.append((f"== {group}\n" if group else "") + module.summary(analysis))
        every.extend(claims)
        if write:
            from studies.cli import store_errors
            from studies.lock import store_lock

            with store_errors(path), store_lock(path):
                write_analysis(where, analysis.merge(cl.to_dataset(claims)))
    return "\n".join(texts), every


_NUMBERS = [f.name for f in fields(__import__("studies.claims", fromlist=["Claim"]).Claim) if f.type in ("float", float)]


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def compare(stored, derived) -> list[str]:
    """Lines naming every claim whose outcome or numbers differ between two lists of claims (a
    claim present in one only counts too); empty when they are equal."""
    old = {c.key: c for c in stored}
    new = {c.key: c for c in derived}
    out = [f"  {k}: only in the store" for k in old if k not in new]
    out += [f"  {k}: new" for k in new if k not in old]
    for k in new:
        if k not in old:
            continue
        a, b = old[k], new[k]
        diffs = [f"outcome {a.outcome} -> {b.outcome}"] if a.outcome != b.outcome else []
        diffs += [f"{name} {getattr(a, name):.6g} -> {getattr(b, name):.6g}" for name in _NUMBERS
                  if not _same(getattr(a, name), getattr(b, name))]
        if diffs:
            out.append(f"  {k}: " + ", ".join(diffs))
    return out


def _main(argv=None) -> int:
    from studies.claims import format_claims, read_claims

    args = build_parser().parse_args(argv)
    for path in args.stores:
        _groups(path)  # every path is checked before anything is written
    for path in args.stores:
        try:
            stored = read_claims(path)
        except Exception:  # noqa: BLE001 - no readable claims: everything is new
            stored = []
        text, claims = reanalyze(path, write=args.write)
        print(f"# {path}\n{text}\n{format_claims(claims)}")
        diff = compare(stored, claims)
        state = "written to the store" if args.write else "not written (--write stores them)"
        print(f"{len(diff)} claim(s) differ from the stored ones; {state}" if diff else
              f"the re-derived claims equal the stored ones{'; written' if args.write else ''}")
        for line in diff:
            print(line)
    return 0


def main(argv=None) -> int:
    return run_main(_main, argv, prog="python -m studies.reanalyze")


if __name__ == "__main__":
    sys.exit(main())
