"""Sub-commands of the training stage: ``pretrain``, ``supervise``, ``probe``, ``knn``.

Single process (CPU or one GPU)::

    vidcsl pretrain configs/digits_simclr.yaml                 # runs/digits_simclr/
    vidcsl pretrain configs/digits_simclr.yaml optim.lr=0.3 train.epochs=2 --run-dir runs/try
    vidcsl pretrain configs/digits_simclr.yaml --resume        # continue after a preemption
    vidcsl supervise configs/digits_supervised.yaml
    vidcsl probe runs/digits_simclr                            # linear probe -> runs/digits_simclr/probe/
    vidcsl knn runs/digits_simclr/checkpoints/last.pt

Several GPUs on one machine (DDP; ``train.batch_size`` is the global batch, split over processes)::

    torchrun --nproc_per_node G -m vidcsl pretrain configs/ucf101_r3d18_simclr.yaml

Several machines (run on every node, ``--node_rank`` 0..N-1; the endpoint is node 0's address)::

    torchrun --nnodes N --nproc_per_node G --node_rank R \\
        --rdzv_backend c10d --rdzv_endpoint HOST:29500 --rdzv_id myrun \\
        -m vidcsl pretrain configs/ucf101_r3d18_simclr.yaml

CPU-only DDP (gloo) works the same way (``--nproc_per_node 2`` on a CPU machine). SIGTERM / SIGINT
save a checkpoint at the next step boundary (or stop the final kNN monitor) and exit with status 3;
rerun with ``--resume``. A user error (config, data, checkpoint, run folder) exits with status 2, a
diverged run with status 1; see docs/reliability.md.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

EXIT_DIVERGED = 1  # the loss or the model state became NaN / inf (the last good checkpoint is kept)


def _overrides_help() -> str:
    return "config overrides 'section.key=value' (value parsed as YAML), e.g. optim.lr=0.3 train.epochs=2"


def add_commands(subparsers: Any) -> None:
    for name, help_text in (("pretrain", "train an encoder with the config's method (SimCLR, MoCo, SupCon, ...)"),
                            ("supervise", "train the supervised (cross-entropy) baseline of a config")):
        p = subparsers.add_parser(name, help=help_text, description=help_text + ". SIGTERM / SIGINT save a checkpoint at the next step "
                                  "and exit with status 3; rerun with --resume to continue.",
                                  formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_launch_epilog())
        p.add_argument("config", help="YAML config file (see configs/)")
        p.add_argument("overrides", nargs="*", help=_overrides_help())
        p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoints/last.pt")
        p.add_argument("--run-dir", default=None, help="run folder (default: train.runs_dir/train.name)")
        p.set_defaults(func=_cmd_pretrain if name == "pretrain" else _cmd_supervise)

    p = subparsers.add_parser("probe", help="linear probe on a trained encoder (frozen), selected on validation",
                              description="Fit a linear classifier on frozen features of a run's encoder; the "
                              "epoch is chosen on the validation split and test accuracy is reported for it. "
                              "Writes RUN/probe/probe.json and classifier.pt.")
    p.add_argument("run", metavar="RUN_OR_CHECKPOINT", help="run folder or checkpoint file")
    p.add_argument("overrides", nargs="*", help="overrides of the stored config, e.g. probe.epochs=20 "
                   "probe.optimizer=adam probe.cached=false")
    p.add_argument("--out", default=None, help="output folder (default: RUN/probe)")
    p.add_argument("--device", default=None, type=device_arg,
                   help="cpu | cuda | cuda:N (default: the run's train.device)")
    p.set_defaults(func=_cmd_probe)

    p = subparsers.add_parser("knn", help="weighted kNN accuracy (k=200, cosine, T=0.07) of a trained encoder",
                              description="kNN monitor: training features as the bank, validation (and test) "
                              "features as queries; prints and writes RUN/knn.json.")
    p.add_argument("run", metavar="RUN_OR_CHECKPOINT", help="run folder or checkpoint file")
    p.add_argument("overrides", nargs="*", help="overrides of the stored config, e.g. train.knn_k=20")
    p.add_argument("--device", default=None, type=device_arg, help="cpu | cuda | cuda:N")
    p.set_defaults(func=_cmd_knn)


def device_arg(text: str) -> str:
    """argparse type of ``--device``: auto, cpu, cuda or cuda:N (whether this machine has it is checked later)."""
    from vidcsl.config import DEVICE_PATTERN

    if not re.fullmatch(DEVICE_PATTERN, text):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def _launch_epilog() -> str:
    return "Multi-GPU / multi-node: see 'torchrun' in the module docstring of vidcsl/train/cli.py:\n" \
           "  torchrun --nproc_per_node G -m vidcsl pretrain CONFIG\n" \
           "  torchrun --nnodes N --nproc_per_node G --node_rank R --rdzv_backend c10d " \
           "--rdzv_endpoint HOST:29500 -m vidcsl pretrain CONFIG"


def _run_training(args: argparse.Namespace, extra: tuple[str, ...] = ()) -> int:
    """Errors of the user (config, data, run folder) and preemption reach ``vidcsl.cli.main``, which
    prints them as one line (exit 2 and 3); a diverged run prints its reason and exits 1."""
    from vidcsl.config import load_config
    from vidcsl.train.distributed import cleanup_distributed
    from vidcsl.train.trainer import NonFiniteLossError, Trainer

    cfg = load_config(args.config, [*args.overrides, *extra])
    try:
        result = Trainer(cfg, run_dir=args.run_dir, resume=args.resume).fit()
    except NonFiniteLossError as err:
        print(f"vidcsl {args.command}: error: {err}", file=sys.stderr)
        return EXIT_DIVERGED
    finally:
        cleanup_distributed()
    m = result.metrics
    knn = m.get("knn_val_acc")
    print(f"done: {m['global_step']} steps, {m['samples_per_s']:.1f} samples/s"
          + (f", kNN val acc {knn:.4f}" if knn is not None else "") + f"; run folder {result.run_dir}")
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    return _run_training(args)


def _cmd_supervise(args: argparse.Namespace) -> int:
    """The config's supervised baseline: its own method when that already trains a classifier (e.g.
    ``supervised_at``, which plain cross-entropy would silently replace), else ``supervised``."""
    from vidcsl.config import load_config
    from vidcsl.methods.base import method_class

    cfg = load_config(args.config, args.overrides)
    keep = method_class(cfg.method.name).own_classifier
    return _run_training(args, () if keep else ("method.name=supervised",))


def _cmd_probe(args: argparse.Namespace) -> int:
    from vidcsl.train.probe import run_probe

    s = run_probe(args.run, args.overrides, out_dir=args.out, device=args.device)
    test = "n/a" if s["test_acc"] is None else f"{s['test_acc']:.4f}"
    print(f"linear probe: best epoch {s['best_epoch']}, val acc {s['val_acc']:.4f}, test acc {test}")
    return 0


def _cmd_knn(args: argparse.Namespace) -> int:
    result = run_knn(args.run, args.overrides, device=args.device)
    print(" ".join(f"{k} {v:.4f}" for k, v in result.items() if isinstance(v, float)))
    return 0


def run_knn(run_or_checkpoint: str, overrides: list[str] | tuple[str, ...] = (), *,
            device: str | None = None) -> dict[str, Any]:
    """kNN accuracy of a run's encoder on validation and test; writes ``knn.json`` in the run folder."""
    from vidcsl.data.factory import build_datasets
    from vidcsl.train.checkpoint import load_for_evaluation, resolve_checkpoint
    from vidcsl.train.knn import extract_features, knn_accuracy
    from vidcsl.train.logging import write_json
    from vidcsl.train.trainer import make_loader

    path = resolve_checkpoint(run_or_checkpoint)
    method, cfg, dev = load_for_evaluation(path, overrides, device)
    data = build_datasets(cfg.data, "eval", seed=cfg.train.seed)
    t, bs = cfg.train, cfg.probe.batch_size

    def feats(ds, desc):
        return extract_features(method.embed, make_loader(ds, bs, cfg.data.num_workers), dev,
                                is_video=data.is_video, desc=desc, progress=t.progress)

    bank = feats(data.train_eval, "kNN bank")
    result: dict[str, Any] = {"checkpoint": str(path), "k": t.knn_k, "temperature": t.knn_temperature}
    for split, ds in (("val", data.val), ("test", data.test)):
        if ds is not None:
            result[f"knn_{split}_acc"] = knn_accuracy(*bank, *feats(ds, f"kNN {split}"), data.num_classes,
                                                      k=t.knn_k, temperature=t.knn_temperature)
    write_json(path.parent.parent / "knn.json", result)
    return result
