"""Probe: how far do 49 controls take the ``reverse`` model statistic on the CIFAR-10 reduction?

On the 2-core CIFAR-10 reduction (scripts/bench_common.py, 19 controls) the default omnibus
finds the 60 % relabel airplane -> automobile in 2-3 of 6 seeds, while its ``reverse`` part alone
sits at the smallest p-value 1 / 20 in most seeds (docs/RESULTS.md, section 2): at M = 19 the
omnibus, a minimum over five parts, cannot go below that floor. The GPU recipe has M = 49,
which the CPU cannot afford with every model inverted (~30 s per model here). ``reverse`` needs
one inversion per seed only: every model's probability of the target on the *base* model's gray
data (`detect.reverse_statistic`). This probe trains base, production and 49 controls per seed
exactly as `detect_drift_seeds` does (same splits, keys and stack), inverts the base models, and
reports per seed:

* the rank p-value of ``reverse`` under each class combination (`stats.combine_classes`), and
  of the largest excess of one off-diagonal cell of the answers (``cell/largest_excess``);
* the per-class t-prediction p-values of ``reverse``, Holm over classes, gated by
  ``reverse/two_largest_deficits``, and for a flagged class the ``production_reads_base``
  partner test (`detect.partner_tests`);
* model disagreement on the holdout, for comparison at the same seeds.

It measures one statistic of the omnibus, not the default: evidence of what M = 49 does, for
the GPU run the default's figure needs. Writes benchmarks/reverse_probe_cifar10.json after
every point (a killed run resumes).

  python experiments/reverse_probe.py --seeds 5 --points relabel@3 none@0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from bench_common import RECIPES, load_dataset, machine  # noqa: E402

from drift_jax import baselines, detect, runtime, stack  # noqa: E402
from drift_jax import config as config_lib  # noqa: E402
from drift_jax import stats as stats_lib  # noqa: E402
from drift_jax.detect import DetectConfig  # noqa: E402
from drift_jax.files import atomic_write_json  # noqa: E402
from drift_jax.inversion import invert  # noqa: E402
from drift_jax.models import ModelSpec  # noqa: E402

ALPHA = 0.05


def _p_values(reverse: np.ndarray, confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Rank p-values [S] of the production model (model 1) among the controls (2..) of
    ``reverse`` [S, models, C] under each class combination, and of ``cell/largest_excess``: the
    largest standardised excess of one off-diagonal cell (k, j) of the answers on the base
    model's gray data ``confusion`` [S, models, C, C] (a relabel k -> j concentrates its excess
    there, while a control's errors spread over the classes)."""
    c, models = confusion.shape[-1], np.arange(1, reverse.shape[1])
    cells = -stats_lib.clipped_logit(confusion[..., ~np.eye(c, dtype=bool)])  # deficit = excess
    scores = {f"reverse/{k}": stats_lib.combine_classes(reverse, models, k)
              for k in stats_lib.COMBINATIONS}
    scores["cell/largest_excess"] = stats_lib.combine_classes(cells, models, "largest_deficit")
    return {k: stats_lib.calibrated_p_value(v[:, 2:].T, v[:, 1]) for k, v in scores.items()}


def run_point(ds, dataset: str, scenario: str, severity: int, seeds: list[int],
              controls: int) -> list[dict]:
    cfg = config_lib.with_overrides(DetectConfig(base=dataset), [
        f'scenario="{scenario}"', f"severity={severity}", *RECIPES[dataset],
        f"controls={controls}"])
    clock = runtime.StageClock()
    with clock("data"):
        pool, holdout_ix = detect.with_holdout(cfg, ds)
        spec = ModelSpec(cfg.arch, ds.num_classes, ds.image_shape)
        plans = [detect.plan_seed(dataclasses.replace(cfg, seed=s), pool, ds.labels,
                                  holdout_ix, None) for s in seeds]
        data = detect.StackedData.build(pool, plans)
    group, num_seeds = plans[0].group_size, len(seeds)
    with clock("train"):
        trained = detect.train_models(spec, cfg, data, plans, None, progress=True)
    with clock("invert"):  # the base models only, with the keys a full run gives them
        keys = jax.numpy.stack([stack.per_member_keys(p.keys["invert"], group)[0]
                                for p in plans])
        gray = invert(spec, stack.member(trained, np.arange(num_seeds) * group),
                      range(ds.num_classes), cfg.inversion, keys, progress=True)
    with clock("answer"):  # every model on its seed's base gray data, one inference call
        probs = detect.answers_on_base_gray(spec, trained, gray.images, group)
        holdout = np.stack([p.split.holdout for p in plans])
        logits = stack.predict(spec, trained, data.images, np.repeat(holdout, group, axis=0))
    reverse = detect.reverse_statistic(probs, gray.classes)  # [S, models, C]
    confusion = probs.mean(3)  # [S, models, C, C]: model's mean answer j on base gray class k
    control_ix = np.arange(2, group)
    p_values = _p_values(reverse, confusion)
    # the same models with their first 19 controls: what M alone changes
    fewer = _p_values(reverse[:, :2 + 19], confusion[:, :2 + 19]) if controls > 19 else {}
    by_class, corrected = detect.class_p_values({"reverse": reverse}, ["reverse"], control_ix,
                                                cfg.correction)
    gate = p_values["reverse/two_largest_deficits"] <= ALPHA
    flagged = [np.flatnonzero(corrected[s] <= ALPHA) if gate[s] else np.zeros(0, int)
               for s in range(num_seeds)]
    partners = detect.partner_tests({"production_reads_base": probs.argmax(-1)}, flagged,
                                    ALPHA, cfg.correction)
    preds = logits.argmax(-1).reshape(num_seeds, group, -1)
    disagreement = baselines.disagreement(preds, 1, control_ix)
    accuracy = (preds == data.labels[holdout][:, None]).mean(-1)
    names = list(ds.class_names)
    changed = [names[0], names[1]] if scenario in ("relabel", "label_swap") else []
    return [{"seed": seed, "changed": changed,
             "p_values": {k: float(v[s]) for k, v in p_values.items()},
             "p_values_m19": {k: float(v[s]) for k, v in fewer.items()},
             "disagreement": float(disagreement[s]["p_value"]),
             "class_p_values": np.round(by_class[s, 0], 6).tolist(),
             "flagged": [names[k] for k in flagged[s]],
             "partners": {names[k]: None if f["destination"] is None
                          else names[f["destination"]] for k, f in partners[s].items()},
             "reverse": np.round(reverse[s], 4).tolist(),  # [models, C]
             "confusion": np.round(confusion[s], 4).tolist(),  # [models, C, C]
             "accuracy": {"base": float(accuracy[s, 0]), "production": float(accuracy[s, 1])},
             "timings": {**clock.seconds, "models": num_seeds * group}}
            for s, seed in enumerate(seeds)]


def summary(results: dict) -> list[str]:
    lines = ["| point | seeds | reverse/two_largest_deficits | (its first 19 controls) | "
             "reverse/largest_deficit | reverse/class_mean | cell/largest_excess | "
             "(its first 19 controls) | disagreement | both changed classes named |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for point, runs in results["points"].items():
        def rate(key, field="p_values", runs=runs):
            found = [r[field][key] <= ALPHA for r in runs if key in r[field]]
            return f"{np.mean(found):.2f}" if found else "-"
        named = sum(bool(r["changed"]) and set(r["changed"]) <= {
            *r["flagged"], *filter(None, r["partners"].values())} for r in runs)
        lines.append(f"| {point} | {len(runs)} | {rate('reverse/two_largest_deficits')} | "
                     f"{rate('reverse/two_largest_deficits', 'p_values_m19')} | "
                     f"{rate('reverse/largest_deficit')} | {rate('reverse/class_mean')} | "
                     f"{rate('cell/largest_excess')} | "
                     f"{rate('cell/largest_excess', 'p_values_m19')} | "
                     f"{np.mean([r['disagreement'] <= ALPHA for r in runs]):.2f} | {named} |")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="cifar10", choices=sorted(RECIPES))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--controls", type=int, default=49)
    parser.add_argument("--points", nargs="+", default=["relabel@3", "none@0"])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" /
                        "reverse_probe_cifar10.json")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    results = (json.loads(args.out.read_text()) if args.out.exists()
               else {"machine": machine(), "alpha": ALPHA, "points": {}})
    ds = load_dataset(args.dataset)
    for point in args.points:
        scenario, severity = point.split("@")
        key = f"{args.dataset}[m{args.controls}]/{scenario}/{severity}"
        done = {r["seed"] for r in results["points"].get(key, [])}
        todo = [s for s in range(args.seeds) if s not in done]
        if not todo:
            continue
        runs = run_point(ds, args.dataset, scenario, int(severity), todo, args.controls)
        results["points"][key] = sorted(results["points"].get(key, []) + runs,
                                        key=lambda r: r["seed"])
        atomic_write_json(args.out, results, indent=None)
        print("\n".join(summary(results)), flush=True)


if __name__ == "__main__":
    main()
