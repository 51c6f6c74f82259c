"""studies/cli.py: the range and grid parsers, and one-line usage errors."""
import argparse

import pytest

from studies.cli import StudyParser, parse_n_grid, parse_range, positive_int


@pytest.mark.parametrize("text,expected", [
    ("1..8", (1, 2, 3, 4, 5, 6, 7, 8)),
    ("1..8:2", (1, 3, 5, 7)),
    ("1..7:3", (1, 4, 7)),
    ("1,2,5", (1, 2, 5)),
    ("1..4,8", (1, 2, 3, 4, 8)),
    ("5,1,5", (1, 5)),
    ("3", (3,)),
    ("2^3", (8,)),
])
def test_int_ranges(text, expected):
    assert parse_range(text) == expected


def test_float_ranges():
    assert parse_range("1..8", float) == tuple(float(i) for i in range(1, 9))
    assert parse_range("0.5..2:0.5", float) == (0.5, 1.0, 1.5, 2.0)
    assert parse_range("0.1..0.3:0.1", float) == (0.1, 0.2, 0.3)  # no float drift drops the end
    assert parse_range("1e-1,2.5", float) == (0.1, 2.5)


@pytest.mark.parametrize("text,msg", [
    ("8..1", "descending"), ("a", "not a number"), ("1..a", "not a number"), ("", "empty"),
    ("1..8:0", "step must be positive"), ("1,,2", "empty item"), ("1.5", "not an integer"), ("4:2", "step needs a range"),
])
def test_bad_ranges(text, msg):
    with pytest.raises(argparse.ArgumentTypeError, match=msg):
        parse_range(text)


@pytest.mark.parametrize("text,expected", [
    ("2^8..2^11", (256, 512, 1024, 2048)),
    ("2^8..2^12:2", (256, 1024, 4096)),
    ("1e3..1e5/3", (1000, 10000, 100000)),
    ("100,1e3,2^10", (100, 1000, 1024)),
    ("1000..3000:1000", (1000, 2000, 3000)),
])
def test_n_grids(text, expected):
    assert parse_n_grid(text) == expected


@pytest.mark.parametrize("text,msg", [
    ("2^8..3^9", "one base"), ("1e5..1e3/4", "needs 1 <= A <= B"), ("0,10", ">= 1"), ("x", "not a number"),
])
def test_bad_grids(text, msg):
    with pytest.raises(argparse.ArgumentTypeError, match=msg):
        parse_n_grid(text)


def test_positive_int():
    assert positive_int("12") == 12
    with pytest.raises(argparse.ArgumentTypeError):
        positive_int("0")


def test_parser_errors_are_one_line_exit_2(capsys):
    p = StudyParser(prog="prog")
    p.add_argument("--R", type=parse_range)
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--R", "8..1"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "descending range" in err and err.startswith("prog: error:")


# ---------------------------------------------------------------- limits before work
@pytest.mark.parametrize("parse,text,msg", [
    (parse_range, "1..1e12", "1e+12 values; at most 100000"),
    (parse_range, "1..100001", "100001 values"),
    (lambda t: parse_range(t, float), "1..1e999", "finite"),
    (lambda t: parse_range(t, float), "0..1:1e-9", "values; at most"),
    (parse_range, "9^99999999", "too large"),
    (parse_range, "99999999999999999999", "too large"),
    (parse_range, "9" * 401, "characters long"),
    (parse_range, ",".join(["1"] * 100_001), "at most 100000"),
    (lambda t: parse_range(t, float), "2^1024", "too large"),
    (parse_n_grid, "2^8..2^99999999", "too large"),
    (parse_n_grid, "2^8..2^63", "too large"),
    (parse_n_grid, "2^8..2^20:99999999999999999999", "too large"),
    (parse_n_grid, "1e3..1e5/1e10", "asks for 10000000000 points"),
    (parse_n_grid, "1..1e9", "at most 100000"),
    (parse_n_grid, "1..50000,50001..100001", "more than 100000 values"),
    (positive_int, "2^64", "too large"),
    (positive_int, "9223372036854775808", "too large"),
])
def test_sizes_and_counts_are_bounded_when_parsed(parse, text, msg):
    import re

    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(msg)):
        parse(text)


@pytest.mark.parametrize("parse,text,expected", [
    (positive_int, "2^62", 2**62),
    (positive_int, "9223372036854775807", 2**63 - 1),
    (positive_int, "9007199254740993", 9007199254740993),  # exact, not through a float
    (positive_int, "1e18", 10**18),
    (parse_n_grid, "2^60..2^62", (2**60, 2**61, 2**62)),
    (parse_n_grid, "1e3..1e5/100000", None),
    (lambda t: parse_range(t, float), "2^1023", (2.0**1023,)),
])
def test_the_largest_allowed_values_still_parse(parse, text, expected):
    got = parse(text)
    if expected is None:
        assert len(got) > 50_000 and got[0] == 1000 and got[-1] == 100_000  # rounding merges some
    else:
        assert got == expected


def test_out_path_refuses_an_empty_name():
    from studies.parsing import out_path

    assert str(out_path("results/x.zarr")) == "results/x.zarr"
    for bad in ("", "  ", "a\x00b"):
        with pytest.raises(argparse.ArgumentTypeError):
            out_path(bad)
