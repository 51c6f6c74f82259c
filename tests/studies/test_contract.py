"""The study contract, checked on every study at once: a ``--quick --plot`` run exits 0, its
store is readable with xarray, every stored claim has an outcome, a prediction and (when tested)
the source of its tolerance or (when not) the reason, the summary prints the claims, and the
figure is drawn from the store alone (``paper_figs.NAME.draw`` returns the files it wrote)."""
import importlib
import re
from pathlib import Path

import pytest
import xarray as xr

from studies.claims import OUTCOMES, read_claims

# name -> (module, argv before the shared options, figure module)
STUDIES = {
    "convergence": ("studies.convergence", ["--R", "1..8:7"], "paper_figs.convergence"),
    "moments": ("studies.moments", [], "paper_figs.moments"),
    "hardmax": ("studies.hardmax", [], "paper_figs.hardmax"),
    "tails": ("studies.tails", [], "paper_figs.tails"),
    "random_features": ("studies.random_features", ["--sweeps", "kernel,families"], "paper_figs.random_features"),
    "tensor_attention": ("studies.tensor_attention", [], "paper_figs.tensor_attention"),
    "icl-train": ("studies.icl", ["train"], "paper_figs.icl"),
    "icl-estimators": ("studies.icl", ["estimators"], "paper_figs.icl"),
    "icl-ode": ("studies.icl", ["ode"], "paper_figs.icl"),
    "icl-noniso": ("studies.icl", ["noniso"], "paper_figs.icl"),
    "icl-multitask": ("studies.icl", ["multitask"], "paper_figs.icl"),
    "icl-length": ("studies.icl", ["length"], "paper_figs.icl"),
    "encoder": ("studies.encoder", [], "paper_figs.encoder"),
}


@pytest.fixture(scope="module")
def icl_models(tmp_path_factory):
    """A quick trained-models store for ``icl length``."""
    mod = importlib.import_module("studies.icl")
    out = tmp_path_factory.mktemp("icl") / "train.zarr"
    assert mod.main(["train", "--quick", "--no-progress", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("name", list(STUDIES))
def test_quick_run_meets_the_study_contract(name, tmp_path, capsys, request):
    module, argv, fig_module = STUDIES[name]
    if name == "encoder":
        from sim.encoder import encoder_available

        ok, why = encoder_available()
        if not ok:
            pytest.skip(why)
    out = tmp_path / f"{name}.zarr"
    extra = ["--models", str(request.getfixturevalue("icl_models"))] if name == "icl-length" else []
    rc = importlib.import_module(module).main(argv + extra + ["--quick", "--plot", "--no-progress", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    # the store opens with xarray; claims are stored and readable
    with xr.open_zarr(str(out), consolidated=False) as ds:
        assert ds.attrs["study"] and ds.attrs["params_json"] and ds.attrs["git_sha"]
    claims = read_claims(out)
    assert claims, "no claims stored"
    for c in claims:
        assert c.outcome in OUTCOMES, c.key
        assert c.source and c.statement, c.key
        assert c.prediction_text or c.prediction == c.prediction, f"{c.key}: no prediction"
        if c.outcome == "not tested":
            assert c.reason, f"{c.key}: not tested without a reason"
        else:
            assert c.tolerance_source and c.test, f"{c.key}: tested without a tolerance source"
    # one summary format
    assert re.search(r"claims: \d+ hold, \d+ fail, \d+ not tested", text), text
    # the figure: printed, on disk, and redrawn from the store alone
    figures = [Path(line.split("figure: ", 1)[1]) for line in text.splitlines() if line.startswith("figure: ")]
    assert figures and all(f.stat().st_size > 5_000 for f in figures), text
    paths = importlib.import_module(fig_module).draw(out, tmp_path / "redrawn.png")
    assert isinstance(paths, list) and paths and all(Path(p).exists() for p in paths)
