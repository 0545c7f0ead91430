"""Candidate decision statistics evaluated offline from stored power runs (issue 13): no model is
retrained. Each run of `scripts/bench_detection.py` stores every model's per-class statistics
(``class_statistics``: base, production, controls x classes) and the base model's mean class
probabilities on every model's gray data (``confusion``: models x C x C); a candidate combines
them into one score per model, and the production model's rank among the controls is its exact
p-value (every model is combined alike).

  python scripts/offline_statistics.py benchmarks/power_mnist.json   # power per candidate
  python scripts/offline_statistics.py --update benchmarks/power_*.json  # add new statistics
  python scripts/offline_statistics.py --localisation benchmarks/power_mnist.json  # flagging
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drift_jax import stats  # noqa: E402
from drift_jax.detect import (  # noqa: E402
    LOCALISATION_STATISTICS,
    MODEL_STATISTICS,
    OMNIBUS,
    class_p_values,
)
from drift_jax.files import atomic_write_json  # noqa: E402

ALPHA = 0.05
PRIMARY = "rule_based:omnibus/min_rank"  # the default decision


# earlier default omnibuses, by the name their p-values are stored under once renamed: sessions
# 6-9's, before `OMNIBUS` gained the logit mean's largest deficit, and sessions 10-12's, before
# the model statistics (`detect.MODEL_STATISTICS`) joined it
EARLIER_OMNIBUS = {"omnibus[mean,auc]": OMNIBUS[:2], "omnibus[mean,auc,logit_mean]": OMNIBUS[:3]}


def _per_class(run: dict) -> dict[str, np.ndarray]:
    """A run's stored per-class statistics {stat: [G, C]} (G: base, production, controls)."""
    per_class = {k: np.asarray(v) for k, v in run["class_statistics"].items()}
    # runs from before the statistic existed
    per_class.setdefault("logit_mean", stats.clipped_logit(per_class["mean"]))
    return per_class


def candidate_scores(run: dict) -> dict[str, np.ndarray]:
    """One run's models -> {candidate: score per model [G]}, lower = drift."""
    per_class = _per_class(run)
    models = np.arange(1, per_class["mean"].shape[0])

    def omnibus(parts, *more):
        return stats.min_rank(np.stack([*(stats.combine_classes(per_class[s], models, c)
                                          for s, c in parts), *more]), models)

    out = {name: omnibus(parts) for name, parts in EARLIER_OMNIBUS.items()}
    out["logit_mean / largest_deficit"] = stats.combine_classes(per_class["logit_mean"], models,
                                                                "largest_deficit")
    if all(s in per_class for s in MODEL_STATISTICS):  # runs since session 11
        out["omnibus (default)"] = omnibus(OMNIBUS)
    if run.get("confusion"):
        confusion = stats.clipped_logit(np.asarray(run["confusion"]))  # [G, C, C]
        off_target = ~np.eye(confusion.shape[-1], dtype=bool)
        # every (class k, other class j): the base model's probability of j on k's gray data; a
        # relabel a -> b raises (b, a) in the production model only
        pairs = -confusion[:, off_target]  # [G, C (C - 1)]
        # per class: its most probable other class
        peak = -np.where(off_target, confusion, -np.inf).max(-1)  # [G, C]
        pair_two = stats.combine_classes(pairs, models, "two_largest_deficits")
        out |= {"confusion pairs / largest_deficit": stats.combine_classes(
                    pairs, models, "largest_deficit"),
                "confusion pairs / two_largest_deficits": pair_two,
                "confusion peak / two_largest_deficits": stats.combine_classes(
                    peak, models, "two_largest_deficits"),
                "omnibus[mean,auc,logit_mean] + confusion pairs / two_largest_deficits":
                    omnibus(OMNIBUS[:3], pair_two)}
    return out


def p_values(run: dict) -> dict[str, float]:
    """Each candidate's rank p-value of the production model (model 1) among the controls."""
    return {name: float(stats.calibrated_p_value(score[2:], score[1]))
            for name, score in candidate_scores(run).items()}


def _rename_omnibus(run: dict, name: str) -> None:
    """A run that stored an earlier omnibus: its omnibus p-values (of every attack) and, where
    it decided the run, ``decided_by`` take that omnibus' name."""
    p = run["p_values"]
    for key in [k for k in p if k.endswith(":omnibus/min_rank")]:
        p[key.replace(":omnibus/", f":{name}/")] = p.pop(key)
    if "recomputed_offline" in run:
        run["recomputed_offline"] = sorted(k.replace(":omnibus/", f":{name}/")
                                           for k in run["recomputed_offline"])
    if run.get("decided_by") == "rule_based:omnibus/min_rank":
        run["decided_by"] = f"rule_based:{name}/min_rank"


def update(run: dict) -> None:
    """Brings a stored run up to today's statistics, in place and idempotently. A run with an
    omnibus but no ``decided_by`` was decided by the two-part omnibus of sessions 6-9; one
    without ``omnibus_parts`` predates session 12, whose `OMNIBUS` gained the model statistics,
    and stored the three-part one of sessions 10-12: their omnibus p-values are renamed
    (`EARLIER_OMNIBUS`). From stored per-class statistics (the primary, rule-based attack's) it
    adds what the run predates: the logit mean's statistics, the earlier omnibuses and, where
    the model statistics are stored, today's (`OMNIBUS`, also under session 11's name for it,
    ``omnibus[+self_confidence,reverse]``); each added key is listed in
    ``recomputed_offline``."""
    p = run["p_values"]
    if "rule_based:omnibus/min_rank" in p and "decided_by" not in run:
        run["decided_by"] = "rule_based:omnibus/min_rank"  # the omnibus of its time
        _rename_omnibus(run, "omnibus[mean,auc]")
    if "omnibus_parts" not in run:
        _rename_omnibus(run, "omnibus[mean,auc,logit_mean]")
        run["omnibus_parts"] = [list(part) for part in OMNIBUS]
    if not run.get("class_statistics"):
        return
    scores, logit_mean = candidate_scores(run), _per_class(run)["logit_mean"]
    models = np.arange(1, logit_mean.shape[0])
    wanted = {f"rule_based:logit_mean/{c}": stats.combine_classes(logit_mean, models, c)
              for c in stats.COMBINATIONS}
    wanted |= {f"rule_based:{name}/min_rank": scores[name] for name in EARLIER_OMNIBUS}
    if "omnibus (default)" in scores:
        wanted["rule_based:omnibus/min_rank"] = scores["omnibus (default)"]
        wanted["rule_based:omnibus[+self_confidence,reverse]/min_rank"] = scores[
            "omnibus (default)"]
    added = {k: v for k, v in wanted.items() if k not in p}
    p.update({k: float(stats.calibrated_p_value(v[2:], v[1])) for k, v in added.items()})
    if added:
        run["recomputed_offline"] = sorted({*run.get("recomputed_offline", []), *added})


# the per-class statistics that flag classes: sessions 5-12's, and the omnibus parts' since 13
LOCALISATION_RULES = {"mean": ("mean",), ",".join(LOCALISATION_STATISTICS): LOCALISATION_STATISTICS}


def flagged(run: dict, names: tuple[str, ...], production: int = 1) -> set[int]:
    """The classes a run's stored statistics flag (`detect.class_p_values`, Holm) with model
    ``production`` as the production model and every other model but the base as controls."""
    per_class = _per_class(run)
    order = [0, production, *(m for m in range(1, len(per_class["mean"])) if m != production)]
    _, corrected = class_p_values({k: v[None, order] for k, v in per_class.items()}, list(names),
                                  np.arange(2, len(order)))
    return set(np.flatnonzero(corrected[0] <= ALPHA).tolist())


def localisation(runs: list[dict], changed: set[int] | None) -> dict[str, str]:
    """Per rule of `LOCALISATION_RULES`, flagging alone (the partner tests need the per-image
    answers, which runs do not store). With ``changed`` classes: in the runs the default
    detected (gated, as `detect` is), how often the flagged classes hold both changed classes,
    are exactly them, and how many others they hold. Without (``none``): the rate of undrifted
    models with some class flagged, each control in turn taken as the production model
    (ungated)."""
    out = {}
    for rule, names in LOCALISATION_RULES.items():
        if changed is None:
            found = [bool(flagged(r, names, m)) for r in runs
                     for m in range(2, len(r["class_statistics"]["mean"]))]
            out[rule] = f"undrifted models with a class flagged {np.mean(found):.3f} " \
                        f"({sum(found)} of {len(found)})"
            continue
        found = [flagged(r, names) for r in runs if r["p_values"][PRIMARY] <= ALPHA]
        out[rule] = (f"detected {len(found)}: both changed classes flagged in "
                     f"{sum(changed <= f for f in found)}, exactly in "
                     f"{sum(changed == f for f in found)}; "
                     f"{sum(len(f - changed) for f in found)} other classes")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="power JSON files of bench_detection.py")
    parser.add_argument("--update", action="store_true",
                        help="write the statistics a stored run predates into the file (`update`)")
    parser.add_argument("--localisation", action="store_true",
                        help="the classes each localisation rule flags (`localisation`)")
    args = parser.parse_args()
    from bench_detection import SCENARIOS  # which classes each scenario changes
    for path in args.files:
        saved = json.loads(Path(path).read_text())
        if args.update:
            for runs in saved["points"].values():
                for run in runs:
                    update(run)
            atomic_write_json(path, saved, indent=None)
        for key, runs in saved["points"].items():
            runs = [r for r in runs if r.get("class_statistics")]
            if not runs:
                continue
            found = [p_values(r) for r in runs]
            disagreement = np.mean([r["p_values"]["baseline:disagreement"] <= ALPHA
                                    for r in runs])
            print(f"{key} ({len(runs)} seeds; disagreement {disagreement:.1f})")
            if args.localisation:
                scenario = key.split("/")[1]
                changed = None if scenario == "none" else SCENARIOS[scenario][2]
                if scenario == "none" or changed:
                    for rule, line in localisation(runs, changed).items():
                        print(f"  flagged by {rule:36s} {line}")
                continue
            for name in found[0]:
                ps = [f[name] for f in found if name in f]
                print(f"  {name:48s} {np.mean(np.array(ps) <= ALPHA):.1f}  "
                      f"p = {', '.join(f'{p:.2f}' for p in ps)}")


if __name__ == "__main__":
    main()
