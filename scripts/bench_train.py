#!/usr/bin/env python
"""Training throughput: audio-seconds trained per wall-second, our pipeline against a plain loop.

(a) ours: duration-bucketed batches (`BucketingBatchSampler`, `data.max_duration` padded seconds
    per batch), features computed in batch on the device (`asr.checkpoint.featurize`: fbank/MFCC,
    CMVN, SpecAugment), the configured model (conv front-end subsampling time, e.g. by 4), CTC.
(b) baseline: the plain loop of the same size: random batches of a fixed number of utterances,
    features computed per utterance with `torchaudio.compliance.kaldi` inside the Dataset (in the
    loader workers), no front-end (the RNN sees every 10 ms frame), same rnn_type, hidden, layers.

Both use the same utterances, AdamW step, CTC loss, precision (train.amp on CUDA), loader workers
and device. The baseline's batch size defaults to the largest fixed size that keeps the same bound
on padded seconds for the longest utterance: floor(max_duration / longest) (what a plain loop must
choose to never run out of memory). The first --warmup steps of each are not timed.

    .venv/bin/python scripts/bench_train.py --manifest data/manifests/train-clean-100.jsonl \
        --config conf/small.yaml --seconds 60 --device cuda

Figures on a shared CPU are approximate (other processes compete for the cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import sys
import time
from pathlib import Path

import torch
import torchaudio
from torch import nn
from torch.nn.utils.rnn import pad_sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asr.audio import load_audio  # noqa: E402
from asr.checkpoint import autocast_context, featurize  # noqa: E402
from asr.data.dataset import make_loader  # noqa: E402
from asr.data.manifest import read_manifest  # noqa: E402
from asr.errors import AsrError  # noqa: E402
from asr.features import WAVEFORM_SCALE, FeatureConfig, GlobalCMVN, SpecAugment  # noqa: E402
from asr.model import BiRNNCTC, count_parameters  # noqa: E402
from asr.text import Tokenizer  # noqa: E402
from asr.train import build_optimizer, load_experiment_config, select_utterances  # noqa: E402


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
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: train.device of the config)")
    p.add_argument("--num-workers", type=int, default=None, help="loader workers for both (default: data.num_workers)")
    p.add_argument("--baseline-batch-size", type=int, default=None,
                   help="utterances per baseline batch (default: floor(max_duration / longest utterance))")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--only", choices=["ours", "baseline"], default=None, help="run one pipeline only")
    return p.parse_args(argv)


# --- the baseline: per-utterance Kaldi features in the Dataset ---------------------------------
class PerUtteranceFeatures(torch.utils.data.Dataset):
    """dataset[i] -> (features (frames, dim), tokens (n,), seconds), features by torchaudio.compliance.kaldi."""

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
        return features, self.tokens[index], waveform.numel() / c.sample_rate


def collate_features(items):
    features, tokens, seconds = zip(*items)
    return (pad_sequence(features, batch_first=True), torch.tensor([f.shape[0] for f in features]),
            pad_sequence(tokens, batch_first=True), torch.tensor([t.numel() for t in tokens]), sum(seconds))


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)


# --- timing ------------------------------------------------------------------------------------
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

    @property
    def rate(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s > 0 else float("nan")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_loop(result: Result, batches, step_fn, device: torch.device, args) -> Result:
    """Run `step_fn(batch) -> (utts, seconds, padded, valid)` over `batches`; time all but warm-up."""
    start = None
    for index, batch in enumerate(batches):
        if index == args.warmup:
            _sync(device)
            start = time.perf_counter()
        utts, seconds, padded, valid = step_fn(batch)
        if start is None:
            continue
        result.steps += 1
        result.utts += utts
        result.audio_s += seconds
        result.padded_frames += padded
        result.valid_frames += valid
        if result.steps >= args.steps or (args.seconds is not None and time.perf_counter() - start >= args.seconds):
            break
    _sync(device)
    if start is not None:
        result.wall_s = time.perf_counter() - start
    return result


def forever(make_iterable):
    """Batches over as many epochs as needed."""
    for epoch in itertools.count():
        yield from make_iterable(epoch)


class Stepper:
    """Loss, backward, clip, AdamW step: the same for both pipelines."""

    def __init__(self, model: nn.Module, config, device: torch.device):
        self.model, self.device, self.amp = model, device, config.train.amp if device.type == "cuda" else "none"
        self.grad_clip = config.optim.grad_clip
        self.optimizer = build_optimizer(model, config.optim)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == "fp16" else None
        self.ctc = nn.CTCLoss(blank=0, reduction="sum", zero_infinity=True)

    def __call__(self, features, frame_lengths, targets, target_lengths) -> None:
        with autocast_context(self.device, self.amp):
            log_probs, out_lengths = self.model(features, frame_lengths)
        loss = self.ctc(log_probs.float().transpose(0, 1), targets, out_lengths, target_lengths) / len(targets)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()


def bench_ours(config, records, tokenizer, device, num_workers, args) -> Result:
    torch.manual_seed(0)
    model = BiRNNCTC(config.model_config(tokenizer.vocab_size)).to(device).train()
    dim = config.features.dim
    cmvn = GlobalCMVN(torch.zeros(dim), torch.ones(dim)).to(device)  # identity; same cost as real stats
    specaug = SpecAugment(config.specaug).to(device).train()
    stepper = Stepper(model, config, device)
    loader = make_loader(records, tokenizer, config.data.max_duration, shuffle=True, seed=0, num_workers=num_workers,
                         num_buckets=config.data.num_buckets, sample_rate=config.features.sample_rate)

    def epoch_batches(epoch):
        loader.batch_sampler.set_epoch(epoch)
        return loader

    def step(batch):
        batch = batch.to(device, non_blocking=True)
        with torch.no_grad():
            features, frame_lengths = featurize(batch.waveforms, batch.wave_lengths, config.features, cmvn, specaug)
        stepper(features, frame_lengths, batch.targets, batch.target_lengths)
        rnn_lengths = model.output_lengths(frame_lengths)
        return (len(batch), float(batch.wave_lengths.sum()) / config.features.sample_rate,
                int(rnn_lengths.max()) * len(batch), int(rnn_lengths.sum()))

    result = Result("ours", count_parameters(model))
    return run_loop(result, forever(epoch_batches), step, device, args)


def bench_baseline(config, records, tokenizer, device, num_workers, batch_size, args) -> Result:
    torch.manual_seed(0)
    model_config = dataclasses.replace(config.model_config(tokenizer.vocab_size), frontend="none", subsample=1)
    model = BiRNNCTC(model_config).to(device).train()
    stepper = Stepper(model, config, device)
    dataset = PerUtteranceFeatures(records, tokenizer, config.features)

    def epoch_batches(epoch):
        generator = torch.Generator().manual_seed(epoch)
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator,
                                           collate_fn=collate_features, num_workers=num_workers,
                                           worker_init_fn=_worker_init, pin_memory=device.type == "cuda")

    def step(batch):
        features, frame_lengths, targets, target_lengths, seconds = batch
        features, frame_lengths = features.to(device, non_blocking=True), frame_lengths.to(device)
        stepper(features, frame_lengths, targets.to(device), target_lengths.to(device))
        return len(targets), seconds, int(frame_lengths.max()) * len(targets), int(frame_lengths.sum())

    result = Result(f"baseline (batch {batch_size})", count_parameters(model))
    return run_loop(result, forever(epoch_batches), step, device, args)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_experiment_config(args.config, args.overrides)
    device_name = args.device or config.train.device
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    num_workers = config.data.num_workers if args.num_workers is None else args.num_workers

    records = read_manifest(args.manifest)
    tokenizer = Tokenizer.build(r["text"] for r in records)
    probe = BiRNNCTC(config.model_config(tokenizer.vocab_size))
    records, dropped = select_utterances(records, tokenizer, probe, config.features,
                                         config.data.min_utt_duration, config.data.max_utt_duration)
    if not records:
        print(f"no usable utterances in {args.manifest} ({len(dropped)} left out by the length filters)")
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

    results = []
    if args.only != "baseline":
        results.append(bench_ours(config, records, tokenizer, device, num_workers, args))
    if args.only != "ours":
        results.append(bench_baseline(config, records, tokenizer, device, num_workers, batch_size, args))

    print(f"\n{'pipeline':<22}{'params':>10}{'steps':>7}{'utts':>7}{'audio s':>10}{'wall s':>9}"
          f"{'padding':>9}{'audio s/s':>11}")
    for r in results:
        padding = 1 - r.valid_frames / r.padded_frames if r.padded_frames else float("nan")
        print(f"{r.name:<22}{r.params:>10,}{r.steps:>7}{r.utts:>7}{r.audio_s:>10.1f}{r.wall_s:>9.1f}"
              f"{padding:>9.1%}{r.rate:>11.1f}")
    if len(results) == 2 and results[1].rate > 0:
        print(f"\nspeed-up: {results[0].rate / results[1].rate:.1f}x audio-seconds per second "
              f"(approximate: one run, shared machine; padding = RNN frames spent on padding)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AsrError as error:
        print(f"bench_train: {error}", file=sys.stderr)
        sys.exit(1)
