"""Training: the CTC loop as named functions.

    asr train --config conf/demo.yaml --train data/train.jsonl --valid data/dev.jsonl --exp exp/demo
    torchrun --nproc_per_node 4 -m asr.cli train ...        (DDP; only rank 0 writes)

The loop: manifest -> bucketing sampler -> padded waveforms -> (on the model's device) the
front-end (`asr.frontend.Frontend`: narrow-band, features, CMVN, SpecAugment) -> the model
(`asr.model.build_model`) -> CTC loss -> AdamW with warm-up and decay, gradient clipping. The
config schema and the preparation of tokens, CMVN and the utterance selection live in
`asr.experiment`; device, DDP and RNG state in `asr.runtime`; logs in `asr.logs`. Everything
lands in the experiment folder:

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

import contextlib
import copy
import dataclasses
import fcntl
import gc
import logging
import math
import os
import queue
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from asr.checkpoint import load_checkpoint, model_payload, save_checkpoint, step_checkpoints
from asr.config import config_diff, dump_config, to_dict
from asr.errors import AudioError, ConfigError, DataError
from asr.experiment import (
    CmvnJob,
    ExperimentConfig,
    InitFrom,
    OptimConfig,
    TrainConfig,
    prepare_experiment,
    read_records,
    select_utterances,
)
from asr.fileio import atomic_write_text
from asr.frontend import Frontend
from asr.lengths import ctc_min_frames
from asr.logs import MetricsLog, plot_curves, training_logs
from asr.model import ModelConfig, build_model, count_parameters
from asr.runtime import (
    Runtime,
    StopRequest,
    autocast_context,
    derive_seed,
    frontend_ahead,
    get_rng_state,
    recurrent_dtype,
    reduce_sums,
    seed_everything,
    set_rng_state,
    setup_runtime,
)
from asr.text import Tokenizer

log = logging.getLogger("asr.train")


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


@dataclass(frozen=True)
class Schedule:
    """The learning rate as a function of the optimizer step."""

    optim: OptimConfig  # the run's peak LR (scaled), warm-up steps (resolved), decay kind
    decay_steps: int  # length of the decay in steps (the run's length unless optim.decay_steps)

    def lr(self, step: int) -> float:
        """Learning rate of optimizer step `step` (1-based)."""
        return learning_rate(step, self.optim, self.decay_steps)

    def describe(self, world_size: int, max_duration: float) -> str:
        """The log line a run starts with: effective batch, LR rule, warm-up share."""
        warmup = self.optim.warmup_steps
        return (f"schedule: effective batch {world_size} process(es) x {max_duration:g} s = "
                f"{world_size * max_duration:g} s of padded audio per step; lr_scaling {self.optim.lr_scaling} -> "
                f"peak lr {self.optim.lr:g}; warm-up {warmup} of {self.decay_steps} steps "
                f"({100 * warmup / max(self.decay_steps, 1):.1f}%), then {self.optim.decay} decay")


def run_length(train: TrainConfig, optim: OptimConfig, batches_per_epoch: int) -> int:
    """The schedule's length in steps: optim.decay_steps, else the run's (max_steps caps epochs)."""
    steps = train.epochs * batches_per_epoch
    return optim.decay_steps or (min(train.max_steps, steps) if train.max_steps else steps)


def make_schedule(optim: OptimConfig, train: TrainConfig, batches_per_epoch: int, world_size: int = 1,
                  max_duration: float = 0.0) -> Schedule:
    """The run's schedule, a pure function of the configs, the batches per epoch of one rank and
    the world size: warm-up as a fraction of the run (optim.warmup_fraction) or in steps, peak LR
    scaled by the effective batch (optim.lr_scaling)."""
    decay_steps = run_length(train, optim, batches_per_epoch)
    warmup = round(optim.warmup_fraction * decay_steps) if optim.warmup_fraction > 0 else optim.warmup_steps
    ratio = world_size * max_duration / (optim.reference_batch_s or max_duration) if max_duration > 0 else 1.0
    scale = {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[optim.lr_scaling]
    return Schedule(dataclasses.replace(optim, lr=optim.lr * scale, warmup_steps=warmup), decay_steps)


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

    def valid_now(self) -> dict | None:
        """The validation metrics of the current step, if it was validated."""
        if self.last_valid is None or self.last_valid_step != self.step:
            return None
        return {k: self.last_valid[k] for k in ("loss", "cer", "wer")}


# --- loss and one step -----------------------------------------------------------------------
CTC = nn.CTCLoss(blank=0, reduction="none", zero_infinity=True)
_LEFT_OUT: set[str] = set()  # utterances already named in a warning by this run (once each)


def ctc_loss(log_probs: Tensor, out_lengths: Tensor, targets: Tensor, target_lengths: Tensor,
             ids: Sequence[str]) -> tuple[Tensor, dict]:
    """CTC loss of a batch: the sum over feasible utterances / their number.

    log_probs (B, T, V) float32, out_lengths (B,), targets (B, S) padded, target_lengths (B,).
    An utterance whose labels do not fit in its output frames (the manifest's duration was off)
    is left out of the loss and counted in "skipped" (the step lines' skipped_utts), never an
    infinite or silently zeroed loss; a warning names it the first time only (sped-up copies of
    tight utterances fall short every few epochs). Returns (loss, {"loss_sum", "utts", "skipped"}).
    """
    feasible = ctc_min_frames(targets, target_lengths) <= out_lengths
    losses = CTC(log_probs.transpose(0, 1), targets, out_lengths, target_lengths)  # (B,)
    losses = torch.where(feasible, losses, torch.zeros_like(losses))
    utts = int(feasible.sum())
    skipped = len(ids) - utts
    if skipped:
        new = [utt for utt, ok in zip(ids, feasible.tolist()) if not ok and utt not in _LEFT_OUT]
        if new:
            _LEFT_OUT.update(new)
            log.warning("left out of the loss, more CTC labels than output frames (a duration off in the "
                        "manifest, or the utterance sped up): %s", ", ".join(new))
    return losses.sum() / max(utts, 1), {"loss_sum": float(losses.detach().sum()), "utts": utts, "skipped": skipped}


def compute_loss(model: nn.Module, frontend: Frontend, batch, runtime: Runtime,
                 features: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, dict, Tensor, Tensor]:
    """CTC loss of a batch already on the device, in the modules' current modes (training:
    augmentation, dither, dropout; evaluation: none of them). `features`: the batch's (features,
    frame_lengths) when the front-end already ran (`training_batches`), else `frontend` runs here.

    Returns (loss: a scalar with grad when training; stats: ctc_loss's plus "frames"; log_probs
    (B, T, V) float32 detached; out_lengths (B,)).
    """
    features, frame_lengths = features if features is not None else frontend(batch.waveforms, batch.wave_lengths)
    with autocast_context(runtime.device, runtime.amp):
        log_probs, out_lengths = model(features, frame_lengths)  # (B, T, V), (B,)
    log_probs = log_probs.float()
    loss, stats = ctc_loss(log_probs, out_lengths, batch.targets, batch.target_lengths, batch.ids)
    stats["frames"] = int(frame_lengths.sum())
    return loss, stats, log_probs.detach(), out_lengths


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler, loss: Tensor, lr: float,
                   grad_clip: float) -> dict:
    """Backward, clip, AdamW step at learning rate `lr`, skipped when the gradient is not finite.

    Returns {"lr", "grad_norm", "stepped"}.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    parameters = [p for p in model.parameters() if p.grad is not None]
    if grad_clip > 0:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, grad_clip))
    else:
        norms = [p.grad.norm() for p in parameters]
        grad_norm = float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0
    stepped = math.isfinite(grad_norm)
    if scaler is not None:
        scaler.step(optimizer)  # skips the step itself on inf/nan
        scaler.update()
    elif stepped:
        optimizer.step()
    return {"lr": lr, "grad_norm": grad_norm, "stepped": stepped}


def train_step(model: nn.Module, frontend: Frontend, optimizer: torch.optim.Optimizer, scaler, batch, lr: float,
               grad_clip: float, runtime: Runtime, features: tuple[Tensor, Tensor] | None = None) -> dict:
    """One optimizer step on `batch` (on the device; `features` as `compute_loss` takes them).
    Returns compute_loss's stats plus "lr", "grad_norm" and "stepped" (False when the gradient was
    not finite and the step was skipped)."""
    loss, stats, _, _ = compute_loss(model, frontend, batch, runtime, features)
    return stats | optimizer_step(model, optimizer, scaler, loss, lr, grad_clip)


# --- one epoch -------------------------------------------------------------------------------
def batch_generator(device: torch.device, seed: int, rank: int, epoch: int, index: int) -> torch.Generator:
    """The generator of the front-end's draws (augmentation, dither) for batch `index` of `epoch`
    on `rank`: one seed per batch, so a resumed run draws what an uninterrupted one did, whichever
    thread computes the batch."""
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(seed, "frontend", rank, epoch, index))
    return generator


def training_batches(loader: Iterable, frontend: Frontend, runtime: Runtime, seed: int, epoch: int, first: int,
                     ahead: bool) -> Iterator[tuple]:
    """(batch on the device, unreadable utterances, (features, frame_lengths)) for the loader's
    batches, numbered from `first` (the epoch's batches already done); batch and features are None
    when every utterance of the batch failed to load. The front-end runs in training mode with
    `batch_generator`'s draws; with `ahead`, a thread computes the next two batches while the
    caller trains on this one (torch's kernels release the GIL), on a copy of `frontend`, so
    validation's eval() between steps cannot reach a batch in flight."""
    frontend = copy.deepcopy(frontend).train() if ahead else frontend.train()

    def produce() -> Iterator[tuple]:
        for index, (batch, unreadable) in enumerate(loader, start=first):
            if batch is None:
                yield None, unreadable, None
                continue
            batch = batch.to(runtime.device, non_blocking=runtime.device.type == "cuda")
            generator = batch_generator(runtime.device, seed, runtime.rank, epoch, index)
            yield batch, unreadable, frontend(batch.waveforms, batch.wave_lengths, generator)

    return in_background(produce(), depth=2) if ahead else produce()


def in_background(items: Iterator, depth: int) -> Iterator:
    """`items`, produced by a thread up to `depth` ahead of the consumer. An exception in the
    thread is raised here; when the consumer stops (break, an exception, the end), the thread
    stops after the item it is on and `items` is closed."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop, end = threading.Event(), object()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                slots.put((item, None))
            slots.put((end, None))
        except BaseException as err:  # handed to the consumer, raised there
            slots.put((end, err))
        finally:
            if hasattr(items, "close"):  # a generator: its own clean-up runs here, in this thread
                items.close()

    thread = threading.Thread(target=produce, name="asr-frontend", daemon=True)
    thread.start()
    try:
        while True:
            item, err = slots.get()
            if err is not None:
                raise err
            if item is end:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # free a slot for a put that waits, until the thread sees `stop`
            try:
                slots.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()


class LogWindow:
    """Sums of the steps since the last log line, reduced over ranks when logged."""

    def __init__(self) -> None:
        self.sums = {"loss_sum": 0.0, "utts": 0, "skipped": 0, "frames": 0}
        self.grad_norm, self.steps, self.started = 0.0, 0, time.monotonic()

    def add(self, stats: dict) -> None:
        for key in self.sums:
            self.sums[key] += stats[key]
        self.grad_norm += stats["grad_norm"] if math.isfinite(stats["grad_norm"]) else 0.0
        self.steps += 1

    def values(self, runtime: Runtime, frame_shift_s: float) -> dict:
        """Loss per utterance, mean gradient norm, audio-s/s of the window (every rank must call it)."""
        loss_sum, utts, skipped, frames = reduce_sums(runtime, list(self.sums.values()))
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return {"loss": loss_sum / max(utts, 1), "grad_norm": self.grad_norm / max(self.steps, 1),
                "audio_s_per_s": frames * frame_shift_s / elapsed, "skipped_utts": int(skipped)}


def _log_step(state: TrainState, window: LogWindow, stats: dict, total: int, frame_shift_s: float,
              runtime: Runtime, metrics: MetricsLog, progress) -> None:
    values = {"epoch": state.epoch + state.batches_done / max(total, 1), "lr": stats["lr"],
              **window.values(runtime, frame_shift_s)}
    progress.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{stats['lr']:.2e}")
    log.info("step %d epoch %.2f loss %.4f lr %.3e grad_norm %.3f audio_s/s %.1f%s", state.step, values["epoch"],
             values["loss"], values["lr"], values["grad_norm"], values["audio_s_per_s"],
             f" skipped_utts {values['skipped_utts']}" if values["skipped_utts"] else "")
    metrics.write("train", state.step, values)


def train_one_epoch(model: nn.Module, frontend: Frontend, optimizer: torch.optim.Optimizer, scaler, loader,
                    bad: BadUtterances, state: TrainState, schedule: Schedule, config: ExperimentConfig,
                    runtime: Runtime, metrics: MetricsLog, after_step: Callable[[bool], bool]) -> bool:
    """Train on the rest of the current epoch.

    `model` is the DDP wrapper under torchrun; `loader` yields (batch, unreadable utterances),
    which go to `bad`. After each step `after_step(end_of_epoch)` runs the scheduled validation and
    checkpoints and says whether to stop. Returns True when the epoch was completed, False when it
    stopped first.
    """
    from tqdm import tqdm

    loader.batch_sampler.set_epoch(state.epoch)
    model.train()
    total, window = len(loader.batch_sampler), LogWindow()
    batches = training_batches(loader, frontend, runtime, config.train.seed, state.epoch, state.batches_done,
                               frontend_ahead(runtime.device, config.train.frontend_thread))
    frame_shift_s = config.features.frame_shift_ms / 1000
    with contextlib.closing(batches), tqdm(total=total, initial=state.batches_done, desc=f"epoch {state.epoch + 1}",
                                           unit="batch", disable=None if runtime.is_main else True, leave=False,
                                           dynamic_ncols=True) as progress:
        for batch, unreadable, features in batches:
            bad.add(unreadable)
            if batch is None:  # every utterance of the batch failed to load: no step
                if runtime.distributed:
                    raise DataError(f"every utterance of a batch failed to load (see {bad.path}); with several "
                                    "processes the step cannot be skipped: fix or remove those files")
                state.batches_done += 1
                progress.update(1)
                continue
            metrics.debug("batches.txt", f"{state.step + 1} {state.epoch} {' '.join(batch.ids)}\n")
            stats = train_step(model, frontend, optimizer, scaler, batch, schedule.lr(state.step + 1),
                               config.optim.grad_clip, runtime, features)
            if not stats["stepped"]:
                state.skipped_steps += 1
                if scaler is None:
                    log.warning("step %d: gradient norm is %s, step skipped", state.step + 1, stats["grad_norm"])
            state.step += 1
            state.batches_done += 1
            progress.update(1)
            window.add(stats)
            if state.step % config.train.log_every == 0 or state.batches_done == total:
                _log_step(state, window, stats, total, frame_shift_s, runtime, metrics, progress)
                window = LogWindow()
            if after_step(state.batches_done == total):
                return state.batches_done == total
    return True


# --- validation ------------------------------------------------------------------------------
@torch.no_grad()
def validate(model: nn.Module, frontend: Frontend, loader, decoder, runtime: Runtime) -> dict:
    """Loss, greedy CER and WER on the validation batches (sharded over ranks, gathered).

    Runs in eval mode (no dropout, no augmentation, no dither) inside a forked RNG, so that
    validating never changes the course of training; `decoder` is the one `asr decode` uses by
    default. Returns {"loss", "cer", "wer", "utts"}.
    """
    from asr.score import wer_cer

    devices = [runtime.device] if runtime.device.type == "cuda" else []
    modes = model.training, frontend.training
    model.eval()
    frontend.eval()
    loss_sum, utts, refs, hyps = 0.0, 0, [], []
    try:
        with torch.random.fork_rng(devices=devices):
            for batch, unreadable in loader:
                for utt, error in unreadable:
                    log.warning("validation skips %s, its audio cannot be read: %s", utt, error)
                if batch is None:
                    continue
                batch = batch.to(runtime.device, non_blocking=runtime.device.type == "cuda")
                _, stats, log_probs, out_lengths = compute_loss(model, frontend, batch, runtime)
                loss_sum += stats["loss_sum"]
                utts += stats["utts"]
                refs.extend(batch.texts)
                hyps.extend(h.text for h in decoder.decode(log_probs, out_lengths))
    finally:
        model.train(modes[0])
        frontend.train(modes[1])
    if runtime.distributed:
        gathered: list = [None] * runtime.world_size
        dist.all_gather_object(gathered, (loss_sum, utts, refs, hyps))
        loss_sum, utts = sum(g[0] for g in gathered), sum(g[1] for g in gathered)
        refs, hyps = [r for g in gathered for r in g[2]], [h for g in gathered for h in g[3]]
    wer, cer = wer_cer(refs, hyps)
    return {"loss": loss_sum / max(utts, 1), "cer": cer, "wer": wer, "utts": len(refs)}


def sync_buffers(model: nn.Module, runtime: Runtime) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over the ranks.

    DDP keeps the parameters identical but each rank updates its own running statistics; this
    makes checkpoints and validation use the mean over ranks, and leaves all ranks identical.
    Every rank must call it.
    """
    if not runtime.distributed:
        return
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer.div_(runtime.world_size)


def record_validation(state: TrainState, metrics: dict, log_file: MetricsLog) -> bool:
    """Log a validation and remember it; True when it is the best so far (lowest WER, then CER)."""
    state.last_valid, state.last_valid_step = metrics, state.step
    log.info("valid step %d epoch %d: loss %.4f CER %.2f%% WER %.2f%% (%d utterances)", state.step,
             state.epoch, metrics["loss"], 100 * metrics["cer"], 100 * metrics["wer"], metrics["utts"])
    log_file.write("valid", state.step, {"epoch": state.epoch, **metrics})
    if metrics["wer"] < state.best_wer or (metrics["wer"] == state.best_wer and metrics["cer"] < state.best_cer):
        state.best_wer, state.best_cer, state.best_step = metrics["wer"], metrics["cer"], state.step
        return True
    return False


# --- checkpoints -----------------------------------------------------------------------------
@dataclass
class RunCheckpoints:
    """The checkpoint files of one run: what they hold (see asr.checkpoint) and where they go.

    Every rank calls `save`/`save_best` at the same steps (RNG states and buffers are gathered);
    rank 0 writes.
    """

    folder: Path  # exp/checkpoints
    keep_last: int  # step-N.pt files kept
    config: ExperimentConfig
    model_config: ModelConfig
    tokenizer: Tokenizer
    model: nn.Module  # the bare model (not the DDP wrapper)
    frontend: Frontend
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    sampler: object  # the BucketingBatchSampler (its position is saved)
    schedule: Schedule
    runtime: Runtime
    bad: BadUtterances  # unreadable utterances found so far (all ranks', once saved)

    def inference_payload(self, state: TrainState) -> dict:
        return model_payload(self.model, self.model_config, self.frontend.features, self.tokenizer.to_list(),
                             self.frontend.cmvn, state.step, state.epoch, state.valid_now())

    def training_payload(self, state: TrainState) -> dict:
        """Everything resume needs; every rank must call it (RNG states are gathered)."""
        rank_state = {"rng": get_rng_state(self.runtime.device), "bad": sorted(self.bad.ids)}
        gathered: list = [rank_state]
        if self.runtime.distributed:
            gathered = [None] * self.runtime.world_size
            dist.all_gather_object(gathered, rank_state)
        ranks = [g["rng"] for g in gathered]
        payload = self.inference_payload(state) | {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"decay_steps": self.schedule.decay_steps, "last_lr": self.optimizer.param_groups[0]["lr"]},
            "sampler": self.sampler.state_dict(batches_done=state.batches_done) | {"epoch": state.epoch},
            "rng": {"ranks": ranks},
            "config": to_dict(self.config),
            "best": {"wer": state.best_wer, "cer": state.best_cer, "step": state.best_step},
            "skipped_steps": state.skipped_steps,
            "bad_utterances": sorted({utt for g in gathered for utt in g["bad"]}),
        }
        if self.scaler is not None:
            payload["scaler"] = self.scaler.state_dict()
        return payload

    def save(self, state: TrainState) -> Path | None:
        """step-N.pt and last.pt (atomically), keeping the last `keep_last` step checkpoints."""
        sync_buffers(self.model, self.runtime)
        payload = self.training_payload(state)
        if not self.runtime.is_main:
            return None
        step_path = self.folder / f"step-{state.step}.pt"
        save_checkpoint(step_path, payload)
        _link_or_save(step_path, self.folder / "last.pt", payload)
        if self.keep_last:
            for old in step_checkpoints(self.folder)[:-self.keep_last]:
                old.unlink(missing_ok=True)
        log.info("checkpoint %s (and last.pt)", step_path)
        return step_path

    def save_best(self, state: TrainState) -> None:
        if self.runtime.is_main:
            save_checkpoint(self.folder / "best.pt", self.inference_payload(state))
            log.info("best.pt: WER %.2f%% at step %d", 100 * state.best_wer, state.step)

    def restore(self, path: Path, state: TrainState) -> None:
        """Restore model, optimizer, scaler, counters, sampler position and RNG from `path`."""
        payload = _training_checkpoint(path, self.tokenizer, self.folder.parent / "tokens.txt")
        try:
            self.model.load_state_dict(payload["model"])
        except RuntimeError as err:
            raise ConfigError(f"{path} holds a different model than the config describes "
                              f"({str(err).splitlines()[0]}); use the original config or a new --exp") from err
        changes = config_diff(payload["config"], to_dict(self.config))
        if changes:
            log.warning("config differs from the run being resumed: %s", "; ".join(changes))
        self.optimizer.load_state_dict(payload["optimizer"])
        saved_decay = payload.get("scheduler", {}).get("decay_steps")
        if saved_decay is not None and saved_decay != self.schedule.decay_steps:
            log.warning("learning-rate schedule length changes from %d to %d steps (set optim.decay_steps to keep it)",
                        saved_decay, self.schedule.decay_steps)
        if self.scaler is not None and "scaler" in payload:
            self.scaler.load_state_dict(payload["scaler"])
        _restore_state(state, payload)
        self.bad.ids.update(payload.get("bad_utterances", []))
        self.sampler.load_state_dict(payload["sampler"])
        self._restore_rng(payload["rng"]["ranks"], state.step)
        log.info("resumed from %s: step %d, epoch %d, %d batches into it", path, state.step, state.epoch + 1,
                 state.batches_done)

    def _restore_rng(self, ranks: list, step: int) -> None:
        if len(ranks) == self.runtime.world_size:
            set_rng_state(ranks[self.runtime.rank], self.runtime.device)
            return
        log.warning("resuming with %d processes, checkpoint has %d: RNG streams reseeded", self.runtime.world_size,
                    len(ranks))
        seed_everything(self.config.train.seed + 1000 * step + self.runtime.rank)


def _training_checkpoint(path: Path, tokenizer: Tokenizer, tokens_path: Path) -> dict:
    payload = load_checkpoint(path)
    missing = [k for k in ("optimizer", "sampler", "rng", "config") if k not in payload]
    if missing:
        raise DataError(f"{path}: not a training checkpoint (no {', '.join(missing)}); cannot resume from it")
    if payload["tokens"] != tokenizer.to_list():
        raise DataError(f"{path}: its tokens differ from {tokens_path}; use a new --exp")
    return payload


def _restore_state(state: TrainState, payload: dict) -> None:
    state.step, state.epoch = int(payload["step"]), int(payload["epoch"])
    state.batches_done = int(payload["sampler"]["batches_done"])
    best = payload.get("best", {})
    state.best_wer, state.best_cer = float(best.get("wer", math.inf)), float(best.get("cer", math.inf))
    state.best_step = int(best.get("step", -1))
    state.skipped_steps = int(payload.get("skipped_steps", 0))
    if payload.get("valid") is not None:
        state.last_valid, state.last_valid_step = dict(payload["valid"]), state.step


def _link_or_save(source: Path, target: Path, payload: dict) -> None:
    """Make `target` the same file as `source` (a hard link swapped in atomically), or save."""
    temporary = target.with_name(f".{target.name}.link")
    try:
        temporary.unlink(missing_ok=True)
        os.link(source, temporary)
        os.replace(temporary, target)
    except OSError:
        save_checkpoint(target, payload)


# --- data ------------------------------------------------------------------------------------
class SkipUnreadable(torch.utils.data.Dataset):
    """`dataset[i]`, or {"id", "error"} when utterance i's audio cannot be read (or is already
    known to be bad: `known_bad`, set before the loader's workers start), so one bad file does not
    stop a long run."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset  # an AudioDataset: its columnar records give each id without a copy
        self.known_bad: frozenset[str] = frozenset()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        utt = self.dataset.records.id(index)
        if utt in self.known_bad:
            return {"id": utt, "error": None}
        try:
            return self.dataset[index]
        except AudioError as error:
            return {"id": utt, "error": str(error)}


def collate_readable(items: list[dict]):
    """(the `Batch` of the readable items, or None when there is none; [(id, error)] of the others,
    error None for an utterance already known to be bad)."""
    from asr.data.dataset import collate

    good = [item for item in items if "error" not in item]
    return (collate(good) if good else None), [(item["id"], item["error"]) for item in items if "error" in item]


class BadUtterances:
    """Utterances whose audio failed to load: each logged once (log/bad_utterances.txt: rank, id,
    error), remembered in checkpoints so a resumed run does not read them again, at most `limit`."""

    def __init__(self, path: Path, rank: int, limit: int) -> None:
        self.path, self.rank, self.limit = path, rank, limit
        self.ids: set[str] = set()

    def add(self, bad: list[tuple[str, str | None]]) -> None:
        new = [(utt, error) for utt, error in bad if error is not None and utt not in self.ids]
        if not new:
            return
        self.ids.update(utt for utt, _ in new)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:  # short appended lines: ranks may share the file
            f.writelines(f"{self.rank}\t{utt}\t{' '.join(error.split())}\n" for utt, error in new)
        for utt, error in new:
            log.warning("skipped %s, its audio cannot be read: %s (listed in %s)", utt, error, self.path)
        if len(self.ids) > self.limit:
            raise DataError(f"{len(self.ids)} utterances could not be read, more than data.max_bad_utterances="
                            f"{self.limit}: fix or remove the files listed in {self.path}")


def _describe_drops(name: str, total: int, dropped: list[tuple[str, str]]) -> None:
    if not dropped:
        log.info("%s: all %d utterances kept", name, total)
        return
    shown = ", ".join(f"{utt} ({reason})" for utt, reason in dropped[:10])
    more = f" and {len(dropped) - 10} more" if len(dropped) > 10 else ""
    log.warning("%s: %d of %d utterances left out: %s%s (all in log/dropped.txt)", name, len(dropped), total,
                shown, more)


def _valid_batches(durations: Sequence[float], max_duration: float, runtime: Runtime) -> list[list[int]]:
    """Validation batches in ascending duration, dealt round-robin to the ranks: no repeats."""
    from asr.data.sampler import pack_batches

    order = np.argsort(np.asarray(durations), kind="stable")
    batches = pack_batches(order, np.asarray(durations, dtype=np.float64), max_duration)
    return batches[runtime.rank::runtime.world_size]


def build_loaders(config: ExperimentConfig, tokenizer: Tokenizer, train_records: list[dict],
                  valid_records: list[dict], runtime: Runtime):
    """(train loader over a shuffled bucketing sampler sharded by rank, validation loader)."""
    from asr.data.dataset import AudioDataset, build_loader
    from asr.data.sampler import BucketingBatchSampler

    data, seed, pin = config.data, config.train.seed, runtime.device.type == "cuda"
    train_set = SkipUnreadable(AudioDataset(train_records, tokenizer, sample_rate=config.features.sample_rate))
    sampler = BucketingBatchSampler(train_set.dataset.durations, data.max_duration, num_buckets=data.num_buckets,
                                    shuffle=True, seed=seed, rank=runtime.rank, world_size=runtime.world_size)
    valid_set = AudioDataset(valid_records, tokenizer, sample_rate=config.features.sample_rate)
    valid_batches = _valid_batches(valid_set.durations, data.max_duration, runtime)
    if valid_set.oov_report:
        log.warning("valid: %s", valid_set.oov_report)
    valid_set = SkipUnreadable(valid_set)
    return (build_loader(train_set, sampler, data.num_workers, pin_memory=pin, seed=seed, collate_fn=collate_readable),
            build_loader(valid_set, valid_batches, min(data.num_workers, 2), pin_memory=pin, seed=seed,
                         collate_fn=collate_readable))


# --- main ------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What `train` returns: final counters, the last validation, the best, the model."""

    step: int
    epoch: int
    valid: dict | None
    best: dict
    exp_dir: Path
    model: nn.Module
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
          exp_dir: str | os.PathLike, init_from: str | os.PathLike | None = None,
          reinit_head: bool = False) -> TrainResult:
    """Train (or resume) an experiment in `exp_dir`; see the module docstring for what it writes.

    init_from: fine-tuning, a checkpoint (or experiment folder) whose weights, tokens and CMVN the
    new experiment starts from, with its own optimizer and schedule; `reinit_head` re-initialises
    the output layer for this data's tokens instead. Ignored when `exp_dir` has a run to resume.
    """
    init = None
    if init_from is not None and not (Path(exp_dir) / "checkpoints" / "last.pt").exists():
        init = InitFrom.load(init_from, config, reinit_head)
    exp_dir = Path(exp_dir)
    threads = torch.get_num_threads()
    runtime = setup_runtime(config.train.device, config.train.amp, config.train.threads, config.data.num_workers)
    try:
        with contextlib.ExitStack() as stack:
            if runtime.is_main:
                exp_dir.mkdir(parents=True, exist_ok=True)
                stack.enter_context(experiment_lock(exp_dir))
            runtime.barrier()
            with training_logs(exp_dir, runtime):
                return _train(config, train_manifest, valid_manifest, exp_dir, runtime, init)
    finally:
        torch.set_num_threads(threads)
        if runtime.owns_process_group:
            # The DDP wrapper sits in a reference cycle: left to interpreter exit, its reducer dies
            # after the process group and gloo aborts the process ("terminate called without an
            # active exception", SIGABRT) after a successful run; measured on torch 2.14.1 under
            # load, 12 of 20 runs of a bare DDP script; none once it is collected first.
            gc.collect()
            dist.destroy_process_group()


def _prepare(config: ExperimentConfig, train_manifest, valid_manifest, exp_dir: Path, runtime: Runtime,
             init: InitFrom | None):
    """The experiment's tokens, CMVN and training selection (rank 0 writes them, the other ranks
    read them after it), the validation selection, log/dropped.txt and config.yaml."""
    train_records, valid_records = read_records(train_manifest), read_records(valid_manifest)
    prepared = None
    if runtime.is_main:
        job = CmvnJob(device=runtime.device, allowed=not runtime.distributed)
        prepared = prepare_experiment(config, train_records, exp_dir, cmvn_job=job, source=str(train_manifest),
                                      init=init)
    runtime.barrier()
    if prepared is None:
        prepared = prepare_experiment(config, train_records, exp_dir, write=False, source=str(train_manifest),
                                      init=init)
    valid, dropped_valid = select_utterances(valid_records, prepared.tokenizer, prepared.model_config, config.features)
    if runtime.is_main:
        _describe_drops(f"train {train_manifest}", len(train_records), prepared.dropped)
        _describe_drops(f"valid {valid_manifest}", len(valid_records), dropped_valid)
        lines = ([f"train\t{u}\t{r}\n" for u, r in prepared.dropped]
                 + [f"valid\t{u}\t{r}\n" for u, r in dropped_valid])
        atomic_write_text(exp_dir / "log" / "dropped.txt", "".join(lines))
        model_config = prepared.model_config
        dump_config(config, exp_dir / "config.yaml",
                    header=f"resolved config of {exp_dir} (asr train)\nderived: model.input_dim="
                           f"{model_config.input_dim} model.vocab_size={model_config.vocab_size}")
    if not valid:
        raise DataError(f"{valid_manifest}: no validation utterance left (see {exp_dir / 'log' / 'dropped.txt'})")
    return prepared, valid


def _train(config: ExperimentConfig, train_manifest, valid_manifest, exp_dir: Path, runtime: Runtime,
           init: InitFrom | None) -> TrainResult:
    started = time.monotonic()
    _LEFT_OUT.clear()  # a second run in this process names its left-out utterances again
    log.info("asr train: exp %s, device %s, amp %s, %d process(es)", exp_dir, runtime.device, runtime.amp,
             runtime.world_size)
    prepared, valid_records = _prepare(config, train_manifest, valid_manifest, exp_dir, runtime, init)
    seed_everything(config.train.seed)
    model = build_model(prepared.model_config)
    if init is not None:
        load_initial_weights(model, init)
    frontend = Frontend.for_training(config, prepared.cmvn).to(runtime.device)
    train_loader, valid_loader = build_loaders(config, prepared.tokenizer, prepared.kept, valid_records, runtime)
    model.to(runtime.device)
    model.rnn_dtype = recurrent_dtype(runtime.device, runtime.amp)
    optimizer = build_optimizer(model, config.optim)
    scaler = torch.amp.GradScaler("cuda") if runtime.amp == "fp16" else None
    sampler = train_loader.batch_sampler
    schedule = make_schedule(config.optim, config.train, len(sampler), runtime.world_size, config.data.max_duration)
    bad = BadUtterances(exp_dir / "log" / "bad_utterances.txt", runtime.rank, config.data.max_bad_utterances)
    checkpoints = RunCheckpoints(exp_dir / "checkpoints", config.train.keep_last, config, prepared.model_config,
                                 prepared.tokenizer, model, frontend, optimizer, scaler, sampler, schedule, runtime,
                                 bad)
    # Per-rank dropout streams (rank 0 keeps the single-process stream); the front-end seeds each batch.
    torch.manual_seed(config.train.seed + 1 + runtime.rank)
    state = TrainState()
    if (exp_dir / "checkpoints" / "last.pt").exists():
        checkpoints.restore(exp_dir / "checkpoints" / "last.pt", state)
    for loader in (train_loader, valid_loader):  # before the workers start: they never read these again
        loader.dataset.known_bad = frozenset(bad.ids)
    metrics = MetricsLog(exp_dir, runtime.is_main, state.step,
                         debug_rank=runtime.rank if config.train.debug_rank_files else None)
    wrapped: nn.Module = model
    if runtime.distributed:
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None)
    log.info("model: %s, %.2f M parameters; train %d utterances (%.2f h), %d batches per epoch per rank; "
             "valid %d utterances", prepared.model_config, count_parameters(model) / 1e6, len(prepared.kept),
             float(prepared.kept.durations.sum()) / 3600, len(sampler), len(valid_records))
    log.info(schedule.describe(runtime.world_size, config.data.max_duration))
    validator = Validator(model, frontend, valid_loader, _validation_decoder(prepared.tokenizer, model, config),
                          runtime, state, metrics, checkpoints)
    try:
        _fit(wrapped, frontend, optimizer, scaler, train_loader, state, schedule, config, runtime, metrics,
             validator, checkpoints)
    finally:
        metrics.close()
    return _finish(model, state, exp_dir, config, runtime, metrics, prepared, started)


def load_initial_weights(model: nn.Module, init: InitFrom) -> None:
    """The checkpoint's weights into `model` (all of them, or all but the output layer with
    init.reinit_head); ConfigError naming the checkpoint when its model is another shape."""
    state = init.payload["model"]
    if init.reinit_head:
        state = {key: value for key, value in state.items() if not key.startswith("head.")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ConfigError(f"{init.path} holds a different model than the config describes "
                          f"({str(err).splitlines()[-1].strip()}); use the config it was trained with") from None
    expected_missing = {"head.weight", "head.bias"} if init.reinit_head else set()
    if set(missing) != expected_missing or unexpected:
        raise ConfigError(f"{init.path} holds a different model than the config describes (missing "
                          f"{sorted(set(missing) - expected_missing)}, unexpected {sorted(unexpected)})")
    log.info("weights from %s%s", init.path, " (output layer re-initialised)" if init.reinit_head else "")


def _validation_decoder(tokenizer: Tokenizer, model: nn.Module, config: ExperimentConfig):
    """The greedy decoder `asr decode` uses by default, so best.pt is chosen by what RESULTS.md reports."""
    from asr.decode import DecodingOptions, build_decoder

    seconds_per_frame = config.features.frame_shift_ms / 1000 * model.subsample
    return build_decoder(DecodingOptions(), tokenizer, seconds_per_frame)


@dataclass
class Validator:
    """Validation on schedule: validate once per step at most, log it, keep best.pt. Every rank
    must call `run` at the same steps."""

    model: nn.Module  # the bare model
    frontend: Frontend
    loader: object  # validation batches of this rank
    decoder: object  # greedy, as `asr decode`
    runtime: Runtime
    state: TrainState
    metrics: MetricsLog
    checkpoints: RunCheckpoints

    def run(self) -> dict:
        if self.state.valid_now() is not None:
            return self.state.last_valid
        sync_buffers(self.model, self.runtime)
        metrics = validate(self.model, self.frontend, self.loader, self.decoder, self.runtime)
        if record_validation(self.state, metrics, self.metrics):
            self.checkpoints.save_best(self.state)
        return metrics


def _fit(model: nn.Module, frontend: Frontend, optimizer, scaler, loader, state: TrainState, schedule: Schedule,
         config: ExperimentConfig, runtime: Runtime, metrics: MetricsLog, validator: Validator,
         checkpoints: RunCheckpoints) -> None:
    """Epochs until train.epochs or train.max_steps, validating and checkpointing on schedule;
    Ctrl-C / SIGTERM saves last.pt after the current step and raises KeyboardInterrupt."""
    train_config = config.train
    stop_step = train_config.max_steps or math.inf
    with StopRequest() as stop:
        def after_step(end_of_epoch: bool) -> bool:
            if not end_of_epoch and train_config.valid_every and state.step % train_config.valid_every == 0:
                validator.run()
            if not end_of_epoch and train_config.checkpoint_every and state.step % train_config.checkpoint_every == 0:
                checkpoints.save(state)
            return state.step >= stop_step or stop.agreed(runtime)

        while state.epoch < train_config.epochs and state.step < stop_step:
            completed = train_one_epoch(model, frontend, optimizer, scaler, loader, checkpoints.bad, state, schedule,
                                        config, runtime, metrics, after_step)
            if completed:
                state.epoch += 1
                state.batches_done = 0
            if stop.requested:
                checkpoints.save(state)
                log.warning("stopped at step %d: rerun the same command to resume", state.step)
                raise KeyboardInterrupt
            finished = state.epoch >= train_config.epochs or state.step >= stop_step
            if (completed and not train_config.valid_every) or finished:
                validator.run()
            checkpoints.save(state)
    if state.last_valid is None:  # e.g. rerun of a finished experiment: report, do not train
        validator.run()


def _finish(model: nn.Module, state: TrainState, exp_dir: Path, config: ExperimentConfig, runtime: Runtime,
            metrics: MetricsLog, prepared, started: float) -> TrainResult:
    sync_buffers(model, runtime)
    if config.train.debug_rank_files:
        path = exp_dir / "log" / "debug" / f"rank{runtime.rank}.final.pt"
        save_checkpoint(path, {"model": {k: v.cpu() for k, v in model.state_dict().items()}, "step": state.step})
    if runtime.is_main:
        png = exp_dir / "training_curves.png"
        if plot_curves(metrics.path, png):
            log.info("wrote %s", png)
    seconds = time.monotonic() - started
    best = {"wer": state.best_wer, "cer": state.best_cer, "step": state.best_step}
    log.info("done: step %d, epoch %d, best WER %.2f%% (step %d), %.1f s", state.step, state.epoch,
             100 * state.best_wer, state.best_step, seconds)
    return TrainResult(step=state.step, epoch=state.epoch, valid=state.last_valid, best=best, exp_dir=exp_dir,
                       model=model, parameters=count_parameters(model), train_utterances=len(prepared.kept),
                       dropped=len(prepared.dropped), seconds=seconds)
