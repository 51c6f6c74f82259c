"""Shared checks of the studies' command lines."""
import pytest


def exit_code(main, argv):
    """``main(argv)``'s return code, or the code argparse exits with."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.fixture
def usage_error(tmp_path, capsys):
    """``usage_error(main, argv, msg)``: ``main(argv + --out X)`` exits 2 with one line on stderr
    that contains ``msg``, no traceback, and writes nothing at X."""
    def check(main, argv, msg=""):
        out = tmp_path / "bad.zarr"
        rc = exit_code(main, [*argv, "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2, err
        assert len(err.strip().splitlines()) == 1 and err.endswith("\n"), err
        assert msg in err and "Traceback" not in err, err
        assert not out.exists()
        return err

    return check
