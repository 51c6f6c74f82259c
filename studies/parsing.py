"""Parsing of the studies' option values: ranges, sample-size grids, bounded numbers, name lists.

Range syntax (``parse_range``), always *inclusive* of the upper bound:

=================  =======================================
``1..8``           1, 2, ..., 8
``1..8:2``         1, 3, 5, 7         (step 2)
``0.5..2:0.5``     0.5, 1, 1.5, 2     (with ``kind=float``; the default step is 1)
``1,2,5``          a comma list
``1..4,8``         pieces combine; the result is sorted and de-duplicated
=================  =======================================

Sample-size grids (``parse_n_grid``) also accept geometric forms:

=================  =======================================
``2^8..2^16``      every power of two from 256 to 65536
``2^8..2^16:2``    every other power: 256, 1024, ..., 65536
``1e3..1e5/9``     9 geometrically spaced integers from 1000 to 100000
``1000,3000,1e4``  a comma list (``1e4`` and ``2^10`` are numbers too)
=================  =======================================

Errors raise :class:`argparse.ArgumentTypeError` with a message meant for the user;
:class:`StudyParser` prints any usage error as a single line and exits with status 2.
"""
from __future__ import annotations

import argparse
import math
import re

import numpy as np

__all__ = ["parse_range", "parse_n_grid", "positive_int", "nonnegative_int", "choice_list", "float_type",
           "finite_float", "positive_float", "nonnegative_float"]


_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def _number(tok: str, kind):
    tok = tok.strip()
    m = re.fullmatch(r"(\d+)\^(\d+)", tok)
    if m:
        val = int(m.group(1)) ** int(m.group(2))
        return val if kind is int else float(val)
    if not re.fullmatch(_NUM, tok):
        raise argparse.ArgumentTypeError(f"not a number: {tok!r}")
    val = float(tok)
    if kind is int:
        if not val.is_integer():
            raise argparse.ArgumentTypeError(f"not an integer: {tok!r}")
        return int(val)
    return val


def _arith(lo, hi, step, kind, piece):
    if hi < lo:
        raise argparse.ArgumentTypeError(f"descending range {piece!r}: write the smaller bound first")
    if step <= 0:
        raise argparse.ArgumentTypeError(f"range step must be positive in {piece!r}")
    count = int(math.floor((hi - lo) / step + 1e-9)) + 1
    vals = [lo + k * step for k in range(count)]
    if kind is int:
        return [int(v) for v in vals]
    return [round(v, 12) for v in vals]


def parse_range(text: str, kind=int) -> tuple:
    """Parse ``1..8``, ``1..8:2``, ``1,2,5`` (and combinations); inclusive upper bounds."""
    if not isinstance(text, str) or not text.strip():
        raise argparse.ArgumentTypeError("empty range")
    out = []
    for piece in text.split(","):
        piece = piece.strip()
        if not piece:
            raise argparse.ArgumentTypeError(f"empty item in {text!r}")
        if ".." in piece:
            body, _, step_txt = piece.partition(":")
            lo_txt, _, hi_txt = body.partition("..")
            lo, hi = _number(lo_txt, kind), _number(hi_txt, kind)
            step = _number(step_txt, kind) if step_txt else kind(1)
            out.extend(_arith(lo, hi, step, kind, piece))
        else:
            if ":" in piece:
                raise argparse.ArgumentTypeError(f"a step needs a range: {piece!r}")
            out.append(_number(piece, kind))
    return tuple(sorted(set(out)))


def parse_n_grid(text: str) -> tuple[int, ...]:
    """Parse a sample-size grid: the forms of :func:`parse_range` plus ``2^a..2^b[:s]`` and
    ``A..B/K`` (K geometric points). All values must be integers >= 1."""
    if not isinstance(text, str) or not text.strip():
        raise argparse.ArgumentTypeError("empty grid")
    out = []
    for piece in text.split(","):
        piece = piece.strip()
        m_pow = re.fullmatch(r"(\d+)\^(\d+)\.\.(\d+)\^(\d+)(?::(\d+))?", piece)
        m_geo = re.fullmatch(rf"({_NUM}|\d+\^\d+)\.\.({_NUM}|\d+\^\d+)/(\d+)", piece)
        if m_pow:
            b1, e1, b2, e2 = (int(m_pow.group(i)) for i in range(1, 5))
            if b1 != b2 or b1 < 2:
                raise argparse.ArgumentTypeError(f"power range {piece!r} needs one base >= 2 on both sides")
            step = int(m_pow.group(5) or 1)
            out.extend(b1**e for e in _arith(e1, e2, step, int, piece))
        elif m_geo:
            lo, hi = _number(m_geo.group(1), int), _number(m_geo.group(2), int)
            k = int(m_geo.group(3))
            if lo < 1 or hi < lo or k < 1:
                raise argparse.ArgumentTypeError(f"geometric grid {piece!r} needs 1 <= A <= B and K >= 1")
            out.extend(int(round(v)) for v in np.geomspace(lo, hi, k))
        else:
            out.extend(parse_range(piece, int))
    vals = tuple(sorted(set(out)))
    if vals[0] < 1:
        raise argparse.ArgumentTypeError("sample sizes must be >= 1")
    return vals


def choice_list(allowed, what: str, *, in_allowed_order: bool = False):
    """An argparse ``type=`` for a comma list of names from ``allowed`` (``--sweeps a,b``):
    duplicates dropped, the order given (or the order of ``allowed``); an empty list or an
    unknown name is a one-line usage error naming the choices."""
    allowed = tuple(allowed)

    def parse(text: str) -> tuple:
        items = [t.strip() for t in str(text).split(",") if t.strip()]
        bad = [t for t in items if t not in allowed]
        if not items or bad:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(bad) or repr(text)}; "
                                             f"choose from {', '.join(allowed)}")
        return tuple(t for t in allowed if t in items) if in_allowed_order else tuple(dict.fromkeys(items))

    parse.__name__ = what.replace(" ", "_")
    return parse


def positive_int(text: str) -> int:
    val = _number(text, int)
    if val < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return val


def nonnegative_int(text: str) -> int:
    val = _number(text, int)
    if val < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return val


def float_type(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
               hi_open: bool = False):
    """An argparse ``type=`` for a float option: finite (no nan, inf or overflow such as 1e999)
    and inside ``[lo, hi]`` (``lo_open``/``hi_open`` exclude the bound); a value outside is a
    one-line usage error at parse time, before anything is created."""
    def parse(text: str) -> float:
        val = _number(text, float)
        if not math.isfinite(val):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if lo is not None and (val < lo or (lo_open and val == lo)):
            if lo == 0:
                raise argparse.ArgumentTypeError(f"must be a {'positive' if lo_open else 'non-negative'} number, "
                                                 f"got {text!r}")
            raise argparse.ArgumentTypeError(f"must be {'>' if lo_open else '>='} {lo:g}, got {text!r}")
        if hi is not None and (val > hi or (hi_open and val == hi)):
            raise argparse.ArgumentTypeError(f"must be {'<' if hi_open else '<='} {hi:g}, got {text!r}")
        return val

    parse.__name__ = "number"
    return parse


finite_float = float_type()
positive_float = float_type(0.0, lo_open=True)
nonnegative_float = float_type(0.0)
