"""The first run on a real GPU in one call: every check of issue 24, each step with its own timeout.

    scripts/gpu_check.sh OUT [--dry-run] [--budget SECONDS] [--pack] [--only STEP,...]

What it does (``STEPS`` below, in order; the cheap and decisive ones first):

``packages``      which Python packages the project needs are importable, with versions (a missing
                  one is named, with the remedy: carry it as a wheel, ``scripts/gpu_wheels.sh``);
``nvidia_smi``    ``nvidia-smi`` and its one-line query (name, driver, clocks, memory);
``toolchain``     driver, CUDA runtime, nvJitLink and the PTX ISA libNVVM writes, against the newest
                  PTX the driver accepts; compiles and launches a one-line kernel under each
                  candidate environment (as found; ``CUDA_HOME=/usr/local/cuda``) and keeps the first
                  that works for every later step (engineering.md section B5, items 1-2);
``pytest_gpu``    ``python -m pytest -m gpu -x -q`` on tests/gpu, cheapest files first (simulator
                  tests deselected; a per-test timeout when pytest-timeout is installed);
``bench_gpu``     ``python -m studies.benchmark --suite gpu`` (n = 2^24 tokens, 4096 queries);
``convergence``   ``python -m studies.convergence --R 1..8 --n 2^8..2^24 --device gpu``;
``icl_timing``    the ICL trainer on the GPU, H in {1, 2, 4, 8} x 3 seeds: seconds per 1000 steps,
                  the extrapolated 500 000 steps, the weights against the CPU trainer after 20 steps;
``bench_icl``     ``python -m studies.benchmark --suite icl --quick`` (its GPU rows);
``resources``     registers per thread and the largest launchable block of the main kernels;
``sanitizer``     ``compute-sanitizer --tool memcheck`` on tiny launches of the main kernels;
``convergence_cpu`` the same convergence grid on the CPU, then its claims beside the GPU run's
                  (only with the time left).

Everything lands in the output folder: ``logs/NN_step.log`` (each step's own output),
``stores/`` (Zarr stores), ``toolchain.json``, ``timings.json``, ``summary.json`` and
``summary.txt`` (the table printed at the end), ``gpu_check.log`` (this script's own lines).
``--pack`` then folds all but the summary and the log into ``bundle.tar.gz`` (the device tool
brings back at most 8 files). Steps share a time budget (``--budget``, default 480 s): each gets
``min(its timeout, time left - reserve)`` and is skipped, with the reason, when too little is
left; a step that hangs is killed at its timeout and the next one runs.

``--dry-run`` (a CPU, no GPU): the same plumbing at tiny sizes. Kernels run on the CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1``) where they can: the probe kernel and the ICL trainer;
the pytest step runs the real command (every ``gpu`` test skips without a GPU); the GPU
benchmark and the GPU convergence run must refuse in one line (exit 2), which checks their
plumbing; the convergence comparison compares two tiny CPU runs; what needs a real device
(``nvidia-smi``, resources, sanitizer, the ICL benchmark) is skipped and says so.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve()

# import name -> distribution name: what the project and its gpu extra need at run time
REQUIRED = {
    "numpy": "numpy", "scipy": "scipy", "sympy": "sympy", "numba": "numba", "xarray": "xarray", "zarr": "zarr",
    "numcodecs": "numcodecs", "donfig": "donfig", "google_crc32c": "google-crc32c", "seaborn": "seaborn",
    "matplotlib": "matplotlib", "array_api_compat": "array-api-compat", "tqdm": "tqdm",
    "threadpoolctl": "threadpoolctl", "numba_cuda": "numba-cuda", "cupy": "cupy-cuda13x", "pytest": "pytest",
    "hypothesis": "hypothesis",
}
# the GPU image's Python packages (../.library/device/KINDS.md, read 2026-11-17): what need not travel
IMAGE_PACKAGES = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-
bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops
equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch
grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig
interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-
loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py
markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-
extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-
cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile
nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-
headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy
peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-
cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov
pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich
sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy
tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())
GPU_ONLY = {"cupy"}  # not needed by a dry run
GPU_TEST_FILES = ("test_attention_gpu.py", "test_random_features_gpu.py", "test_tensor_attention_gpu.py",
                  "test_icl_gpu.py", "test_token_sample_gpu.py")  # cheapest first
CONVERGENCE = ["--R", "1..8", "--n", "2^8..2^24"]
CONVERGENCE_DRY = ["--R", "1,2", "--n", "2^6..2^8", "--reps", "2", "--queries", "4"]
ICL_H = (1, 2, 4, 8)
ICL_SEEDS = 3


@dataclass
class Result:
    step: str
    status: str  # ok | failed | timeout | skipped
    seconds: float = 0.0
    note: str = ""
    numbers: dict = field(default_factory=dict)


class Runner:
    """Runs the steps into one output folder under a shared time budget."""

    def __init__(self, out: Path, dry: bool, budget: float, reserve: float = 10.0):
        self.out, self.dry, self.budget, self.reserve = out, dry, budget, reserve
        self.t0 = time.monotonic()
        self.results: list[Result] = []
        self.logs = out / "logs"
        self.stores = out / "stores"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.stores.mkdir(exist_ok=True)
        self.extra_env: dict[str, str] = {}
        self.probe_ok: bool | None = None
        self._log = open(out / "gpu_check.log", "a")

    # --------------------------------------------------------------------------- helpers
    def say(self, text: str) -> None:
        line = f"[{time.monotonic() - self.t0:6.1f} s] {text}"
        print(line, flush=True)
        self._log.write(line + "\n")
        self._log.flush()

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def env(self, sim: bool | None = None) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        if sim if sim is not None else self.dry:
            env["NUMBA_ENABLE_CUDASIM"] = "1"
        else:
            env.pop("NUMBA_ENABLE_CUDASIM", None)
        return env

    def run(self, name: str, cmd: list[str], timeout: float, *, sim: bool | None = None,
            ok_codes=(0,), expect: str | None = None) -> tuple[Result, str]:
        """Run ``cmd`` as step ``name`` (its output to logs/NN_name.log) within ``timeout`` and the
        budget. ``expect``: a text the output must hold for an ``ok_codes`` exit to count as ok."""
        log = self.logs / f"{len(self.results):02d}_{name}.log"
        limit = min(timeout, self.left() - self.reserve)
        if limit < 5:
            return Result(name, "skipped", 0.0, f"budget spent ({self.left():.0f} s left)"), ""
        self.say(f"{name}: {' '.join(cmd)} (timeout {limit:.0f} s)")
        t = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=self.env(sim), capture_output=True, text=True, timeout=limit)
            text, rc = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:
            text = _text(e.stdout) + _text(e.stderr) + f"\n[killed after {limit:.0f} s]\n"
            log.write_text(text)
            return Result(name, "timeout", time.monotonic() - t, f"killed after {limit:.0f} s"), text
        except OSError as e:  # the command does not exist here
            log.write_text(str(e))
            return Result(name, "failed", time.monotonic() - t, f"cannot run: {e}"), ""
        log.write_text(f"$ {' '.join(cmd)}\n{text}\n[exit {rc}]\n")
        dt = time.monotonic() - t
        good = rc in ok_codes and (expect is None or expect in text)
        note = "" if good else f"exit {rc}: {_last_line(text)}"
        return Result(name, "ok" if good else "failed", dt, note), text

    def add(self, r: Result) -> Result:
        self.results.append(r)
        self.say(f"{r.step}: {r.status} ({r.seconds:.1f} s){' - ' + r.note if r.note else ''}")
        return r

    def skip(self, name: str, why: str) -> Result:
        return self.add(Result(name, "skipped", 0.0, why))

    def py(self, *args: str) -> list[str]:
        return [sys.executable, *args]

    def gpu_blocked(self) -> str | None:
        if self.dry:
            return None
        if self.probe_ok is False:
            return "no kernel could be launched (see toolchain)"
        return None


def _text(b) -> str:
    if b is None:
        return ""
    return b.decode(errors="replace") if isinstance(b, bytes) else str(b)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


# ----------------------------------------------------------------------------------- steps
def step_packages(r: Runner) -> None:
    t = time.monotonic()
    from importlib import metadata

    found, missing = {}, []
    for mod, dist in REQUIRED.items():
        if r.dry and mod in GPU_ONLY:
            continue
        if importlib.util.find_spec(mod) is None:
            missing.append(dist)
            continue
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "?"
    (r.out / "packages.json").write_text(json.dumps({"found": found, "missing": missing}, indent=1))
    note = ", ".join(f"{k} {v}" for k, v in sorted(found.items()))
    if missing:
        note = (f"MISSING {', '.join(missing)}: carry them as wheels (scripts/gpu_wheels.sh here, then "
                f"name .whl in the call's carry); found: {note}")
    r.add(Result("packages", "failed" if missing else "ok", time.monotonic() - t, note,
                 {"python": sys.version.split()[0], **found}))


def step_nvidia_smi(r: Runner) -> None:
    if r.dry or shutil.which("nvidia-smi") is None:
        r.skip("nvidia_smi", "dry run" if r.dry else "nvidia-smi is not on the PATH")
        return
    res, text = r.run("nvidia_smi", ["nvidia-smi"], 30)
    q, qtext = r.run("nvidia_smi_query", ["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,"
                                          "clocks.mem,memory.total,memory.used,power.draw",
                                          "--format=csv,noheader"], 20)
    res.note = _last_line(qtext) or res.note
    res.numbers = {"query": qtext.strip()}
    r.add(res)


def step_toolchain(r: Runner) -> None:
    """Probe each candidate environment in a child process; keep the first that launches."""
    t = time.monotonic()
    facts = {}
    if r.dry:  # the toolchain facts without the simulator (no driver here: the launch must fail)
        res, text = r.run("toolchain_facts", r.py(str(SCRIPT), "--probe"), 60, sim=False)
        facts = _json_tail(text)
    candidates = [{}]
    if not r.dry and os.path.isdir("/usr/local/cuda") and os.environ.get("CUDA_HOME") != "/usr/local/cuda":
        candidates.append({"CUDA_HOME": "/usr/local/cuda"})
    tried = []
    for extra in candidates:
        saved = r.extra_env
        r.extra_env = {**saved, **extra}
        res, text = r.run("toolchain", r.py(str(SCRIPT), "--probe"), 120)
        r.extra_env = saved
        info = _json_tail(text)
        tried.append({"env": extra, "status": res.status, "info": info, "note": res.note})
        if res.status == "ok" and info.get("launch") == "ok":
            r.extra_env = {**r.extra_env, **extra}
            r.probe_ok = True
            break
    else:
        r.probe_ok = False
    (r.out / "toolchain.json").write_text(json.dumps({"tried": tried, "facts_without_simulator": facts,
                                                      "chosen_env": r.extra_env}, indent=1,
                                                     default=str))
    info = {**facts, **{k: v for k, v in tried[-1]["info"].items() if k in ("launch", "simulator")}} if r.dry \
        else tried[-1]["info"]
    keys = ("driver_cuda", "runtime_cuda", "nvjitlink", "ptx", "driver_max_ptx", "ptx_ok", "cuda_home", "launch")
    note = "; ".join(f"{k} {info.get(k)}" for k in keys if k in info)
    if not r.probe_ok:
        note = f"no candidate launched the probe kernel: {tried[-1]['note'] or info.get('launch')}; {note}"
    r.add(Result("toolchain", "ok" if r.probe_ok else "failed", time.monotonic() - t, note,
                 {k: info.get(k) for k in keys}))


def _json_tail(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    return {}


def probe() -> int:
    """(child) Toolchain facts and a one-line kernel launch, as one JSON line."""
    from gpu.detect import launch_probe_kernel, toolchain, use_default_cuda_home

    use_default_cuda_home()
    info = {k: (list(v) if isinstance(v, tuple) else v) for k, v in toolchain().items()}
    try:
        launch_probe_kernel()
        info["launch"] = "ok"
    except Exception as e:  # report, do not crash: the parent decides
        info["launch"] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
    print(json.dumps(info, default=str))
    return 0


def step_pytest(r: Runner, maxfail: int) -> None:
    if (why := r.gpu_blocked()):
        r.skip("pytest_gpu", why)
        return
    files = [f"tests/gpu/{f}" for f in GPU_TEST_FILES]
    # the ini's addopts run one xdist worker per core; on the device one process holds the GPU
    # (and pytest-xdist may not be installed there), so they are replaced here
    cmd = r.py("-m", "pytest", "-o", "addopts=--strict-markers -ra --import-mode=importlib", "-m", "gpu",
               f"--maxfail={maxfail}", "-q", "-p", "no:cacheprovider",
               "--deselect", "tests/gpu/test_cudasim_suite.py", "--durations=8", *files)
    if importlib.util.find_spec("pytest_timeout") is not None:
        cmd += ["--timeout", "150"]
    res, text = r.run("pytest_gpu", cmd, 200, sim=False)
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", text)}
    res.numbers = counts
    res.note = (res.note + " " if res.note else "") + ", ".join(f"{v} {k}" for k, v in counts.items())
    if r.dry and res.status == "ok" and counts.get("passed", 0):
        res.status, res.note = "failed", "a gpu test ran without a GPU: " + res.note
    r.add(res)


def step_bench_gpu(r: Runner) -> None:
    if (why := r.gpu_blocked()):
        r.skip("bench_gpu", why)
        return
    store = r.stores / "benchmark.zarr"
    cmd = r.py("-m", "studies.benchmark", "--suite", "gpu", "--out", str(store))
    if r.dry:  # the suite must refuse in one line without a GPU: its plumbing, not its numbers
        res, _ = r.run("bench_gpu", cmd, 60, sim=False, ok_codes=(2,), expect="cannot run here")
        res.note = ("refused without a GPU, as it should (dry run)" if res.status == "ok" else res.note)
    else:
        res, text = r.run("bench_gpu", cmd, 150)
        res.numbers = _bench_numbers(store, "gpu")
    r.add(res)


def _bench_numbers(store: Path, group: str) -> dict:
    try:
        import xarray as xr

        with xr.open_zarr(str(store), group=group, consolidated=False) as ds:
            out = {k: ds[k].values.tolist() for k in ds.data_vars if ds[k].size <= 16}
            out["impl"] = [str(v) for v in ds["impl"].values]
            return out
    except Exception as e:  # the step's own log says what went wrong
        return {"error": f"{type(e).__name__}: {e}"}


def step_convergence(r: Runner) -> None:
    if (why := r.gpu_blocked()):
        r.skip("convergence", why)
        return
    store = r.stores / "convergence_gpu.zarr"
    if r.dry:
        cmd = r.py("-m", "studies.convergence", *CONVERGENCE_DRY, "--device", "gpu", "--no-progress",
                   "--out", str(store))
        res, _ = r.run("convergence", cmd, 60, sim=False, ok_codes=(2,), expect="no usable CUDA GPU")
        if res.status == "ok":
            res.note = "--device gpu refused in one line without a GPU (dry run)"
            # a tiny CPU run stands in for the GPU store, so the comparison step has data
            alt, _ = r.run("convergence_standin", r.py("-m", "studies.convergence", *CONVERGENCE_DRY, "--seed", "1",
                                                       "--device", "cpu", "--no-progress", "--out", str(store)), 60)
            if alt.status != "ok":
                res.status, res.note = "failed", "stand-in CPU run: " + alt.note
    else:
        cmd = r.py("-m", "studies.convergence", *CONVERGENCE, "--device", "gpu", "--no-progress", "--out", str(store))
        res, _ = r.run("convergence", cmd, 150)
    res.numbers = {"wall_s": round(res.seconds, 2), **_claim_counts(store)}
    r.add(res)


def _claim_counts(store: Path) -> dict:
    try:
        from studies.claims import counts, read_claims

        return dict(counts(read_claims(store)))
    except Exception as e:
        return {"claims_error": f"{type(e).__name__}: {e}"}


def step_convergence_cpu(r: Runner) -> None:
    gpu_store = r.stores / "convergence_gpu.zarr"
    if not gpu_store.exists():
        r.skip("convergence_cpu", "no GPU convergence store to compare with")
        return
    store = r.stores / "convergence_cpu.zarr"
    grid = CONVERGENCE_DRY if r.dry else CONVERGENCE
    res, _ = r.run("convergence_cpu", r.py("-m", "studies.convergence", *grid, "--device", "cpu", "--no-progress",
                                           "--out", str(store)), 100000, sim=False)
    if res.status == "ok":
        table, numbers = compare_claims(gpu_store, store)
        (r.out / "claims_compare.txt").write_text(table + "\n")
        res.numbers = numbers
        res.note = f"{numbers['same_outcome']}/{numbers['claims']} claims with the same outcome, " \
                   f"{numbers['within_interval']} measured values within 3 combined SE"
    r.add(res)


def compare_claims(store_a: Path, store_b: Path, z: float = 3.0) -> tuple[str, dict]:
    """Claims of two runs side by side: outcome, measured value, and whether the two measured
    values agree within ``z`` combined standard errors."""
    import math

    from studies.claims import read_claims

    a = {c.key: c for c in read_claims(store_a)}
    b = {c.key: c for c in read_claims(store_b)}
    rows = [f"{'claim':<32} {'outcome A':<11} {'outcome B':<11} {'measured A':>12} {'measured B':>12} {'|dz|':>6}"]
    same = within = 0
    for key in sorted(set(a) | set(b)):
        ca, cb = a.get(key), b.get(key)
        oa, ob = (ca.outcome if ca else "-"), (cb.outcome if cb else "-")
        same += oa == ob
        dz = math.nan
        if ca and cb and all(math.isfinite(v) for v in (ca.measured, cb.measured, ca.se, cb.se)):
            s = math.hypot(ca.se, cb.se)
            dz = abs(ca.measured - cb.measured) / s if s > 0 else (0.0 if ca.measured == cb.measured else math.inf)
            within += dz <= z
        ma = f"{ca.measured:.4g}" if ca else "-"
        mb = f"{cb.measured:.4g}" if cb else "-"
        rows.append(f"{key:<32} {oa:<11} {ob:<11} {ma:>12} {mb:>12} {dz:>6.2f}")
    return "\n".join(rows), {"claims": len(set(a) | set(b)), "same_outcome": same, "within_interval": within}


def step_icl(r: Runner) -> None:
    if (why := r.gpu_blocked()):
        r.skip("icl_timing", why)
        return
    args = ["--icl-timing", str(r.out / "icl_timing.json")] + (["--tiny"] if r.dry else [])
    res, text = r.run("icl_timing", r.py(str(SCRIPT), *args), 60 if r.dry else 200)
    if (r.out / "icl_timing.json").exists():
        res.numbers = json.loads((r.out / "icl_timing.json").read_text())
        j = res.numbers.get("joint", {})
        if j:
            hs = ",".join(str(h) for h in res.numbers["H"])
            res.note = (f"{res.note + '; ' if res.note else ''}H in {{{hs}}} x {res.numbers['seeds']}: "
                        f"{j['s_per_1000_steps']:.3f} s / 1000 steps, 500k steps ~ {j['extrapolated_500k_s']:.0f} s")
            if "max_rel_weight_err" in res.numbers:
                res.note += (f"; weights vs CPU after {res.numbers['compare_steps']} steps "
                             f"{res.numbers['max_rel_weight_err']:.1e}")
    r.add(res)


def icl_timing(path: str, tiny: bool) -> int:
    """(child) Seconds per 1000 Adam steps of the device trainer, per H (3 seeds each) and for
    all H together, the 500 000-step extrapolation, and the weights against the CPU trainer."""
    import numpy as np

    import gpu  # noqa: F401  registers the device engines
    from sim import icl_regression as icl

    d, L, B = (2, 4, 2) if tiny else (5, 40, 256)
    hs, seeds = ((1, 2), 1) if tiny else (ICL_H, ICL_SEEDS)
    warm, steps, n_cmp = (1, 2, 2) if tiny else (50, 1000, 20)
    task = icl.isotropic_task(d, 0.1)

    def runs(h_list):
        return [icl.RunSpec(h, task, s, 3000 + 10 * s + h) for h in h_list for s in range(seeds)]

    def timed(h_list):
        tr = icl.BatchedTrainer(runs(h_list), L=L, batch=B, device="gpu")
        t = time.perf_counter()
        tr.run_steps(warm)  # compiles the kernels
        compile_s = time.perf_counter() - t
        t = time.perf_counter()
        tr.run_steps(steps)  # one synchronisation at the end
        dt = time.perf_counter() - t
        return {"runs": len(tr.runs), "steps": steps, "first_steps_s": compile_s,
                "s_per_1000_steps": dt / steps * 1000, "extrapolated_500k_s": dt / steps * 500_000}

    out = {"d": d, "L": L, "batch": B, "H": list(hs), "seeds": seeds, "tiny": tiny, "per_H": {}}

    def save():
        Path(path).write_text(json.dumps(out, indent=1))

    out["joint"] = timed(hs)  # the configuration first: what matters most
    save()
    cpu = icl.BatchedTrainer(runs(hs), L=L, batch=B)
    dev = icl.BatchedTrainer(runs(hs), L=L, batch=B, device="gpu")
    for _ in range(n_cmp):
        cpu.step()
    dev.run_steps(n_cmp)
    theta = dev.state_dict()["theta"]
    out["compare_steps"] = n_cmp
    out["max_rel_weight_err"] = float(np.abs(theta - cpu.theta).max() / np.abs(cpu.theta).max())
    save()
    for h in () if tiny else hs:  # each H alone (3 seeds): how the step time scales with heads
        out["per_H"][str(h)] = timed((h,))
        save()
    print(json.dumps(out))
    return 0


def step_bench_icl(r: Runner) -> None:
    if r.dry:
        r.skip("bench_icl", "dry run: the ICL GPU rows need a GPU (the CPU rows are the CPU suite's)")
        return
    if (why := r.gpu_blocked()):
        r.skip("bench_icl", why)
        return
    store = r.stores / "benchmark.zarr"
    res, _ = r.run("bench_icl", r.py("-m", "studies.benchmark", "--suite", "icl", "--quick", "--out", str(store)), 150)
    res.numbers = _bench_numbers(store, "icl")
    r.add(res)


def step_resources(r: Runner) -> None:
    if r.dry:
        r.skip("resources", "dry run: registers are a property of compiled GPU code")
        return
    if (why := r.gpu_blocked()):
        r.skip("resources", why)
        return
    res, text = r.run("resources", r.py(str(SCRIPT), "--resources"), 120)
    res.numbers = _json_tail(text)
    r.add(res)


def resources() -> int:
    """(child) Registers per thread, local memory and the largest launchable block of the main
    kernels, compiled for the study sizes on this device."""
    import numpy as np
    from numba import cuda

    from gpu.attention import attend_kernel
    from gpu.launch import max_threads
    from gpu.random_features import rfa_kernel
    from gpu.tensor_attention import exact_kernel

    out = {}
    for dt in ("float32", "float64"):
        t = np.float32 if dt == "float32" else np.float64
        a, kt = cuda.to_device(np.zeros((4, 2), t)), cuda.to_device(np.zeros((2, 64), t))
        pm = cuda.device_array((4, 1))
        pacc = cuda.device_array((4, 1, 2))
        k = attend_kernel(2, 2, dt, True)
        out[f"attend_{dt}"] = _kernel_facts(k, (a, kt, kt, 64, -1, pm, pm, pacc), max_threads)
        q, k1 = cuda.to_device(np.zeros((4, 4), t)), cuda.to_device(np.zeros((8, 4), t))
        k2t = cuda.to_device(np.zeros((4, 8), t))
        pacc4 = cuda.device_array((4, 1, 4))
        out[f"exact_{dt}"] = _kernel_facts(exact_kernel(4, 4, dt), (q, k1, k2t, k1, k2t, 64, pm, pm, pacc4),
                                           max_threads)
        x0, X = cuda.to_device(np.zeros((8, 8), t)), cuda.to_device(np.zeros((8, 16, 8), t))
        wt = cuda.to_device(np.zeros((9, 9, 32), t))
        o = cuda.device_array((8, 32 * 9), t)
        out[f"rfa_softmax_{dt}"] = _kernel_facts(rfa_kernel(8, True, 9, "softmax", dt, dt, 32, 8),
                                                 (x0, X, wt, 1.0, o), max_threads)
    print(json.dumps(out))
    return 0


def _kernel_facts(kernel, args, max_threads) -> dict:
    try:
        top = max_threads(kernel, args)
        k = kernel._compile_for_args(*args)
        return {"regs": int(k.regs_per_thread), "local_bytes": int(k.local_mem_per_thread),
                "shared_bytes": int(k.shared_mem_per_block), "max_threads": top}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}


def step_sanitizer(r: Runner) -> None:
    if r.dry:
        r.skip("sanitizer", "dry run: compute-sanitizer needs a GPU")
        return
    tool = shutil.which("compute-sanitizer")
    if tool is None:
        r.skip("sanitizer", "compute-sanitizer is not on the PATH")
        return
    if (why := r.gpu_blocked()):
        r.skip("sanitizer", why)
        return
    res, text = r.run("sanitizer", [tool, "--tool", "memcheck", "--error-exitcode", "3", sys.executable, str(SCRIPT),
                                    "--tiny-launches"], 120)
    m = re.search(r"ERROR SUMMARY: (\d+) error", text)
    res.numbers = {"memcheck_errors": int(m.group(1)) if m else None}
    r.add(res)


def tiny_launches() -> int:
    """(child) One tiny launch of each main kernel (for compute-sanitizer)."""
    import numpy as np

    import gpu  # noqa: F401
    from gpu.attention import softmax_attention
    from gpu.random_features import rfa_features
    from gpu.tensor_attention import tensor_attention

    rng = np.random.default_rng(0)
    for t in (np.float32, np.float64):
        softmax_attention(rng.standard_normal((3, 2)).astype(t), rng.standard_normal((300, 2)).astype(t))
        tensor_attention(*(rng.standard_normal((n, 3)).astype(t) for n in (2, 20, 30, 20, 30)))
        rfa_features(rng.standard_normal((5, 3)).astype(t), rng.standard_normal((5, 7, 3)).astype(t),
                     rng.standard_normal((40, 4, 4)).astype(t), activation="softmax")
    print("tiny launches done")
    return 0


# ----------------------------------------------------------------------------------- wheels
def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_list(extras=("gpu",), extra_needs=("pytest", "hypothesis")) -> list[str]:
    """``name==version`` of every package the project needs on the GPU image that the image
    lacks: the project's dependencies, its ``extras`` and ``extra_needs``, and their own
    dependencies (markers evaluated for CPython 3.12 on Linux), pinned to the versions installed
    here (the ones this checkout is tested with). A needed package not installed here is listed
    as ``name (not installed here)``."""
    import tomllib
    from importlib import metadata

    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = list(proj["dependencies"]) + [q for e in extras for q in proj["optional-dependencies"].get(e, [])]
    todo += list(extra_needs)
    env = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "extra": ""}
    seen, out = set(), []
    while todo:
        req = Requirement(todo.pop(0))
        name = _norm(req.name)
        if name in seen or (req.marker is not None and not req.marker.evaluate(env)):
            continue
        seen.add(name)
        if name in IMAGE_PACKAGES:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            out.append(f"{name} (not installed here)")
            continue
        out.append(f"{name}=={dist.version}")
        for sub in dist.requires or []:
            r2 = Requirement(sub)
            r2_extras = set(req.extras)
            if r2.marker is not None and not any(r2.marker.evaluate({**env, "extra": e}) for e in r2_extras | {""}):
                continue
            todo.append(f"{r2.name}{'[' + ','.join(sorted(r2.extras)) + ']' if r2.extras else ''}")
    return sorted(out)


# ----------------------------------------------------------------------------------- report
def summary_table(results: list[Result], wall: float, dry: bool) -> str:
    rows = [f"gpu_check {'(dry run) ' if dry else ''}- {sum(r.status == 'ok' for r in results)} ok, "
            f"{sum(r.status == 'failed' for r in results)} failed, {sum(r.status == 'timeout' for r in results)} "
            f"timed out, {sum(r.status == 'skipped' for r in results)} skipped in {wall:.1f} s",
            f"{'step':<16} {'status':<8} {'seconds':>8}  note"]
    for r in results:
        rows.append(f"{r.step:<16} {r.status:<8} {r.seconds:>8.1f}  {r.note}")
    return "\n".join(rows)


def pack(out: Path) -> Path:
    """Fold everything but the summaries and the log into bundle.tar.gz (the device tool brings
    back at most 8 files)."""
    keep = {"summary.txt", "summary.json", "gpu_check.log", "bundle.tar.gz"}
    bundle = out / "bundle.tar.gz"
    with tarfile.open(bundle, "w:gz") as tar:
        for p in sorted(out.iterdir()):
            if p.name not in keep:
                tar.add(p, arcname=p.name)
    for p in out.iterdir():
        if p.name not in keep:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    return bundle


STEPS = ("packages", "nvidia_smi", "toolchain", "pytest_gpu", "bench_gpu", "convergence", "icl_timing",
         "bench_icl", "resources", "sanitizer", "convergence_cpu")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__.split("\n")[0])
    p.add_argument("out", nargs="?", type=Path, help="output folder (created)")
    p.add_argument("--dry-run", action="store_true", help="CPU only: the CUDA simulator and tiny sizes")
    p.add_argument("--budget", type=float, default=480.0, help="seconds for all steps together (default 480)")
    p.add_argument("--pack", action="store_true", help="fold all but the summary and log into bundle.tar.gz")
    p.add_argument("--only", default=None, help=f"comma list of steps to run (default all: {', '.join(STEPS)})")
    p.add_argument("--maxfail", type=int, default=1, help="pytest --maxfail (default 1, i.e. -x)")
    p.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--icl-timing", default=None, help=argparse.SUPPRESS)
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--resources", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tiny-launches", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--wheel-list", action="store_true", help="print the wheels the GPU image lacks, one a line")
    args = p.parse_args(argv)
    if args.wheel_list:
        print("\n".join(wheel_list()))
        return 0
    if args.probe:
        return probe()
    if args.icl_timing:
        return icl_timing(args.icl_timing, args.tiny)
    if args.resources:
        return resources()
    if args.tiny_launches:
        return tiny_launches()
    if args.out is None:
        print("gpu_check: error: give the output folder", file=sys.stderr)
        return 2
    only = STEPS if args.only is None else tuple(s.strip() for s in args.only.split(",") if s.strip())
    bad = [s for s in only if s not in STEPS]
    if bad or args.budget <= 0:
        print(f"gpu_check: error: unknown step(s) {', '.join(bad)}; choose from {', '.join(STEPS)}" if bad
              else "gpu_check: error: --budget must be positive", file=sys.stderr)
        return 2
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"gpu_check: error: cannot create {args.out}: {e.strerror}", file=sys.stderr)
        return 2
    r = Runner(args.out.resolve(), args.dry_run, args.budget)
    r.say(f"gpu_check {'dry run ' if args.dry_run else ''}into {r.out} (budget {args.budget:.0f} s, "
          f"python {sys.version.split()[0]})")
    steps = {"packages": step_packages, "nvidia_smi": step_nvidia_smi, "toolchain": step_toolchain,
             "pytest_gpu": lambda r: step_pytest(r, args.maxfail), "bench_gpu": step_bench_gpu,
             "convergence": step_convergence, "icl_timing": step_icl, "bench_icl": step_bench_icl,
             "resources": step_resources, "sanitizer": step_sanitizer, "convergence_cpu": step_convergence_cpu}
    for name in STEPS:
        if name in only:
            try:
                steps[name](r)
            except Exception as e:  # a step's own bug must not cost the other steps
                r.add(Result(name, "failed", 0.0, f"gpu_check itself: {type(e).__name__}: {e}"))
    wall = time.monotonic() - r.t0
    table = summary_table(r.results, wall, args.dry_run)
    (r.out / "summary.txt").write_text(table + "\n")
    (r.out / "summary.json").write_text(json.dumps({"dry_run": args.dry_run, "wall_s": wall, "env": r.extra_env,
                                                    "steps": [asdict(x) for x in r.results]}, indent=1, default=str))
    (r.out / "timings.json").write_text(json.dumps({x.step: round(x.seconds, 3) for x in r.results}, indent=1))
    print(table, flush=True)
    r._log.write(table + "\n")
    r._log.close()
    if args.pack:
        print(f"packed into {pack(r.out)}")
    return 0 if all(x.status in ("ok", "skipped") for x in r.results) else 1


if __name__ == "__main__":
    sys.exit(main())
