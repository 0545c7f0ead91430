import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import save_production_model
from scipy import special

from drift_jax import cli, data, stack, stats
from drift_jax.detect import (
    OMNIBUS,
    PARTNER_DIRECTIONS,
    DetectConfig,
    detect_drift,
    named_classes,
    partner_tests,
)
from drift_jax.errors import DriftJaxError


@pytest.mark.parametrize("scenario, drift", [("label_swap", True), ("none", False)])
@pytest.mark.slow
def test_digits_default_pipeline_flags_a_swap_and_not_none(scenario, drift):
    report = detect_drift(DetectConfig(scenario=scenario), progress=False)
    assert report.is_drift is drift
    if drift:
        assert set(report.drifted_classes) == {"0", "1"}  # the swapped classes, no others
    else:
        assert report.drifted_classes == [] and report.p_value > 0.05
    assert report.accuracy.base > 0.9
    # the base model's mean class probabilities on every model's gray data of each class:
    # its own transfer, and a swapped class read as its partner by the production model alone
    confusion = np.asarray(report.localisation.confusion)
    assert confusion.shape == (2 + 49, 10, 10)
    np.testing.assert_allclose(confusion.sum(-1), 1.0, atol=1e-4)
    assert np.diag(confusion[0]).mean() > 0.9
    read_as_partner = confusion[:, [0, 1], [1, 0]]  # P(1 | gray 0), P(0 | gray 1)
    assert bool((read_as_partner[1] > read_as_partner[2:].max(0)).all()) is drift


SMALL = ["controls=3", "train.epochs=2", "inversion.samples_per_class=2",
         "inversion.miface.max_iter=20", "permutations=50", "attack_fit_size=100",
         'attacks=["rule_based"]']


@pytest.mark.slow
def test_cli_detect_writes_a_readable_run(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["detect", "--base", "synthetic?n=400&classes=4&size=8", "--scenario", "relabel",
            "--out", str(out), "--quiet"]
    for item in SMALL:
        args += ["--set", item]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "verdict:" in printed and "scenario relabel" in printed
    report = json.loads((out / "report.json").read_text())
    assert set(report["attacks"]) == {"rule_based"} and len(report["attacks"]["rule_based"][
        "control_scores"]) == 3
    assert {"disagreement", "bbsd", "mmd"} == set(report["baselines"])
    assert (out / "summary.md").exists() and (out / "gray.npz").exists()
    assert {p.name for p in (out / "figures").iterdir()} == {
        "gray_base_vs_production.png", "scores_rule_based.png", "null_rule_based.png"}


def test_production_model_needs_no_production_data(tmp_path):
    ds = data.synthetic(n=400, classes=4, size=8)
    spec, prod = save_production_model(tmp_path / "prod")
    from drift_jax.config import with_overrides

    cfg = with_overrides(DetectConfig(), ["base=\"synthetic?n=400&classes=4&size=8\"",
                                          f"production_model=\"{tmp_path / 'prod'}\"",
                                          'scenario="none"', *SMALL])
    report = detect_drift(cfg, base=ds, progress=False)
    assert set(report.baselines) == {"disagreement"}  # BBSD and MMD need production data
    # The given model is the one in the production role: its accuracy on the run's holdout and
    # its gray data are the ones the run reports for production.
    from drift_jax.detect import split_pool

    holdout = split_pool(cfg, ds.labels, 4, with_production=False, holdout_ix=None).holdout
    expected = stack.evaluate_stack(spec, prod, ds.images[holdout], ds.labels[holdout])
    assert report.accuracy.production == expected["accuracy"][0]
    assert report.accuracy.production != report.accuracy.base
    confidence = jax.nn.softmax(stack.predict(spec, prod, report.gray.images[1].reshape(
        -1, *spec.image_shape))[0], axis=-1)
    np.testing.assert_allclose(
        np.take_along_axis(confidence, report.gray.labels[1].reshape(-1, 1), 1).ravel(),
        report.gray.confidence[1].ravel(), atol=1e-5)


def test_bad_detect_configs():
    with pytest.raises(DriftJaxError, match="include the primary attack"):
        DetectConfig(attacks=("black_box",))
    with pytest.raises(DriftJaxError, match="not both"):
        DetectConfig(production="digits", production_model="x")
    with pytest.raises(DriftJaxError, match="leave no held-out data"):
        detect_drift(DetectConfig(base_fraction=0.5, production_fraction=0.3,
                                  reference_fraction=0.3), progress=False)


def _comparable(report) -> dict:
    from drift_jax.report import report_to_json

    out = report_to_json(report)
    for volatile in ("timings", "environment"):
        out.pop(volatile)
    return out


def test_seeds_stacked_as_one_program_equal_separate_runs():
    from drift_jax.config import with_overrides
    from drift_jax.detect import detect_drift_seeds

    ds = data.synthetic(n=400, classes=4, size=8)
    cfg = with_overrides(DetectConfig(base="synthetic"), ['scenario="label_swap"', *SMALL,
                                                          'inversion.miface.init="uniform"'])
    stacked = detect_drift_seeds(cfg, [3, 4], base=ds, progress=False)
    assert [r.config["seed"] for r in stacked] == [3, 4]
    assert stacked[0].timings["seeds_sharing_train_and_invert"] == 2
    for seed, together in zip([3, 4], stacked):
        alone = detect_drift(with_overrides(cfg, [f"seed={seed}"]), base=ds, progress=False)
        np.testing.assert_allclose(together.gray.images, alone.gray.images, atol=1e-6)
        assert json.dumps(_comparable(together)) == json.dumps(_comparable(alone))
    assert not np.allclose(stacked[0].gray.images, stacked[1].gray.images)


def test_original_protocol_without_controls_uses_a_holdout_spec_and_the_seed_rule(tmp_path):
    from drift_jax.config import with_overrides
    from drift_jax.report import write_report

    cfg = with_overrides(DetectConfig(), [
        'base="synthetic?n=300&classes=3&size=8&seed=1"',
        'holdout="synthetic?n=90&classes=3&size=8&seed=1"', "base_fraction=0.5",
        "production_fraction=0.5", "controls=0", 'scenario="none"', *SMALL[1:]])
    report = detect_drift(cfg, progress=False)
    rule = report.attacks["rule_based"]
    assert report.p_value is None and len(rule.control_scores) == 0
    assert report.is_drift is rule.seed_rule.is_drift
    assert "disagreement" not in report.baselines  # needs controls
    write_report(report, tmp_path / "run")
    assert not (tmp_path / "run" / "figures" / "null_rule_based.png").exists()
    assert json.loads((tmp_path / "run" / "report.json").read_text())["p_value"] is None


def test_a_run_with_fewer_controls_is_nested_in_one_with_more():
    """Control j's data, keys and scores depend on j only: the M-ablation can subsample. (A
    class-mean statistic; rank and deficit combinations are relative to the control set.)"""
    from drift_jax.config import with_overrides

    ds = data.synthetic(n=400, classes=4, size=8)
    cfg = with_overrides(DetectConfig(base="synthetic"), ['scenario="none"', 'stat="fraction"',
                                                          *SMALL])
    big = detect_drift(with_overrides(cfg, ["controls=4"]), base=ds, progress=False)
    small = detect_drift(with_overrides(cfg, ["controls=2"]), base=ds, progress=False)
    a, b = big.attacks["rule_based"], small.attacks["rule_based"]
    np.testing.assert_array_equal(b.control_scores, a.control_scores[:2])
    assert b.production_score == a.production_score


def test_a_second_run_of_the_same_shapes_compiles_nothing():
    from drift_jax import runtime
    from drift_jax.config import with_overrides

    ds = data.synthetic(n=400, classes=4, size=8)
    cfg = with_overrides(DetectConfig(base="synthetic"), [
        *SMALL[:-1], 'attacks=["rule_based", "black_box"]'])
    first = detect_drift(cfg, base=ds, progress=False)
    stages = {"data", "train", "invert", "evaluate", "attack_rule_based", "attack_black_box",
              "baselines"}
    assert stages <= set(first.timings["compiles"])
    with runtime.CompileCounter() as counter:
        second = detect_drift(with_overrides(cfg, ["seed=1"]), base=ds, progress=False)
    assert counter.count == 0, second.timings["compiles"]
    assert all(c["count"] == 0 for c in second.timings["compiles"].values())


def _detect_in_a_fresh_process(out, env) -> dict:
    args = ["detect", "--quiet", "--base", "synthetic?n=400&classes=4&size=8", "--out", str(out)]
    for item in SMALL:
        args += ["--set", item]
    proc = subprocess.run([sys.executable, "-m", "drift_jax.cli", *args], capture_output=True,
                          text=True, timeout=600, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "report.json").read_text())["timings"]["compiles"]


@pytest.mark.slow
def test_the_persistent_cache_lets_a_second_process_load_instead_of_compile(tmp_path):
    """A fresh process with the cache warm builds every program from the cache; with the
    cache switched off it compiles them all, and writes no cache."""
    env = {"DRIFT_JAX_CACHE": str(tmp_path / "cache")}
    cold = _detect_in_a_fresh_process(tmp_path / "cold", env)
    warm = _detect_in_a_fresh_process(tmp_path / "warm", env)
    assert sum(c["cache_hits"] for c in cold.values()) == 0
    for stage in ("train", "invert", "attack_rule_based"):
        assert warm[stage]["count"] > 0 and warm[stage]["cache_hits"] == warm[stage]["count"]
    assert (tmp_path / "cache" / "xla").is_dir()
    off = _detect_in_a_fresh_process(tmp_path / "off", {
        "DRIFT_JAX_CACHE": str(tmp_path / "off_cache"), "DRIFT_JAX_COMPILATION_CACHE": "0"})
    assert sum(c["cache_hits"] for c in off.values()) == 0 and off["train"]["count"] > 0
    assert not (tmp_path / "off_cache" / "xla").exists()


@pytest.mark.parametrize("stat", ["auc", "ks", "mean", "logit_mean", "reverse", "omnibus"])
def test_distribution_statistics_run_end_to_end(stat):
    from drift_jax.config import with_overrides

    ds = data.synthetic(n=400, classes=4, size=8)
    cfg = with_overrides(DetectConfig(base="synthetic"), [
        *SMALL[:-1], 'attacks=["rule_based", "confidence"]', f'stat="{stat}"',
        'record="all"'])
    report = detect_drift(cfg, base=ds, progress=False)
    for attack in report.attacks.values():
        assert 0 < attack.p_value <= 1 and len(attack.control_scores) == 3
        assert np.isfinite(attack.production_score)
        # every statistic x combination from the same scores; the configured one decides
        assert len(attack.statistics) == 7 * 3 + 1  # 5 of the scores, 2 of the models
        assert attack.statistic == ("omnibus/min_rank" if stat == "omnibus" else
                                    f"{stat}/largest_deficit")
        assert attack.statistics[attack.statistic] == attack.p_value
        # every model's per-class statistics: any combination can be recomputed offline
        # (as scripts/offline_statistics.py does), the omnibus from its parts' ranks
        per_class = attack.class_statistics
        assert per_class["mean"].shape == (2 + 3, 4)
        models = np.arange(1, 5)
        overall = stats.combine_classes(per_class["mean"], models, "largest_deficit")
        assert stats.calibrated_p_value(overall[2:], overall[1]) == pytest.approx(
            attack.statistics["mean/largest_deficit"])
        omnibus = stats.min_rank(np.stack([stats.combine_classes(per_class[s], models, c)
                                           for s, c in OMNIBUS]), models)
        assert stats.calibrated_p_value(omnibus[2:], omnibus[1]) == pytest.approx(
            attack.statistics["omnibus/min_rank"])
    assert report.config["stat"] == stat
    # the default records what the decision reads: the same p-values, and no more
    lean = detect_drift(with_overrides(cfg, ['record="decision"']), base=ds, progress=False)
    for name, attack in lean.attacks.items():
        assert attack.class_statistics is None
        assert attack.statistics == {k: report.attacks[name].statistics[k]
                                     for k in attack.statistics}
        assert set(attack.statistics) == (
            {f"{s}/{c}" for s, c in (*OMNIBUS, ("omnibus", "min_rank"))} if stat == "omnibus"
            else {attack.statistic})
        assert attack.p_value == report.attacks[name].p_value


def test_partner_tests_find_where_a_flagged_class_went_and_nothing_else():
    """A flagged class whose production gray data the base model answers as another class, or
    whose base gray data the production model answers as another class, names that class; a
    flagged class with no such pull names none (every test Holm-corrected over both
    directions)."""
    rng = np.random.default_rng(0)
    seeds, controls, classes, samples = 2, 19, 5, 8

    def faithful():  # every model answers the gray image's class, but for a tenth of slips
        answers = np.broadcast_to(np.arange(classes)[:, None], (seeds, 2 + controls, classes,
                                                                samples)).copy()
        slips = rng.random(answers.shape) < 0.1
        answers[slips] = rng.integers(0, classes, slips.sum())
        return answers

    read_by_base, read_base = faithful(), faithful()
    read_by_base[0, 1, 1, :4] = 0  # seed 0: half of class 1's production gray data reads as 0
    read_base[0, 1, 2, :5] = 4  # seed 0: the production model reads the base's class 2 as 4
    found = partner_tests(dict(zip(PARTNER_DIRECTIONS, (read_by_base, read_base))),
                          [np.array([1, 2]), np.array([1, 3])], alpha=0.05)
    forward, reverse = PARTNER_DIRECTIONS
    assert list(found[0][1]["p_values"]) == [forward, reverse]
    assert list(found[0][1]["p_values"][forward]) == [0, 2, 3, 4]
    assert [p <= 0.05 for p in found[0][1]["p_values"][forward].values()] == [True] + [False] * 3
    assert all(p > 0.05 for p in found[0][1]["p_values"][reverse].values())
    assert (found[0][1]["destination"], found[0][1]["direction"]) == (0, forward)
    assert [p <= 0.05 for p in found[0][2]["p_values"][reverse].values()] == [False] * 3 + [True]
    assert (found[0][2]["destination"], found[0][2]["direction"]) == (4, reverse)
    assert all(p > 0.05 for k in (1, 3) for d in PARTNER_DIRECTIONS
               for p in found[1][k]["p_values"][d].values())
    assert found[1][1]["destination"] is None and found[1][3]["destination"] is None


def test_class_tests_flag_a_class_by_any_of_its_statistics_corrected_over_all():
    """Localisation flags a class when one of its statistics is low among the controls' (t
    prediction interval, Holm over classes x statistics): a drop in the production model's own
    confidence is flagged though its mean score is ordinary; by the mean alone it is not."""
    from drift_jax.detect import LOCALISATION_STATISTICS, class_p_values

    rng = np.random.default_rng(0)
    controls, classes = 19, 10
    class_statistics = {"mean": special.expit(rng.normal(4, 0.5, (1, 2 + controls, classes))),
                        "self_confidence": rng.normal(7, 0.5, (1, 2 + controls, classes)),
                        "reverse": rng.normal(6, 0.5, (1, 2 + controls, classes))}
    class_statistics["self_confidence"][0, 1, 2] = 3.0  # 8 control sds below
    by_statistic, corrected = class_p_values(class_statistics, list(LOCALISATION_STATISTICS),
                                             np.arange(2, 2 + controls))
    assert by_statistic.shape == (1, 3, classes) and corrected.shape == (1, classes)
    assert np.flatnonzero(corrected[0] <= 0.05).tolist() == [2]
    np.testing.assert_allclose(corrected[0], stats.holm(by_statistic[0].ravel()).reshape(
        3, classes).min(0))
    _, by_mean = class_p_values(class_statistics, ["mean"], np.arange(2, 2 + controls))
    assert by_mean[0, 2] > 0.05


def test_named_classes_add_destinations_not_explained_by_another_flagged_class():
    def partners(**destinations):
        return {int(k[1:]): {"destination": d, "p_values": {}} for k, d in destinations.items()}

    assert named_classes(partners(c1=0)) == [1, 0]  # a partial relabel 0 -> 1, flagged at 1
    assert named_classes(partners(c0=1, c1=0)) == [0, 1]  # a full swap
    # a full relabel 0 -> 1: class 0's gray data is noise that happens to read as 4
    assert named_classes(partners(c0=4, c1=0)) == [0, 1]
    assert named_classes(partners(c3=None)) == [3]


def test_model_statistics_ask_each_model_about_its_own_seeds_base_gray_data():
    """``reverse``: every model's target probability on its seed's base model's gray images;
    ``self_confidence``: each model's confidence in its own gray data; both mean clipped logits
    per class, [seeds, models, classes]. Pinned against a plain loop over models."""
    from drift_jax.detect import answers_on_base_gray, model_statistics
    from drift_jax.inversion import GrayData
    from drift_jax.models import ModelSpec

    seeds, group, classes, samples = 2, 3, 3, 2
    spec = ModelSpec("seedcnn", classes, (8, 8, 1))
    trained = stack.init_stack(spec, jax.random.split(jax.random.key(0), seeds * group))
    rng = np.random.default_rng(0)
    images = rng.random((seeds * group, classes, samples, 8, 8, 1)).astype(np.float32)
    confidence = rng.random((seeds * group, classes, samples))
    gray = GrayData(images=images, classes=np.arange(classes), confidence=confidence,
                    trace=np.zeros((seeds * group, 1)),
                    active_steps=np.zeros((seeds * group, classes, samples), int))
    found = model_statistics(gray, answers_on_base_gray(spec, trained, images[::group], group))
    target = np.repeat(np.arange(classes), samples)
    for s in range(seeds):
        base_gray = images[s * group].reshape(-1, 8, 8, 1)
        for g in range(group):
            logits = stack.predict(spec, stack.member(trained, [s * group + g]), base_gray)[0]
            p = special.softmax(logits, -1)[np.arange(target.size), target]
            np.testing.assert_allclose(found["reverse"][s, g], stats.clipped_logit(p).reshape(
                classes, samples).mean(-1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(found["self_confidence"], stats.clipped_logit(confidence).reshape(
        seeds, group, classes, samples).mean(-1), rtol=1e-6)


def test_pooled_controls_overlap_the_production_data_as_they_overlap_each_other():
    """``control_data="pooled"``: controls are production-sized subsets of the reference pool
    and the production data together, so the production model's training set is distributed
    like a control's under no drift (exchangeable); by default they never see production data."""
    from drift_jax.config import with_overrides
    from drift_jax.detect import StackedData, plan_seed

    ds, labels = data.digits(), []

    def control_sets(control_data, *overrides):
        cfg = with_overrides(DetectConfig(), ["controls=40", f'control_data="{control_data}"',
                                              'scenario="none"', *overrides])
        plan = plan_seed(cfg, ds, ds.labels, None, None)
        stacked = StackedData.build(ds, [plan])
        production = stacked.production[0]
        labels.append(stacked.labels)  # of the pool, then of the production data
        return plan, set(production.tolist()), [set(r.tolist()) for r in
                                                plan.control_rows(production)]

    plan, production, controls = control_sets("reference")
    assert all(len(c) == len(production) and not c & production for c in controls)
    plan, production, controls = control_sets("pooled")
    allowed = production | set(plan.split.reference.tolist())
    assert all(len(c) == len(production) and c <= allowed for c in controls)
    with_production = np.mean([len(c & production) for c in controls])
    with_each_other = np.mean([len(a & b) for i, a in enumerate(controls)
                               for b in controls[i + 1:]])
    expected = len(production) ** 2 / len(allowed)  # hypergeometric mean
    assert abs(with_production - expected) < 0.05 * expected
    assert abs(with_each_other - expected) < 0.05 * expected
    # stratified: every control has the production data's class counts (a plain draw does not)
    def counts(rows):
        return np.bincount(labels[-1][sorted(rows)], minlength=10)

    assert any((counts(c) != counts(production)).any() for c in controls)
    plan, production, controls = control_sets("pooled", "stratify_controls=true")
    assert all((counts(c) == counts(production)).all() and c <= allowed for c in controls)
    with_production = np.mean([len(c & production) for c in controls])
    assert abs(with_production - expected) < 0.05 * expected


def test_pooled_controls_run_end_to_end_and_fall_back_without_production_data(tmp_path):
    from drift_jax.config import with_overrides
    from drift_jax.detect import plan_seed

    ds = data.synthetic(n=400, classes=4, size=8)
    cfg = with_overrides(DetectConfig(base="synthetic"), ['control_data="pooled"', *SMALL])
    report = detect_drift(cfg, base=ds, progress=False)
    rule = report.attacks["rule_based"]
    assert len(rule.control_scores) == 3  # the p-value is the production model's rank
    assert report.p_value == (1 + (rule.control_scores <= rule.production_score).sum()) / 4
    # a production model and no production data: the controls draw from the pool alone
    spec, prod = save_production_model(tmp_path / "prod")
    given = with_overrides(cfg, [f'production_model="{tmp_path / "prod"}"'])
    plan = plan_seed(given, ds, ds.labels, None, None)
    assert not plan.pooled and all(np.isin(r, plan.split.reference).all()
                                   for r in plan.control_rows(np.zeros(0, np.int64)))
    run = detect_drift(given, base=ds, progress=False)  # and the given model is the one used
    expected = stack.evaluate_stack(spec, prod, ds.images[plan.split.holdout],
                                    ds.labels[plan.split.holdout])
    assert run.accuracy.production == expected["accuracy"][0]
