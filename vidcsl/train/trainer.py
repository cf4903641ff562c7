"""The one training loop, for every method and command (pretrain, supervise), on 1 or many processes.

    result = Trainer(cfg).fit()        # cfg: vidcsl.config.Config

It owns devices (bf16 autocast and channels_last on CUDA), gradient accumulation, the optimiser and
its per-step schedule, seeding, DDP, progress / logs, the kNN monitor, checkpoints and preemption;
a :class:`vidcsl.methods.base.Method` only turns a batch into a loss. Run folder ``runs/<name>/``:
``config.yaml``, ``metrics.csv``, ``tensorboard/``, ``checkpoints/last.pt``, ``metrics.json`` (written
when the run finishes; ``metrics_partial.json`` when SIGTERM stopped its final kNN monitor), ``.lock``
while it runs.

Exact resume: the sampler's shuffle is seeded per epoch and can start mid-epoch, the DataLoader has its
own generator (so creating one does not touch the global RNG), and the checkpoint restores every RNG
state, so an interrupted run ends with the weights of an uninterrupted one (on CPU with
``data.num_workers=0``; video clips are seeded per item, so videos also resume exactly with workers).

Nothing fails silently (``docs/reliability.md``): a second process in the same run folder, a config that
differs from the checkpoint's on ``--resume``, a NaN / inf loss or model state, an epoch with no usable
batch or too many bad samples, a write that fails: each stops the run with a message naming the cause,
the last good checkpoint intact. SIGTERM / SIGINT after setup, including during the final checkpoint and
kNN monitor, saves a state to resume from and raises :class:`RunPreempted` (exit status 3).
"""

from __future__ import annotations

import math
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from kernels.info_nce import NonFiniteEmbeddingError
from vidcsl.config import Config, config_differences, config_to_dict, config_yaml
from vidcsl.data.factory import DataBundle, build_datasets, set_dataset_epoch
from vidcsl.errors import CheckpointError, ConfigError, DataError, Preempted, RunFolderError
from vidcsl.methods.base import Method, StepContext, build_method, method_class
from vidcsl.methods.collapse import collapse_reason
from vidcsl.train import distributed as D
from vidcsl.train.checkpoint import (
    CHECKPOINT_DIR,
    LAST,
    Preemption,
    build_encoder_of,
    check_state_fits,
    load_checkpoint,
    non_finite_entries,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from vidcsl.train.knn import ExtractionStopped, extract_features, knn_accuracy
from vidcsl.train.logging import RunLogger, write_json, write_text_atomic
from vidcsl.train.optim import WarmupCosine, build_optimizer
from vidcsl.train.run_folder import RunLock, describe_holder, remove_temp_files, writing


class NonFiniteLossError(RuntimeError):
    """The loss or the model state (a parameter, a BatchNorm statistic) became NaN / inf; the run stopped
    and its last good checkpoint was kept."""


class RepresentationCollapseError(NonFiniteLossError):
    """The embeddings collapsed (``method.collapse_std``); stopped like a non-finite loss, last checkpoint kept."""


class RunPreempted(Preempted):
    """SIGTERM / SIGINT arrived; a checkpoint to continue from was saved (``--resume``); exit status 3."""


METRICS, PARTIAL_METRICS = "metrics.json", "metrics_partial.json"  # a finished run's summary; an interrupted one's

# Keys a resumed run may change: where and how long it runs, what it logs and monitors, where the data
# lives. Any other difference from the checkpoint's config would silently change what is being trained.
RESUME_MAY_CHANGE = ("train.epochs", "train.max_steps", "train.name", "train.runs_dir", "train.device",
                     "train.progress", "train.tensorboard", "train.log_every", "train.ckpt_every", "train.knn_every",
                     "train.knn_k", "train.knn_temperature", "data.num_workers", "data.root", "data.cache_dir",
                     "data.annotations", "data.train_list", "data.val_list", "data.test_list", "data.limit_eval",
                     "data.max_bad_fraction", "probe.")


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = not deterministic


def make_loader(ds: Dataset, batch_size: int, num_workers: int = 0, *, shuffle: bool = False, seed: int = 0,
                sampler: Any = None, drop_last: bool = False, persistent: bool = False) -> DataLoader:
    """A DataLoader that drops bad (None) samples, with its own seeded generator.

    ``persistent`` keeps the worker processes from one pass to the next (a loader iterated every epoch):
    starting them costs a fork and an empty pipeline each time. The datasets share their epoch with them
    (``vidcsl.data.epoch``); release the workers with :func:`release_workers` when done."""
    from vidcsl.data.video import collate_skip_bad

    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle if sampler is None else False, sampler=sampler,
                      num_workers=num_workers, collate_fn=collate_skip_bad, drop_last=drop_last,
                      generator=torch.Generator().manual_seed(seed), pin_memory=torch.cuda.is_available(),
                      persistent_workers=persistent and num_workers > 0)


def threads_beside_workers(num_workers: int) -> int:
    """Intra-op threads for a CPU process whose DataLoader runs ``num_workers`` worker processes beside it: the
    cores the workers leave free, at least one. More threads than free cores make every parallel op wait at
    its barrier for a thread the worker has pushed off its core (e.g. 2 threads + 1 busy worker on 2 cores)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - num_workers)


def release_workers(loader: DataLoader | None) -> None:
    """End the persistent workers of ``loader`` now, rather than whenever the loader is garbage-collected."""
    iterator = getattr(loader, "_iterator", None)  # where DataLoader keeps a persistent iterator
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
        loader._iterator = None


def to_device(obj: Any, device: torch.device, channels_last: bool) -> Any:
    """Move a (nested) batch to ``device``; image / clip tensors in channels_last(_3d) when asked."""
    if isinstance(obj, torch.Tensor):
        obj = obj.to(device, non_blocking=True)
        if channels_last and obj.is_floating_point() and obj.dim() in (4, 5):
            fmt = torch.channels_last if obj.dim() == 4 else torch.channels_last_3d
            obj = obj.contiguous(memory_format=fmt)
        return obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(o, device, channels_last) for o in obj) if not hasattr(obj, "dropped") \
            else [to_device(o, device, channels_last) for o in obj]
    return obj


def channels_last(module: torch.nn.Module) -> torch.nn.Module:
    """4-d weights to channels_last, 5-d (3-d convolutions) to channels_last_3d, others unchanged."""
    def fmt(t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 4:
            return t.contiguous(memory_format=torch.channels_last)
        if t.dim() == 5:
            return t.contiguous(memory_format=torch.channels_last_3d)
        return t

    return module._apply(fmt)


def batch_size_of(batch: Any) -> int:
    x = batch[0]
    while isinstance(x, (list, tuple)):
        x = x[0]
    return int(x.shape[0])


def trim_batch(batch: Any, n: int) -> Any:
    """Keep the first ``n`` samples of every tensor in a (nested) batch."""
    if isinstance(batch, torch.Tensor):
        return batch[:n]
    if isinstance(batch, (list, tuple)):
        return [trim_batch(b, n) for b in batch]
    return batch


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any]
    method: Method


class Trainer:
    """Builds data, model, optimiser from a config, then :meth:`fit` trains (resuming if asked)."""

    def __init__(self, cfg: Config, *, run_dir: str | os.PathLike | None = None, resume: bool = False,
                 data: DataBundle | None = None, encoder: torch.nn.Module | None = None):
        """``data`` / ``encoder`` replace the ones the config would build (programmatic use, tests)."""
        self.cfg = cfg
        self._encoder = encoder
        self.resume = resume
        name = cfg.train.name or f"{cfg.method.name}_{cfg.data.kind}"
        self.run_dir = Path(run_dir) if run_dir is not None else Path(cfg.train.runs_dir) / name
        self.ckpt_path = self.run_dir / CHECKPOINT_DIR / LAST
        self._data = data
        self.lock: RunLock | None = None
        self.logger: RunLogger | None = None
        self.bar: tqdm | None = None
        self.preempt: Preemption | None = None
        self._threads: int | None = None  # intra-op threads before training lowered them (CPU with workers)

    # ------------------------------------------------------------------------------------------ setup
    def _setup(self) -> None:
        """Lock the run folder, read and check a checkpoint to resume, build everything; only then write
        into the folder (so a refused resume leaves it as it was)."""
        cfg, t = self.cfg, self.cfg.train
        self.info = D.init_distributed(t.device)
        self.device = self.info.device
        self._take_run_folder()
        state = self._resume_state() if self.resume else None
        seed_everything(t.seed + self.info.rank, t.deterministic)  # ranks draw different augmentations
        per_step = self.info.world_size * t.accumulate
        if t.batch_size % per_step:
            raise ConfigError(f"config key 'train.batch_size' ({t.batch_size}) must be divisible by processes x "
                              f"train.accumulate = {self.info.world_size} x {t.accumulate}")
        self.micro_batch = t.batch_size // per_step
        cls = method_class(cfg.method.name)
        self.data = self._data or build_datasets(cfg.data, cls.data_mode, views=cls.views_for(cfg), seed=t.seed)
        encoder = self._encoder if self._encoder is not None else build_encoder_of(cfg)
        self.method = build_method(cfg, encoder, self.data.num_classes).to(self.device)
        cuda = self.device.type == "cuda"
        self.channels_last = cuda and t.channels_last
        if self.channels_last:
            self.method = channels_last(self.method)
        precision = t.precision if t.precision != "auto" else ("bf16" if cuda else "fp32")
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        self.model = self.method
        if self.info.distributed and t.sync_bn and cuda:
            self.method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.method)
            self.model = self.method
        if self.info.distributed:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.method, device_ids=None, find_unused_parameters=self.method.ddp_find_unused)
        self.sampler = D.ResumableSampler(self.data.train, self.info, shuffle=True, seed=t.seed, drop_last=True)
        self.loader = make_loader(self.data.train, self.micro_batch, cfg.data.num_workers, sampler=self.sampler,
                                  seed=t.seed + self.info.rank, drop_last=True, persistent=True)
        if self.device.type == "cpu" and cfg.data.num_workers > 0:  # restored by _close
            self._threads = torch.get_num_threads()
            torch.set_num_threads(min(self._threads, threads_beside_workers(cfg.data.num_workers)))
        self.steps_per_epoch = self.sampler.num_samples // self.micro_batch // t.accumulate
        if self.steps_per_epoch < 1:
            raise ConfigError(f"training split has {len(self.data.train)} samples: too few for one step of "
                              f"config key 'train.batch_size' = {t.batch_size}; lower the batch size")
        self.total_steps = t.epochs * self.steps_per_epoch
        if t.max_steps is not None:
            self.total_steps = min(self.total_steps, t.max_steps)
        self.optimizer = build_optimizer(self.method, cfg.optim, t.batch_size)
        warmup = round(cfg.optim.warmup_epochs * self.steps_per_epoch)
        self.scheduler = WarmupCosine(self.optimizer, t.epochs * self.steps_per_epoch, warmup, cfg.optim.min_lr,
                                      cfg.optim.schedule)
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.counts = defaultdict(int)
        self.running = _new_epoch_sums()
        self.history: dict[str, Any] = {}
        if state is not None:
            self._load(state)
        self.logger = RunLogger(self.run_dir, enabled=self.info.is_main, tensorboard=t.tensorboard)
        if self.info.is_main:
            write_text_atomic(self.run_dir / "config.yaml", config_yaml(cfg))
            with writing(self.run_dir / METRICS, "remove"):  # a resumed run is unfinished until it ends again
                (self.run_dir / METRICS).unlink(missing_ok=True)

    def _take_run_folder(self) -> None:
        """Rank 0 locks the run folder and clears leftovers of a killed run; every rank agrees on the outcome."""
        error = None
        if self.info.is_main:
            try:
                self.lock = RunLock(self.run_dir).acquire()
            except RunFolderError as err:
                error = err
            else:
                self._clear_leftovers()
        if self._agree(error is not None):
            raise error or RunFolderError(f"run folder {str(self.run_dir)!r} could not be locked by rank 0")
        if self.ckpt_path.exists() and not self.resume:
            raise RunFolderError(f"run folder {str(self.run_dir)!r} already has a checkpoint; pass --resume to "
                                 f"continue it, or choose another train.name / --run-dir")
        if self.resume and not self.ckpt_path.exists():
            raise CheckpointError(f"--resume: no checkpoint at {str(self.ckpt_path)!r}")

    def _clear_leftovers(self) -> None:
        """Report a stale lock (its holder died), remove temporary files of a killed checkpoint write, and
        check that checkpoints can be written at all."""
        if self.lock.stale:
            _note(f"run folder {str(self.run_dir)!r}: the lock of {describe_holder(self.lock.stale)} was stale "
                  f"(that process ended without releasing it, e.g. killed); taking the folder over")
        with writing(self.ckpt_path.parent, "write into the checkpoint folder"):  # fail now, not hours later
            removed = remove_temp_files(self.ckpt_path)
            self.ckpt_path.parent.mkdir(parents=True, exist_ok=True)
            tempfile.NamedTemporaryFile(dir=self.ckpt_path.parent, prefix=".write_test").close()
        if removed:
            _note(f"removed {len(removed)} temporary file(s) of an interrupted checkpoint write: "
                  f"{', '.join(p.name for p in removed)}")

    def _resume_state(self) -> dict[str, Any]:
        """The checkpoint to resume, refused (naming every differing key) when this config would train
        something else than the config it was trained with."""
        state = load_checkpoint(self.ckpt_path, map_location="cpu")
        differences = config_differences(state.get("config") or {}, config_to_dict(self.cfg),
                                         ignore=RESUME_MAY_CHANGE)
        if differences:
            raise CheckpointError(
                f"--resume: the config differs from the one {str(self.ckpt_path)!r} was trained with: "
                f"{'; '.join(differences)}. Resume with the run's own config ({self.run_dir / 'config.yaml'}) "
                f"or start a new run folder")
        return state

    # ------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1, "model": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng_state(),
            "progress": {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                         "global_step": self.global_step},
            "epoch_sums": dict(self.running),
            "counts": dict(self.counts), "history": dict(self.history), "num_classes": self.data.num_classes,
            "config": config_to_dict(self.cfg),
        }

    def save(self) -> Path | None:
        """Rank 0 writes ``checkpoints/last.pt`` atomically, with every rank's RNG state; every rank waits.

        A model state holding NaN / inf stops the run instead (the last good checkpoint stays)."""
        self._check_finite_state()
        rng_ranks = D.all_gather_objects(rng_state())  # ranks draw differently: resume each from its own
        path = None
        if self.info.is_main:
            path = save_checkpoint(self.ckpt_path, {**self.state_dict(), "rng_ranks": rng_ranks})
        D.barrier()
        return path

    def _load(self, state: dict[str, Any]) -> None:
        check_state_fits(self.method, state["model"], self.ckpt_path)
        self.method.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        ranks = state.get("rng_ranks") or []
        same_world = len(ranks) == self.info.world_size
        set_rng_state(ranks[self.info.rank] if same_world else state["rng"])
        p = state["progress"]
        self.epoch, self.step_in_epoch, self.global_step = p["epoch"], p["step_in_epoch"], p["global_step"]
        self.running.update(state.get("epoch_sums", {}))
        self.counts.update(state.get("counts", {}))
        self.history.update(state.get("history", {}))

    # --------------------------------------------------------------------------------------- monitor
    def knn_monitor(self) -> float | None:
        """Weighted kNN accuracy of the backbone features on the validation split (rank 0 computes).

        SIGTERM during it raises :class:`ExtractionStopped` on every rank."""
        acc, stopped = None, False
        if self.info.is_main:
            self.method.eval()
            t, bs, workers = self.cfg.train, self.micro_batch, self.cfg.data.num_workers
            common = dict(is_video=self.data.is_video, progress=t.progress, should_stop=self._stop_requested)
            try:
                bank = extract_features(self.method.embed, make_loader(self.data.train_eval, bs, workers),
                                        self.device, desc="kNN bank", **common)
                query = extract_features(self.method.embed, make_loader(self.data.val, bs, workers), self.device,
                                         desc="kNN val", **common)
                acc = knn_accuracy(*bank, *query, self.data.num_classes, k=t.knn_k, temperature=t.knn_temperature)
            except ExtractionStopped:
                stopped = True
            finally:
                self.method.train()
        D.barrier()
        if self._agree(stopped):
            raise ExtractionStopped("kNN monitor stopped by a signal")
        return acc

    def _stop_requested(self) -> bool:
        return self.preempt is not None and self.preempt.requested

    # ------------------------------------------------------------------------------------------- loop
    def _sync_batch(self, batch: Any) -> tuple[bool, int]:
        """(any rank has no batch, smallest batch size), agreed by every rank (one small all-reduce)."""
        size = 0 if batch is None else batch_size_of(batch)
        flags = torch.tensor([float(batch is None), -float(size)])
        if self.info.distributed:
            flags = D.all_reduce(flags.to(self.device), "max").cpu()
        return bool(flags[0]), int(-flags[1])

    def _agree(self, flag: bool) -> bool:
        """True on every rank if it is true on any rank."""
        if not self.info.distributed:
            return flag
        return bool(D.all_reduce(torch.tensor([float(flag)], device=self.device), "max").item())

    def _context(self) -> StepContext:
        return StepContext(epoch=self.epoch, global_step=self.global_step, rank=self.info.rank,
                           world_size=self.info.world_size, gather=D.gather_with_grad, gather_nograd=D.gather_nograd,
                           total_steps=self.cfg.train.epochs * self.steps_per_epoch)

    def _count_samples(self, used: int, bad: int) -> None:
        for counter in (self.counts, self.running):
            counter["samples"] += used
            counter["bad_samples"] += bad

    def _micro_step(self, batch: Any, last: bool) -> tuple[torch.Tensor | None, dict]:
        """Forward + backward of one micro-batch -> (loss, or None if some rank had no batch; logs)."""
        no_batch, size = self._sync_batch(batch)
        if no_batch or size < 2:  # nothing left after dropping bad samples (or no pair to contrast)
            self.counts["skipped_batches"] += 1
            self._count_samples(0, self.micro_batch if batch is None else getattr(batch, "dropped", 0))
            return None, {}
        self._count_samples(0, getattr(batch, "dropped", 0))
        if size < batch_size_of(batch):
            self.counts["trimmed_samples"] += batch_size_of(batch) - size
            batch = trim_batch(batch, size)
        batch = to_device(batch, self.device, self.channels_last)
        sync = nullcontext() if (last or not self.info.distributed) else self.model.no_sync()
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)
        with sync:
            with autocast:
                try:
                    loss, logs = self.model(batch, self._context())
                except NonFiniteEmbeddingError as err:  # diverged: NaN/inf embeddings reach the loss
                    raise self._non_finite(f"non-finite loss (nan) ({err})") from err
            self.scaler.scale(loss.float() / self.cfg.train.accumulate).backward()
        self._count_samples(size, 0)
        return loss.detach().float(), logs

    def _optimizer_step(self) -> None:
        clip = self.cfg.optim.grad_clip
        if clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.method.parameters(), clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.method.after_optimizer_step()

    def _non_finite(self, what: str) -> NonFiniteLossError:
        kept = str(self.ckpt_path) if self.ckpt_path.exists() else "none (no checkpoint was written yet)"
        return NonFiniteLossError(
            f"{what} at epoch {self.epoch}, optimiser step {self.global_step}; stopping the run. "
            f"Last good checkpoint: {kept}. Try a lower optim.lr, optim.grad_clip, or train.precision=fp32.")

    def _collapsed(self, why: str) -> RepresentationCollapseError:
        kept = str(self.ckpt_path) if self.ckpt_path.exists() else "none (no checkpoint was written yet)"
        return RepresentationCollapseError(
            f"representation collapse at epoch {self.epoch}, optimiser step {self.global_step}: {why}; stopping the "
            f"run. Last good checkpoint: {kept}. Try a lower optim.lr, or see docs/methods.md (collapse).")

    def _check_finite_state(self) -> None:
        """Stop the run when a parameter or buffer (e.g. a BatchNorm running variance) holds NaN / inf:
        the loss of a BatchNorm network can stay finite while its statistics have overflowed."""
        bad = non_finite_entries(self.method.state_dict())
        if self._agree(bool(bad)):
            raise self._non_finite(f"non-finite model state ({', '.join(bad[:3]) or 'on another rank'})")

    def _check_data(self, scope: str) -> None:
        """Stop with a :class:`DataError` when ``scope`` (an epoch) had no usable batch, or more bad samples
        than ``data.max_bad_fraction`` of those drawn."""
        r = self.running
        totals = torch.tensor([r["samples"], r["bad_samples"], r["loss_steps"]], dtype=torch.float64)
        if self.info.distributed:
            totals = D.all_reduce(totals.to(self.device), "sum").cpu()
        used, bad, steps = (int(v) for v in totals.tolist())
        limit = self.cfg.data.max_bad_fraction
        if steps > 0 and bad <= limit * (used + bad):
            return
        why = "no usable batch" if steps == 0 else f"more than data.max_bad_fraction = {limit:g}"
        raise DataError(f"{_data_source(self.cfg.data)}: {bad} of {used + bad} training samples drawn in {scope} "
                        f"were bad (unreadable, corrupt or too short): {why}; the warnings above name the files "
                        f"('vidcsl data check' lists them all)")

    def fit(self) -> TrainResult:
        try:
            self._setup()
            with Preemption() as self.preempt:
                self._train()
                metrics = self._finish()
        finally:
            self._close()
        return TrainResult(self.run_dir, metrics, self.method)

    def _train(self) -> None:
        t = self.cfg.train
        self.samples_per_step = self.micro_batch * self.info.world_size * t.accumulate
        self.bar = tqdm(total=self.total_steps, initial=self.global_step, desc=f"{self.cfg.method.name}",
                        disable=not (t.progress and self.info.is_main), dynamic_ncols=True)
        self.window: dict[str, list[float]] = defaultdict(list)
        self.start_time, self.start_step = time.perf_counter(), self.global_step
        self.tick = time.perf_counter()
        self.method.train()
        while True:
            if self.step_in_epoch >= self.steps_per_epoch:  # also an epoch end a preempted run left pending
                self._end_epoch()
            if self.epoch >= t.epochs or self.global_step >= self.total_steps:
                break
            self._train_epoch()

    def _train_epoch(self) -> None:
        """Optimiser steps until the epoch ends or the run reaches its last step."""
        t = self.cfg.train
        self.method.on_train_epoch_start(self.epoch)
        set_dataset_epoch(self.data.train, self.epoch)
        self.sampler.set_position(self.epoch, self.step_in_epoch * t.accumulate * self.micro_batch)
        batches = iter(self.loader)
        while self.step_in_epoch < self.steps_per_epoch and self.global_step < self.total_steps:
            self._train_step(batches)
            self.bar.update(1)
            if self.global_step % t.log_every == 0 or self.global_step == self.total_steps:
                self._check_finite_state()
                self._log_window()
            if self._agree(self.preempt.requested):
                self._stop_preempted(f"at optimiser step {self.global_step}")
            if t.ckpt_every and self.global_step % t.ckpt_every == 0:
                self.save()

    def _train_step(self, batches: Any) -> None:
        """One optimiser step over ``train.accumulate`` micro-batches; the loss goes into the running sums."""
        acc = self.cfg.train.accumulate
        losses = []
        for micro in range(acc):
            loss, logs = self._micro_step(next(batches), micro == acc - 1)
            if loss is not None:
                losses.append(loss)
                for k, v in logs.items():
                    self.window[k].append(v)
        local = torch.stack(losses).mean() if losses else torch.zeros((), device=self.device)
        mean_loss = float(D.all_reduce(local.clone(), "mean")) if self.info.distributed else float(local)
        if not math.isfinite(mean_loss):
            raise self._non_finite(f"non-finite loss ({mean_loss})")
        collapsed = collapse_reason(logs, self.cfg.method.collapse_std) if losses else None
        if collapsed:  # the same on every rank: methods measure the global batch
            raise self._collapsed(collapsed)
        if losses:
            self._optimizer_step()
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
        self.global_step += 1
        self.step_in_epoch += 1
        if losses:
            self.window["loss"].append(mean_loss)
            self.running["loss_sum"] += mean_loss
            self.running["loss_steps"] += 1

    def _log_window(self) -> None:
        now = time.perf_counter()
        speed = self.samples_per_step * len(self.window["loss"]) / max(now - self.tick, 1e-9)
        scalars = {f"train/{k}": _nanmean(v) for k, v in self.window.items()}
        scalars.update({"train/lr": self.optimizer.param_groups[0]["lr"], "train/samples_per_s": speed})
        self.logger.log(self.global_step, scalars, epoch=self.epoch)
        self.bar.set_postfix(loss=f"{scalars.get('train/loss', math.nan):.4f}", lr=f"{scalars['train/lr']:.3g}",
                             sps=f"{speed:.0f}")
        self.window.clear()
        self.tick = now

    def _stop_preempted(self, when: str, save: bool = True) -> None:
        path = self.save() if save else self.ckpt_path
        name = self.preempt.signal_name or "a signal"
        raise RunPreempted(f"stopped by {name} {when}; checkpoint {path or self.ckpt_path} saved, "
                           f"continue with --resume")

    def _end_epoch(self) -> None:
        """Check the epoch's data, log its mean loss (from running sums that checkpoints keep, so a resumed
        epoch's loss covers all of it) and run the kNN monitor when it is due."""
        t = self.cfg.train
        self._check_data(f"epoch {self.epoch}")
        r = self.running
        scalars = {"epoch/loss": r["loss_sum"] / r["loss_steps"] if r["loss_steps"] else math.nan}
        if t.knn_every > 0 and (self.epoch + 1) % t.knn_every == 0 and self.epoch + 1 < t.epochs:
            try:
                acc = self.knn_monitor()
            except ExtractionStopped:  # the epoch end is redone on --resume
                self._stop_preempted(f"during the kNN monitor after epoch {self.epoch}")
            if acc is not None:
                scalars["epoch/knn_val_acc"] = acc
        self.logger.log(self.global_step, scalars, epoch=self.epoch)
        self.history.setdefault("epoch_loss", []).append(scalars["epoch/loss"])
        self.epoch += 1
        self.step_in_epoch = 0
        self.running = _new_epoch_sums()

    def _finish(self) -> dict[str, Any]:
        """Final checks and checkpoint, then the final metrics (SIGTERM in between: exit 3, resumable)."""
        self.bar.close()
        if self.step_in_epoch > 0:  # the run ended inside an epoch (train.max_steps)
            self._check_data(f"the {self.step_in_epoch} steps of epoch {self.epoch}")
        self.save()
        if self._agree(self.preempt.requested):
            self._stop_preempted("after the final checkpoint", save=False)
        return self._final_metrics(time.perf_counter() - self.start_time, self.global_step - self.start_step)

    def _close(self) -> None:
        """End the loader's workers, close the progress bar and the logs and unlock the run folder, however
        the run ended."""
        release_workers(getattr(self, "loader", None))
        if self._threads is not None:
            torch.set_num_threads(self._threads)
        for thing in (self.bar, self.logger):
            if thing is not None:
                thing.close()
        if self.lock is not None:
            self.lock.release()

    def _final_metrics(self, seconds: float, steps: int) -> dict[str, Any]:
        counts = torch.tensor([float(self.counts[k]) for k in ("bad_samples", "skipped_batches", "trimmed_samples")])
        counts = D.all_reduce(counts.to(self.device), "sum").cpu() if self.info.distributed else counts
        metrics = {
            "method": self.cfg.method.name, "encoder": self.cfg.model.encoder, "dataset": self.cfg.data.kind,
            "epochs_completed": self.epoch, "global_step": self.global_step, "world_size": self.info.world_size,
            "epoch_loss": self.history.get("epoch_loss", []),
            "train_seconds": seconds, "samples_per_s": self.samples_per_step * steps / max(seconds, 1e-9),
            "bad_samples": int(counts[0]), "skipped_batches": int(counts[1]), "trimmed_samples": int(counts[2]),
            "checkpoint": str(self.ckpt_path),
        }
        if metrics["bad_samples"] and self.info.is_main:
            tqdm.write(f"note: {metrics['bad_samples']} bad samples were skipped "
                       f"({metrics['skipped_batches']} whole batches)")
        if self.cfg.train.knn_every >= 0:
            try:
                metrics["knn_val_acc"] = self.knn_monitor()
            except ExtractionStopped:
                self._write_metrics({**metrics, "knn_val_acc": None}, partial=True)
                self._stop_preempted(f"during the final kNN monitor ({PARTIAL_METRICS} written without it)",
                                     save=False)
            self.logger.log(self.global_step, {"final/knn_val_acc": metrics["knn_val_acc"] or math.nan})
        self._write_metrics(metrics)
        return metrics

    def _write_metrics(self, metrics: dict[str, Any], partial: bool = False) -> None:
        """``metrics.json`` exists only for a finished run (what a study checks); an interrupted one writes
        ``metrics_partial.json``."""
        if self.info.is_main:
            write_json(self.run_dir / (PARTIAL_METRICS if partial else METRICS), metrics)
            if not partial:
                with writing(self.run_dir / PARTIAL_METRICS, "remove"):
                    (self.run_dir / PARTIAL_METRICS).unlink(missing_ok=True)


def _new_epoch_sums() -> dict[str, float]:
    """What an epoch accumulates (and checkpoints keep): loss sum and steps, used and bad samples."""
    return {"loss_sum": 0.0, "loss_steps": 0, "samples": 0, "bad_samples": 0}


def _data_source(data: Any) -> str:
    """The data a run trains on, as a user named it."""
    for key in ("root", "train_list"):
        if getattr(data, key, None):
            return f"data.{key} {getattr(data, key)!r}"
    return f"data.kind {data.kind!r}"


def _note(message: str) -> None:
    tqdm.write(f"note: {message}", file=sys.stderr)


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    return float(sum(finite) / len(finite)) if finite else math.nan


def train(cfg: Config, *, run_dir: str | os.PathLike | None = None, resume: bool = False) -> TrainResult:
    """Train ``cfg`` (see :class:`Trainer`)."""
    return Trainer(cfg, run_dir=run_dir, resume=resume).fit()
