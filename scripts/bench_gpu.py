"""One-call accelerator benchmark (BENCHMARKS.md, accelerator table), section by section.

Every section appends one JSON line to ``OUT/bench_gpu.jsonl`` the moment it finishes, so a run cut
short keeps what is done; ``--markdown`` then writes the GPU section of BENCHMARKS.md from that
file. Process-wall sections run the CLI in fresh processes, with a fresh (cold) or the previous
(warm) persistent compilation cache; the decoded-image cache is shared, as for a user's second
run. PyTorch runs beside us where torch is installed, IBM ART's MIFace where its wheel is.

  python scripts/bench_gpu.py --out OUT [--cifar PATH/cifar10-jpeg.tar.gz] [--sections a,b]
      (--cifar defaults to the local copy of CIFAR-10 under $DRIFT_JAX_DATA_DIR, if any)
  python scripts/bench_gpu.py --markdown OUT/bench_gpu.jsonl      # BENCHMARKS.md GPU section
  QUICK=1 python scripts/bench_gpu.py --out /tmp/b                  # CPU smoke test, small sizes

Sections: env, detect_digits, detect_digits_median, sweep_original_cifar10, improved_cifar10,
train_stack, torch_train, invert, art_miface. On 2 CPU cores the first three take ~2 minutes.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
QUICK = os.environ.get("QUICK") == "1"


class Recorder:
    def __init__(self, out: Path):
        self.path = out / "bench_gpu.jsonl"
        out.mkdir(parents=True, exist_ok=True)

    def emit(self, section: str, **fields) -> None:
        record = {"section": section, **fields}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)

    def run(self, fn, *args) -> None:
        start = time.perf_counter()
        try:
            fn(self, *args)
        except Exception as e:  # one broken section must not cost the others
            self.emit(fn.__name__, error=f"{type(e).__name__}: {e}"[:500],
                      traceback=traceback.format_exc()[-1500:])
        print(f"[{fn.__name__}] {time.perf_counter() - start:.1f} s", flush=True)


# ----------------------------------------------------------------------------- processes


def _cli(args: list[str], xla_cache: Path, data_cache: Path) -> tuple[float, str]:
    """Runs ``drift-jax ARGS`` in a fresh process; returns (process wall seconds, output)."""
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(xla_cache),
           "DRIFT_JAX_CACHE": str(data_cache), "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "drift_jax.cli", *args], env=env,
                          capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"drift-jax {' '.join(args[:2])} failed: {proc.stderr[-800:]}")
    return wall, proc.stdout


def _stage_record(report_path: Path) -> dict:
    timings = json.loads(report_path.read_text())["timings"]
    return {"stages": {k: round(v, 2) for k, v in timings.items() if isinstance(v, float)},
            "compiles": timings.get("compiles", {})}


def _cold_then_warm(rec: Recorder, section: str, args_for, report_of, scratch: Path,
                    **extra) -> None:
    xla = scratch / f"{section}-xla"
    for phase in ("cold", "warm"):
        out = scratch / f"{section}-{phase}"
        wall, _ = _cli(args_for(out), xla, scratch / "data-cache")
        rec.emit(section, phase=phase, process_wall_s=round(wall, 2),
                 **_stage_record(report_of(out)), **extra)


def detect_digits(rec: Recorder, scratch: Path, cifar: Path | None) -> None:
    extra = ["--set", "controls=3", "--set", "train.epochs=2"] if QUICK else []
    _cold_then_warm(rec, "detect_digits", lambda out: ["detect", "--quiet", "--out", str(out),
                                                       *extra],
                    lambda out: out / "report.json", scratch)


def detect_digits_median(rec: Recorder, *_) -> None:
    """The digits default in one process, seeds 0-5: the first run, then the median of the
    five warm ones, with the share of attacks, baselines and evaluation in a warm run."""
    from drift_jax import data
    from drift_jax.detect import DetectConfig, detect_drift

    ds = data.load("digits")
    walls, stages = [], []
    for seed in range(3 if QUICK else 6):
        start = time.perf_counter()
        report = detect_drift(DetectConfig(seed=seed), base=ds, progress=False)
        walls.append(time.perf_counter() - start)
        stages.append({k: v for k, v in report.timings.items()
                       if isinstance(v, float) and k != "total"})
    after = lambda s: sum(v for k, v in s.items() if k.startswith("attack_") or k in (
        "evaluate", "shadows", "baselines"))
    rec.emit("detect_digits_median", first_s=round(walls[0], 2),
             median_warm_s=round(float(np.median(walls[1:])), 2),
             attacks_baselines_share=round(float(np.median(
                 [after(s) / sum(s.values()) for s in stages[1:]])), 3),
             stages_warm={k: round(float(np.median([s[k] for s in stages[1:]])), 2)
                          for k in stages[1]})


def _cifar_sets(cifar: Path) -> list[str]:
    return ["--set", f'base="folder:{cifar}?split=train"',
            "--set", f'holdout="folder:{cifar}?split=test"']


def sweep_original_cifar10(rec: Recorder, scratch: Path, cifar: Path | None) -> None:
    if cifar is None:
        rec.emit("sweep_original_cifar10", skipped="no CIFAR-10 archive (--cifar)")
        return
    quick = ["--set", "inversion.miface.max_iter=50", "--set", "train.epochs=1"] if QUICK else []

    def args_for(out):
        return ["sweep", str(ROOT / "experiments" / "original_cifar10.json"), "--quiet", "--out",
                str(out), *_cifar_sets(cifar), *quick]

    _cold_then_warm(rec, "sweep_original_cifar10", args_for,
                    lambda out: sorted((out / "runs").glob("*/report.json"))[0], scratch,
                    seeds=3)


def improved_cifar10(rec: Recorder, scratch: Path, cifar: Path | None) -> None:
    """One 21-model run of the improved recipe (16 samples, 1,000 steps, 4 attacks, 3
    baselines), production data given (the CIFAR-10 test split)."""
    if cifar is None:
        rec.emit("improved_cifar10", skipped="no CIFAR-10 archive (--cifar)")
        return
    sweep = json.loads((ROOT / "experiments" / "improved_cifar10.json").read_text())["detect"]
    config = {**sweep, "base": f"folder:{cifar}?split=train",
              "production": f"folder:{cifar}?split=test", "holdout": None, "scenario": "none",
              "production_fraction": 0.2, "reference_fraction": 0.4}
    config["inversion"] = {**config["inversion"], "samples_per_class": 2 if QUICK else 16,
                           "regularized": {**config["inversion"]["regularized"],
                                           "steps": 20 if QUICK else 1000}}
    if QUICK:
        config.update(controls=3, train={"epochs": 1})
    path = scratch / "improved_cifar10.json"
    path.write_text(json.dumps(config))
    _cold_then_warm(rec, "improved_cifar10",
                    lambda out: ["detect", "--config", str(path), "--quiet", "--out", str(out)],
                    lambda out: out / "report.json", scratch, models=2 + config["controls"])


# ----------------------------------------------------------------------------- in process

N = 640 if QUICK else 12_800
EPOCHS = 1 if QUICK else 3


@functools.cache
def _training_data():
    from drift_jax import data

    return data.synthetic(n=N, classes=10, size=32, channels=3, seed=0)


def _train_rate(members: int, execution) -> tuple[float, float, dict]:
    import jax

    from drift_jax import stack
    from drift_jax.config import TrainConfig
    from drift_jax.models import ModelSpec

    ds = _training_data()
    spec = ModelSpec("seedcnn", 10, ds.image_shape)

    def run(epochs, seed):
        v = stack.init_stack(spec, jax.random.split(jax.random.key(seed), members))
        cfg = TrainConfig(epochs=epochs, batch_size=64, execution=execution)
        start = time.perf_counter()
        r = stack.train_stack(spec, v, ds.images, ds.labels, [np.arange(N)] * members, cfg,
                              jax.random.key(seed + 1), progress=False)
        jax.block_until_ready(r.variables)
        return time.perf_counter() - start, r

    first, _ = run(1, 0)  # compiles; the same shapes reuse the programs
    seconds, r = run(EPOCHS, 10)
    return members * N * EPOCHS / seconds, first, r.execution.__dict__


def train_stack(rec: Recorder, *_) -> None:
    """SeedCNN stack training, model-images/s, by member count and execution form: the
    candidates for the accelerator default (`EXECUTION_DEFAULTS["gpu"]`)."""
    from drift_jax.config import ExecutionConfig

    grid = [(1, {}), (16, {"member_mode": "vmap"}), (16, {"member_mode": "map"}),
            (16, {"member_mode": "loop"}), (16, {"member_mode": "vmap", "conv_form": "autodiff"}),
            (16, {"member_mode": "vmap", "conv_form": "im2col"}),
            (16, {"member_mode": "vmap", "scan_chunk": 256}),
            (16, {"member_mode": "vmap", "pool_form": "flax"}),
            (64, {"member_mode": "vmap"}), (64, {"member_mode": "map"}),
            (64, {"member_mode": "vmap", "conv_form": "autodiff"}),
            (64, {"member_mode": "vmap", "conv_form": "im2col"})]
    if QUICK:
        grid = [(1, {}), (4, {"member_mode": "vmap"}), (4, {"member_mode": "map"})]
    single = None
    for members, options in grid:
        rate, first, execution = _train_rate(members, ExecutionConfig(**options))
        single = single or rate
        rec.emit("train_stack", members=members, execution=execution,
                 first_call_s=round(first, 2), model_images_per_s=round(rate),
                 vs_single_model=round(rate / single, 2))


def torch_train(rec: Recorder, *_) -> None:
    try:
        import torch
        import torch.nn as nn
    except ImportError:
        rec.emit("torch_train", skipped="torch is not installed")
        return
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(64 * 8 * 8, 128), nn.ReLU(),
                          nn.Linear(128, 10)).to(dev)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (N, 32, 32, 3), dtype=np.uint8)).to(dev)
    x = x.permute(0, 3, 1, 2).float().div(255)
    y = torch.from_numpy(rng.integers(0, 10, N)).to(dev).long()
    loss_fn = nn.CrossEntropyLoss()

    def epoch():
        perm = torch.randperm(N, device=dev)
        for i in range(N // 64):
            ix = perm[i * 64:(i + 1) * 64]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x[ix]), y[ix]).backward()
            opt.step()

    epoch()
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(EPOCHS):
        epoch()
    sync()
    seconds = time.perf_counter() - start
    rec.emit("torch_train", torch=torch.__version__, device=dev,
             images_per_s=round(N * EPOCHS / seconds))


def invert(rec: Recorder, *_) -> None:
    import jax

    from drift_jax import inversion, stack
    from drift_jax.config import ExecutionConfig
    from drift_jax.models import ModelSpec

    spec = ModelSpec("seedcnn", 10, (32, 32, 3))
    grid = [(16, "regularized", 32, 200, "vmap"), (16, "regularized", 32, 200, "map"),
            (63, "regularized", 32, 200, "vmap"), (2, "miface", 1, 2000, "vmap")]
    if QUICK:
        grid = [(2, "regularized", 2, 20, "vmap"), (2, "miface", 1, 40, "map")]
    for members, method, samples, steps, mode in grid:
        cfg = inversion.InversionConfig(
            method=method, samples_per_class=samples,
            miface=inversion.MIFaceConfig(max_iter=steps, init="grey"),
            regularized=inversion.RegularizedConfig(steps=steps),
            execution=ExecutionConfig(member_mode=mode))
        v = stack.init_stack(spec, jax.random.split(jax.random.key(3), members))
        inversion.invert(spec, v, range(10), cfg, jax.random.key(4), progress=False)  # compile
        start = time.perf_counter()
        gray = inversion.invert(spec, v, range(10), cfg, jax.random.key(4), progress=False)
        seconds = time.perf_counter() - start
        rec.emit("invert", members=members, method=method, samples=samples, steps=steps,
                 mode=mode, image_steps_per_s=round(members * 10 * samples * steps / seconds),
                 compiles=gray.compiles)


def art_miface(rec: Recorder, *_) -> None:
    try:
        import torch
        import torch.nn as nn
        from art.attacks.inference.model_inversion import MIFace
        from art.estimators.classification import PyTorchClassifier
    except ImportError as e:
        rec.emit("art_miface", skipped=f"needs torch and ART ({e})")
        return
    dev = "gpu" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(64 * 8 * 8, 128), nn.ReLU(),
                          nn.Linear(128, 10), nn.Softmax(dim=1))
    clf = PyTorchClassifier(model, nn.CrossEntropyLoss(), (3, 32, 32), 10,
                            optimizer=torch.optim.Adam(model.parameters(), 1e-3),
                            clip_values=(0.0, 1.0), device_type=dev)
    steps = 20 if QUICK else 300
    MIFace(clf, max_iter=5, verbose=False).infer(None, np.arange(10))  # warm
    for batch in (1, 10):  # ART's default batch_size is 1
        start = time.perf_counter()
        MIFace(clf, max_iter=steps, threshold=1.0, batch_size=batch,
               verbose=False).infer(None, np.arange(10))
        seconds = time.perf_counter() - start
        rec.emit("art_miface", device=dev, batch_size=batch,
                 image_steps_per_s=round(10 * steps / seconds))


def env(rec: Recorder, *_) -> None:
    from drift_jax import runtime

    rec.emit("env", quick=QUICK, **runtime.environment())


SECTIONS = (env, detect_digits, detect_digits_median, sweep_original_cifar10, improved_cifar10,
            train_stack, torch_train, invert, art_miface)


# ----------------------------------------------------------------------------- markdown


def markdown(records: list[dict]) -> list[str]:
    """The GPU section of BENCHMARKS.md from the JSON lines."""
    by = {}
    for r in records:
        by.setdefault(r["section"], []).append(r)
    env_ = (by.get("env") or [{}])[0]
    lines = [f"Machine: {', '.join(env_.get('devices', ['?']))}, jax {env_.get('jax', '?')}; "
             "`python scripts/bench_gpu.py` (fresh processes; cold = empty compilation cache, "
             "warm = the cache the cold run wrote).", "",
             "| what | cold | warm | stages (warm, s) |", "|---|---|---|---|"]
    for section in ("detect_digits", "sweep_original_cifar10", "improved_cifar10"):
        runs = {r.get("phase"): r for r in by.get(section, [])}
        if "warm" not in runs:
            lines.append(f"| {section} | {next(iter(runs.values()), {}).get('error', '')} | | |")
            continue
        stages = ", ".join(f"{k} {v}" for k, v in runs["warm"]["stages"].items()
                           if k != "total")
        lines.append(f"| {section} process wall | {runs['cold']['process_wall_s']} s | "
                     f"{runs['warm']['process_wall_s']} s | {stages} |")
    for r in by.get("detect_digits_median", []):
        lines.append(f"| detect_digits in one process: first run, then median of warm runs | "
                     f"{r.get('first_s')} s | {r.get('median_warm_s')} s | attacks + baselines "
                     f"{r.get('attacks_baselines_share')} of a warm run |")
    lines += ["", "| training (SeedCNN, 32x32x3, batch 64) | model-images/s | vs one model |",
              "|---|---|---|"]
    for r in by.get("train_stack", []):
        e = r.get("execution", {})
        lines.append(f"| {r.get('members')} x {e.get('member_mode')}, {e.get('conv_form')} "
                     f"conv, {e.get('pool_form')} pool, chunk {e.get('scan_chunk')} | "
                     f"{r.get('model_images_per_s', r.get('error', ''))} | "
                     f"{r.get('vs_single_model', '')} |")
    for r in by.get("torch_train", []):
        lines.append(f"| PyTorch {r.get('torch', '')}, one model | "
                     f"{r.get('images_per_s', r.get('skipped', ''))} | |")
    lines += ["", "| inversion | image-steps/s |", "|---|---|"]
    for r in by.get("invert", []):
        lines.append(f"| {r.get('members')} x 10 x {r.get('samples')} {r.get('method')}, "
                     f"{r.get('steps')} steps, {r.get('mode')} | "
                     f"{r.get('image_steps_per_s', r.get('error', ''))} |")
    for r in by.get("art_miface", []):
        lines.append(f"| IBM ART MIFace, batch {r.get('batch_size')} | "
                     f"{r.get('image_steps_per_s', r.get('skipped', ''))} |")
    return lines


def _local_cifar() -> Path | None:
    """The CIFAR-10 archive that tfds:cifar10 specs read under $DRIFT_JAX_DATA_DIR, or None."""
    from drift_jax import data

    return data.local_copy("cifar10", "train")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_gpu")
    parser.add_argument("--cifar", help="cifar10-jpeg.tar.gz (default: the local copy under "
                                        "$DRIFT_JAX_DATA_DIR)")
    parser.add_argument("--sections", help="comma-separated subset of the sections")
    parser.add_argument("--markdown", help="a bench_gpu.jsonl: write BENCHMARKS.md's GPU "
                                           "section from it and stop")
    args = parser.parse_args()
    if args.markdown:
        sys.path.insert(0, str(ROOT / "scripts"))
        from bench_common import update_section

        records = [json.loads(line) for line in Path(args.markdown).read_text().splitlines()]
        print(update_section("bench_gpu", "Accelerator (`scripts/bench_gpu.py`)",
                             markdown(records)))
        return
    cifar = Path(args.cifar) if args.cifar else _local_cifar()
    wanted = set(args.sections.split(",")) if args.sections else None
    rec = Recorder(Path(args.out))
    with tempfile.TemporaryDirectory() as scratch:
        for fn in SECTIONS:
            if wanted is None or fn.__name__ in wanted:
                rec.run(fn, Path(scratch), cifar)


if __name__ == "__main__":
    main()
