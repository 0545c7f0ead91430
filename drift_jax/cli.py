"""The ``drift-jax`` command line. Errors a user can fix print one line and exit with status 2
(``--debug`` shows the traceback)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

from drift_jax.errors import DriftJaxError, DriftJaxWarning


def _add_data_info(sub) -> None:
    p = sub.add_parser("info", help="counts per class and shape of a dataset spec")
    p.add_argument("spec", help="digits | synthetic | idx:DIR | folder:PATH | tfds:NAME[:SPLIT]")
    p.add_argument("--out", help="also draw a PNG grid of samples, one row per class")
    p.add_argument("--per-class", type=int, default=8)
    p.set_defaults(func=_data_info)


def _data_info(args) -> int:
    from drift_jax import data, figures, validate

    if args.per_class < 1:  # refused before loading: zero rows would draw an empty grid
        raise DriftJaxError(f"--per-class must be >= 1 (samples drawn per class), got "
                            f"{args.per_class}.")
    if args.out:  # before the data is read: the picture must not land on or in it
        out = validate.resolved(args.out)
        validate.check_apart(out, [validate.Input(path, f"the data of {args.spec}")
                                   for path in data.spec_paths(args.spec)])
    dataset = data.load(args.spec)
    summary = dataset.summary()
    print(json.dumps(summary, indent=2))
    if args.out:
        figures.dataset_grid(out, dataset.images, dataset.labels, dataset.class_names,
                             args.per_class, dataset.name)
        print(f"wrote {args.out}")
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a stack of models; write config, metrics, checkpoint")
    p.add_argument("--config", help="a JSON TrainRunConfig; flags and --set override it")
    p.add_argument("--data", help="dataset spec (default: digits)")
    p.add_argument("--arch", choices=["seedcnn", "resnet"])
    p.add_argument("--models", type=int, help="stack size N")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. train.execution.member_mode=vmap")
    p.add_argument("--out", default="runs/train", help="run folder (default: runs/train)")
    _add_overwrite(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)


def _add_overwrite(p) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace a finished run in --out (the old one stays intact until the new "
                        "one is complete)")


def _train(args) -> int:
    from drift_jax import config as config_lib
    from drift_jax.training import run_training

    cfg = (config_lib.load_json(config_lib.TrainRunConfig, args.config) if args.config
           else config_lib.TrainRunConfig())
    flags = {"data": args.data, "arch": args.arch, "models": args.models, "seed": args.seed,
             "train.epochs": args.epochs, "train.batch_size": args.batch_size,
             "train.learning_rate": args.lr}
    overrides = [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
    cfg = config_lib.with_overrides(cfg, _once_each(overrides + args.set))
    run = run_training(cfg, Path(args.out), progress=not args.quiet, overwrite=args.overwrite)
    m = run.metrics
    acc = ", ".join(f"{a:.4f}" for a in m["holdout_accuracy"])
    print(f"trained {cfg.models} x {cfg.arch} on {m['data']['name']} ({m['train_size']} images, "
          f"{cfg.train.epochs} epochs) in {m['seconds']['train']:.1f} s "
          f"[{m['execution']['member_mode']}, chunk {m['execution']['scan_chunk']}]")
    print(f"holdout accuracy: {acc}")
    print(f"results in {args.out}/ (config.json, metrics.json, checkpoint/)")
    return 0


def _once_each(overrides: list[str]) -> list[str]:
    """``key=value`` overrides from flags and --set, each key at most once: a key given twice
    would keep only its last value."""
    seen = set()
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key in seen:
            raise DriftJaxError(f"{key} is given more than once (by a flag and --set, or by two "
                                "--set); give each key once.")
        seen.add(key)
    return overrides


def _add_invert(sub) -> None:
    p = sub.add_parser("invert", help="invert a saved stack into gray data (.npz and PNG grid)")
    p.add_argument("--checkpoint", required=True, help="a stack checkpoint folder")
    p.add_argument("--classes", default="all", help="comma-separated class indices, or 'all'")
    p.add_argument("--samples", type=int, help="samples per class (default 32)")
    p.add_argument("--method", choices=["miface", "regularized"])
    p.add_argument("--iterations", type=int, help="miface.max_iter or regularized.steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any InversionConfig key, e.g. miface.early_stop=art")
    p.add_argument("--out", required=True, help="output folder")
    _add_overwrite(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_invert)


def _parse_classes(text: str, num_classes: int) -> list[int]:
    if text == "all":
        return list(range(num_classes))
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError as e:
        raise DriftJaxError(f"--classes must be 'all' or comma-separated integers, got "
                            f"{text!r}.") from e


def _invert(args) -> int:
    import jax
    import numpy as np

    from drift_jax import config as config_lib
    from drift_jax import faults, figures, inversion, stack, validate
    from drift_jax.files import atomic_folder, atomic_write_json

    out = validate.output_folder(args.out, args.overwrite, inputs=[
        validate.Input(args.checkpoint, "the --checkpoint")])
    if args.seed < 0:
        raise DriftJaxError(f"--seed must be >= 0, got {args.seed}.")
    cfg = inversion.InversionConfig()
    overrides = list(args.set)
    if args.method is not None:
        overrides.insert(0, f"method={args.method}")
    if args.samples is not None:  # zero means zero: the config refuses it, never the default
        overrides.append(f"samples_per_class={args.samples}")
    cfg = config_lib.with_overrides(cfg, _once_each(overrides))
    if args.iterations is not None:
        key = "miface.max_iter" if cfg.method == "miface" else "regularized.steps"
        iterations = f"{key}={args.iterations}"
        _once_each([*overrides, iterations])  # --iterations and --set of the same key
        cfg = config_lib.with_overrides(cfg, [iterations])
    spec, variables, meta = stack.load_stack(args.checkpoint)
    classes = _parse_classes(args.classes, spec.num_classes)
    gray = inversion.invert(spec, variables, classes, cfg, jax.random.key(args.seed),
                            progress=not args.quiet)
    names = [str(c) for c in classes]
    summary = {"method": cfg.method, "seconds": gray.seconds,
               "mean_confidence_per_model": gray.confidence.mean((1, 2)).tolist(),
               "mean_confidence_per_class": dict(zip(names, gray.confidence.mean((0, 2))
                                                     .tolist())),
               "steps_taken_mean": float(np.mean(gray.active_steps))}
    with atomic_folder(out, args.overwrite) as tmp:
        atomic_write_json(tmp / "config.json", {"checkpoint": str(args.checkpoint),
                                                "classes": classes, "seed": args.seed,
                                                "inversion": config_lib.to_dict(cfg)})
        gray.save(tmp / "gray.npz")
        faults.point("invert.gray_saved")
        figures.gray_grid(tmp / "gray.png", gray.images, names,
                          title=f"{cfg.method}, {cfg.iterations} iterations")
        atomic_write_json(tmp / "summary.json", summary)
    print(f"inverted {gray.images.shape[0]} model(s) x {len(classes)} classes x "
          f"{cfg.samples_per_class} samples ({cfg.method}) in {gray.seconds:.1f} s; mean "
          f"target confidence {gray.confidence.mean():.3f}")
    print(f"results in {out}/ (gray.npz, gray.png, summary.json, config.json)")
    return 0


def _add_detect(sub) -> None:
    p = sub.add_parser("detect", help="the seven steps end to end: is the production concept "
                                      "different from the base one?")
    p.add_argument("--config", help="a JSON DetectConfig; flags and --set override it")
    p.add_argument("--base", help="base data spec (default: digits)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--production", help="production data spec (default: split off the base)")
    group.add_argument("--production-model", help="a saved production model (stack of one): "
                                                  "no production data needed")
    p.add_argument("--scenario", help="drift scenario applied to production data "
                                      "(default label_swap; 'none' is the honest control)")
    p.add_argument("--severity", type=int, help="0..5")
    p.add_argument("--seed", type=int)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any DetectConfig key, e.g. controls=49")
    p.add_argument("--out", default="runs/detect", help="run folder (default: runs/detect)")
    p.add_argument("--mitigate", action="store_true",
                   help="then train and test candidate updates of the base model for the "
                        "flagged classes (`drift-jax mitigate`), into OUT/mitigation/")
    _add_overwrite(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_detect)


def _detect(args) -> int:
    from drift_jax import config as config_lib
    from drift_jax import validate
    from drift_jax.detect import DetectConfig, detect_drift
    from drift_jax.report import summary_lines, write_report

    from_file = config_lib.read_json_object(args.config) if args.config else {}
    cfg = config_lib.from_dict(DetectConfig, from_file)
    flags = {"base": args.base, "production": args.production,
             "production_model": args.production_model, "scenario": args.scenario,
             "severity": args.severity, "seed": args.seed}
    cfg = config_lib.with_overrides(cfg, _once_each(
        [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None] + args.set))
    scenario_given = (args.scenario is not None or "scenario" in from_file
                      or any(item.partition("=")[0].strip() == "scenario" for item in args.set))
    cfg = _without_scenario_for_a_production_model(cfg, scenario_given)
    out = validate.output_folder(args.out, args.overwrite,
                                 inputs=validate.config_inputs(cfg))
    print(f"drift-jax detect: base {cfg.base}, production "
          f"{cfg.production or cfg.production_model or 'split off the base data'}, scenario "
          f"{cfg.scenario} (severity {cfg.severity}), {cfg.controls} control models", flush=True)
    report = detect_drift(cfg, progress=not args.quiet)
    write_report(report, out, args.overwrite)
    print("\n".join(summary_lines(report)))
    print(f"results in {args.out}/ (report.json, summary.md, figures/, gray.npz, models/)")
    if args.mitigate:
        if not report.drifted_classes:
            print("no drifted class flagged, so nothing to mitigate; to mitigate chosen classes "
                  f"run: drift-jax mitigate --run {args.out} --classes NAME,NAME --out DIR")
            return 0
        return _run_mitigation(out, out / "mitigation", [], [], args.quiet)
    return 0


def _without_scenario_for_a_production_model(cfg, scenario_given: bool):
    """A production model comes without production data, so no scenario can act on it: the
    run's scenario is 'none', and a scenario the user gave is refused rather than printed in
    the header and then ignored."""
    from drift_jax import config as config_lib

    if not cfg.production_model:
        return cfg
    if scenario_given and cfg.scenario != "none":
        raise DriftJaxError(f"scenario {cfg.scenario!r} drifts production data, and "
                            "--production-model gives a model instead of data, so it would not "
                            "be applied; drop the scenario, or pass the data with --production.")
    return config_lib.with_overrides(cfg, ['scenario="none"'])


def _add_mitigate(sub) -> None:
    p = sub.add_parser("mitigate", help="train candidate updates of a detect run's base model "
                                        "as one stack; measure recovery, forgetting, re-test")
    p.add_argument("--run", required=True, help="a finished `drift-jax detect` run folder")
    p.add_argument("--strategies", help="comma-separated, from fine_tune, retrain, targeted, "
                                        "replay, wise_ft, distill (default: all the run "
                                        "allows)")
    p.add_argument("--classes", help="comma-separated class names to mitigate (default: the "
                                     "classes the run flagged)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a MitigateConfig key, e.g. max_forgetting=2")
    p.add_argument("--out", required=True, help="mitigation folder")
    _add_overwrite(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_mitigate)


def _mitigate(args) -> int:
    from drift_jax import validate

    out = validate.output_folder(args.out, args.overwrite, inputs=_run_inputs(args.run))
    lists = {"strategies": (args.strategies, "all the strategies the run allows"),
             "classes": (args.classes, "the classes the run flagged")}
    flags = [f"{k}={json.dumps(_name_list(k, text, default))}"
             for k, (text, default) in lists.items() if text is not None]
    return _run_mitigation(args.run, out, flags, args.set, args.quiet, args.overwrite)


def _run_inputs(run: str) -> list:
    """What mitigate reads: the run folder (its mitigation/ may be written inside it, as
    `detect --mitigate` does) and the data its config names."""
    import types

    from drift_jax import validate

    inputs = [validate.Input(run, "the --run folder", holds_outputs=True)]
    try:
        config = json.loads((Path(run) / "config.json").read_text())
    except (OSError, ValueError):
        return inputs  # reading the run names what is wrong with it
    if isinstance(config, dict):
        inputs += validate.config_inputs(types.SimpleNamespace(
            **{k: config.get(k) for k in ("base", "production", "production_model")}))
    return inputs


def _name_list(flag: str, text: str, default: str) -> list[str]:
    """A comma-separated flag's names; an empty name is refused, never read as the default."""
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise DriftJaxError(f"--{flag} {text!r} has an empty name; give comma-separated names, "
                            f"or leave --{flag} out for {default}.")
    return names


def _run_mitigation(run: str | Path, out: str | Path, flags: list[str], overrides: list[str],
                    quiet: bool, overwrite: bool = False) -> int:
    from drift_jax import config as config_lib
    from drift_jax import mitigate as mitigate_lib

    cfg = config_lib.with_overrides(mitigate_lib.MitigateConfig(), _once_each(flags + overrides))
    print(f"drift-jax mitigate: run {run}", flush=True)
    report = mitigate_lib.mitigate(run, cfg, progress=not quiet)
    mitigate_lib.write_mitigation(report, out, overwrite)
    print("\n".join(mitigate_lib.summary_lines(report)))
    print(f"results in {out}/ (report.json, summary.md, figures/, model/)")
    return 0


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="run a grid of detect configs, one run folder per point "
                                     "(resumable; seeds of one point stacked)")
    p.add_argument("config", nargs="?", help="a sweep JSON ({detect, grid}) or a DetectConfig "
                                             "JSON (default: DetectConfig())")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="sweep a config key, e.g. seed=0,1,2 or scenario=none,label_swap")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the detect config for every point")
    p.add_argument("--out", required=True, help="sweep folder (runs/<id>/ inside)")
    p.add_argument("--task-index", type=int, help="this task (default: SLURM_ARRAY_TASK_ID, "
                                                  "else 0)")
    p.add_argument("--num-tasks", type=int, help="tasks sharing the sweep (default: the SLURM "
                                                 "array size, else 1)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_sweep)


def _sweep(args) -> int:
    import dataclasses

    from drift_jax import config as config_lib
    from drift_jax import sweep as sweep_lib

    cfg = sweep_lib.load(args.config) if args.config else sweep_lib.SweepConfig()
    grid = sweep_lib.merge_grids(cfg.grid, sweep_lib.parse_grid(args.grid))
    sweep_lib.check_set_not_swept(_once_each(args.set), grid)
    cfg = dataclasses.replace(cfg, detect=config_lib.with_overrides(cfg.detect, args.set),
                              grid=grid)
    total = len(sweep_lib.points(cfg))
    print(f"drift-jax sweep: {total} point(s) over {', '.join(cfg.grid) or 'no grid'}; "
          f"folder {args.out}", flush=True)
    result = sweep_lib.run_sweep(cfg, args.out, args.task_index, args.num_tasks,
                                 progress=not args.quiet)
    print(f"ran {len(result['ran'])}, already finished {len(result['skipped'])}, "
          f"{result['other_tasks']} group(s) left to other tasks; {result['seconds']:.0f} s")
    print(f"summarise with: drift-jax report {args.out}")
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="tables (CSV, Markdown) and figures over every finished "
                                      "run under a folder")
    p.add_argument("sweep_dir")
    p.add_argument("--out", help="default: SWEEP_DIR/report")
    _add_overwrite(p)
    p.set_defaults(func=_report)


def _report(args) -> int:
    from drift_jax import aggregate as report_lib

    summary = report_lib.write(args.sweep_dir, args.out, args.overwrite)
    print(report_lib.markdown(summary["group_keys"], summary["methods"], summary["groups"]))
    print(f"{summary['runs']} run(s); tables and figures in "
          f"{args.out or Path(args.sweep_dir) / 'report'}/")
    return 0


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one `drift-jax: error:` line, as every other error
    of the command line is (argparse's own print a usage block first); --help is unchanged.
    Subcommand parsers are made of this class too."""

    def error(self, message: str):
        text = " ".join(message.split())
        self.exit(2, f"drift-jax: error: {text}; see `{self.prog} --help`.\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="drift-jax", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--no-compilation-cache", action="store_true",
                        help="compile every program afresh instead of loading it from the "
                             "persistent cache ($DRIFT_JAX_CACHE/xla; the environment variable "
                             "DRIFT_JAX_COMPILATION_CACHE=0 does the same)")
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="inspect datasets").add_subparsers(dest="data_command",
                                                                          required=True)
    _add_data_info(data)
    _add_train(sub)
    _add_invert(sub)
    _add_detect(sub)
    _add_mitigate(sub)
    _add_sweep(sub)
    _add_report(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or an argument error (2, its line already printed)
        return e.code
    if args.no_compilation_cache:
        from drift_jax import runtime

        runtime.disable_compilation_cache()
    try:
        with interrupts_not_swallowed(), sigterm_as_interrupt(), warnings_as_lines():
            return args.func(args)
    except KeyboardInterrupt as e:
        if args.debug:
            raise
        what, status = ("terminated (SIGTERM)", 143) if isinstance(e, Terminated) else (
            "interrupted", 130)
        print(f"drift-jax: {what}; results are written whole or not at all, so nothing "
              "half-written was left behind.", file=sys.stderr)
        return status
    except (DriftJaxError, OSError, MemoryError) as e:
        if args.debug:
            raise
        print(f"drift-jax: error: {_one_line(e)}", file=sys.stderr)
        return 2


@contextlib.contextmanager
def warnings_as_lines():
    """drift_jax's own warnings (`DriftJaxWarning`) print as one ``drift-jax: warning:`` line
    each, once per message; others as Python prints them."""
    with warnings.catch_warnings():
        warnings.simplefilter("default", DriftJaxWarning)
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, DriftJaxWarning):
                print(f"drift-jax: warning: {message}", file=sys.stderr, flush=True)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


class Terminated(KeyboardInterrupt):
    """SIGTERM (what `timeout`, SLURM and `kill` send), raised like Ctrl-C's KeyboardInterrupt,
    so that every writer cleans up after it alike."""


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises `Terminated` in the main thread (Python's default is to die on the spot,
    leaving temporary folders behind)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return

    def terminate(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def interrupts_not_swallowed():
    """Python ignores an exception raised inside a `gc` callback (JAX registers one) or a
    finaliser and only reports it to `sys.unraisablehook`: a Ctrl-C landing there would be lost
    and the run go on. This sends the signal again from a timer thread, once the hook has
    returned (raised in the hook itself, it would be ignored too), so that the main thread's
    next ordinary line raises it."""
    previous = sys.unraisablehook

    def hook(unraisable):
        if issubclass(unraisable.exc_type, KeyboardInterrupt):
            again = signal.SIGTERM if issubclass(unraisable.exc_type, Terminated) else \
                signal.SIGINT
            timer = threading.Timer(0.1, os.kill, (os.getpid(), again))
            timer.daemon = True
            timer.start()
        else:
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def _one_line(error: BaseException) -> str:
    """The user's line for an error: ours verbatim, the operating system's with its path."""
    if isinstance(error, MemoryError):
        return ("out of memory; use smaller sizes (samples, models, data) or a machine with more "
                "memory.")
    if isinstance(error, OSError) and not isinstance(error, DriftJaxError):
        where = f" ({error.filename})" if error.filename else ""
        if error.errno == errno.ENOSPC:
            return (f"no space left on device{where}; free some space or write to another "
                    "folder (nothing half-written was left behind).")
        return (f"{error.strerror or error}{where}; check the path and its permissions "
                "(nothing half-written was left behind).")
    return "; ".join(part.strip() for part in str(error).splitlines() if part.strip())


if __name__ == "__main__":
    sys.exit(main())
