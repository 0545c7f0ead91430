"""GPU throughput probe: stack training per member mode vs PyTorch, inversion, ART MIFace.
Run from the project root with PYTHONPATH=. (on the device machine: python3, jax with CUDA).

Each section appends one JSON line to $OUT/gpu.jsonl as soon as it is done, so a run cut short
keeps what finished. QUICK=1 shrinks every size (a CPU smoke test of this script).
  train     : SeedCNN stack throughput per member_mode, vs a PyTorch single-model loop (same GPU)
  invert    : regularised + MIFace image-steps/s per member_mode, vs ART MIFace on PyTorch
"""
# ruff: noqa  (kept as it was measured)

import json
import os
import sys
import time
import traceback

import numpy as np

OUT = os.environ.get("OUT", "/tmp/gpu-out")
QUICK = os.environ.get("QUICK") == "1"
ONLY = set(filter(None, os.environ.get("ONLY", "").split(",")))
os.makedirs(OUT, exist_ok=True)


def emit(section, **kw):
    rec = {"section": section, **kw}
    with open(os.path.join(OUT, "gpu.jsonl"), "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec), flush=True)


def section(fn):
    if ONLY and fn.__name__ not in ONLY:
        return
    t = time.perf_counter()
    try:
        fn()
    except Exception as e:  # keep going: one broken section must not cost the others
        emit(fn.__name__, error=f"{type(e).__name__}: {e}"[:500],
             tb=traceback.format_exc()[-1500:])
    print(f"[{fn.__name__}] {time.perf_counter() - t:.1f}s", flush=True)


import jax  # noqa: E402

from drift_jax import inversion, stack  # noqa: E402
from drift_jax.config import ExecutionConfig, TrainConfig  # noqa: E402
from drift_jax.models import ModelSpec  # noqa: E402

N = 640 if QUICK else 12800
rng = np.random.default_rng(0)
IMAGES = rng.integers(0, 256, (N, 32, 32, 3), dtype=np.uint8)
LABELS = rng.integers(0, 10, N).astype(np.int32)
SPEC = ModelSpec("seedcnn", 10, (32, 32, 3))


def env():
    import flax
    emit("env", jax=jax.__version__, flax=flax.__version__, backend=jax.default_backend(),
         devices=[str(d) for d in jax.devices()], xla_flags=os.environ.get("XLA_FLAGS", ""))


def _train(members, mode, epochs, key):
    v = stack.init_stack(SPEC, jax.random.split(jax.random.key(key), members))
    cfg = TrainConfig(epochs=epochs, batch_size=64, execution=ExecutionConfig(member_mode=mode))
    r = stack.train_stack(SPEC, v, IMAGES, LABELS, [np.arange(N)] * members, cfg,
                          jax.random.key(key + 1), progress=False)
    jax.block_until_ready(r.variables)
    return r


def train():
    grid = [(1, "auto"), (16, "vmap"), (16, "map"), (16, "loop"), (64, "vmap"), (64, "map")]
    if QUICK:
        grid = [(1, "auto"), (4, "vmap"), (4, "map")]
    epochs = 1 if QUICK else 3
    for members, mode in grid:
        t = time.perf_counter()
        _train(members, mode, 1, 0)  # compiles; same shapes reuse the programs
        first = time.perf_counter() - t
        t = time.perf_counter()
        r = _train(members, mode, epochs, 10)
        s = time.perf_counter() - t
        emit("train", members=members, mode=mode, execution=r.execution.__dict__,
             first_call_s=round(first, 2), seconds=round(s, 3),
             model_images_per_s=round(members * N * epochs / s))


def torch_train():
    import torch
    import torch.nn as nn
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(64 * 8 * 8, 128), nn.ReLU(),
                          nn.Linear(128, 10)).to(dev)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.from_numpy(IMAGES).to(dev).permute(0, 3, 1, 2).float().div(255)
    y = torch.from_numpy(LABELS).to(dev).long()
    lossf = nn.CrossEntropyLoss()
    steps = N // 64

    def epoch():
        perm = torch.randperm(N, device=dev)
        for i in range(steps):
            ix = perm[i * 64:(i + 1) * 64]
            opt.zero_grad(set_to_none=True)
            lossf(model(x[ix]), y[ix]).backward()
            opt.step()

    epoch()
    if dev == "cuda":
        torch.cuda.synchronize()
    epochs = 1 if QUICK else 3
    t = time.perf_counter()
    for _ in range(epochs):
        epoch()
    if dev == "cuda":
        torch.cuda.synchronize()
    s = time.perf_counter() - t
    emit("torch_train", torch=torch.__version__, device=dev, seconds=round(s, 3),
         model_images_per_s=round(N * epochs / s))


def _invert(members, method, samples, iters, mode):
    from drift_jax.inversion import InversionConfig, MIFaceConfig, RegularizedConfig
    v = stack.init_stack(SPEC, jax.random.split(jax.random.key(3), members))
    cfg = InversionConfig(method=method, samples_per_class=samples,
                          miface=MIFaceConfig(max_iter=iters),
                          regularized=RegularizedConfig(steps=iters),
                          execution=ExecutionConfig(member_mode=mode))
    t = time.perf_counter()
    g = inversion.invert(SPEC, v, range(10), cfg, jax.random.key(4), progress=False)
    return g, time.perf_counter() - t


def invert():
    grid = [(16, "regularized", 32, 200, "vmap"), (16, "regularized", 32, 200, "map"),
            (63, "regularized", 32, 200, "vmap"), (2, "miface", 1, 2000, "vmap"),
            (2, "miface", 1, 2000, "map")]
    if QUICK:
        grid = [(2, "regularized", 2, 20, "vmap"), (2, "miface", 1, 40, "map")]
    for members, method, samples, iters, mode in grid:
        _invert(members, method, samples, iters, mode)  # compile + warm: same shapes
        g, s = _invert(members, method, samples, iters, mode)
        work = members * 10 * samples * iters
        emit("invert", members=members, method=method, samples=samples, iterations=iters,
             mode=mode, seconds=round(s, 3), image_steps_per_s=round(work / s),
             compiles=g.compiles)


def art_miface():
    import torch
    import torch.nn as nn
    from art.attacks.inference.model_inversion import MIFace
    from art.estimators.classification import PyTorchClassifier
    dev = "gpu" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(64 * 8 * 8, 128), nn.ReLU(),
                          nn.Linear(128, 10), nn.Softmax(dim=1))
    clf = PyTorchClassifier(model, nn.CrossEntropyLoss(), (3, 32, 32), 10,
                            optimizer=torch.optim.Adam(model.parameters(), 1e-3),
                            clip_values=(0.0, 1.0), device_type=dev)
    iters = 20 if QUICK else 300
    y = np.arange(10)
    MIFace(clf, max_iter=5, verbose=False).infer(None, y)  # warm
    for batch in (1, 10):  # ART's default batch_size is 1
        t = time.perf_counter()
        MIFace(clf, max_iter=iters, threshold=1.0, batch_size=batch, verbose=False).infer(None, y)
        s = time.perf_counter() - t
        emit("art_miface", device=dev, batch_size=batch, images=10, iterations=iters,
             seconds=round(s, 3), image_steps_per_s=round(10 * iters / s))


for fn in (env, train, torch_train, invert, art_miface):
    section(fn)
