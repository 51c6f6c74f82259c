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
