"""Training: the experiment config and the CTC training loop as named functions.

    asr train --config conf/demo.yaml --train data/train.jsonl --valid data/dev.jsonl --exp exp/demo
    torchrun --nproc_per_node 4 -m asr.cli train ...        (DDP; only rank 0 writes)

The loop: manifest -> bucketing sampler -> padded waveforms -> (on the model's device) features
-> global CMVN -> SpecAugment -> BiRNN -> CTC loss -> AdamW with warm-up and decay, gradient
clipping. Everything lands in the experiment folder:

    exp/config.yaml        the resolved config (loading it gives the same run)
    exp/tokens.txt         characters of the training texts (built once, then reused)
    exp/cmvn.pt            global CMVN statistics of the training features (computed once)
    exp/checkpoints/       step-N.pt (the last `keep_last`), last.pt, best.pt (lowest valid WER)
    exp/log/train.log      the text log; log/metrics.jsonl (one JSON object per log line);
    exp/log/tensorboard/   TensorBoard scalars; log/dropped.txt (utterances left out, and why)
    exp/training_curves.png  loss and valid CER/WER against the step

Rerunning the same command resumes from `last.pt`: weights, optimizer, learning-rate schedule,
sampler position inside the epoch, RNG states and step, so that an interrupted run ends with the
same weights as an uninterrupted one (on CPU; tests/test_train.py checks it).

The CTC loss is summed over the utterances of a batch and divided by their number: the loss per
utterance, so the gradient scale does not depend on the batch size or on transcript lengths.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import sys
import time
import contextlib
import fcntl
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from asr.checkpoint import (
    autocast_context,
    featurize,
    load_checkpoint,
    save_checkpoint,
    step_checkpoints,
)
from asr.config import config_diff, dump_config, load_config, to_dict
from asr.errors import ConfigError, DataError
from asr.features import (FeatureConfig, GlobalCMVN, Narrowband, NarrowbandConfig, SpecAugment, SpecAugmentConfig,
                          compute_cmvn, num_frames)
from asr.fileio import atomic_open, atomic_write_text
from asr.model import BiRNNCTC, ModelConfig, count_parameters
from asr.text import Tokenizer

log = logging.getLogger("asr.train")

AMP_MODES = ("bf16", "fp16", "none")
DECAYS = ("cosine", "noam", "exponential", "constant")


# --- the experiment config -------------------------------------------------------------------
@dataclass(frozen=True)
class DataConfig:
    """Batching and length filters."""

    max_duration: float = 200.0  # padded seconds of audio per batch: batch size x longest utterance
    min_utt_duration: float = 0.5  # s, shorter training utterances are left out
    max_utt_duration: float = 20.0  # s, longer training utterances are left out (memory)
    num_workers: int = 2  # DataLoader processes decoding audio; 0 = in the main process
    num_buckets: int = 10  # equal-count duration buckets the sampler shuffles within

    def __post_init__(self) -> None:
        _check(self.max_duration > 0, "data.max_duration", self.max_duration, "> 0 seconds")
        _check(self.min_utt_duration <= self.max_utt_duration, "data.min_utt_duration", self.min_utt_duration,
               f"<= data.max_utt_duration ({self.max_utt_duration})")
        _check(self.num_workers >= 0, "data.num_workers", self.num_workers, ">= 0")
        _check(self.num_buckets >= 1, "data.num_buckets", self.num_buckets, ">= 1")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW, linear warm-up, then decay."""

    lr: float = 1e-3  # peak learning rate, reached at the end of warm-up
    betas: tuple[float, float] = (0.9, 0.98)  # Adam moment decay rates
    eps: float = 1e-8  # Adam denominator floor
    weight_decay: float = 1e-2  # decoupled weight decay on weight matrices (not on biases or norms)
    warmup_steps: int = 500  # linear warm-up from 0 to lr over these steps
    decay: str = "cosine"  # after warm-up: "cosine" or "exponential" (to final_lr at decay_steps), "noam" (lr*sqrt(warmup/step)), "constant"
    final_lr: float = 1e-5  # learning rate at the end of a cosine or exponential decay
    decay_steps: int = 0  # length of the schedule in steps; 0 = the run's length (max_steps, else epochs x batches per epoch)
    grad_clip: float = 5.0  # clip the global gradient norm to this; 0 = no clipping

    def __post_init__(self) -> None:
        _check(self.lr > 0, "optim.lr", self.lr, "> 0")
        _check(self.decay in DECAYS, "optim.decay", self.decay, f"one of {DECAYS}")
        _check(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, ">= 0")
        _check(self.final_lr > 0 or self.decay != "exponential", "optim.final_lr", self.final_lr,
               "> 0 with exponential decay")
        _check(self.decay_steps >= 0, "optim.decay_steps", self.decay_steps, ">= 0")
        _check(self.grad_clip >= 0, "optim.grad_clip", self.grad_clip, ">= 0")


@dataclass(frozen=True)
class TrainConfig:
    """Length of training, logging, checkpoints, precision, device."""

    epochs: int = 20  # passes over the training data
    max_steps: int = 0  # stop after this many optimizer steps in all (0 = the epochs decide)
    seed: int = 0  # seeds model init, dropout, SpecAugment and the batch order
    log_every: int = 50  # steps between log lines (text log, metrics.jsonl, TensorBoard)
    checkpoint_every: int = 1000  # steps between step-N.pt checkpoints (also one at each epoch end); 0 = epoch ends only
    keep_last: int = 5  # step-N.pt checkpoints kept, older ones deleted; 0 = keep all
    valid_every: int = 0  # steps between validations; 0 = at each epoch end
    amp: str = "bf16"  # mixed precision on CUDA: "bf16", "fp16" (with a GradScaler) or "none"; ignored on CPU
    device: str = "auto"  # "auto" (CUDA if available), "cpu", "cuda" or "cuda:N"
    threads: int = 0  # CPU intra-op threads of the training process; 0 = PyTorch's default (OMP_NUM_THREADS)
    debug_rank_files: bool = False  # each rank writes log/debug/rank<R>.batches.txt and rank<R>.final.pt (tests)

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "train.epochs", self.epochs, ">= 1")
        _check(self.max_steps >= 0, "train.max_steps", self.max_steps, ">= 0")
        _check(self.log_every >= 1, "train.log_every", self.log_every, ">= 1")
        _check(self.checkpoint_every >= 0, "train.checkpoint_every", self.checkpoint_every, ">= 0")
        _check(self.keep_last >= 0, "train.keep_last", self.keep_last, ">= 0")
        _check(self.valid_every >= 0, "train.valid_every", self.valid_every, ">= 0")
        _check(self.amp in AMP_MODES, "train.amp", self.amp, f"one of {AMP_MODES}")
        _check(self.threads >= 0, "train.threads", self.threads, ">= 0")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything `asr train` needs besides the manifests; one YAML file, one section per field."""

    DERIVED: ClassVar[dict[str, str]] = {
        "model.input_dim": "it is the feature dimension, set by the 'features' section",
        "model.vocab_size": "it is the number of tokens in the experiment's tokens.txt",
    }

    features: FeatureConfig = field(default_factory=FeatureConfig)  # waveform -> features
    specaug: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)  # masks in training (0 masks = off)
    narrowband: NarrowbandConfig = field(default_factory=NarrowbandConfig)  # band-limited utterances in training
    model: ModelConfig = field(default_factory=ModelConfig)  # the network (input_dim, vocab_size derived)
    data: DataConfig = field(default_factory=DataConfig)  # batching and length filters
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimizer and schedule
    train: TrainConfig = field(default_factory=TrainConfig)  # loop, checkpoints, device

    def model_config(self, vocab_size: int) -> ModelConfig:
        """The model section with the derived sizes filled in."""
        return dataclasses.replace(self.model, input_dim=self.features.dim, vocab_size=vocab_size)


def _check(ok: bool, key: str, value, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")


def load_experiment_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Load an experiment config file (None: defaults) with `key.sub=value` overrides."""
    return load_config(ExperimentConfig, path, overrides)


# --- CTC helpers -----------------------------------------------------------------------------
def ctc_min_frames(targets: Tensor, target_lengths: Tensor) -> Tensor:
    """Fewest output frames CTC needs per utterance: tokens + adjacent repeats (each repeat
    needs a blank between its two copies). targets (B, S) padded, target_lengths (B,) -> (B,)."""
    if targets.size(1) < 2:
        return target_lengths.clone()
    positions = torch.arange(1, targets.size(1), device=targets.device)
    repeats = (targets[:, 1:] == targets[:, :-1]) & (positions[None, :] < target_lengths[:, None])
    return target_lengths + repeats.sum(dim=1)


def select_utterances(
    records: Sequence[dict],
    tokenizer: Tokenizer,
    model: BiRNNCTC,
    feature_config: FeatureConfig,
    min_duration: float | None = None,
    max_duration: float | None = None,
) -> tuple[list[dict], list[tuple[str, str]]]:
    """Keep the utterances that are within the duration bounds and that CTC can align.

    An utterance is infeasible when its tokens (plus one blank per adjacent repeat) outnumber the
    model's output frames for its duration, `model.output_lengths(num_frames(samples))`: its
    loss would be infinite. Returns (kept, dropped as [(id, reason)]).
    """
    from asr.data.dataset import filter_records

    kept, dropped = filter_records(records, min_duration, max_duration)
    if not kept:
        return kept, dropped
    samples = torch.tensor([round(float(r["duration"]) * feature_config.sample_rate) for r in kept])
    out_frames = model.output_lengths(torch.as_tensor(num_frames(samples, feature_config))).tolist()
    feasible = []
    for record, frames in zip(kept, out_frames):
        tokens = tokenizer.encode(record["text"])
        needed = len(tokens) + sum(a == b for a, b in zip(tokens, tokens[1:]))
        if needed > frames:
            dropped.append((record["id"], f"{needed} CTC labels (tokens + repeats) > {frames} output frames "
                                          f"for {float(record['duration']):.2f} s"))
        else:
            feasible.append(record)
    return feasible, dropped


# --- distributed setup, RNG, logging ----------------------------------------------------------
@dataclass
class Runtime:
    """Where this process runs: DDP rank and world, the device, AMP in effect."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    amp: str = "none"
    owns_process_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def setup_runtime(train_config: TrainConfig) -> Runtime:
    """Pick the device and, under torchrun (WORLD_SIZE > 1), join the process group from the
    environment: backend nccl on CUDA, gloo on CPU."""
    if train_config.threads:
        torch.set_num_threads(train_config.threads)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    wanted = train_config.device
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    if wanted.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device: '{train_config.device}' but CUDA is not available")
        device = torch.device("cuda", local_rank) if wanted == "cuda" or world_size > 1 else torch.device(wanted)
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    elif wanted == "cpu":
        device = torch.device("cpu")
    else:
        raise ConfigError(f"train.device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {train_config.device!r}")
    amp = train_config.amp if device.type == "cuda" else "none"
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        amp = "fp16"
    runtime = Runtime(rank, world_size, local_rank, device, amp)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", init_method="env://",
                                rank=rank, world_size=world_size)
        runtime.owns_process_group = True
    return runtime


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), Python's `random` and numpy's global generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state(device: torch.device) -> dict:
    """All RNG states as tensors and plain lists (loadable with weights_only=True)."""
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    rng = {
        "torch": torch.get_rng_state(),
        "python": [version, list(state), gauss],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
    }
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def set_rng_state(rng: dict, device: torch.device) -> None:
    """Inverse of `get_rng_state`."""
    torch.set_rng_state(rng["torch"])
    version, state, gauss = rng["python"]
    random.setstate((version, tuple(state), gauss))
    numpy_state = rng["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)


class _TqdmHandler(logging.StreamHandler):
    """Log lines that do not break a tqdm bar on a terminal."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never crash training
            self.handleError(record)


@contextmanager
def training_logs(exp_dir: Path, runtime: Runtime) -> Iterator[None]:
    """Route the `asr` loggers to exp/log/train.log and stderr (rank 0; other ranks: warnings)."""
    logger = logging.getLogger("asr")
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = []
    console = _TqdmHandler()
    console.setFormatter(logging.Formatter(f"[rank {runtime.rank}] %(levelname)s %(message)s")
                         if runtime.distributed else logging.Formatter("%(message)s"))
    console.setLevel(logging.INFO if runtime.is_main else logging.WARNING)
    handlers.append(console)
    if runtime.is_main:
        (exp_dir / "log").mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(exp_dir / "log" / "train.log", encoding="utf-8")
        file_handler.setFormatter(formatter)
        file_handler.setLevel(logging.INFO)
        handlers.append(file_handler)
    old_level, old_propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False  # pytest's or the user's root handlers would print every line twice
    for handler in handlers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(old_level)
        logger.propagate = old_propagate


class MetricsLog:
    """metrics.jsonl (one JSON object a line) and TensorBoard scalars; rank 0 only."""

    def __init__(self, exp_dir: Path, enabled: bool, resume_step: int) -> None:
        self.path = exp_dir / "log" / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        if self.path.exists():
            # A resumed run repeats the steps after its checkpoint: drop their old lines.
            lines = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                     if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(line + "\n" for line in lines))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(exp_dir / "log" / "tensorboard"), purge_step=resume_step + 1)
        except ImportError:  # pragma: no cover - tensorboard is a declared dependency
            log.warning("tensorboard is not installed: no TensorBoard scalars")

    def write(self, kind: str, step: int, values: dict) -> None:
        if not self.enabled:
            return
        entry = {"kind": kind, "step": step, **values}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and key != "epoch" and math.isfinite(value):
                    self.writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot_curves(metrics_path: Path, png_path: Path) -> bool:
    """Draw loss (train and valid) and valid CER/WER against the step from metrics.jsonl into a
    PNG (atomically). Returns False when there is nothing to draw."""
    if not metrics_path.exists():
        return False
    entries = [json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    train = [e for e in entries if e["kind"] == "train"]
    valid = [e for e in entries if e["kind"] == "valid"]
    if not train and not valid:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axes, error_axes) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        loss_axes.plot([e["step"] for e in train], [e["loss"] for e in train], label="train loss", lw=1)
    if valid:
        loss_axes.plot([e["step"] for e in valid], [e["loss"] for e in valid], "o-", label="valid loss")
        error_axes.plot([e["step"] for e in valid], [100 * e["cer"] for e in valid], "o-", label="valid CER")
        error_axes.plot([e["step"] for e in valid], [100 * e["wer"] for e in valid], "s-", label="valid WER")
    loss_axes.set(xlabel="step", ylabel="CTC loss per utterance", title="loss")
    error_axes.set(xlabel="step", ylabel="%", title="validation error rates (greedy)")
    for axes in (loss_axes, error_axes):
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend()
    figure.tight_layout()
    with atomic_open(png_path, "wb", encoding=None) as f:
        figure.savefig(f, format="png", dpi=100)
    plt.close(figure)
    return True


# --- learning rate ---------------------------------------------------------------------------
def learning_rate(step: int, optim: OptimConfig, decay_steps: int) -> float:
    """Learning rate for optimizer step `step` (1-based): linear warm-up, then the decay."""
    warmup = optim.warmup_steps
    if warmup > 0 and step <= warmup:
        return optim.lr * step / warmup
    if optim.decay == "constant":
        return optim.lr
    if optim.decay == "noam":
        return optim.lr * math.sqrt(max(warmup, 1) / max(step, 1))
    progress = min(max((step - warmup) / max(decay_steps - warmup, 1), 0.0), 1.0)
    if optim.decay == "cosine":
        return optim.final_lr + (optim.lr - optim.final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return optim.lr * (optim.final_lr / optim.lr) ** progress  # exponential


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices and conv kernels only (not on biases and norm scales)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps)


# --- the state of a run ----------------------------------------------------------------------
@dataclass
class TrainState:
    """Counters that a checkpoint must restore."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # current epoch (0-based); batches_done of it are done
    batches_done: int = 0  # batches of `epoch` this rank has trained on
    best_wer: float = math.inf  # lowest validation WER so far
    best_cer: float = math.inf  # its CER
    best_step: int = -1  # step of best.pt
    last_valid: dict | None = None  # latest validation metrics
    last_valid_step: int = -1  # its step
    skipped_steps: int = 0  # optimizer steps skipped for a non-finite gradient


@dataclass
class Trainer:
    """What the loop functions share: config, runtime, model, optimizer, data, logs."""

    config: ExperimentConfig
    runtime: Runtime
    exp_dir: Path
    model: nn.Module  # the DDP wrapper under torchrun, else the model itself
    raw_model: BiRNNCTC
    model_config: ModelConfig
    tokenizer: Tokenizer
    cmvn: GlobalCMVN
    specaug: SpecAugment
    narrowband: Narrowband
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    train_loader: torch.utils.data.DataLoader
    valid_loader: torch.utils.data.DataLoader
    decay_steps: int
    metrics: MetricsLog
    state: TrainState = field(default_factory=TrainState)
    stop: "StopRequest | None" = None  # set by Ctrl-C / SIGTERM: save last.pt after this step and stop
    ctc: nn.CTCLoss = field(default_factory=lambda: nn.CTCLoss(blank=0, reduction="none", zero_infinity=True))

    @property
    def sampler(self):
        return self.train_loader.batch_sampler

    @property
    def checkpoint_dir(self) -> Path:
        return self.exp_dir / "checkpoints"


class StopRequest:
    """Ctrl-C or SIGTERM during training: finish the current step, save last.pt, then stop.

    A second signal aborts at once. Handlers are installed only in the main thread and restored
    on exit.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict = {}

    def __enter__(self) -> "StopRequest":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stop requested: saving last.pt after this step (signal again to abort now)")

    def __exit__(self, *exc) -> None:
        import signal

        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def agreed(self, runtime: "Runtime") -> bool:
        """Whether any rank was asked to stop; then every rank counts as asked (every rank
        must call it at the same step)."""
        if runtime.distributed:
            flag = torch.tensor([float(self.requested)], device=runtime.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            self.requested = bool(flag.item())
        return self.requested


# --- loss, one epoch, validation ---------------------------------------------------------------
def compute_loss(trainer: Trainer, batch, training: bool) -> tuple[Tensor, dict, Tensor, Tensor]:
    """CTC loss of a batch already on the device.

    Returns (loss: sum over feasible utterances / their number, a scalar with grad when
    training; stats: {"loss_sum", "utts", "skipped", "frames"}; log_probs (B, T, V) float32
    detached; out_lengths (B,)). Training mode uses the (DDP) model, SpecAugment and dither;
    evaluation the bare model without them. An utterance whose labels do
    not fit in its output frames (the manifest's duration was off) is left out of the loss and
    counted in "skipped" with a warning, never an infinite or silently zeroed loss.
    """
    cmvn = trainer.cmvn
    specaug, narrowband = (trainer.specaug, trainer.narrowband) if training else (None, None)
    feature_config = trainer.config.features if training else dataclasses.replace(trainer.config.features, dither=0.0)
    with torch.no_grad():
        features, frame_lengths = featurize(batch.waveforms, batch.wave_lengths, feature_config, cmvn, specaug,
                                               narrowband)
    model = trainer.model if training else trainer.raw_model
    with autocast_context(trainer.runtime.device, trainer.runtime.amp):
        log_probs, out_lengths = model(features, frame_lengths)  # (B, T, V), (B,)
    log_probs = log_probs.float()
    feasible = ctc_min_frames(batch.targets, batch.target_lengths) <= out_lengths
    losses = trainer.ctc(log_probs.transpose(0, 1), batch.targets, out_lengths, batch.target_lengths)  # (B,)
    losses = torch.where(feasible, losses, torch.zeros_like(losses))
    utts = int(feasible.sum())
    skipped = len(batch) - utts
    if skipped:
        bad = [utt for utt, ok in zip(batch.ids, feasible.tolist()) if not ok]
        log.warning("left out of the loss, more CTC labels than output frames: %s", ", ".join(bad))
    loss = losses.sum() / max(utts, 1)
    stats = {"loss_sum": float(losses.detach().sum()), "utts": utts, "skipped": skipped,
             "frames": int(frame_lengths.sum())}
    return loss, stats, log_probs.detach(), out_lengths


def train_step(trainer: Trainer, batch) -> dict:
    """One optimizer step on `batch`: loss, backward, clip, AdamW step with the scheduled LR.

    Returns stats: compute_loss's, plus "lr", "grad_norm" and "stepped" (False when the
    gradient was not finite and the step was skipped).
    """
    state, optim = trainer.state, trainer.config.optim
    lr = learning_rate(state.step + 1, optim, trainer.decay_steps)
    for group in trainer.optimizer.param_groups:
        group["lr"] = lr
    loss, stats, _, _ = compute_loss(trainer, batch, training=True)
    trainer.optimizer.zero_grad(set_to_none=True)
    scaler = trainer.scaler
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(trainer.optimizer)
    else:
        loss.backward()
    parameters = [p for p in trainer.model.parameters() if p.grad is not None]
    if optim.grad_clip > 0:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, optim.grad_clip))
    else:
        grad_norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters]))) if parameters else 0.0
    stepped = math.isfinite(grad_norm)
    if scaler is not None:
        scaler.step(trainer.optimizer)  # skips the step itself on inf/nan
        scaler.update()
    elif stepped:
        trainer.optimizer.step()
    if not stepped:
        state.skipped_steps += 1
        if scaler is None:
            log.warning("step %d: gradient norm is %s, step skipped", state.step + 1, grad_norm)
    state.step += 1
    stats.update(lr=lr, grad_norm=grad_norm, stepped=stepped)
    return stats


def _debug_write(trainer: Trainer, name: str, text: str) -> None:
    if trainer.config.train.debug_rank_files:
        path = trainer.exp_dir / "log" / "debug" / f"rank{trainer.runtime.rank}.{name}"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)


def _reduce_sums(runtime: Runtime, values: list[float]) -> list[float]:
    if not runtime.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=runtime.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def train_one_epoch(trainer: Trainer, stop_step: int) -> bool:
    """Train on the rest of the current epoch, validating and checkpointing on schedule.

    Returns True when the epoch was completed, False when `stop_step` was reached first.
    """
    from tqdm import tqdm

    state, train_config, runtime = trainer.state, trainer.config.train, trainer.runtime
    trainer.sampler.set_epoch(state.epoch)
    trainer.model.train()
    total = len(trainer.sampler)
    window = {"loss_sum": 0.0, "utts": 0, "skipped": 0, "frames": 0, "grad_norm": 0.0, "steps": 0}
    window_start = time.monotonic()
    completed = True
    with tqdm(total=total, initial=state.batches_done, desc=f"epoch {state.epoch + 1}", unit="batch",
              disable=None if runtime.is_main else True, leave=False, dynamic_ncols=True) as progress:
        for batch in trainer.train_loader:
            _debug_write(trainer, "batches.txt", f"{state.step + 1} {state.epoch} {' '.join(batch.ids)}\n")
            batch = batch.to(runtime.device, non_blocking=runtime.device.type == "cuda")
            stats = train_step(trainer, batch)
            state.batches_done += 1
            progress.update(1)
            for key in ("loss_sum", "utts", "skipped", "frames"):
                window[key] += stats[key]
            window["grad_norm"] += stats["grad_norm"] if math.isfinite(stats["grad_norm"]) else 0.0
            window["steps"] += 1
            if state.step % train_config.log_every == 0 or state.batches_done == total:
                loss_sum, utts, skipped, frames = _reduce_sums(
                    runtime, [window["loss_sum"], window["utts"], window["skipped"], window["frames"]])
                elapsed = max(time.monotonic() - window_start, 1e-9)
                values = {"epoch": state.epoch + state.batches_done / max(total, 1),
                          "loss": loss_sum / max(utts, 1), "lr": stats["lr"],
                          "grad_norm": window["grad_norm"] / window["steps"],
                          "audio_s_per_s": frames * trainer.config.features.frame_shift_ms / 1000 / elapsed,
                          "skipped_utts": int(skipped)}
                progress.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{stats['lr']:.2e}")
                log.info("step %d epoch %.2f loss %.4f lr %.3e grad_norm %.3f audio_s/s %.1f%s",
                         state.step, values["epoch"], values["loss"], values["lr"], values["grad_norm"],
                         values["audio_s_per_s"], f" skipped_utts {int(skipped)}" if skipped else "")
                trainer.metrics.write("train", state.step, values)
                window = {key: 0.0 if isinstance(v, float) else 0 for key, v in window.items()}
                window_start = time.monotonic()
            end_of_epoch = state.batches_done == total
            if train_config.valid_every and state.step % train_config.valid_every == 0 and not end_of_epoch:
                run_validation(trainer)
            if train_config.checkpoint_every and state.step % train_config.checkpoint_every == 0 and not end_of_epoch:
                save_checkpoint_files(trainer)
            if state.step >= stop_step or (trainer.stop is not None and trainer.stop.agreed(runtime)):
                completed = state.batches_done == total
                break
    return completed


@torch.no_grad()
def validate(trainer: Trainer) -> dict:
    """Loss, greedy CER and WER on the validation manifest (sharded over ranks, gathered).

    Runs in eval mode (no dropout, no SpecAugment, no dither) inside a forked RNG, so that
    validating never changes the course of training. Returns {"loss", "cer", "wer", "utts"}.
    """
    from asr.decode import GreedyDecoder
    from asr.score import wer_cer

    runtime = trainer.runtime
    decoder = GreedyDecoder(trainer.tokenizer)
    devices = [runtime.device] if runtime.device.type == "cuda" else []
    was_training = trainer.raw_model.training
    trainer.raw_model.eval()
    loss_sum, utts, refs, hyps = 0.0, 0, [], []
    try:
        with torch.random.fork_rng(devices=devices):
            for batch in trainer.valid_loader:
                batch = batch.to(runtime.device, non_blocking=runtime.device.type == "cuda")
                _, stats, log_probs, out_lengths = compute_loss(trainer, batch, training=False)
                loss_sum += stats["loss_sum"]
                utts += stats["utts"]
                refs.extend(batch.texts)
                hyps.extend(h.text for h in decoder.decode(log_probs, out_lengths))
    finally:
        trainer.raw_model.train(was_training)
    if runtime.distributed:
        gathered: list = [None] * runtime.world_size
        dist.all_gather_object(gathered, (loss_sum, utts, refs, hyps))
        loss_sum = sum(g[0] for g in gathered)
        utts = sum(g[1] for g in gathered)
        refs = [r for g in gathered for r in g[2]]
        hyps = [h for g in gathered for h in g[3]]
    wer, cer = wer_cer(refs, hyps)
    return {"loss": loss_sum / max(utts, 1), "cer": cer, "wer": wer, "utts": len(refs)}


def sync_buffers(trainer: Trainer) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over the ranks.

    DDP keeps the parameters identical but each rank updates its own running statistics; this
    makes checkpoints and validation use the mean over ranks, and leaves all ranks identical.
    Every rank must call it.
    """
    if not trainer.runtime.distributed:
        return
    for buffer in trainer.raw_model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer.div_(trainer.runtime.world_size)


def run_validation(trainer: Trainer) -> dict:
    """Validate, log, and remember the result (for best.pt). Every rank must call it."""
    state = trainer.state
    if state.last_valid_step == state.step and state.last_valid is not None:
        return state.last_valid
    sync_buffers(trainer)
    metrics = validate(trainer)
    state.last_valid, state.last_valid_step = metrics, state.step
    log.info("valid step %d epoch %d: loss %.4f CER %.2f%% WER %.2f%% (%d utterances)", state.step,
             state.epoch, metrics["loss"], 100 * metrics["cer"], 100 * metrics["wer"], metrics["utts"])
    trainer.metrics.write("valid", state.step, {"epoch": state.epoch, **metrics})
    if metrics["wer"] < state.best_wer or (metrics["wer"] == state.best_wer and metrics["cer"] < state.best_cer):
        state.best_wer, state.best_cer, state.best_step = metrics["wer"], metrics["cer"], state.step
        if trainer.runtime.is_main:
            save_checkpoint(trainer.checkpoint_dir / "best.pt", build_payload(trainer, training=False))
            log.info("best.pt: WER %.2f%% at step %d", 100 * metrics["wer"], state.step)
    return metrics


# --- checkpoints -----------------------------------------------------------------------------
def build_payload(trainer: Trainer, training: bool = True) -> dict:
    """The checkpoint dict of the current state (see asr.checkpoint); without the training-only
    keys when `training` is False. With `training` under DDP every rank must call it (the RNG
    states of all ranks are gathered)."""
    state = trainer.state
    valid = None
    if state.last_valid is not None and state.last_valid_step == state.step:
        valid = {k: state.last_valid[k] for k in ("loss", "cer", "wer")}
    payload = {
        "model": {k: v.detach().cpu() for k, v in trainer.raw_model.state_dict().items()},
        "model_config": to_dict(trainer.model_config),
        "feature_config": to_dict(trainer.config.features),
        "tokens": trainer.tokenizer.to_list(),
        "cmvn": trainer.cmvn.to_dict(),
        "step": state.step,
        "epoch": state.epoch,
        "valid": valid,
    }
    if not training:
        return payload
    rng = get_rng_state(trainer.runtime.device)
    if trainer.runtime.distributed:
        ranks: list = [None] * trainer.runtime.world_size
        dist.all_gather_object(ranks, rng)
    else:
        ranks = [rng]
    payload |= {
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": {"decay_steps": trainer.decay_steps, "last_lr": trainer.optimizer.param_groups[0]["lr"]},
        "sampler": trainer.sampler.state_dict(batches_done=state.batches_done) | {"epoch": state.epoch},
        "rng": {"ranks": ranks},
        "config": to_dict(trainer.config),
        "best": {"wer": state.best_wer, "cer": state.best_cer, "step": state.best_step},
        "skipped_steps": state.skipped_steps,
    }
    if trainer.scaler is not None:
        payload["scaler"] = trainer.scaler.state_dict()
    return payload


def save_checkpoint_files(trainer: Trainer) -> Path | None:
    """Write step-N.pt and last.pt (atomically; rank 0) and keep only the last `keep_last`
    step checkpoints. Every rank must call it (the RNG states are gathered)."""
    sync_buffers(trainer)
    payload = build_payload(trainer)
    if not trainer.runtime.is_main:
        return None
    folder = trainer.checkpoint_dir
    step_path = folder / f"step-{trainer.state.step}.pt"
    save_checkpoint(step_path, payload)
    _link_or_save(step_path, folder / "last.pt", payload)
    keep = trainer.config.train.keep_last
    if keep:
        for old in step_checkpoints(folder)[:-keep]:
            old.unlink(missing_ok=True)
    log.info("checkpoint %s (and last.pt)", step_path)
    return step_path


def _link_or_save(source: Path, target: Path, payload: dict) -> None:
    """Make `target` the same file as `source` (a hard link swapped in atomically), or save."""
    temporary = target.with_name(f".{target.name}.link")
    try:
        temporary.unlink(missing_ok=True)
        os.link(source, temporary)
        os.replace(temporary, target)
    except OSError:
        save_checkpoint(target, payload)


def load_training_checkpoint(trainer: Trainer, path: Path) -> None:
    """Restore model, optimizer, scaler, counters, sampler position and RNG from `path`."""
    payload = load_checkpoint(path)
    missing = [k for k in ("optimizer", "sampler", "rng", "config") if k not in payload]
    if missing:
        raise DataError(f"{path}: not a training checkpoint (no {', '.join(missing)}); cannot resume from it")
    if payload["tokens"] != trainer.tokenizer.to_list():
        raise DataError(f"{path}: its tokens differ from {trainer.exp_dir / 'tokens.txt'}; use a new --exp")
    try:
        trainer.raw_model.load_state_dict(payload["model"])
    except RuntimeError as err:
        raise ConfigError(f"{path} holds a different model than the config describes "
                          f"({str(err).splitlines()[0]}); use the original config or a new --exp") from err
    changes = config_diff(payload["config"], to_dict(trainer.config))
    if changes:
        log.warning("config differs from the run being resumed: %s", "; ".join(changes))
    trainer.optimizer.load_state_dict(payload["optimizer"])
    saved_decay = payload.get("scheduler", {}).get("decay_steps")
    if saved_decay is not None and saved_decay != trainer.decay_steps:
        log.warning("learning-rate schedule length changes from %d to %d steps (set optim.decay_steps to keep it)",
                    saved_decay, trainer.decay_steps)
    if trainer.scaler is not None and "scaler" in payload:
        trainer.scaler.load_state_dict(payload["scaler"])
    state = trainer.state
    state.step, state.epoch = int(payload["step"]), int(payload["epoch"])
    state.batches_done = int(payload["sampler"]["batches_done"])
    best = payload.get("best", {})
    state.best_wer, state.best_cer = float(best.get("wer", math.inf)), float(best.get("cer", math.inf))
    state.best_step = int(best.get("step", -1))
    state.skipped_steps = int(payload.get("skipped_steps", 0))
    if payload.get("valid") is not None:
        state.last_valid, state.last_valid_step = dict(payload["valid"]), state.step
    trainer.sampler.load_state_dict(payload["sampler"])
    ranks = payload["rng"]["ranks"]
    if len(ranks) == trainer.runtime.world_size:
        set_rng_state(ranks[trainer.runtime.rank], trainer.runtime.device)
    else:
        log.warning("resuming with %d processes, checkpoint has %d: RNG streams reseeded",
                    trainer.runtime.world_size, len(ranks))
        seed_everything(trainer.config.train.seed + 1000 * state.step + trainer.runtime.rank)
    log.info("resumed from %s: step %d, epoch %d, %d batches into it", path, state.step, state.epoch + 1,
             state.batches_done)


# --- preparation: tokens, CMVN, data ---------------------------------------------------------
def prepare_tokens(exp_dir: Path, records: Sequence[dict], runtime: Runtime | None = None) -> Tokenizer:
    """exp/tokens.txt: built from the training texts on first use, read afterwards."""
    path = exp_dir / "tokens.txt"
    if (runtime is None or runtime.is_main) and not path.exists():
        Tokenizer.build(r["text"] for r in records).save(path)
        log.info("wrote %s", path)
    if runtime is not None:
        runtime.barrier()
    tokenizer = Tokenizer.load(path)
    log.info("tokens: %d (blank included) from %s", tokenizer.vocab_size, path)
    return tokenizer


def prepare_cmvn(exp_dir: Path, records: Sequence[dict], feature_config: FeatureConfig, num_workers: int,
                 runtime: Runtime | None = None) -> GlobalCMVN:
    """exp/cmvn.pt: global CMVN of the training features, computed once, then reused."""
    path = exp_dir / "cmvn.pt"
    if (runtime is None or runtime.is_main) and not path.exists():
        device = runtime.device if runtime is not None else "cpu"
        started = time.monotonic()
        cmvn = compute_cmvn(list(records), feature_config, num_workers=num_workers, device=device)
        cmvn.save(path)
        log.info("wrote %s (%d utterances, %.1f s)", path, len(records), time.monotonic() - started)
    if runtime is not None:
        runtime.barrier()
    cmvn = GlobalCMVN.load(path)
    if cmvn.mean.numel() != feature_config.dim:
        raise ConfigError(f"{path} has {cmvn.mean.numel()} dimensions but the features have {feature_config.dim}; "
                          f"delete it (and tokens.txt, checkpoints) or use a new --exp")
    return cmvn


def _read_manifest(path: str | os.PathLike) -> list[dict]:
    from asr.data.manifest import read_manifest

    records = read_manifest(path)
    if not records:
        raise DataError(f"{path}: manifest has no utterances")
    return records


def _describe_drops(name: str, total: int, dropped: list[tuple[str, str]]) -> None:
    if not dropped:
        log.info("%s: all %d utterances kept", name, total)
        return
    shown = ", ".join(f"{utt} ({reason})" for utt, reason in dropped[:10])
    more = f" and {len(dropped) - 10} more" if len(dropped) > 10 else ""
    log.warning("%s: %d of %d utterances left out: %s%s (all in log/dropped.txt)", name, len(dropped), total,
                shown, more)


def _loader(dataset, batch_sampler, num_workers: int, runtime: Runtime, seed: int) -> torch.utils.data.DataLoader:
    from asr.data.dataset import collate

    extra = {}
    if num_workers > 0:
        extra = {"prefetch_factor": 2, "persistent_workers": True, "worker_init_fn": _single_thread_worker}
    # The loader draws its workers' base seed from its own generator, not the global RNG, so a
    # resumed run consumes the global RNG exactly as an uninterrupted one.
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate,
                                       num_workers=num_workers, pin_memory=runtime.device.type == "cuda",
                                       generator=generator, **extra)


def _single_thread_worker(_worker_id: int) -> None:
    torch.set_num_threads(1)  # a worker decodes audio; more threads would oversubscribe the CPUs


def _valid_batches(durations: Sequence[float], max_duration: float, runtime: Runtime) -> list[list[int]]:
    """Validation batches in ascending duration, dealt round-robin to the ranks: no repeats."""
    from asr.data.sampler import pack_batches

    order = np.argsort(np.asarray(durations), kind="stable")
    batches = pack_batches(order, np.asarray(durations, dtype=np.float64), max_duration)
    return batches[runtime.rank::runtime.world_size]


def stats(config: ExperimentConfig, train_manifest: str | os.PathLike, exp_dir: str | os.PathLike) -> dict:
    """`asr stats`: write exp/tokens.txt and exp/cmvn.pt from the training manifest (what
    `asr train` would do first) and return a summary of the data."""
    exp_dir = Path(exp_dir)
    records = _read_manifest(train_manifest)
    kept, dropped = _duration_filter(records, config.data)
    tokenizer = prepare_tokens(exp_dir, kept)
    cmvn = prepare_cmvn(exp_dir, kept, config.features, config.data.num_workers)
    return {"utterances": len(records), "kept": len(kept), "dropped": len(dropped),
            "hours": sum(r["duration"] for r in kept) / 3600, "vocab_size": tokenizer.vocab_size,
            "feature_dim": int(cmvn.mean.numel()), "tokens": str(exp_dir / "tokens.txt"),
            "cmvn": str(exp_dir / "cmvn.pt")}


def _duration_filter(records, data: DataConfig):
    from asr.data.dataset import filter_records

    return filter_records(records, data.min_utt_duration, data.max_utt_duration)


# --- main ------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What `train` returns: final counters, the last validation, the best, the model."""

    step: int
    epoch: int
    valid: dict | None
    best: dict
    exp_dir: Path
    model: BiRNNCTC
    parameters: int
    train_utterances: int
    dropped: int
    seconds: float


@contextmanager
def experiment_lock(exp_dir: Path):
    """Hold `exp_dir/.train.lock` while training, so two runs can never write one experiment.

    The lock is an advisory `flock`: the kernel releases it when the process ends, however it
    ends, so a crashed run never leaves a stale lock behind.
    """
    path = exp_dir / ".train.lock"
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise DataError(f"{exp_dir}: another `asr train` ({holder}) is training this experiment; "
                        "wait for it or stop it first") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    try:
        yield
    finally:
        handle.close()


def train(config: ExperimentConfig, train_manifest: str | os.PathLike, valid_manifest: str | os.PathLike,
          exp_dir: str | os.PathLike) -> TrainResult:
    """Train (or resume) an experiment in `exp_dir`; see the module docstring for what it writes."""
    exp_dir = Path(exp_dir)
    threads = torch.get_num_threads()
    runtime = setup_runtime(config.train)
    try:
        with contextlib.ExitStack() as stack:
            if runtime.is_main:
                exp_dir.mkdir(parents=True, exist_ok=True)
                stack.enter_context(experiment_lock(exp_dir))
            runtime.barrier()
            with training_logs(exp_dir, runtime):
                return _train(config, train_manifest, valid_manifest, exp_dir, runtime)
    finally:
        torch.set_num_threads(threads)
        if runtime.owns_process_group:
            dist.destroy_process_group()


def _train(config: ExperimentConfig, train_manifest, valid_manifest, exp_dir: Path, runtime: Runtime) -> TrainResult:
    started = time.monotonic()
    train_config = config.train
    log.info("asr train: exp %s, device %s, amp %s, %d process(es)", exp_dir, runtime.device, runtime.amp,
             runtime.world_size)
    train_records = _read_manifest(train_manifest)
    valid_records = _read_manifest(valid_manifest)
    tokenizer = prepare_tokens(exp_dir, train_records, runtime)
    model_config = config.model_config(tokenizer.vocab_size)

    seed_everything(train_config.seed)
    model = BiRNNCTC(model_config)

    # Length filters and the CTC feasibility check: every left-out utterance is logged and listed.
    kept_train, dropped_train = select_utterances(train_records, tokenizer, model, config.features,
                                                  config.data.min_utt_duration, config.data.max_utt_duration)
    kept_valid, dropped_valid = select_utterances(valid_records, tokenizer, model, config.features)
    if runtime.is_main:
        _describe_drops(f"train {train_manifest}", len(train_records), dropped_train)
        _describe_drops(f"valid {valid_manifest}", len(valid_records), dropped_valid)
        lines = [f"train\t{u}\t{r}\n" for u, r in dropped_train] + [f"valid\t{u}\t{r}\n" for u, r in dropped_valid]
        atomic_write_text(exp_dir / "log" / "dropped.txt", "".join(lines))
    if not kept_train:
        raise DataError(f"{train_manifest}: no training utterance left after the length filters "
                        f"(see {exp_dir / 'log' / 'dropped.txt'})")
    if not kept_valid:
        raise DataError(f"{valid_manifest}: no validation utterance left (see {exp_dir / 'log' / 'dropped.txt'})")

    cmvn = prepare_cmvn(exp_dir, kept_train, config.features, config.data.num_workers, runtime).to(runtime.device)
    if runtime.is_main:
        dump_config(config, exp_dir / "config.yaml",
                    header=f"resolved config of {exp_dir} (asr train)\nderived: model.input_dim={model_config.input_dim}"
                           f" model.vocab_size={model_config.vocab_size}")

    from asr.data.dataset import AudioDataset
    from asr.data.sampler import BucketingBatchSampler

    train_set = AudioDataset(kept_train, tokenizer, sample_rate=config.features.sample_rate)
    sampler = BucketingBatchSampler(train_set.durations, config.data.max_duration, num_buckets=config.data.num_buckets,
                                    shuffle=True, seed=train_config.seed, rank=runtime.rank,
                                    world_size=runtime.world_size)
    train_loader = _loader(train_set, sampler, config.data.num_workers, runtime, train_config.seed)
    valid_set = AudioDataset(kept_valid, tokenizer, sample_rate=config.features.sample_rate)
    valid_loader = _loader(valid_set, _valid_batches(valid_set.durations, config.data.max_duration, runtime),
                           min(config.data.num_workers, 2), runtime, train_config.seed)
    if valid_set.oov_report:
        log.warning("valid %s: %s", valid_manifest, valid_set.oov_report)

    model.to(runtime.device)
    optimizer = build_optimizer(model, config.optim)
    scaler = torch.amp.GradScaler("cuda") if runtime.amp == "fp16" else None
    batches_per_epoch = len(sampler)
    decay_steps = config.optim.decay_steps or (
        min(train_config.max_steps, train_config.epochs * batches_per_epoch) if train_config.max_steps
        else train_config.epochs * batches_per_epoch)

    resume_path = exp_dir / "checkpoints" / "last.pt"
    wrapped: nn.Module = model
    trainer = Trainer(config=config, runtime=runtime, exp_dir=exp_dir, model=wrapped, raw_model=model,
                      model_config=model_config, tokenizer=tokenizer, cmvn=cmvn,
                      specaug=SpecAugment(config.specaug).to(runtime.device),
                      narrowband=Narrowband(config.narrowband, config.features.sample_rate),
                      optimizer=optimizer, scaler=scaler,
                      train_loader=train_loader, valid_loader=valid_loader, decay_steps=decay_steps,
                      metrics=MetricsLog(exp_dir, False, 0))
    # Per-rank dropout, SpecAugment and narrow-band streams (rank 0 keeps the single-process stream).
    torch.manual_seed(train_config.seed + 1 + runtime.rank)
    if resume_path.exists():
        load_training_checkpoint(trainer, resume_path)
    trainer.metrics = MetricsLog(exp_dir, runtime.is_main, trainer.state.step)
    if runtime.distributed:
        trainer.model = nn.parallel.DistributedDataParallel(
            model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None)

    hours = sum(r["duration"] for r in kept_train) / 3600
    log.info("model: %s, %.2f M parameters; train %d utterances (%.2f h), %d batches per epoch per rank; "
             "valid %d utterances", model_config, count_parameters(model) / 1e6, len(kept_train), hours,
             batches_per_epoch, len(kept_valid))
    log.info("schedule: %s decay over %d steps, warm-up %d, peak lr %g", config.optim.decay, trainer.decay_steps,
             config.optim.warmup_steps, config.optim.lr)

    state = trainer.state
    stop_step = train_config.max_steps or math.inf
    try:
        with StopRequest() as trainer.stop:
            while state.epoch < train_config.epochs and state.step < stop_step:
                completed = train_one_epoch(trainer, stop_step)
                if completed:
                    state.epoch += 1
                    state.batches_done = 0
                if trainer.stop.requested:
                    save_checkpoint_files(trainer)
                    log.warning("stopped at step %d: rerun the same command to resume", state.step)
                    raise KeyboardInterrupt
                finished = state.epoch >= train_config.epochs or state.step >= stop_step
                if (completed and not train_config.valid_every) or finished:
                    run_validation(trainer)
                save_checkpoint_files(trainer)
        if state.last_valid is None:  # e.g. rerun of a finished experiment: report, do not train
            run_validation(trainer)
    finally:
        trainer.metrics.close()
    sync_buffers(trainer)
    if train_config.debug_rank_files:
        path = exp_dir / "log" / "debug" / f"rank{runtime.rank}.final.pt"
        save_checkpoint(path, {"model": {k: v.cpu() for k, v in model.state_dict().items()}, "step": state.step})
    if runtime.is_main:
        png = exp_dir / "training_curves.png"
        if plot_curves(trainer.metrics.path, png):
            log.info("wrote %s", png)
    seconds = time.monotonic() - started
    best = {"wer": state.best_wer, "cer": state.best_cer, "step": state.best_step}
    log.info("done: step %d, epoch %d, best WER %.2f%% (step %d), %.1f s", state.step, state.epoch,
             100 * state.best_wer, state.best_step, seconds)
    return TrainResult(step=state.step, epoch=state.epoch, valid=state.last_valid, best=best, exp_dir=exp_dir,
                       model=model, parameters=count_parameters(model), train_utterances=len(kept_train),
                       dropped=len(dropped_train), seconds=seconds)
