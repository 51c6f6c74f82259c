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

Limits come before work: every value is bounded in magnitude (integers by :data:`MAX_INT`, the
int64 range; powers ``a^b`` are checked by their logarithm before they are raised) and every
range or grid by its count (:data:`MAX_VALUES` values per option) before anything is expanded,
so ``1..1e12`` or ``2^8..2^99999999`` is refused at once, in constant time and memory.

Errors raise :class:`argparse.ArgumentTypeError` with a message meant for the user;
:class:`StudyParser` prints any usage error as a single line and exits with status 2.
"""
from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import numpy as np

__all__ = ["parse_range", "parse_n_grid", "positive_int", "nonnegative_int", "choice_list", "float_type",
           "finite_float", "positive_float", "nonnegative_float", "out_path", "MAX_INT", "MAX_VALUES"]


_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
MAX_INT = 2**63 - 1  # integers live in int64 (seeds, sizes, counts): larger ones are refused when parsed
MAX_VALUES = 100_000  # values one range or grid option may expand to
_MAX_TOKEN = 400  # characters of one number; a longer token is refused before it is converted


def _short(tok: str) -> str:
    return repr(tok if len(tok) <= 40 else tok[:30] + "..." + tok[-6:])


def _too_large(tok: str, kind) -> argparse.ArgumentTypeError:
    bound = f"{MAX_INT:.3g}" if kind is int else "1.8e308"
    return argparse.ArgumentTypeError(f"too large: {_short(tok)} (at most {bound})")


def _number(tok: str, kind):
    """One number: decimal, scientific (``1e5``) or a power ``a^b``, bounded in magnitude
    (|integer| <= MAX_INT, floats finite) before any big value is built."""
    tok = tok.strip()
    if len(tok) > _MAX_TOKEN:
        raise argparse.ArgumentTypeError(f"not a number: {_short(tok)} is {len(tok)} characters long")
    m = re.fullmatch(r"(\d+)\^(\d+)", tok)
    if m:
        base, exp = int(m.group(1)), int(m.group(2))
        limit = math.log2(MAX_INT) if kind is int else 1023.9
        if base > 1 and exp > 0 and exp * math.log2(base) > limit:
            raise _too_large(tok, kind)  # decided by the logarithm: base**exp is never built
        val = base**exp
        if kind is int and val > MAX_INT:  # the logarithm's edge (2^63)
            raise _too_large(tok, kind)
        return val if kind is int else float(val)
    if not re.fullmatch(_NUM, tok):
        raise argparse.ArgumentTypeError(f"not a number: {_short(tok)}")
    if kind is int and re.fullmatch(r"[-+]?\d+", tok):
        val = int(tok)  # exact: 9007199254740993 is not rounded through a float
        if abs(val) > MAX_INT:
            raise _too_large(tok, kind)
        return val
    val = float(tok)
    if kind is int:
        if not math.isfinite(val) or abs(val) > MAX_INT:
            raise _too_large(tok, kind)
        if not val.is_integer():
            raise argparse.ArgumentTypeError(f"not an integer: {tok!r}")
        return int(val)
    return val


def _count(lo, hi, step, kind, piece) -> int:
    """How many values ``lo..hi:step`` holds, checked before they are made."""
    if not all(math.isfinite(v) for v in (lo, hi, step)):
        raise argparse.ArgumentTypeError(f"range bounds and step must be finite numbers in {_short(piece)}")
    if hi < lo:
        raise argparse.ArgumentTypeError(f"descending range {_short(piece)}: write the smaller bound first")
    if step <= 0:
        raise argparse.ArgumentTypeError(f"range step must be positive in {_short(piece)}")
    span = (hi - lo) / step
    if span >= MAX_VALUES:
        n = f"{span + 1:.0f}" if span < 1e9 else f"{span + 1:.3g}"
        raise argparse.ArgumentTypeError(f"range {_short(piece)} has {n} values; at most {MAX_VALUES} "
                                         "are allowed (use a step, or a geometric grid A..B/K where offered)")
    return int(math.floor(span + 1e-9)) + 1


def _arith(lo, hi, step, kind, piece):
    count = _count(lo, hi, step, kind, piece)
    vals = [lo + k * step for k in range(count)]
    if kind is int:
        return [int(v) for v in vals]
    return [round(v, 12) for v in vals]


def parse_range(text: str, kind=int) -> tuple:
    """Parse ``1..8``, ``1..8:2``, ``1,2,5`` (and combinations); inclusive upper bounds."""
    if not isinstance(text, str) or not text.strip():
        raise argparse.ArgumentTypeError("empty range")
    _check_items(text)
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
        _check_total(out, text)
    return tuple(sorted(set(out)))


def _check_items(text: str) -> None:
    if text.count(",") >= MAX_VALUES:
        raise argparse.ArgumentTypeError(f"a list of {text.count(',') + 1} items; at most {MAX_VALUES} are allowed")


def _check_total(values: list, text: str) -> None:
    if len(values) > MAX_VALUES:
        raise argparse.ArgumentTypeError(f"{_short(text)} expands to more than {MAX_VALUES} values")


def parse_n_grid(text: str) -> tuple[int, ...]:
    """Parse a sample-size grid: the forms of :func:`parse_range` plus ``2^a..2^b[:s]`` and
    ``A..B/K`` (K geometric points). All values must be integers >= 1."""
    if not isinstance(text, str) or not text.strip():
        raise argparse.ArgumentTypeError("empty grid")
    _check_items(text)
    out = []
    for piece in text.split(","):
        piece = piece.strip()
        m_pow = re.fullmatch(r"(\d+)\^(\d+)\.\.(\d+)\^(\d+)(?::(\d+))?", piece)
        m_geo = re.fullmatch(rf"({_NUM}|\d+\^\d+)\.\.({_NUM}|\d+\^\d+)/({_NUM}|\d+\^\d+)", piece)
        if m_pow:
            if any(len(m_pow.group(i)) > 18 for i in range(1, 5)):
                raise _too_large(piece, int)
            b1, e1, b2, e2 = (int(m_pow.group(i)) for i in range(1, 5))
            if b1 != b2 or b1 < 2:
                raise argparse.ArgumentTypeError(f"power range {_short(piece)} needs one base >= 2 on both sides")
            _number(f"{b2}^{e2}", int)  # the largest value is bounded first (by its logarithm)
            step = _number(m_pow.group(5), int) if m_pow.group(5) else 1
            out.extend(b1**e for e in _arith(e1, e2, step, int, piece))
        elif m_geo:
            lo, hi = _number(m_geo.group(1), int), _number(m_geo.group(2), int)
            k = _number(m_geo.group(3), int)
            if lo < 1 or hi < lo or k < 1:
                raise argparse.ArgumentTypeError(f"geometric grid {_short(piece)} needs 1 <= A <= B and K >= 1")
            if k > MAX_VALUES:
                raise argparse.ArgumentTypeError(f"geometric grid {_short(piece)} asks for {k} points; at most "
                                                 f"{MAX_VALUES} are allowed")
            out.extend(int(round(v)) for v in np.geomspace(lo, hi, k))
        else:
            out.extend(parse_range(piece, int))
        _check_total(out, text)
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


def out_path(text: str) -> Path:
    """An argparse ``type=`` for an output path: an empty name (which would mean the current
    directory) or one with a NUL byte is a usage error at parse time; the rest of the output
    rule (what may be written where) is :func:`studies.guards.check_output`."""
    if not isinstance(text, str) or not text.strip():
        raise argparse.ArgumentTypeError("empty path: name the output, e.g. results/NAME.zarr")
    if "\x00" in text:
        raise argparse.ArgumentTypeError("a path cannot contain a NUL byte")
    return Path(text)


finite_float = float_type()
positive_float = float_type(0.0, lo_open=True)
nonnegative_float = float_type(0.0)
