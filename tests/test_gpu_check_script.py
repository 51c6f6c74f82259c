"""scripts/gpu_check.sh, the one-call first run on a GPU, checked on the CPU: its dry run (the
CUDA simulator, tiny sizes) writes the folder and summary a GPU run would, a hanging step is
killed at its own timeout while the next one runs, bad input is one line, --pack keeps the
device tool's file limit, and scripts/gpu_wheels.sh computes the wheels the GPU image lacks."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
sys.modules["gpu_check"] = gpu_check  # its dataclasses look their module up
spec.loader.exec_module(gpu_check)

EXPECTED_DRY = {  # step -> status in a dry run
    "packages": "ok", "nvidia_smi": "skipped", "toolchain": "ok", "pytest_gpu": "ok", "bench_gpu": "ok",
    "convergence": "ok", "icl_timing": "ok", "bench_icl": "skipped", "resources": "skipped",
    "sanitizer": "skipped", "convergence_cpu": "ok",
}


def _env():
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    return env


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "out"
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(out), "--dry-run"], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=400)
    return out, proc


def test_dry_run_succeeds_and_prints_the_summary(dry_run):
    out, proc = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "gpu_check (dry run) - 7 ok, 0 failed, 0 timed out, 4 skipped" in proc.stdout
    assert proc.stdout.rstrip().endswith((out / "summary.txt").read_text().rstrip().splitlines()[-1])


def test_dry_run_writes_one_folder(dry_run):
    out, _ = dry_run
    for name in ("summary.txt", "summary.json", "timings.json", "gpu_check.log", "toolchain.json",
                 "packages.json", "icl_timing.json", "claims_compare.txt"):
        assert (out / name).is_file(), name
    logs = {p.name for p in (out / "logs").iterdir()}
    for step in ("toolchain", "toolchain_facts", "pytest_gpu", "bench_gpu", "convergence", "icl_timing",
                 "convergence_cpu"):
        assert any(n.endswith(f"_{step}.log") for n in logs), step
    for store in ("convergence_gpu.zarr", "convergence_cpu.zarr"):
        assert (out / "stores" / store / "zarr.json").is_file()


def test_dry_run_summary_has_every_step_in_order(dry_run):
    out, _ = dry_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] is True
    steps = summary["steps"]
    assert [s["step"] for s in steps] == list(gpu_check.STEPS)
    assert {s["step"]: s["status"] for s in steps} == EXPECTED_DRY
    assert all(s["note"] for s in steps if s["status"] == "skipped")  # a skip says why
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings) == set(gpu_check.STEPS) and summary["wall_s"] >= sum(timings.values()) * 0.99
    table = (out / "summary.txt").read_text().splitlines()
    assert [ln.split()[0] for ln in table[2:]] == list(gpu_check.STEPS)


def test_dry_run_records_the_toolchain_and_the_simulated_kernels(dry_run):
    out, _ = dry_run
    tc = json.loads((out / "toolchain.json").read_text())
    assert tc["tried"][0]["info"]["launch"] == "ok" and tc["tried"][0]["info"]["simulator"] is True
    facts = tc["facts_without_simulator"]
    assert facts["simulator"] is False and "launch" in facts
    if isinstance(facts["ptx"], list):  # NVVM present here: the PTX version is read
        assert facts["ptx"][0] >= 7
    icl = json.loads((out / "icl_timing.json").read_text())
    assert icl["tiny"] and icl["joint"]["steps"] > 0 and icl["joint"]["s_per_1000_steps"] > 0
    assert icl["max_rel_weight_err"] <= 1e-12  # the simulated device trainer follows the CPU one
    pytest_step = next(s for s in json.loads((out / "summary.json").read_text())["steps"] if s["step"] == "pytest_gpu")
    assert pytest_step["numbers"].get("skipped", 0) > 0 and pytest_step["numbers"].get("passed", 0) == 0
    assert "claim" in (out / "claims_compare.txt").read_text().splitlines()[0]


def test_a_hanging_step_is_killed_and_the_next_runs(tmp_path):
    r = gpu_check.Runner(tmp_path, dry=True, budget=60.0, reserve=0.0)
    hang, _ = r.run("hang", [sys.executable, "-c", "import time; time.sleep(30)"], 6)
    assert hang.status == "timeout" and hang.seconds < 20
    nxt, text = r.run("next", [sys.executable, "-c", "print('still here')"], 20)
    assert nxt.status == "ok" and "still here" in text
    bad, _ = r.run("bad", [sys.executable, "-c", "raise SystemExit(3)"], 20)
    assert bad.status == "failed" and "exit 3" in bad.note
    r.budget = 0.0  # nothing left: the step is skipped, not started
    assert r.run("late", [sys.executable, "-c", "pass"], 20)[0].status == "skipped"


@pytest.mark.parametrize("args", [[], ["OUT", "--only", "bogus"], ["OUT", "--budget", "0"]])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args):
    args = [str(tmp_path / "o") if a == "OUT" else a for a in args]
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), *args, "--dry-run"] if args else
                          ["bash", str(ROOT / "scripts" / "gpu_check.sh")], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_pack_keeps_the_device_tools_file_limit(tmp_path):
    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    (out / "stores" / "a.zarr" / "c").mkdir(parents=True)
    for i in range(12):
        (out / "logs" / f"{i:02d}.log").write_text("x")
    (out / "stores" / "a.zarr" / "c" / "0").write_text("data")
    for name in ("summary.txt", "summary.json", "gpu_check.log", "timings.json", "toolchain.json"):
        (out / name).write_text("{}")
    gpu_check.pack(out)
    assert sorted(p.name for p in out.iterdir()) == ["bundle.tar.gz", "gpu_check.log", "summary.json",
                                                     "summary.txt"]
    with tarfile.open(out / "bundle.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"logs/11.log", "stores/a.zarr/c/0", "timings.json", "toolchain.json"} <= names


def test_compare_claims_reads_two_stores(dry_run):
    out, _ = dry_run
    table, numbers = gpu_check.compare_claims(out / "stores" / "convergence_gpu.zarr",
                                              out / "stores" / "convergence_cpu.zarr")
    assert numbers["claims"] == len(table.splitlines()) - 1 > 0
    assert numbers["same_outcome"] <= numbers["claims"]


def test_the_wheels_the_gpu_image_lacks():
    """The image has numpy, numba, numba-cuda, CuPy, xarray, pytest...; it lacks zarr (and the codec
    packages zarr needs) and array-api-compat. Versions are the ones installed here."""
    from importlib import metadata

    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_wheels.sh"), "--list"], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    got = proc.stdout.split()
    names = {g.split("==")[0] for g in got}
    assert names == {"zarr", "numcodecs", "donfig", "google-crc32c", "array-api-compat"}
    for g in got:
        name, version = g.split("==")
        assert metadata.version(name) == version
    assert not names & gpu_check.IMAGE_PACKAGES
    assert "nvidia-nvvm" not in names  # a newer NVVM would write PTX the image's driver rejects
