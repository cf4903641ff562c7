"""Sub-commands of the robustness stage: ``evaluate``, ``study``, ``demo``, ``nonrobust``.

    vidcsl evaluate runs/digits_simclr                      # -> runs/digits_simclr/eval/report.md
    vidcsl evaluate runs/digits_simclr eval.n_samples=200 eval.norms=[linf]
    vidcsl study configs/study_cifar10_resnet18.yaml        # the whole comparison, resumable
    vidcsl demo                                             # the small study on the embedded data (CPU)
    vidcsl nonrobust configs/nonrobust_demo.yaml               # the source x target matrix (make demo-nonrobust)
    vidcsl nonrobust runs/digits_simclr --robust-run runs/digits_supervised_at
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DEMO_CONFIG = "study_demo.yaml"


def _eval_help() -> str:
    return ("evaluation settings 'key=value' (the 'eval.' prefix is optional), e.g. n_samples=200 "
            "pgd_steps=10 restarts=2 linf_eps_255=[0,2,8] norms=[linf] attacks=[pgd,autoattack] "
            "protocols=[standard] levels=[clip] severities=[1,3,5] probe=[probe.epochs=10]; see docs/evaluation.md")


def add_commands(subparsers: Any) -> None:
    from vidcsl.train.cli import device_arg

    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "evaluate", help="clean / robust / corruption accuracy and representation metrics of one run",
        formatter_class=fmt,
        description="Evaluate a trained run: a supervised run as its own classifier, any other run as frozen "
        "encoder + linear probe (trained first when the run has none with these settings); adversarial "
        "contrastive runs also under their own protocols (adversarial BN branch, robust linear evaluation). "
        "Measures clean accuracy, robust accuracy over L-inf and L2 eps sweeps (PGD; AutoAttack on images when "
        "asked) with a sanity panel against gradient masking, accuracy under every corruption and severity - "
        "for videos at clip and video level - plus alignment / uniformity / inter-intra ratio / sensitivity "
        "and the FN detector's logged precision and recall. Writes eval.json, outcomes.npz (per-sample "
        "outcomes), CSVs, PNGs and report.md into RUN/eval/. See docs/evaluation.md.")
    p.add_argument("run", metavar="RUN_OR_CHECKPOINT", help="run folder or checkpoint file")
    p.add_argument("settings", nargs="*", help=_eval_help())
    p.add_argument("--config", default=None, help="YAML file with evaluation settings (a mapping; the "
                   "settings on the command line win)")
    p.add_argument("--out", default=None, help="output folder (default: RUN/eval)")
    p.add_argument("--device", default=None, type=device_arg,
                   help="cpu | cuda | cuda:N (default: cuda when available)")
    p.set_defaults(func=_cmd_evaluate)

    p = subparsers.add_parser(
        "study", help="train SL, CSL, CSL+FN, negative-free and adversarial CSL +/- FN per seed, evaluate, compare",
        formatter_class=fmt, description=_study_description())
    p.add_argument("config", help="study YAML (see configs/study_*.yaml)")
    p.add_argument("overrides", nargs="*", help="study settings 'key=value' (top level), e.g. runs_dir=runs/s2 "
                   "device=cpu headline_eps=4")
    p.add_argument("--eval", dest="eval_settings", action="append", default=[], metavar="KEY=VALUE",
                   help="evaluation setting for every sub-run (repeatable), e.g. --eval n_samples=100")
    p.set_defaults(func=_cmd_study)

    p = subparsers.add_parser(
        "demo", help="the small study on the embedded digit images and videos (2-core CPU, < 10 min)",
        formatter_class=fmt,
        description="Run configs/study_demo.yaml (its comments say what it trains): SL and CSL on the embedded "
        "digits with 5 seeds, the untrained-encoder reference and CSL+FN (label oracle, top-k detector) with 3, "
        "SupCon, BYOL, CLAE and CLAE+FN with one, and SL / CSL on the embedded moving-digit videos at clip and "
        "video level; each model evaluated on the whole embedded test split. Prints where the report is, its "
        "main table and which questions this budget resolves. Rerunning reuses finished sub-runs (use --fresh "
        "to start over). See docs/study.md.")
    p.add_argument("--runs-dir", default=None, help="where the sub-runs and the report go (default: runs/demo)")
    p.add_argument("--fresh", action="store_true", help="delete the demo folder first")
    p.add_argument("--config", default=None, help=f"study YAML to run instead of configs/{DEMO_CONFIG}")
    p.set_defaults(func=_cmd_demo)

    p = subparsers.add_parser(
        "nonrobust", help="robust / non-robust feature datasets (Ilyas et al. 2019), every paradigm trained on each",
        formatter_class=fmt, description=_nonrobust_description())
    p.add_argument("source", metavar="CONFIG_OR_RUN", help="a matrix YAML (configs/nonrobust_demo.yaml: sources "
                   "trained here when missing) or one trained run folder (a standard source)")
    p.add_argument("overrides", nargs="*", help="matrix settings 'key=value', e.g. n_train=500 eval_eps=0.5 "
                   "sets=[nr,det,rand] (see docs/nonrobust.md)")
    p.add_argument("--robust-run", default=None, help="run whose encoder builds D_R: an adversarially trained "
                   "model (supervised_at, ACL, RoCL). Without it (and no robust_source in the YAML) no D_R is "
                   "built; it is never built from RUN itself")
    p.add_argument("--force", action="store_true", help="build D_R even when the robust source's measured robust "
                   "accuracy is below robust_threshold (otherwise refused, exit 2)")
    p.add_argument("--targets", default=None, help="comma-separated paradigms trained on every set (study variant "
                   "names, csl_fn = CSL+FN with fn_detector); default sl,csl,csl_fn,byol")
    p.add_argument("--out", default=None, help="output folder (default: the YAML's out, or RUN/nonrobust)")
    p.add_argument("--n-train", type=int, default=None, help="real training images each set is built from")
    p.add_argument("--steps", type=int, default=None, help="feature-matching steps of D_R / D_NR (default 1000)")
    p.add_argument("--attack-steps", type=int, default=None, help="targeted PGD steps of D_det / D_rand (default 100)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs of every target (default: the recipe's)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N | auto")
    p.set_defaults(func=_cmd_nonrobust)


def _study_description() -> str:
    from vidcsl.robustness import study

    return study.__doc__


def _cmd_evaluate(args: argparse.Namespace) -> int:
    """User errors (:class:`vidcsl.errors.VidcslError`) reach ``vidcsl.cli.main``, which prints them as one
    line; anything else keeps its traceback."""
    from vidcsl.config import read_yaml_mapping
    from vidcsl.robustness.evaluate import eval_config_from_dict, evaluate_run

    raw = {}
    if args.config:
        raw = read_yaml_mapping(args.config, f"evaluation config {args.config!r}")
        raw = raw.get("eval", raw)
    if args.device:
        raw["device"] = args.device
    ecfg = eval_config_from_dict(raw, args.settings)
    result = evaluate_run(args.run, ecfg, out_dir=args.out)
    from vidcsl.report.run_report import summary_table
    from vidcsl.report.tables import markdown_table

    out = Path(args.out) if args.out else Path(result["run"]) / "eval"
    print(markdown_table(*summary_table(result)))
    print(f"report: {out / 'report.md'}")
    return 0


def _print_report(report: Path) -> None:
    from vidcsl.report.study_report import fmt_interval, load_study, main_table

    data = load_study(report.parent / "study.json")
    print(f"\nreport: {report.resolve()}")
    for t in data["tracks"]:
        print(f"\n[{t['track']}]\n{main_table(t)}")
        for q in t["questions"]:  # the same question can be asked under several protocols / levels
            print(f"- {q['question']} [{q['where']}] {q['answer']}: {fmt_interval(q['interval'], bold_resolved=False)}")


def _run_study_file(path: str, overrides: list[str], eval_settings: list[str]) -> int:
    """User errors reach ``vidcsl.cli.main`` (one line, exit 2); a sub-run that diverges or collapses is
    left out of the comparison by the study itself, with a note."""
    from vidcsl.robustness.study import load_study_config, run_study

    report = run_study(load_study_config(path, overrides), eval_settings)
    _print_report(report)
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    return _run_study_file(args.config, args.overrides, args.eval_settings)


def demo_config_path() -> Path:
    """``configs/study_demo.yaml`` of the source tree this package runs from."""
    return Path(__file__).resolve().parents[2] / "configs" / DEMO_CONFIG


def _cmd_demo(args: argparse.Namespace) -> int:
    import shutil

    from vidcsl.errors import UsageError

    path = Path(args.config) if args.config else demo_config_path()
    if not path.is_file():
        raise UsageError(f"demo study config {str(path)!r} not found (run from a source checkout, or pass --config)")
    runs_dir = args.runs_dir or "runs/demo"
    if args.fresh and Path(runs_dir).exists():
        shutil.rmtree(runs_dir)
    return _run_study_file(str(path), [f"runs_dir={runs_dir}"], [])


def _nonrobust_description() -> str:
    return (
        "Ilyas et al.'s robust / non-robust feature datasets (2019), across training paradigms as in Li et al. "
        "(2023). Sources: every standard source (RUN, or the YAML's sources: SL, CSL, CSL+FN, ...) builds D_NR "
        "(another training image moved, inside an L2 ball nr_eps, until the source's encoder sees the features "
        "of the original; original label), D_det and D_rand (targeted L2 PGD on the source's classifier - its "
        "own head, or encoder + a linear probe - towards t = (y+1) mod C or a random t, relabelled t). The "
        "robust source (--robust-run, or the YAML's robust_source: an adversarially trained model such as "
        "supervised_at, ACL or RoCL) builds D_R (unconstrained matching through its encoder).\n\n"
        "Refusal: every source's clean and robust accuracy (PGD at eval_eps) is measured on the real test split "
        "first. A robust source below robust_threshold (default 0.3) is refused with exit status 2, naming its "
        "measured robust accuracy, unless --force. Without a robust source no D_R is built (the report says "
        "so); D_R is never built from a standard run.\n\n"
        "Then every target paradigm (--targets) is trained from scratch on every set with one shared recipe, "
        "the non-SL ones with a linear probe on the same synthetic set, and evaluated on the REAL test split: "
        "clean accuracy (usefulness) and robust accuracy, source x target. Sets are cached (.npz + .json "
        "provenance) and trained targets kept, so a rerun only does what changed. Writes report.md, "
        "matrix_clean.csv, matrix_robust.csv, heatmap_clean.png, heatmap_robust.png and nonrobust.json. "
        "Images only. See docs/nonrobust.md.\n\n"
        "  vidcsl nonrobust configs/nonrobust_demo.yaml           # make demo-nonrobust\n"
        "  vidcsl nonrobust runs/digits_simclr --robust-run runs/digits_supervised_at --targets sl,csl")


def _cmd_nonrobust(args: argparse.Namespace) -> int:
    """User errors (the refusal included) reach ``vidcsl.cli.main``: one line, exit 2."""
    from vidcsl.errors import UsageError
    from vidcsl.report.nonrobust_report import summary_text
    from vidcsl.robustness.nonrobust_matrix import (
        Source,
        load_matrix_config,
        matrix_config_for_run,
        run_matrix,
    )

    path = Path(args.source)
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        mcfg = load_matrix_config(path, args.overrides)
    elif path.is_dir() or path.suffix == ".pt":
        mcfg = matrix_config_for_run(args.source, args.overrides)
    else:
        raise UsageError(f"{args.source!r} is neither a matrix YAML nor a run folder / checkpoint")
    if args.robust_run is not None:
        mcfg.robust_source = Source(name="robust", run=args.robust_run)
    if args.force:
        mcfg.force = True
    if args.targets is not None:
        mcfg.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    for key, value in (("out", args.out), ("n_train", args.n_train), ("match_steps", args.steps),
                       ("attack_steps", args.attack_steps), ("epochs", args.epochs), ("device", args.device)):
        if value is not None:
            setattr(mcfg, key, value)
    report = run_matrix(mcfg)  # checks every setting, the flags' values included, before anything runs
    print(f"report: {report.resolve()}")
    print(summary_text(report.parent / "nonrobust.json"))
    return 0
