"""PGD-20 against torchattacks: per-batch throughput, and (``--sweep``) a whole epsilon sweep.

Default mode: samples/s of vidcsl.attacks.pgd (fused kernels.pgd.pgd_step) vs torchattacks' PGD on the
same model and inputs (random_start=False), checking that both produce the same adversarial batch. The
attack's time is dominated by the model's forward/backward, so the two should be close.

``--sweep``: robust accuracy at eps in {0,1,2,4,8}/255 (L-inf; ``--norm l2`` for {0,0.125,0.25,0.5}) with
PGD-20, alpha = 2.5 eps / 20, no random start (``--random-start`` for one): ``vidcsl.attacks.robust_sweep``
(eps swept upward, only the samples still correct attacked, a sample dropped once misclassified) against
a per-eps loop of torchattacks' PGD on the same inputs, in the same run: wall time of each and
accuracies side by side.
Models: the demo's image model (small_cnn on 16x16 digits) and clip model (small_cnn3d on 8x32x32
moving-digit clips), each trained here for 150 AdamW steps (or, for the image model, loaded
from a supervised run with ``--image-checkpoint``), and ResNet-18-CIFAR with random weights (its labels
are its own clean predictions, so that every sample is attacked). Besides wall times, the table counts
attack steps (forward + backward) per sample: a machine-independent measure of the work each side does.
How much the sweep saves depends on the model: samples robust at a small eps must still be attacked
at every larger eps, so a model whose accuracy barely drops at 1/255 gains least.

    .venv/bin/python benchmarks/bench_attack.py --small              # quick CPU run
    .venv/bin/python benchmarks/bench_attack.py --sweep --small      # quick sweep
    python benchmarks/bench_attack.py --sweep                        # full sizes (CUDA when present)

Writes Markdown + JSON to ``benchmarks/results/`` (``bench_attack[_sweep][_small].{json,md}``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torchattacks  # noqa: E402

from vidcsl.attacks import robust_sweep  # noqa: E402
from vidcsl.attacks.pgd import pgd  # noqa: E402
from vidcsl.attacks.torchattacks_based import AsImages  # noqa: E402
from vidcsl.models.registry import build_encoder  # noqa: E402
from vidcsl.report.tables import to_markdown  # noqa: E402

FULL = {"small_cnn": (256, 3, 32, 32), "small_cnn3d": (16, 3, 16, 112, 112)}  # GPU sizes
CPU = {"small_cnn": (128, 3, 32, 32), "small_cnn3d": (4, 3, 8, 56, 56)}  # the full run on a CPU
SMALL = {"small_cnn": (16, 3, 32, 32), "small_cnn3d": (2, 3, 4, 32, 32)}
NORMS = {"linf": (8 / 255, 2 / 255, torchattacks.PGD), "l2": (0.5, 0.1, torchattacks.PGDL2)}


def classifier(name: str, device, **encoder_kwargs) -> nn.Module:
    torch.manual_seed(0)
    enc = build_encoder(name, **encoder_kwargs)
    return nn.Sequential(enc, nn.Linear(enc.feature_dim, 10)).to(device).eval()


def timed(fn, repeats: int, device, warmup: bool = True) -> tuple[float, torch.Tensor]:
    out = fn() if warmup else None
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_case(model_name: str, norm: str, shape, steps: int, repeats: int, device, warmup: bool) -> dict:
    """Time both attacks on one (model, norm) case and compare their outputs."""
    model = classifier(model_name, device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g).to(device)
    y = torch.randint(0, 10, (x.shape[0],), generator=g).to(device)
    eps, alpha, cls = NORMS[norm]
    ours_t, ours = timed(lambda: pgd(model, x, y, eps=eps, alpha=alpha, steps=steps, norm=norm,
                                     random_start=False), repeats, device, warmup)
    ta = cls(model, eps=eps, alpha=alpha, steps=steps, random_start=False)
    ta_t, theirs = timed(lambda: ta(x, y), repeats, device, warmup)
    with torch.no_grad():
        acc_ours = (model(ours).argmax(1) == y).float().mean().item()
        acc_theirs = (model(theirs).argmax(1) == y).float().mean().item()
    return {
        "model": model_name, "norm": norm, "shape": "x".join(map(str, x.shape)), "steps": steps,
        "vidcsl_samples_per_s": x.shape[0] / ours_t, "torchattacks_samples_per_s": x.shape[0] / ta_t,
        "speedup": ta_t / ours_t, "max_abs_diff": (ours - theirs).abs().max().item(),
        "identical": bool(torch.equal(ours, theirs)),
        "robust_acc_vidcsl": acc_ours, "robust_acc_torchattacks": acc_theirs,
    }


# ------------------------------------------------------------------------------------------ --sweep

SWEEP_EPS = {"linf": [0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255], "l2": [0.0, 0.125, 0.25, 0.5]}
# samples per model: (full on CPU, full on CUDA, --small)
SWEEP_N = {"small_cnn": (397, 397, 64), "small_cnn3d": (128, 256, 16), "resnet18_cifar": (64, 256, 8)}
DIGITS_SIZE, CLIP_FRAMES, CLIP_SIZE = 16, 8, 32  # the demo's image size and clip shape


def digit_images(split: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The embedded digits (real scans) as (N, 3, size, size) floats in [0,1] and their labels."""
    import torch.nn.functional as F

    from vidcsl.data.embedded import embedded_digits

    images, labels = embedded_digits()[split]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 1).contiguous(), torch.from_numpy(labels).long()  # NCHW-contiguous, as a loader gives


def digit_clips(split: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Moving-digit clips like the demo's (B, 3, 8, 32, 32): a 16-px digit drifting across a dark frame."""
    x, y = digit_images(split, DIGITS_SIZE)
    g = torch.Generator().manual_seed(seed)
    clips = torch.zeros(x.shape[0], 3, CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE)
    span = CLIP_SIZE - DIGITS_SIZE
    start = torch.randint(0, span + 1, (x.shape[0], 2), generator=g)
    velocity = torch.randint(-2, 3, (x.shape[0], 2), generator=g)
    for i in range(x.shape[0]):
        for t in range(CLIP_FRAMES):
            r, c = ((start[i] + t * velocity[i]) % (span + 1)).tolist()
            clips[i, :, t, r:r + DIGITS_SIZE, c:c + DIGITS_SIZE] = x[i]
    return clips, y


def train_classifier(name: str, x: torch.Tensor, y: torch.Tensor, steps: int, device) -> nn.Module:
    """Encoder ``name`` + linear head trained with AdamW (the demo's optimiser) for ``steps`` batches of 64."""
    model = classifier(name, device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    for _ in tqdm(range(steps), desc=f"training {name}", leave=False):
        idx = torch.randperm(x.shape[0], generator=g)[:64]
        loss = nn.functional.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def load_supervised(run_or_checkpoint: str, device) -> tuple[nn.Module, int]:
    """The classifier of a supervised vidcsl run on the embedded digits, and its image size."""
    from vidcsl.train.checkpoint import load_trained_method

    method, cfg, _ = load_trained_method(run_or_checkpoint, map_location=device)
    if cfg.method.name != "supervised" or cfg.data.kind != "embedded_digits":
        raise SystemExit(f"--image-checkpoint needs a supervised run on embedded_digits, got method "
                         f"{cfg.method.name!r} on {cfg.data.kind!r}")
    return nn.Sequential(method.encoder, method.classifier).eval(), int(cfg.data.image_size)


def sweep_models(args, device) -> list[dict]:
    """(name, weights, model, x, y) of the three benchmarked models."""
    pick = 2 if args.small else 1 if device.type == "cuda" else 0
    train_steps = args.train_steps if args.train_steps is not None else (100 if args.small else 150)
    cases = []
    if args.image_checkpoint:
        model, size = load_supervised(args.image_checkpoint, device)
        weights = f"checkpoint {args.image_checkpoint}"
    else:
        size = DIGITS_SIZE
        model = train_classifier("small_cnn", *digit_images("train", size), train_steps, device)
        weights = f"trained here ({train_steps} steps on digits)"
    x, y = digit_images("test", size)
    n = SWEEP_N["small_cnn"][pick]
    cases.append({"model": "small_cnn", "weights": weights, "net": model, "x": x[:n], "y": y[:n]})
    clip_model = train_classifier("small_cnn3d", *digit_clips("train", 0), train_steps, device)
    x, y = digit_clips("test", 1)
    n = SWEEP_N["small_cnn3d"][pick]
    cases.append({"model": "small_cnn3d", "weights": f"trained here ({train_steps} steps on moving digits)",
                  "net": clip_model, "x": x[:n], "y": y[:n]})
    width = 16 if args.small else 64  # --small: a narrow ResNet-18 for a quick smoke run
    resnet = classifier("resnet18_cifar", device, width=width)
    x, _ = digit_images("test", 32)
    x = x[:SWEEP_N["resnet18_cifar"][pick]]
    with torch.no_grad():
        y = torch.cat([resnet(x[i:i + 64].to(device)).argmax(1).cpu() for i in range(0, x.shape[0], 64)])
    cases.append({"model": f"resnet18_cifar (width {width})", "weights": "random (labels = its clean predictions)",
                  "net": resnet, "x": x, "y": y})
    return cases


def torchattacks_loop(model, x, y, *, norm, eps_list, steps, batch_size, random_start, device) -> dict[float, int]:
    """The per-eps loop robust_sweep replaces: torchattacks' PGD on every sample at every eps > 0."""
    hits = {}
    for eps in eps_list:
        hits[eps] = 0
        for i in range(0, x.shape[0], batch_size):
            xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
            if eps > 0 and norm == "linf":
                xb = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps,
                                      random_start=random_start)(xb, yb)
            elif eps > 0:  # PGDL2's random start is image-only: clips go as their (B, C*T, H, W) image view
                images = xb.reshape(xb.shape[0], -1, *xb.shape[-2:])
                xb = torchattacks.PGDL2(AsImages(model, xb.shape[1:]), eps=eps, alpha=2.5 * eps / steps, steps=steps,
                                        random_start=random_start)(images, yb).view_as(xb)
            with torch.no_grad():
                hits[eps] += int((model(xb).argmax(1) == yb).sum())
    return hits


def vidcsl_sweep(model, x, y, *, norm, eps_list, steps, batch_size, random_start, device) -> dict[float, int]:
    """The same numbers from robust_sweep, batch by batch as an evaluation would call it."""
    gen = torch.Generator(device=device).manual_seed(0)
    hits = dict.fromkeys(eps_list, 0)
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        out = robust_sweep(model, xb, yb, norm=norm, eps_list=eps_list, steps=steps,
                           random_start=random_start, generator=gen)
        for eps in eps_list:
            hits[eps] += int(out[eps].sum())
    return hits


class PassCounter:
    """Samples through the model's forward with gradient enabled: attack steps (forward + backward)."""

    def __init__(self, model: nn.Module):
        self.with_grad = 0
        self.handle = model.register_forward_pre_hook(self.count)

    def count(self, module, args) -> None:
        if torch.is_grad_enabled():
            self.with_grad += args[0].shape[0]


def measure(fn, model, x, y, kw: dict, repeats: int, device) -> tuple[float, dict[float, int], float]:
    """Best wall time of ``fn(model, x, y, **kw)`` over ``repeats``, its hits per eps (last run), and the
    attack steps (samples through a forward + backward) of one run."""
    counter = PassCounter(model)
    try:
        t, hits = timed(lambda: fn(model, x, y, **kw), repeats, device, warmup=False)
    finally:
        counter.handle.remove()
    return t, hits, counter.with_grad / repeats


def run_sweep(args, device) -> None:
    eps_list = SWEEP_EPS[args.norm]
    times, accs = [], []
    for case in tqdm(sweep_models(args, device), desc="models"):
        model, x, y = case["net"], case["x"], case["y"]
        kw = dict(norm=args.norm, eps_list=eps_list, steps=args.steps, batch_size=args.batch_size,
                  random_start=args.random_start, device=device)
        for fn in (torchattacks_loop, vidcsl_sweep):  # warm-up: first calls pay one-off setup
            fn(model, x[:2], y[:2], **{**kw, "eps_list": eps_list[-1:], "steps": 1})
        ta_t, theirs, ta_steps = measure(torchattacks_loop, model, x, y, kw, args.repeats or 1, device)
        ours_t, ours, our_steps = measure(vidcsl_sweep, model, x, y, kw, args.repeats or 1, device)
        n = x.shape[0]
        times.append({"model": case["model"], "weights": case["weights"], "shape": "x".join(map(str, x.shape)),
                      "clean_acc": theirs[0.0] / n if 0.0 in theirs else None,
                      "torchattacks_s": ta_t, "vidcsl_sweep_s": ours_t, "speedup": ta_t / ours_t,
                      "attack_steps_per_sample_torchattacks": ta_steps / n,
                      "attack_steps_per_sample_vidcsl": our_steps / n})
        for eps in eps_list:
            label = round(eps * 255, 3) if args.norm == "linf" else eps
            accs.append({"model": case["model"], "eps_255" if args.norm == "linf" else "eps": label,
                         "acc_vidcsl_sweep": ours[eps] / n, "acc_torchattacks": theirs[eps] / n,
                         "not_weaker": ours[eps] <= theirs[eps]})
    title = (f"PGD-{args.steps} {args.norm} eps sweep: robust_sweep vs a per-eps torchattacks loop "
             f"({'' if args.random_start else 'no '}random start)")
    text = f"# {title}\n\n{to_markdown(times, digits=3)}\n{to_markdown(accs, digits=4)}"
    print(text)
    meta = meta_of(device) | {"norm": args.norm, "steps": args.steps, "batch_size": args.batch_size,
                              "repeats": args.repeats or 1,
                              "random_start": args.random_start,
                              "command": " ".join(["python", *sys.argv])}
    stem = "bench_attack_sweep" + ("_l2" if args.norm == "l2" else "") + ("_small" if args.small else "")
    write_results(args.out, stem, {"meta": meta, "times": times, "accuracy": accs}, text)


def meta_of(device) -> dict:
    return {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def write_results(out: Path, stem: str, payload: dict, markdown: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2))
    (out / f"{stem}.md").write_text(markdown)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny sizes for a CPU smoke run")
    ap.add_argument("--sweep", action="store_true", help="time a whole eps sweep against a per-eps loop")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=None, help="best of N timings (default 5/3; 1 with --sweep)")
    ap.add_argument("--norm", choices=sorted(SWEEP_EPS), default="linf", help="--sweep: the norm swept")
    ap.add_argument("--batch-size", type=int, default=128, help="--sweep: samples per attacked batch")
    ap.add_argument("--train-steps", type=int, default=None,
                    help="--sweep: training batches of each demo model (default 150, 100 with --small)")
    ap.add_argument("--image-checkpoint", default=None,
                    help="--sweep: a supervised embedded_digits run (or its checkpoint) instead of training here")
    ap.add_argument("--random-start", action="store_true",
                    help="--sweep: both attacks start at a random point of the ball (default: at x, where the "
                         "sweep is never weaker than torchattacks sample by sample; random starts add noise)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's; 1 gives steadier times on a shared machine)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.sweep:
        run_sweep(args, device)
        return
    shapes = SMALL if args.small else FULL if device.type == "cuda" else CPU
    repeats = args.repeats or (5 if args.small else 3)
    rows = []
    cases = [(m, n) for m in shapes for n in NORMS if not (n == "l2" and len(shapes[m]) == 5)]
    # torchattacks' PGDL2 reshapes norms to (B,1,1,1): images only, so no L2 row for clips.
    for model_name, norm in tqdm(cases, desc=f"PGD-{args.steps}"):
        rows.append(bench_case(model_name, norm, shapes[model_name], args.steps, repeats, device,
                               warmup=True))
    table = to_markdown(rows, digits=4)
    print(table)
    meta = meta_of(device) | {"repeats": repeats}
    stem = "bench_attack_small" if args.small else "bench_attack"
    write_results(args.out, stem, {"meta": meta, "rows": rows}, f"# PGD-{args.steps} throughput ({meta['device']})\n\n{table}")


if __name__ == "__main__":
    main()
