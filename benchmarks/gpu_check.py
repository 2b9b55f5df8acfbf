"""GPU check (``make gpu-check``): the paper CFGAN and the AVIH face setting trained for a few
hundred steps on synthetic data in fp32, ``16-mixed`` and ``bf16-mixed``: images/s, peak GPU
memory, and the generator loss after N steps beside fp32's.

    PYTHONPATH=. python benchmarks/gpu_check.py                # paper sizes, on the GPU
    python benchmarks/gpu_check.py --only cfgan --precisions 32-true,bf16-mixed
    python benchmarks/gpu_check.py --small --image-size 64 --batch 2 --steps 2 --warmup 1 \\
        --encrypt-iterations 1 --device cpu        # CPU smoke run: a minute on two cores

What runs, per precision (``--precisions``; a precision the device cannot run is reported as
SKIP, e.g. ``16-mixed`` on CPU), each from the same initial weights and the same data:

- ``cfgan-coarse`` / ``cfgan-fine``: the CFGAN stages (``CFGANStage``, one RaGAN discriminator
  step and one generator step per iteration) at paper size (``conf/model/cfgan_paper.yaml``:
  coarse G 76.6M, fine G 106.8M, D 4.6M parameters; 256x256 images from 128x128x128 compressed
  SIFT maps; batch 8; Adam 1e-4, betas (0.9, 0.999)). Loss (``conf/loss/cfgan.yaml``): pix 1,
  adv 0.02, sift 0.01 when kornia is installed (``--sift-loss``); per 0.01 and style are set to
  0 (they need pretrained VGG19 weights). The fine stage gets a frozen, randomly initialised
  coarse net (the same for every precision, so that only the fine stage's own training differs).
- ``avih-dr``: the DR attack's stage (``DRStage``; ``conf/attack/dr.yaml``,
  ``conf/model/dr_faces.yaml``, ``conf/loss/dr.yaml``): attacker U-Net (base 64, depth 4) and
  PatchGAN (tanh) on 112x112 faces, augmented identity loss (weight 30; flip, pad 5, crop)
  through the ArcFace IR-18 service model (``conf/face/arcface_ir18.yaml``, random weights,
  frozen), minimax GAN loss (weight 1), batch 32, Adam 2e-4 betas (0.5, 0.999).
- ``avih-encrypt``: AVIH encryption (``AVIHEncryptor.encrypt``; ``conf/threat/_avih_base.yaml``)
  of 64 images with 2 random U-Net key models and the IR-18 service model, Adam 0.01,
  ``--encrypt-iterations`` iterations. Always float32 (autocast off, by design), so one row.

Synthetic data, made on the device from a seed and the sample number: smooth random images in
[-1, 1]; SIFT maps with ~8 % of the pixels set, whose 128 values encode the local colour of the
image (so the generator has something to learn) plus noise, zeros elsewhere; for AVIH,
"encrypted" inputs (smooth images plus strong noise) and auxiliary images.

Measured: images/s over the steps after ``--warmup`` (synchronised), peak GPU memory
(``torch.cuda.max_memory_allocated``, reset before each run; "n/a" on CPU), the generator loss
(mean of the last 10 iterations) and its relative difference to the fp32 run's. Tolerance
(``--tolerance``, default 5 %): mixed precision rounds differently from the first step and GAN
training amplifies small differences, so the losses are compared as a band, not bit for bit.
In CPU runs of the small networks bf16-mixed stayed within 0.3 % of fp32 (3 to 150 iterations);
5 % leaves room for nondeterministic GPU kernels and 300 iterations of GAN dynamics, while a
broken set-up is far outside it (updates lost to fp16 rounding leave the loss near its start:
the table shows the loss of the first iterations too; an fp16 overflow gives a non-finite loss,
which stops the run: FAIL). The exit status is 1 when a row FAILs (a mixed-precision loss outside
the tolerance, or an error).

Output: one markdown table on stdout and in ``--out`` (default ``gpu_check.md``), the raw
numbers in the same name with ``.json``; both are rewritten after every run, so a killed check
keeps what it measured. Progress lines go to stderr.

Time on one H200 at the defaults (300 iterations, 3 precisions): per training step (forward and
backward FLOPs counted on the meta device) cfgan-coarse ~3.9 TFLOP (batch 8), cfgan-fine ~8
TFLOP, avih-dr ~3.0 TFLOP (batch 32); at the 150-400 TFLOP/s an H200 sustains for such convnets
(TF32 convs in fp32, fp16/bf16 tensor cores in mixed precision) that is ~10-50 ms a step, i.e.
~2 minutes of training for the 9 runs, plus the encryption (~3.6 TFLOP an iteration, 100
iterations: a few seconds) and per-run start-up (building the 183M-parameter nets on the CPU,
cuDNN autotuning): about 3-4 minutes in all, under 10 even at half that speed.

Needs only PyTorch and Lightning (``pytorch_lightning``): the package modules it imports
(``reconattack.attacks.cfgan`` / ``dr``, ``reconattack.models``, ``reconattack.losses``,
``reconattack.threats.avih.encryption``) load without Hydra, OmegaConf, kornia, lpips, open_clip
and wandb, and the networks and stages are built here with explicit arguments (the paper
values, kept equal to the YAML configs by ``tests/test_gpu_check.py``). The rest of the
framework (``make demo``, ``make test``) needs them; bring them to a machine without internet
as wheels (``benchmarks/GPU_CHECK.md``):

    # on a machine with internet (this repository checked out):
    benchmarks/make_wheels.sh --python-version 3.12 --torch <GPU machine's torch version> wheels
    # carry wheels/ over, then on the GPU machine:
    python -m pip install --no-index --find-links wheels -r wheels/requirements.txt
"""

from __future__ import annotations

import argparse
import collections
import gc
import importlib.util
import json
import logging
import math
import platform
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if sys.path[:1] != [str(ROOT)]:  # this checkout's package, from anywhere, installed or not
    sys.path.insert(0, str(ROOT))

WHEELS_HELP = """\
The full framework also needs hydra-core, omegaconf, kornia, lpips, open_clip_torch, wandb and
a few more (pyproject.toml). On a machine with internet, in this repository:
    benchmarks/make_wheels.sh --python-version 3.12 --torch TORCH_VERSION wheels
(add --torchvision VERSION when the GPU machine lacks torchvision; --dry-run prints the pip
commands), carry the wheels/ folder to the GPU machine and there run
    python -m pip install --no-index --find-links wheels -r wheels/requirements.txt
See benchmarks/GPU_CHECK.md."""

if "--verbose" not in sys.argv:  # library deprecation notices at import time
    warnings.filterwarnings("ignore", category=DeprecationWarning)

try:
    import pytorch_lightning as pl
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, Dataset
except ImportError as _exc:  # pragma: no cover - depends on the machine
    sys.exit(f"gpu_check needs PyTorch and Lightning (pytorch_lightning): {_exc}\n"
             f"Install them with the machine's CUDA build of torch; nothing else is needed for "
             f"this check.\n\n{WHEELS_HELP}")

import reconattack  # noqa: E402
from reconattack.attacks.cfgan import CFGANStage  # noqa: E402
from reconattack.attacks.dr import DRStage  # noqa: E402
from reconattack.models.cfgan import CoarseGenerator, Discriminator, FineGenerator  # noqa: E402
from reconattack.models.face import IResNet, make_face_model  # noqa: E402
from reconattack.models.keys import PatchGAN, UNet, make_key_model  # noqa: E402
from reconattack.threats.avih.encryption import AVIHEncryptor  # noqa: E402
from reconattack.utils.seeding import seeded  # noqa: E402

PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")
ALIASES = {"32": "32-true", "fp32": "32-true", "16": "16-mixed", "fp16": "16-mixed",
           "bf16": "bf16-mixed"}
REFERENCE = "32-true"
ENCRYPT = "avih-encrypt"
LAST = 10  # the loss is the mean of the last LAST iterations
FRAMEWORK_EXTRAS = ("hydra", "omegaconf", "kornia", "lpips", "open_clip", "wandb")

# ---------------------------------------------------------------------------------------------
# Settings: the paper values of the YAML configs (tests/test_gpu_check.py compares them), and the
# CPU-sized networks of the small configs for --small.
# ---------------------------------------------------------------------------------------------

#: conf/model/cfgan_paper.yaml, conf/loss/cfgan.yaml, conf/attack/cfgan.yaml (optimizer),
#: conf/experiment/cfgan_celebahq.yaml + conf/data/celebahq.yaml (256 px, batch 8)
CFGAN_PAPER = {
    "image_size": 256,
    "batch": 8,
    "coarse": {"in_ch": 128, "enc_channels": [256, 512, 512, 512, 512, 512],
               "dec_channels": [512, 512, 512, 256, 128, 64], "enc_mid": None,
               "output_activation": "none"},
    "fine": {"in_ch": 128, "enc_channels": [256, 512, 512, 512, 512, 512],
             "dec_channels": [512, 512, 512, 256, 128, 64], "enc_mid": None,
             "output_activation": "none", "stem_mid": None, "fusion": "paper"},
    "discriminator": {"stem": 16, "channels": [32, 64, 128, 256, 256, 256]},
    "loss": {"pix": 1.0, "per": 0.01, "adv": 0.02, "sift": 0.01, "style": 0.0},
    "optimizer": {"lr": 1.0e-4, "betas": [0.9, 0.999]},
}
#: conf/model/cfgan_small.yaml (64 px, 32x32 map)
CFGAN_SMALL = {
    **CFGAN_PAPER,
    "image_size": 64,
    "coarse": {**CFGAN_PAPER["coarse"], "enc_channels": [32, 64, 64, 64], "enc_mid": [32, 32, 64, 64],
               "dec_channels": [64, 64, 32, 16]},
    "fine": {**CFGAN_PAPER["fine"], "enc_channels": [32, 64, 64, 64], "enc_mid": [32, 32, 64, 64],
             "dec_channels": [64, 64, 32, 16], "stem_mid": 32},
    "discriminator": {"stem": 8, "channels": [16, 32, 32, 32]},
}
#: conf/attack/dr.yaml, conf/model/dr_faces.yaml, conf/loss/dr.yaml, conf/face/arcface_ir18.yaml,
#: conf/threat/_avih_base.yaml (key models, encryption), conf/data/avih_lfw.yaml (112 px, batch 32)
AVIH_PAPER = {
    "image_size": 112,
    "batch": 32,
    "attacker": {"base": 64, "depth": 4, "output": "sigmoid"},
    "discriminator": {"input_nc": 3, "ndf": 64, "n_layers": 3, "norm": "batch", "last_activation": "tanh"},
    "service": {"layers": [2, 2, 2, 2], "widths": [64, 128, 256, 512], "embedding_size": 512,
                "input_size": 112, "dropout": 0.0},
    "loss": {"identity": 30.0, "gan": 1.0, "identity_distance": "l2", "gan_mode": "minimax",
             "augment": {"flip": True, "pad": 5, "crop": True}},
    "optimizer": {"lr": 2.0e-4, "betas": [0.5, 0.999]},
    "optimizer_d": {"lr": 2.0e-4, "betas": [0.5, 0.999]},
    "key": {"net": {"base": 64, "depth": 4, "output": "sigmoid"}, "count": 2, "seed": 1000,
            "init": "kaiming"},
    "encrypt": {"batch": 64, "lr": 0.01, "init": "normal",
                "loss": {"task": 1.0, "diff": 0.03, "rec": 0.5, "vc": 3.0, "vc_kernel": 4},
                "distances": {"task": "l2", "diff": "l2", "rec": "l2"}},
}
#: conf/model/dr_demo.yaml, conf/face/demo_service.yaml, conf/threat/avih_demo.yaml (key nets)
AVIH_SMALL = {
    **AVIH_PAPER,
    "image_size": 32,
    "attacker": {**AVIH_PAPER["attacker"], "base": 16, "depth": 3},
    "discriminator": {**AVIH_PAPER["discriminator"], "ndf": 16, "n_layers": 2},
    "service": {"layers": [1, 1, 1], "widths": [8, 16, 32], "embedding_size": 64, "input_size": 32,
                "dropout": 0.0},
    "key": {**AVIH_PAPER["key"], "net": {"base": 16, "depth": 3, "output": "sigmoid"}},
}


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass
class Row:
    setting: str
    precision: str
    batch: int
    steps: int
    status: str = ""  # ref (the fp32 run) | PASS | FAIL | SKIP, set by judge()
    note: str = ""  # set by judge()
    skip: str = ""  # why the device cannot run this precision
    error: str = ""  # why the run failed (an exception, an unfinished run)
    info: str = ""  # a remark shown with the result
    images_per_s: float | None = None
    step_ms: float | None = None
    peak_mem_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    loss: float | None = None  # generator loss, mean of the last LAST iterations
    loss_start: float | None = None  # generator loss, mean of the first LAST iterations
    rel_diff: float | None = None  # (loss - fp32 loss) / |fp32 loss|
    terms: dict = field(default_factory=dict)  # every logged loss, mean of the last LAST iterations
    wall_s: float | None = None  # the whole run: building, moving, training
    unit: str = "images/s"


def _gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, fmt)


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def judge(rows: list[Row], tolerance: float) -> None:
    """Set every row's status and note: SKIP, FAIL (an error, no finite loss, or a mixed-precision
    loss further than ``tolerance`` (relative) from its setting's fp32 run), ref or PASS."""
    ref = {r.setting: r for r in rows if r.precision == REFERENCE and not r.error and _finite(r.loss)}
    for r in rows:
        r.rel_diff, r.note = None, r.info
        if r.skip:
            r.status, r.note = "SKIP", r.skip
        elif r.error:
            r.status, r.note = "FAIL", r.error
        elif not _finite(r.loss):
            r.status, r.note = "FAIL", "no finite loss"
        elif r.setting == ENCRYPT:  # float32 only: nothing to compare
            r.status = "PASS"
        elif r.precision == REFERENCE:
            r.status = "ref"
        elif r.setting not in ref:
            r.status, r.note = "PASS", "no fp32 run to compare with"
        else:
            base = ref[r.setting].loss
            r.rel_diff = (r.loss - base) / max(abs(base), 1e-12)
            r.status = "PASS" if abs(r.rel_diff) <= tolerance else "FAIL"
            if r.status == "FAIL":
                r.note = f"loss {r.rel_diff:+.1%} from fp32's (tolerance {tolerance:.0%})"


def table(rows: list[Row]) -> str:
    head = ("| setting | precision | batch | steps | images/s | ms/step | peak GPU mem | G loss "
            f"(first -> last {LAST}) | vs fp32 | result |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        speed = _num(r.images_per_s, ".1f")
        if r.unit != "images/s" and r.images_per_s is not None:
            speed += f" {r.unit}"
        diff = "ref" if r.status == "ref" else (_num(r.rel_diff * 100, "+.2f") + " %"
                                                 if r.rel_diff is not None else "-")
        result = r.status if not r.note else f"{r.status}: {r.note}"
        steps = f"{r.steps} it" if r.setting == ENCRYPT else str(r.steps)
        mem = "-" if r.status == "SKIP" else _gib(r.peak_mem_bytes)
        loss = _num(r.loss, ".4f")
        if _finite(r.loss_start):
            loss = f"{r.loss_start:.4f} -> {loss}"
        lines.append(f"| {r.setting} | {r.precision} | {r.batch} | {steps} | {speed} | "
                     f"{_num(r.step_ms, '.1f')} | {mem} | {loss} | {diff} | "
                     f"{result.replace('|', '/')} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Synthetic data, made on the device
# ---------------------------------------------------------------------------------------------


def _generator(device: torch.device, seed: int, index: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + index)


def smooth_images(g: torch.Generator, n: int, size: int, device: torch.device, cells: int = 8) -> torch.Tensor:
    """(n, 3, size, size) in [-1, 1]: bilinear upsampling of ``cells`` x ``cells`` random colours."""
    low = torch.rand(n, 3, cells, cells, generator=g, device=device) * 2 - 1
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


def cfgan_batch(indices: Sequence[int], device: torch.device, image_size: int, seed: int,
                density: float = 0.08) -> dict:
    """``{"input": (B, 128, S, S) sparse maps in [-1, 1] (zeros elsewhere), "target": (B, 3, H, H)}``
    with S = H / 2 (the paper's compressed map): each set pixel's 128 values are a fixed random
    projection of the image's local colour plus noise."""
    s = image_size // 2
    proj = torch.randn(128, 3, generator=_generator(device, seed, 999_999_937), device=device) * 0.6
    maps, images = [], []
    for i in indices:
        g = _generator(device, seed, int(i))
        img = smooth_images(g, 1, image_size, device)[0]
        local = F.avg_pool2d(img[None], 2)[0]  # (3, S, S)
        desc = torch.einsum("ck,khw->chw", proj, local)
        desc = desc + 0.3 * torch.randn(128, s, s, generator=g, device=device)
        mask = torch.rand(1, s, s, generator=g, device=device) < density
        maps.append(desc.clamp(-1, 1) * mask)
        images.append(img)
    return {"input": torch.stack(maps), "target": torch.stack(images)}


def avih_batch(indices: Sequence[int], device: torch.device, image_size: int, seed: int) -> dict:
    """``{"input": (B, 3, H, H) "encrypted" images (smooth + strong noise), "aux": (B, 3, H, H)}``,
    in [-1, 1]."""
    enc, aux = [], []
    for i in indices:
        g = _generator(device, seed, int(i))
        x = smooth_images(g, 2, image_size, device)
        noise = torch.rand(3, image_size, image_size, generator=g, device=device) * 2 - 1
        enc.append((0.4 * x[0] + 0.6 * noise).clamp(-1, 1))
        aux.append(x[1])
    return {"input": torch.stack(enc), "aux": torch.stack(aux)}


class _Indices(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class SyntheticData(pl.LightningDataModule):
    """``steps`` batches of sample numbers; each becomes a synthetic batch on the device."""

    def __init__(self, make: Callable[[Sequence[int], torch.device], dict], batch: int, steps: int):
        super().__init__()
        self.make, self.batch, self.steps = make, batch, steps

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Indices(self.batch * self.steps), batch_size=self.batch, shuffle=False)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return self.make(batch.tolist(), device)


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first[:200]}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Meter(pl.Callback):
    """Times the iterations after ``warmup`` (synchronised) and keeps the logged losses of the
    first and the last ``LAST`` of ``steps`` iterations, as device tensors. Only those iterations
    read ``trainer.callback_metrics`` (which turns the progress-bar loss into a number: a
    synchronisation; the stage's own non-finite check makes one every iteration anyway)."""

    def __init__(self, warmup: int, steps: int, prefix: str, device: torch.device) -> None:
        self.warmup, self.steps, self.prefix, self.device = warmup, steps, prefix, device
        self.t0 = self.t1 = None
        self.done = 0
        self.values: dict[str, collections.deque] = {}
        self.first: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            sync(self.device)
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.done = batch_idx + 1
        if LAST <= batch_idx < self.steps - LAST:
            return
        metrics = trainer.callback_metrics
        for k, v in metrics.items():
            if k.startswith(self.prefix) and isinstance(v, torch.Tensor):
                self.values.setdefault(k[len(self.prefix):], collections.deque(maxlen=LAST)).append(
                    v.detach().clone())
        total = metrics.get(self.prefix + "loss_g/total")
        if batch_idx < LAST and isinstance(total, torch.Tensor):
            self.first.append(total.detach().clone())

    def on_train_end(self, trainer, module) -> None:
        sync(self.device)
        self.t1 = time.perf_counter()

    def means(self) -> dict[str, float]:
        return {k: _mean(v) for k, v in self.values.items() if v}


def _mean(values) -> float:
    return float(torch.stack(list(values)).float().mean())


def unsupported(precision: str, device: torch.device) -> str | None:
    """Why ``device`` cannot run ``precision`` (None: it can)."""
    if precision == "16-mixed" and device.type != "cuda":
        return "16-mixed needs CUDA (no fp16 autocast training on CPU)"
    if precision == "bf16-mixed" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bf16"
    return None


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def train_run(setting: str, precision: str, build: Callable[[], pl.LightningModule],
              make_batch: Callable, batch: int, steps: int, warmup: int, device: torch.device,
              seed: int, root: str) -> Row:
    """Fit a freshly built stage for ``steps`` iterations on synthetic batches; one Row."""
    row = Row(setting, precision, batch, steps)
    row.skip = unsupported(precision, device) or ""
    if row.skip:
        return row
    _free(device)
    start = time.perf_counter()
    torch.manual_seed(seed)  # same weights, same augmentation draws for every precision
    module = trainer = None
    try:
        module = build()
        meter = Meter(warmup, steps, module.log_prefix, device)
        trainer = pl.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, precision=precision,
            max_steps=steps * module.optimizer_steps_per_iteration, max_epochs=1, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0, limit_val_batches=0, benchmark=device.type == "cuda",
            callbacks=[meter], default_root_dir=root)
        trainer.fit(module, datamodule=SyntheticData(make_batch, batch, steps))
        if meter.t0 is not None and meter.t1 is not None and meter.done > warmup:
            timed = meter.done - warmup
            row.step_ms = (meter.t1 - meter.t0) / timed * 1000
            row.images_per_s = batch * timed / (meter.t1 - meter.t0)
        row.terms = meter.means()
        row.loss = row.terms.get("loss_g/total")
        row.loss_start = _mean(meter.first) if meter.first else None
        if meter.done < steps:
            row.error = f"stopped after {meter.done} of {steps} iterations"
    except Exception as exc:  # noqa: BLE001 - reported in the table; the other runs go on
        row.error = _describe(exc)
    finally:
        if device.type == "cuda":
            row.peak_mem_bytes = torch.cuda.max_memory_allocated(device)
            row.peak_reserved_bytes = torch.cuda.max_memory_reserved(device)
        del module, trainer
        _free(device)
    row.wall_s = time.perf_counter() - start
    return row


# ---------------------------------------------------------------------------------------------
# The settings' networks and stages
# ---------------------------------------------------------------------------------------------


def params_m(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def disc_channels(channels: Sequence[int], image_size: int) -> list[int]:
    """The discriminator's levels for ``image_size`` (each halves it, down to 4 px)."""
    levels = (image_size // 4).bit_length() - 1
    if image_size != 4 * 2**levels or not 1 <= levels <= len(channels):
        raise SystemExit(f"--image-size {image_size}: the CFGAN discriminator needs 4 * 2**k px "
                         f"with 1 <= k <= {len(channels)}")
    return list(channels[:levels])


def cfgan_settings(cfg: dict, image_size: int, sift: bool) -> dict:
    """Loss weights, upsampling and discriminator arguments of the CFGAN stages at ``image_size``
    (SystemExit for a size the networks cannot take)."""
    levels = len(cfg["coarse"]["enc_channels"])
    side = 2 * 2 ** (levels + 1)  # the map (H / 2) ends at >= 2 px: the fine net's AdaIN needs 2
    if image_size % side:
        raise SystemExit(f"--image-size {image_size}: the {'small' if cfg is CFGAN_SMALL else 'paper'} "
                         f"CFGAN networks ({levels} encoder levels) take multiples of {side} px")
    weights = dict(cfg["loss"], per=0.0, style=0.0)  # VGG19 weights needed: not on a bare machine
    if not sift:
        weights["sift"] = 0.0
    return {"weights": weights, "final_scale": 2,  # compressed map: S = H / 2 (paper)
            "disc": {"image_size": image_size, "stem": cfg["discriminator"]["stem"],
                     "channels": disc_channels(cfg["discriminator"]["channels"], image_size)}}


def build_cfgan(stage: str, cfg: dict, image_size: int, sift: bool, steps: int, seed: int) -> CFGANStage:
    s = cfgan_settings(cfg, image_size, sift)
    opt = partial(torch.optim.Adam, lr=cfg["optimizer"]["lr"], betas=tuple(cfg["optimizer"]["betas"]))
    coarse = None
    with seeded(seed):
        if stage == "coarse":
            generator = CoarseGenerator(**cfg["coarse"], final_scale=s["final_scale"])
        else:
            generator = FineGenerator(**cfg["fine"], final_scale=s["final_scale"])
    with seeded(seed + 1):
        disc = Discriminator(**s["disc"])
    if stage == "fine":
        with seeded(seed + 2):  # stands for the trained coarse net: frozen, same for every precision
            coarse = CoarseGenerator(**cfg["coarse"], final_scale=s["final_scale"])
    return CFGANStage(stage, generator, disc, s["weights"], coarse=coarse, vgg=None, optimizer=opt,
                      iterations=steps)


def face_service(cfg: dict, seed: int):
    """The IR-ResNet service model with random weights, frozen (as the threat attaches it)."""
    return make_face_model(partial(IResNet, **cfg["service"]), seed=seed).eval().requires_grad_(False)


def build_dr(cfg: dict, steps: int, seed: int) -> DRStage:
    loss = cfg["loss"]
    attacker = make_key_model(partial(UNet, **cfg["attacker"]), seed=seed)
    with seeded(seed + 1):
        disc = PatchGAN(**cfg["discriminator"])
    return DRStage(attacker, disc, face_service(cfg, seed + 2),
                   weights={"identity": loss["identity"], "gan": loss["gan"]},
                   augment=dict(loss["augment"]), identity_distance=loss["identity_distance"],
                   gan_mode=loss["gan_mode"],
                   optimizer=partial(torch.optim.Adam, lr=cfg["optimizer"]["lr"],
                                     betas=tuple(cfg["optimizer"]["betas"])),
                   optimizer_d=partial(torch.optim.Adam, lr=cfg["optimizer_d"]["lr"],
                                       betas=tuple(cfg["optimizer_d"]["betas"])),
                   iterations=steps)


@torch.no_grad()
def calibrate_on_device(module: torch.nn.Module, size: int, device: torch.device, seed: int,
                        batches: int = 4, batch: int = 32) -> None:
    """``reconattack.models.keys.calibrate_batchnorm`` with the noise made on ``device`` (a random
    key model's BatchNorm statistics set on uniform noise images in [-1, 1])."""
    bns = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    module.train()
    g = torch.Generator(device=device).manual_seed(seed)
    for _ in range(batches):
        module(torch.rand(batch, 3, size, size, generator=g, device=device) * 2 - 1)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    module.eval()


def encrypt_run(cfg: dict, image_size: int, batch: int, iterations: int, device: torch.device,
                seed: int) -> Row:
    """Time ``AVIHEncryptor.encrypt`` (float32 by design) on one batch; one Row."""
    row = Row(ENCRYPT, "32-true", batch, iterations, unit="img-it/s")
    _free(device)
    start = time.perf_counter()
    enc = None
    try:
        k, e = cfg["key"], cfg["encrypt"]
        keys = []
        for i in range(k["count"]):
            key = make_key_model(partial(UNet, **k["net"]), seed=k["seed"] + i, init=k["init"]).to(device)
            calibrate_on_device(key, image_size, device, seed=k["seed"] + i)
            keys.append(key.eval().requires_grad_(False))
        service = face_service(cfg, seed + 2).to(device)
        enc = AVIHEncryptor(service, keys, weights={t: e["loss"][t] for t in ("task", "diff", "rec", "vc")},
                            vc_kernel=e["loss"]["vc_kernel"], distances=e["distances"],
                            iterations=min(3, iterations), optimizer=partial(torch.optim.Adam, lr=e["lr"]),
                            init=e["init"], seed=0, log_every=0).to(device)
        x = smooth_images(_generator(device, seed, 0), batch, image_size, device)
        key_id = torch.arange(batch, device=device) % k["count"]
        slot = torch.arange(batch, device=device)
        enc.encrypt(x, key_id, slot)  # warm-up (cuDNN, allocator)
        enc.iterations, enc.log_every = iterations, iterations
        sync(device)
        t0 = time.perf_counter()
        enc.encrypt(x, key_id, slot)
        sync(device)
        dt = time.perf_counter() - t0
        row.images_per_s = batch * iterations / dt
        row.step_ms = dt / iterations * 1000
        row.loss = enc.curve[-1]["loss"]
        row.loss_start = enc.curve[0]["loss"]
        row.terms = {kk: v for kk, v in enc.curve[-1].items() if kk not in ("batch", "iteration")}
        row.info = (f"fp32 by design; {row.images_per_s / 800 * 3600:.0f} images/h at the paper's "
                    f"800 iterations")
    except Exception as exc:  # noqa: BLE001 - reported in the table
        row.error = _describe(exc)
    finally:
        if device.type == "cuda":
            row.peak_mem_bytes = torch.cuda.max_memory_allocated(device)
            row.peak_reserved_bytes = torch.cuda.max_memory_reserved(device)
        del enc
        _free(device)
    row.wall_s = time.perf_counter() - start
    return row


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300, help="training iterations per run (default 300)")
    ap.add_argument("--warmup", type=int, default=20, help="iterations left out of the timing (default 20)")
    ap.add_argument("--precisions", default=",".join(PRECISIONS),
                    help=f"comma-separated, of {', '.join(PRECISIONS)} (default all)")
    ap.add_argument("--only", choices=("cfgan", "avih"), help="run one setting only")
    ap.add_argument("--cfgan-stages", default="coarse,fine", help="coarse,fine (default) or coarse")
    ap.add_argument("--batch", type=int, help="batch size of every setting (default: the paper's: "
                    "CFGAN 8, DR attack 32, encryption 64)")
    ap.add_argument("--image-size", type=int, help="image side of every setting (default: CFGAN "
                    "256, faces 112; --small: 64 and 32); the CFGAN map is half of it, and the "
                    "CFGAN networks take multiples of 256 px (--small: 64 px)")
    ap.add_argument("--small", action="store_true", help="the CPU-sized networks of "
                    "conf/model/cfgan_small.yaml, dr_demo.yaml, conf/face/demo_service.yaml")
    ap.add_argument("--encrypt-iterations", type=int, default=100,
                    help="AVIH encryption iterations timed (0: skip; default 100, paper 800)")
    ap.add_argument("--sift-loss", choices=("auto", "on", "off"), default="auto",
                    help="CFGAN SIFT loss (needs kornia); auto: on when kornia imports")
    ap.add_argument("--tolerance", type=float, default=0.05,
                    help="largest relative difference of a mixed-precision loss to fp32's (0.05)")
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="gpu_check.md", help="markdown table (raw numbers: .json)")
    ap.add_argument("--verbose", action="store_true", help="keep Lightning's messages and warnings")
    args = ap.parse_args(argv)
    precisions = [ALIASES.get(p.strip(), p.strip()) for p in args.precisions.split(",") if p.strip()]
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions:
        ap.error(f"--precisions: unknown {bad}; use {', '.join(PRECISIONS)}")
    args.precisions = precisions
    stages = [s.strip() for s in args.cfgan_stages.split(",") if s.strip()]
    if stages not in (["coarse"], ["coarse", "fine"], ["fine"]):
        ap.error("--cfgan-stages: coarse,fine or coarse or fine")
    args.cfgan_stages = stages
    if args.steps < 1 or args.warmup < 0 or args.encrypt_iterations < 0:
        ap.error("--steps must be >= 1, --warmup and --encrypt-iterations >= 0")
    if args.warmup >= args.steps:
        args.warmup = args.steps - 1
    if args.sift_loss == "on" and importlib.util.find_spec("kornia") is None:
        ap.error(f"--sift-loss on needs kornia.\n{WHEELS_HELP}")
    return args


def _quiet() -> None:
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for msg in (".*does not have many workers.*", ".*validation_step.*val_dataloader.*",
                ".*Skipping val loop.*", ".*max_epochs.*", ".*torch.cuda.amp.*",
                ".*TensorFloat32.*", ".*Tensor Cores.*", ".*smaller than the logging interval.*",
                ".*module\\(s\\) in eval mode.*", ".*LeafSpec.*"):
        warnings.filterwarnings("ignore", message=msg)


def environment(device: torch.device) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "pytorch_lightning": pl.__version__, "device": str(device),
           "reconattack": str(Path(reconattack.__file__).resolve().parent),
           "threads": torch.get_num_threads(),
           "missing_for_framework": [m for m in FRAMEWORK_EXTRAS if importlib.util.find_spec(m) is None]}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update({"gpu": p.name, "gpu_memory_gib": round(p.total_memory / 2**30, 1),
                    "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                    "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                    "matmul_precision": torch.get_float32_matmul_precision()})
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


def report(args, env: dict, legend: list[str], rows: list[Row], elapsed: float, final: bool) -> str:
    where = (f"{env['gpu']} ({env['gpu_memory_gib']} GiB), CUDA {env['cuda']}, cuDNN {env['cudnn']} "
             f"(TF32 convs {'on' if env['cudnn_allow_tf32'] else 'off'}, fp32 matmul precision "
             f"{env['matmul_precision']})" if "gpu" in env else f"CPU ({env['threads']} threads)")
    lines = [
        "# GPU check - reconattack",
        "",
        f"{where}; torch {env['torch']}, pytorch_lightning {env['pytorch_lightning']}, Python "
        f"{env['python']}. {args.steps} iterations per run, the first {args.warmup} left out of "
        f"the timing; seed {args.seed}; {elapsed:.0f} s{'' if final else ' so far (unfinished)'}.",
        "",
        f"Tolerance: a mixed-precision run's generator loss (mean of the last {LAST} iterations) "
        f"within {args.tolerance:.0%} (relative) of the fp32 run's. The loss column also gives "
        f"the mean of the first {LAST} iterations: how far training moved it (encryption: the "
        f"AVIH loss at the first and the last iteration).",
        "",
        *legend,
        "",
        table(rows),
    ]
    if env["missing_for_framework"]:
        lines += ["", f"Not installed (not needed here; the full framework needs them): "
                      f"{', '.join(env['missing_for_framework'])}. See benchmarks/GPU_CHECK.md."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.verbose:
        _quiet()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but torch sees no GPU", file=sys.stderr)
        return 2
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
    env = environment(device)
    cf = CFGAN_SMALL if args.small else CFGAN_PAPER
    av = AVIH_SMALL if args.small else AVIH_PAPER
    cf_size = args.image_size or cf["image_size"]
    av_size = args.image_size or av["image_size"]
    sift = args.sift_loss == "on" or (args.sift_loss == "auto" and importlib.util.find_spec("kornia") is not None)
    no_sift = "" if sift else ("; sift 0: --sift-loss off" if args.sift_loss == "off" else "; sift 0: needs kornia")
    out = Path(args.out)
    out_json = out.with_suffix(".json")
    rows: list[Row] = []
    legend: list[str] = []
    start = time.perf_counter()
    root = tempfile.mkdtemp(prefix="gpu_check-")

    def save(final: bool = False) -> str:
        judge(rows, args.tolerance)
        text = report(args, env, legend, rows, time.perf_counter() - start, final)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
            out_json.write_text(json.dumps({
                "environment": env, "args": {k: v for k, v in vars(args).items()},
                "tolerance": args.tolerance, "last": LAST, "legend": legend, "final": final,
                "elapsed_s": time.perf_counter() - start, "rows": [asdict(r) for r in rows]},
                indent=2) + "\n")
        except OSError as exc:
            print(f"[gpu_check] cannot write {out}: {exc}", file=sys.stderr)
        return text

    def progress(r: Row) -> None:
        judge(rows, args.tolerance)
        print(f"[gpu_check] {r.setting} {r.precision}: {r.status} {r.note} "
              f"({_num(r.images_per_s, '.1f')} {r.unit}, loss {_num(r.loss, '.4f')}, "
              f"{_num(r.wall_s, '.1f')} s)", file=sys.stderr, flush=True)
        save()

    def every_precision(name: str, build, make, batch: int) -> None:
        for p in args.precisions:
            rows.append(train_run(name, p, build, make, batch, args.steps, args.warmup, device, args.seed, root))
            progress(rows[-1])

    try:
        if args.only in (None, "cfgan"):
            batch = args.batch or cf["batch"]
            s = cfgan_settings(cf, cf_size, sift)
            w = s["weights"]
            with torch.device("meta"):
                sizes = {"coarse": params_m(CoarseGenerator(**cf["coarse"], final_scale=2)),
                         "fine": params_m(FineGenerator(**cf["fine"], final_scale=2)),
                         "D": params_m(Discriminator(**s["disc"]))}
            terms = ", ".join(f"{k} {v:g}" for k, v in w.items() if v > 0)
            for stage in args.cfgan_stages:
                legend.append(
                    f"- cfgan-{stage}: CFGAN {stage} stage, {'small' if args.small else 'paper'} "
                    f"networks: G {sizes[stage]:.1f}M + D {sizes['D']:.1f}M parameters"
                    f"{' (+ frozen coarse G)' if stage == 'fine' else ''}; {cf_size}x{cf_size} "
                    f"images from 128x{cf_size // 2}x{cf_size // 2} SIFT maps; batch {batch}; Adam "
                    f"{cf['optimizer']['lr']:g}; loss {terms} (per and style 0: they need pretrained "
                    f"VGG19 weights{no_sift}).")
                every_precision(f"cfgan-{stage}", partial(build_cfgan, stage, cf, cf_size, sift, args.steps, args.seed),
                                partial(cfgan_batch, image_size=cf_size, seed=args.seed), batch)
        if args.only in (None, "avih"):
            batch = args.batch or av["batch"]
            with torch.device("meta"):
                sizes = {"G": params_m(UNet(**av["attacker"])), "D": params_m(PatchGAN(**av["discriminator"])),
                         "service": params_m(IResNet(**av["service"]))}
            lw = av["loss"]
            legend.append(
                f"- avih-dr: DR attack stage, {'small' if args.small else 'paper'} networks: U-Net "
                f"attacker {sizes['G']:.1f}M + PatchGAN {sizes['D']:.1f}M parameters, frozen "
                f"IR-ResNet service model {sizes['service']:.1f}M (random weights); {av_size}x{av_size} "
                f"synthetic encrypted and auxiliary images; batch {batch}; loss identity "
                f"{lw['identity']:g} (augmented: flip, pad {lw['augment']['pad']}, crop) + gan "
                f"{lw['gan']:g} ({lw['gan_mode']}).")
            every_precision("avih-dr", partial(build_dr, av, args.steps, args.seed),
                            partial(avih_batch, image_size=av_size, seed=args.seed), batch)
            if args.encrypt_iterations:
                eb = args.batch or av["encrypt"]["batch"]
                legend.append(
                    f"- avih-encrypt: AVIH encryption of {eb} {av_size}x{av_size} images, "
                    f"{av['key']['count']} random U-Net key models, the same service model, Adam "
                    f"{av['encrypt']['lr']:g}, {args.encrypt_iterations} iterations after a warm-up; "
                    f"float32 whatever the trainer's precision (by design); speed in image-iterations/s, "
                    f"loss: the mean AVIH loss at the last iteration (not compared).")
                rows.append(encrypt_run(av, av_size, eb, args.encrypt_iterations, device, args.seed))
                progress(rows[-1])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text = save(final=True)
    print(text)
    print(f"(written to {out} and {out_json})", file=sys.stderr)
    return 1 if any(r.status == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
