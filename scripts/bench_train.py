#!/usr/bin/env python
"""Training throughput: audio-seconds trained per wall-second, our pipeline against a plain loop.

(a) ours: duration-bucketed batches (`BucketingBatchSampler`, `data.max_duration` padded seconds
    per batch), features computed in batch on the device (`asr.frontend.Frontend`: narrow-band,
    fbank/MFCC, CMVN, SpecAugment), the configured model (conv front-end subsampling time, e.g. by
    4), CTC: each step is `asr.train.train_step`, the step `asr train` runs, with the front-end of
    the next batches in a thread beside it where `asr train` does that (`train.frontend_thread`).
(b) baseline: the plain loop of the same size: random batches of a fixed number of utterances,
    features computed per utterance with `torchaudio.compliance.kaldi` inside the Dataset (in the
    loader workers), no front-end (the RNN sees every 10 ms frame), same rnn_type, hidden, layers.
    The same global CMVN and SpecAugment modules are applied to its features on the device.

Both use the same utterances, seed, AdamW step with the configured LR schedule (warm-up, then
decay over the run's steps, as `asr train` does), CTC loss (`asr.train.ctc_loss` and
`optimizer_step`, the ones `train_step` calls), precision (train.amp on CUDA), loader
workers and device. The baseline's batch size defaults to the largest fixed size that keeps the
same bound on padded seconds for the longest utterance: floor(max_duration / longest) (what a
plain loop must choose to never run out of memory).

Two modes:

- throughput (default): --steps / --seconds timed optimizer steps per pipeline after --warmup
  untimed ones; identity CMVN (same cost as real statistics).

      .venv/bin/python scripts/bench_train.py --manifest data/manifests/train-clean-100.jsonl \
          --config conf/small.yaml --seconds 60 --device cuda

- training (--epochs N --valid M.jsonl): each pipeline trains N full epochs (global CMVN
  statistics of the training manifest, computed once, untimed), then is evaluated on M with
  greedy decoding (`GreedyDecoder`, `score.wer_cer`), the baseline on its own per-utterance
  features. Wall time covers the epochs only (loader start-up included, evaluation not).

      nice -n 19 .venv/bin/python scripts/bench_train.py --manifest train.jsonl --valid dev.jsonl \
          --config conf/demo.yaml --epochs 6 --threads 1

Figures on a shared CPU are approximate (other processes compete for the cores).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import math
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
import torchaudio
from torch import nn
from torch.nn.utils.rnn import pad_sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asr.audio import load_audio  # noqa: E402
from asr.augment import SpecAugment  # noqa: E402
from asr.data.dataset import make_loader, single_thread_worker  # noqa: E402
from asr.data.manifest import read_manifest  # noqa: E402
from asr.decode import DecodingOptions, build_decoder  # noqa: E402
from asr.errors import AsrError  # noqa: E402
from asr.experiment import load_experiment_config, select_utterances  # noqa: E402
from asr.features import WAVEFORM_SCALE, FeatureConfig, GlobalCMVN, compute_cmvn, num_frames  # noqa: E402
from asr.frontend import Frontend  # noqa: E402
from asr.model import build_model, count_parameters  # noqa: E402
from asr.runtime import Runtime, autocast_context, fitting_threads, frontend_ahead, seed_everything  # noqa: E402
from asr.score import wer_cer  # noqa: E402
from asr.text import Tokenizer  # noqa: E402
from asr.train import (  # noqa: E402
    Schedule,
    build_optimizer,
    ctc_loss,
    make_schedule,
    optimizer_step,
    train_step,
    training_batches,
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, help="JSONL manifest of training utterances")
    p.add_argument("--config", default=None, help="experiment YAML (conf/*.yaml); default: built-in defaults")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set model.hidden=128 (repeatable)")
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps per pipeline (default 20)")
    p.add_argument("--seconds", type=float, default=None, help="stop a pipeline after this many timed seconds")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--epochs", type=int, default=None,
                   help="training mode: train each pipeline this many epochs, then evaluate on --valid")
    p.add_argument("--valid", default=None, help="JSONL manifest to evaluate on (training mode)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: train.device of the config)")
    p.add_argument("--num-workers", type=int, default=None, help="loader workers for both (default: data.num_workers)")
    p.add_argument("--baseline-batch-size", type=int, default=None,
                   help="utterances per baseline batch (default: floor(max_duration / longest utterance))")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: as asr train: train.threads, else what fits the cores)")
    p.add_argument("--only", choices=["ours", "baseline"], default=None, help="run one pipeline only")
    args = p.parse_args(argv)
    if (args.epochs is None) != (args.valid is None):
        p.error("--epochs and --valid go together")
    if args.epochs is not None and args.epochs < 1:
        p.error("--epochs must be >= 1")
    return args


# --- the baseline: per-utterance Kaldi features in the Dataset ---------------------------------
class PerUtteranceFeatures(torch.utils.data.Dataset):
    """dataset[i] -> (features (frames, dim), tokens (n,), seconds, text), features by torchaudio.compliance.kaldi."""

    def __init__(self, records: list[dict], tokenizer: Tokenizer, config: FeatureConfig):
        self.records, self.config = records, config
        self.tokens = [torch.tensor(tokenizer.encode(r["text"]), dtype=torch.int64) for r in records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        c = self.config
        waveform = load_audio(self.records[index]["audio"], c.sample_rate)
        options = dict(sample_frequency=c.sample_rate, frame_length=c.frame_length_ms, frame_shift=c.frame_shift_ms,
                       dither=0.0, preemphasis_coefficient=c.preemphasis, low_freq=c.low_freq, high_freq=c.high_freq,
                       window_type=c.window_type, snip_edges=c.snip_edges, num_mel_bins=c.num_mel_bins)
        signal = waveform[None] * WAVEFORM_SCALE  # Kaldi works in the int16 range
        if c.kind == "mfcc":
            features = torchaudio.compliance.kaldi.mfcc(signal, num_ceps=c.num_ceps, use_energy=c.use_energy, **options)
        else:
            features = torchaudio.compliance.kaldi.fbank(signal, use_energy=c.use_energy, **options)
        record = self.records[index]
        return features, self.tokens[index], waveform.numel() / c.sample_rate, record["text"]


def collate_features(items):
    """-> features (B, frames, dim), frame_lengths (B,), targets (B, n), target_lengths (B,), seconds, texts."""
    features, tokens, seconds, texts = zip(*items)
    return (pad_sequence(features, batch_first=True), torch.tensor([f.shape[0] for f in features]),
            pad_sequence(tokens, batch_first=True), torch.tensor([t.numel() for t in tokens]), sum(seconds),
            list(texts))


# --- the two pipelines -------------------------------------------------------------------------
class Stepper:
    """`asr train`'s optimizer and LR schedule around its own step functions, for both pipelines."""

    def __init__(self, model: nn.Module, config, runtime: Runtime, schedule: Schedule):
        self.model, self.runtime, self.grad_clip, self.steps = model, runtime, config.optim.grad_clip, 0
        self.optimizer = build_optimizer(model, config.optim)
        self.scaler = torch.amp.GradScaler("cuda") if runtime.amp == "fp16" else None
        self.schedule = schedule

    def on_batch(self, frontend: Frontend, batch, features) -> dict:
        """Ours: `asr.train.train_step` on a waveform batch and its features (`training_batches`)."""
        self.steps += 1
        return train_step(self.model, frontend, self.optimizer, self.scaler, batch, self.schedule.lr(self.steps),
                          self.grad_clip, self.runtime, features)

    def on_features(self, features, frame_lengths, targets, target_lengths) -> dict:
        """The baseline: its own features, then the same loss and optimizer step."""
        self.steps += 1
        with autocast_context(self.runtime.device, self.runtime.amp):
            log_probs, out_lengths = self.model(features, frame_lengths)
        loss, _ = ctc_loss(log_probs.float(), out_lengths, targets, target_lengths, [""] * len(targets))
        return optimizer_step(self.model, self.optimizer, self.scaler, loss, self.schedule.lr(self.steps),
                              self.grad_clip)


@dataclasses.dataclass
class Pipeline:
    """A model with its data path: what the throughput and the training modes drive."""

    name: str
    model: nn.Module
    batches_per_epoch: int
    epoch_batches: Callable[[int], Iterable]  # epoch -> that epoch's training batches
    step: Callable  # batch -> one optimizer step -> (utts, audio seconds, padded RNN frames, valid RNN frames)
    eval_batches: Callable[[list[dict]], Iterable]  # records -> (features, frame_lengths, texts) on the device
    seconds_per_frame: float  # of the model's output (for the greedy decoder's word-pause rule)


def _schedule(config, epochs: int, batches_per_epoch: int) -> Schedule:
    """The schedule `asr train` makes for a one-process run of `epochs` epochs."""
    train = dataclasses.replace(config.train, epochs=epochs, max_steps=0)
    return make_schedule(config.optim, train, batches_per_epoch, 1, config.data.max_duration)


def _runtime(config, device: torch.device) -> Runtime:
    return Runtime(device=device, amp=config.train.amp if device.type == "cuda" else "none")


def build_ours(config, records, tokenizer, device, num_workers, cmvn: GlobalCMVN, epochs: int) -> Pipeline:
    seed_everything(config.train.seed)
    model = build_model(config.model_config(tokenizer.vocab_size)).to(device).train()
    frontend = Frontend.for_training(config, cmvn).to(device).train()
    loader = make_loader(records, tokenizer, config.data.max_duration, shuffle=True, seed=config.train.seed,
                         num_workers=num_workers, num_buckets=config.data.num_buckets,
                         sample_rate=config.features.sample_rate)
    stepper = Stepper(model, config, _runtime(config, device), _schedule(config, epochs, len(loader.batch_sampler)))

    ahead = frontend_ahead(device, config.train.frontend_thread)

    def epoch_batches(epoch):
        loader.batch_sampler.set_epoch(epoch)
        return training_batches(((batch, []) for batch in loader), frontend, stepper.runtime, config.train.seed,
                                epoch, 0, ahead)

    def step(item):
        batch, _, features = item
        stepper.on_batch(frontend, batch, features)
        rnn_lengths = model.output_lengths(num_frames(batch.wave_lengths.cpu(), config.features))
        return (len(batch), float(batch.wave_lengths.sum()) / config.features.sample_rate,
                int(rnn_lengths.max()) * len(batch), int(rnn_lengths.sum()))

    def eval_batches(eval_records):
        frontend.eval()
        for batch in make_loader(eval_records, tokenizer, config.data.max_duration, shuffle=False, seed=0,
                                 num_workers=0, sample_rate=config.features.sample_rate):
            batch = batch.to(device)
            features, frame_lengths = frontend(batch.waveforms, batch.wave_lengths)
            yield features, frame_lengths, batch.texts
        frontend.train()

    return Pipeline("ours", model, len(loader.batch_sampler), epoch_batches, step, eval_batches,
                    config.features.frame_shift_ms / 1000 * model.subsample)


def build_baseline(config, records, tokenizer, device, num_workers, cmvn: GlobalCMVN, epochs: int,
                   batch_size: int) -> Pipeline:
    seed_everything(config.train.seed)
    model_config = dataclasses.replace(config.model_config(tokenizer.vocab_size), frontend="none", subsample=1)
    model = build_model(model_config).to(device).train()
    specaug = SpecAugment(config.specaug).to(device).train()
    batches_per_epoch = math.ceil(len(records) / batch_size)
    stepper = Stepper(model, config, _runtime(config, device), _schedule(config, epochs, batches_per_epoch))

    def loader(dataset, shuffle, generator=None):
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                                           collate_fn=collate_features, num_workers=num_workers,
                                           worker_init_fn=single_thread_worker, pin_memory=device.type == "cuda")

    dataset = PerUtteranceFeatures(records, tokenizer, config.features)

    def epoch_batches(epoch):
        return loader(dataset, True, torch.Generator().manual_seed(config.train.seed + epoch))

    def step(batch):
        features, frame_lengths, targets, target_lengths, seconds, _ = batch
        features, frame_lengths = features.to(device, non_blocking=True), frame_lengths.to(device)
        with torch.no_grad():
            features = specaug(cmvn(features, frame_lengths), frame_lengths)
        stepper.on_features(features, frame_lengths, targets.to(device), target_lengths.to(device))
        return len(targets), seconds, int(frame_lengths.max()) * len(targets), int(frame_lengths.sum())

    def eval_batches(eval_records):
        for features, frame_lengths, _, _, _, texts in loader(PerUtteranceFeatures(eval_records, tokenizer,
                                                                                   config.features), False):
            features, frame_lengths = features.to(device), frame_lengths.to(device)
            yield cmvn(features, frame_lengths), frame_lengths, texts

    return Pipeline(f"baseline (batch {batch_size})", model, batches_per_epoch, epoch_batches, step, eval_batches,
                    config.features.frame_shift_ms / 1000)


# --- timing and evaluation ---------------------------------------------------------------------
@dataclasses.dataclass
class Result:
    name: str
    params: int
    steps: int = 0
    utts: int = 0
    audio_s: float = 0.0
    wall_s: float = 0.0
    padded_frames: int = 0  # frames the RNN ran over, padding included (input frames x batch rows)
    valid_frames: int = 0
    wer: float = float("nan")  # greedy, on --valid (training mode)
    cer: float = float("nan")
    peak_mb: float = float("nan")  # torch.cuda.max_memory_allocated while building and running it (CUDA only)

    @property
    def rate(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s > 0 else float("nan")

    def add(self, utts: int, seconds: float, padded: int, valid: int) -> None:
        self.steps += 1
        self.utts += utts
        self.audio_s += seconds
        self.padded_frames += padded
        self.valid_frames += valid


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _all_batches(pipeline: Pipeline) -> Iterator:
    """The pipeline's batches, epoch after epoch; closing it closes the current epoch's batches
    where they can be closed (`training_batches`: its front-end thread stops)."""
    for epoch in itertools.count():
        batches = iter(pipeline.epoch_batches(epoch))
        try:
            yield from batches
        finally:
            if hasattr(batches, "close"):
                batches.close()


def time_steps(pipeline: Pipeline, device: torch.device, args) -> Result:
    """Throughput mode: time --steps (or --seconds of) steps after --warmup untimed ones."""
    result = Result(pipeline.name, count_parameters(pipeline.model))
    start = None
    with contextlib.closing(_all_batches(pipeline)) as batches:
        for index, batch in enumerate(batches):
            if index == args.warmup:
                _sync(device)
                start = time.perf_counter()
            counts = pipeline.step(batch)
            if start is None:
                continue
            result.add(*counts)
            if result.steps >= args.steps or (args.seconds is not None
                                              and time.perf_counter() - start >= args.seconds):
                break
    _sync(device)
    if start is not None:
        result.wall_s = time.perf_counter() - start
    return result


def train_epochs(pipeline: Pipeline, device: torch.device, epochs: int) -> Result:
    """Training mode: `epochs` full passes, all timed (each epoch's loader start-up included)."""
    result = Result(pipeline.name, count_parameters(pipeline.model))
    _sync(device)
    start = time.perf_counter()
    for epoch in range(epochs):
        for batch in pipeline.epoch_batches(epoch):
            result.add(*pipeline.step(batch))
        _sync(device)
        print(f"  {pipeline.name}: epoch {epoch + 1}/{epochs} done, {time.perf_counter() - start:.0f} s",
              flush=True)
    result.wall_s = time.perf_counter() - start
    return result


@torch.no_grad()
def evaluate(pipeline: Pipeline, records: list[dict], tokenizer: Tokenizer) -> tuple[float, float]:
    """Greedy WER and CER (fractions) of the pipeline's model on `records`, in eval mode."""
    decoder = build_decoder(DecodingOptions(), tokenizer, pipeline.seconds_per_frame)
    refs, hyps = [], []
    pipeline.model.eval()
    for features, frame_lengths, texts in pipeline.eval_batches(records):
        log_probs, out_lengths = pipeline.model(features, frame_lengths)
        refs.extend(texts)
        hyps.extend(h.text for h in decoder.decode(log_probs, out_lengths))
    pipeline.model.train()
    return wer_cer(refs, hyps)


def print_table(results: list[Result], training: bool) -> None:
    errors = f"{'WER':>8}{'CER':>8}" if training else ""
    cuda = any(math.isfinite(r.peak_mb) for r in results)
    peak = f"{'peak MB':>9}" if cuda else ""
    print(f"\n{'pipeline':<22}{'params':>10}{'steps':>7}{'utts':>7}{'audio s':>10}{'wall s':>9}"
          f"{'padding':>9}{'audio s/s':>11}{peak}{errors}")
    for r in results:
        padding = 1 - r.valid_frames / r.padded_frames if r.padded_frames else float("nan")
        errors = f"{r.wer:>8.1%}{r.cer:>8.1%}" if training else ""
        peak = f"{r.peak_mb:>9.0f}" if cuda else ""
        print(f"{r.name:<22}{r.params:>10,}{r.steps:>7}{r.utts:>7}{r.audio_s:>10.1f}{r.wall_s:>9.1f}"
              f"{padding:>9.1%}{r.rate:>11.1f}{peak}{errors}")
    if len(results) == 2 and results[1].rate > 0:
        ours, baseline = results
        print(f"\nspeed-up: {ours.rate / baseline.rate:.2f}x audio-seconds per second "
              f"(approximate: one run, shared machine; padding = RNN frames spent on padding)")
        if training:
            print(f"WER: ours - baseline = {100 * (ours.wer - baseline.wer):+.1f} points "
                  f"(CER {100 * (ours.cer - baseline.cer):+.1f}); greedy, no LM")


def main(argv=None) -> int:
    args = parse_args(argv)
    config_for_threads = load_experiment_config(args.config, args.overrides)
    workers = config_for_threads.data.num_workers if args.num_workers is None else args.num_workers
    # as `asr train` sets them: train.threads, or when 0 what fits the cores beside the loader workers
    torch.set_num_threads(args.threads or config_for_threads.train.threads or fitting_threads(workers))
    config = load_experiment_config(args.config, args.overrides)
    device_name = args.device or config.train.device
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    num_workers = config.data.num_workers if args.num_workers is None else args.num_workers
    training = args.epochs is not None
    epochs = args.epochs or config.train.epochs

    records = read_manifest(args.manifest)
    tokenizer = Tokenizer.build(r["text"] for r in records)
    probe = config.model_config(tokenizer.vocab_size)
    records, dropped = select_utterances(records, tokenizer, probe, config.features,
                                         config.data.min_utt_duration, config.data.max_utt_duration)
    if not records:
        print(f"no usable utterances in {args.manifest} ({len(dropped)} left out by the length filters)")
        return 1
    valid_records = []
    if training:  # as `asr train`: no duration bounds, only what our (subsampled) model can align
        valid_records, _ = select_utterances(read_manifest(args.valid), tokenizer, probe, config.features)
        if not valid_records:
            print(f"no usable utterances in {args.valid}")
            return 1
    longest = max(float(r["duration"]) for r in records)
    batch_size = args.baseline_batch_size or max(1, math.floor(config.data.max_duration / longest))
    m = config.model
    print(f"{len(records)} utterances ({sum(float(r['duration']) for r in records) / 3600:.2f} h, longest "
          f"{longest:.1f} s, {len(dropped)} left out) | device {device}, amp "
          f"{config.train.amp if device.type == 'cuda' else 'none'}, {torch.get_num_threads()} threads, "
          f"{num_workers} loader workers")
    print(f"model: {m.layers} x {m.hidden} {'bi' if m.bidirectional else ''}{m.rnn_type}, {config.features.kind} "
          f"{config.features.dim}; ours: {m.frontend} front-end, subsample {m.subsample}, max_duration "
          f"{config.data.max_duration:g} s; baseline: no front-end, {batch_size} utterances per batch")

    dim = config.features.dim
    if training:
        print(f"training mode: {epochs} epochs each, then greedy WER on {len(valid_records)} utterances of "
              f"{args.valid}; global CMVN of the training features (untimed)", flush=True)
        cmvn = compute_cmvn(records, config.features, num_workers=num_workers).to(device)
    else:
        cmvn = GlobalCMVN(torch.zeros(dim), torch.ones(dim)).to(device)  # identity; same cost as real stats

    builders = []
    if args.only != "baseline":
        builders.append(lambda: build_ours(config, records, tokenizer, device, num_workers, cmvn, epochs))
    if args.only != "ours":
        builders.append(lambda: build_baseline(config, records, tokenizer, device, num_workers, cmvn, epochs,
                                               batch_size))
    results = []
    for build in builders:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        pipeline = build()
        if training:
            result = train_epochs(pipeline, device, epochs)
            result.wer, result.cer = evaluate(pipeline, valid_records, tokenizer)
            print(f"  {pipeline.name}: greedy WER {result.wer:.1%}, CER {result.cer:.1%}", flush=True)
        else:
            result = time_steps(pipeline, device, args)
        if device.type == "cuda":
            result.peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
        del pipeline  # the next pipeline's peak is its own
        results.append(result)
    print_table(results, training)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AsrError as error:
        print(f"bench_train: {error}", file=sys.stderr)
        sys.exit(1)
