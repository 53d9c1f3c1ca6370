"""The experiment: its config schema, and the one preparation path that `asr stats` and
`asr train` share.

    config (YAML -> ExperimentConfig) + training manifest
        -> duration filter (data.min_utt_duration .. data.max_utt_duration)
        -> exp/tokens.txt (characters of the kept texts; built once, then reused)
        -> CTC feasibility (tokens + repeats must fit the model's output frames)
        -> exp/cmvn.pt (global CMVN of the kept utterances' features, with a fingerprint of the
           utterances and the feature config; recomputed when they change and nothing was trained
           on the old statistics, refused otherwise)

Both verbs call `prepare_experiment`, so the same manifest and config give byte-identical
`tokens.txt` and `cmvn.pt` whichever runs first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Sequence

import numpy as np
import torch

from asr.augment import (
    GainConfig,
    NarrowbandConfig,
    NoiseConfig,
    ReverbConfig,
    SpecAugmentConfig,
    SpeedConfig,
    VtlpConfig,
)
from asr.config import load_config
from asr.errors import ConfigError, DataError
from asr.features import FeatureConfig, GlobalCMVN, compute_cmvn, num_frames
from asr.fileio import atomic_torch_save
from asr.model import ModelConfig, build_model
from asr.text import Tokenizer

if TYPE_CHECKING:
    from asr.data.dataset import Records

log = logging.getLogger("asr.experiment")

AMP_MODES = ("bf16", "fp16", "none")
FRONTEND_THREAD = ("auto", "always", "never")  # train.frontend_thread
DECAYS = ("cosine", "noam", "exponential", "constant")
LR_SCALINGS = ("none", "linear", "sqrt")
# Tokens a normalised English transcript is made of; anything else in tokens.txt is worth a warning.
EXPECTED_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ'")


# --- the experiment config -------------------------------------------------------------------
@dataclass(frozen=True)
class DataConfig:
    """Batching and length filters."""

    max_duration: float = 200.0  # padded seconds of audio per batch: batch size x longest utterance
    min_utt_duration: float = 0.5  # s, shorter training utterances are left out
    max_utt_duration: float = 20.0  # s, longer training utterances are left out (memory)
    num_workers: int = 2  # DataLoader processes decoding audio; 0 = in the main process
    num_buckets: int = 10  # equal-count duration buckets the sampler shuffles within
    # utterances whose audio fails to load are skipped and listed in log/bad_utterances.txt; past
    # this many training stops (a corpus that broken needs fixing, not training)
    max_bad_utterances: int = 100

    def __post_init__(self) -> None:
        _check(self.max_duration > 0, "data.max_duration", self.max_duration, "> 0 seconds")
        _check(self.min_utt_duration <= self.max_utt_duration, "data.min_utt_duration", self.min_utt_duration,
               f"<= data.max_utt_duration ({self.max_utt_duration})")
        _check(self.num_workers >= 0, "data.num_workers", self.num_workers, ">= 0")
        _check(self.num_buckets >= 1, "data.num_buckets", self.num_buckets, ">= 1")
        _check(self.max_bad_utterances >= 0, "data.max_bad_utterances", self.max_bad_utterances, ">= 0")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW, linear warm-up, then decay."""

    lr: float = 1e-3  # peak learning rate, reached at the end of warm-up
    betas: tuple[float, float] = (0.9, 0.98)  # Adam moment decay rates
    eps: float = 1e-8  # Adam denominator floor
    weight_decay: float = 1e-2  # decoupled weight decay on weight matrices (not on biases or norms)
    warmup_steps: int = 500  # linear warm-up from 0 to lr over these steps (unless warmup_fraction)
    # > 0: the warm-up is this fraction of the run's steps instead, so it keeps its share of the run
    # whatever the number of processes (the steps per epoch shrink with more GPUs)
    warmup_fraction: float = 0.0
    # peak LR against the effective batch (processes x data.max_duration padded seconds per step):
    # "none" (lr as given), "linear" or "sqrt" in effective batch / reference_batch_s
    lr_scaling: str = "none"
    reference_batch_s: float = 0.0  # the effective batch `lr` was chosen for; 0 = data.max_duration (one process)
    # after warm-up: "cosine" or "exponential" (to final_lr at decay_steps), "noam" (lr*sqrt(warmup/step)), "constant"
    decay: str = "cosine"
    final_lr: float = 1e-5  # learning rate at the end of a cosine or exponential decay
    # length of the schedule in steps; 0 = the run's length (max_steps, else epochs x batches per epoch)
    decay_steps: int = 0
    grad_clip: float = 5.0  # clip the global gradient norm to this; 0 = no clipping

    def __post_init__(self) -> None:
        _check(self.lr > 0, "optim.lr", self.lr, "> 0")
        _check(self.decay in DECAYS, "optim.decay", self.decay, f"one of {DECAYS}")
        _check(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, ">= 0")
        _check(0.0 <= self.warmup_fraction < 1.0, "optim.warmup_fraction", self.warmup_fraction, "in [0, 1)")
        _check(self.lr_scaling in LR_SCALINGS, "optim.lr_scaling", self.lr_scaling, f"one of {LR_SCALINGS}")
        _check(self.reference_batch_s >= 0, "optim.reference_batch_s", self.reference_batch_s, ">= 0 seconds")
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
    checkpoint_every: int = 1000  # steps between step-N.pt checkpoints (and one at each epoch end); 0 = epoch ends
    keep_last: int = 5  # step-N.pt checkpoints kept, older ones deleted; 0 = keep all
    valid_every: int = 0  # steps between validations; 0 = at each epoch end
    amp: str = "bf16"  # mixed precision on CUDA: "bf16", "fp16" (with a GradScaler) or "none"; ignored on CPU
    device: str = "auto"  # "auto" (CUDA if available), "cpu", "cuda" or "cuda:N"
    # CPU intra-op threads of each training process; 0 = what fits the machine: the cores this process
    # may use, shared by the processes of this node, less one per loader worker (asr.runtime.fitting_threads)
    threads: int = 0
    # The front-end (augmentation, features) of the next batches in a thread beside the model's step:
    # "auto" = on the CPU when the process trains on one thread and has a second core (asr.runtime.frontend_ahead),
    # "always", "never". The draws are the same either way (one generator per batch).
    frontend_thread: str = "auto"
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
        _check(self.frontend_thread in FRONTEND_THREAD, "train.frontend_thread", self.frontend_thread,
               f"one of {FRONTEND_THREAD}")


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
    speed: SpeedConfig = field(default_factory=SpeedConfig)  # speed perturbation in training (prob 0 = off)
    reverb: ReverbConfig = field(default_factory=ReverbConfig)  # simulated rooms in training
    noise: NoiseConfig = field(default_factory=NoiseConfig)  # additive noise and babble in training
    gain: GainConfig = field(default_factory=GainConfig)  # level changes in training
    vtlp: VtlpConfig = field(default_factory=VtlpConfig)  # vocal tract length perturbation in training
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


# --- CTC feasibility -------------------------------------------------------------------------



def select_utterances(records: Sequence[dict] | Records, tokenizer: Tokenizer, model_config: ModelConfig,
                      feature_config: FeatureConfig, min_duration: float | None = None,
                      max_duration: float | None = None) -> tuple[Records, list[tuple[str, str]]]:
    """Keep the utterances that are within the duration bounds and that CTC can align.

    An utterance is infeasible when its tokens (plus one blank per adjacent repeat) outnumber the
    model's output frames for its duration, `output_lengths(num_frames(samples))`: its loss would
    be infinite. Returns (kept, as `Records` whose texts are encoded with `tokenizer` (the dataset
    reuses the ids), dropped as [(id, reason)]).
    """
    from asr.data.dataset import filter_records

    kept, dropped = filter_records(records, min_duration, max_duration)
    if not kept:
        return kept, dropped
    with torch.device("meta"):  # only its output_lengths arithmetic is used: no weights, no RNG draws
        model = build_model(model_config)
    samples = torch.from_numpy(np.round(kept.durations * feature_config.sample_rate).astype(np.int64))
    out_frames = model.output_lengths(torch.as_tensor(num_frames(samples, feature_config))).numpy()
    kept = kept.encode(tokenizer)
    needed = kept.ctc_labels()
    for index in np.flatnonzero(needed > out_frames).tolist():
        dropped.append((kept.id(index), f"{needed[index]} CTC labels (tokens + repeats) > {out_frames[index]} "
                                        f"output frames for {float(kept.durations[index]):.2f} s"))
    return kept.take(np.flatnonzero(needed <= out_frames)), dropped


# --- preparation: tokens, CMVN, the utterance selection --------------------------------------
@dataclass
class Prepared:
    """What `prepare_experiment` gives the caller."""

    tokenizer: Tokenizer  # from exp/tokens.txt
    model_config: ModelConfig  # the config's model section with input_dim and vocab_size filled in
    cmvn: GlobalCMVN  # from exp/cmvn.pt
    records: Records  # the manifest's utterances, in order
    kept: Records  # those that pass the duration filter and the CTC feasibility check (texts encoded)
    dropped: list[tuple[str, str]]  # (id, reason) of the others


def read_records(path: str | os.PathLike) -> Records:
    """A manifest's records, stored compactly (`asr.data.dataset.Records`); DataError naming the
    file when it has none."""
    from asr.data.dataset import Records

    records = Records.read(path)
    if not records:
        raise DataError(f"{path}: manifest has no utterances")
    return records


@dataclass(frozen=True)
class CmvnJob:
    """How CMVN statistics are computed when they must be."""

    device: str | torch.device = "cpu"  # where features are computed (jobs == 1)
    jobs: int = 1  # processes on the CPU (`asr stats --nj`)
    allowed: bool = True  # False under DDP: statistics are never computed behind a barrier
    preset: GlobalCMVN | None = None  # statistics to take instead of computing them (fine-tuning)


@dataclass(frozen=True)
class InitFrom:
    """Fine-tuning: a new experiment starts from a trained checkpoint's weights (`asr train --init-from`)."""

    path: Path  # the checkpoint file
    payload: dict  # its contents (asr.checkpoint.load_checkpoint)
    reinit_head: bool = False  # True: the output layer starts afresh on the new data's tokens

    @classmethod
    def load(cls, path: str | os.PathLike, config: ExperimentConfig, reinit_head: bool = False) -> "InitFrom":
        """Read the checkpoint (a .pt or an experiment folder) and check that its features are the config's."""
        from asr.checkpoint import load_checkpoint, resolve_checkpoint
        from asr.config import to_dict

        path = resolve_checkpoint(path)
        payload = load_checkpoint(path)
        ours, theirs = to_dict(config.features), dict(payload.get("feature_config", {}))
        differ = sorted(k for k in ours if k != "dither" and theirs.get(k, ours[k]) != ours[k])
        if differ:
            raise ConfigError(f"{path}: its features differ from the config's in {', '.join(differ)}; "
                              "fine-tune with the features it was trained on")
        return cls(path, payload, reinit_head)

    def tokenizer(self, exp_dir: Path, records: Sequence[dict], write: bool) -> Tokenizer:
        """The checkpoint's tokens as exp/tokens.txt; DataError when the new texts or an existing
        tokens.txt need others (that is what --reinit-head is for)."""
        tokens = list(self.payload["tokens"])
        path = exp_dir / "tokens.txt"
        if path.exists() and Tokenizer.load(path).to_list() != tokens:
            raise DataError(f"{path} and {self.path} have different tokens; use --reinit-head to train a new output "
                            f"layer for {path}, or a new --exp")
        missing = sorted(set(Tokenizer.build(r["text"] for r in records).tokens) - set(tokens))
        if missing:
            raise DataError(f"the training texts hold characters that {self.path}'s tokens lack ({' '.join(missing)}); "
                            "use --reinit-head to train a new output layer on this data's tokens")
        if write and not path.exists():
            Tokenizer(tokens).save(path)
        return Tokenizer.load(path)


def prepare_experiment(config: ExperimentConfig, records: Sequence[dict], exp_dir: Path, write: bool = True,
                       cmvn_job: CmvnJob = CmvnJob(), source: str = "training manifest",
                       init: InitFrom | None = None) -> Prepared:
    """tokens.txt, the utterance selection and cmvn.pt of an experiment, the same for `asr stats`
    and `asr train`, from the records of the training manifest `source`. `write` False (DDP ranks
    other than 0): read what rank 0 wrote, write nothing. DataError when no utterance is left, or
    when statistics are missing and `cmvn_job.allowed` is False. With `init` (fine-tuning) the
    CMVN statistics, and the tokens unless `init.reinit_head`, are the checkpoint's."""
    from asr.data.dataset import as_records, filter_records

    records = as_records(records)
    in_bounds, _ = filter_records(records, config.data.min_utt_duration, config.data.max_utt_duration)
    if init is not None and not init.reinit_head:
        tokenizer = init.tokenizer(exp_dir, in_bounds, write)
    else:
        tokenizer = prepare_tokens(exp_dir, in_bounds, write)
    model_config = config.model_config(tokenizer.vocab_size)
    kept, dropped = select_utterances(records, tokenizer, model_config, config.features,
                                      config.data.min_utt_duration, config.data.max_utt_duration)
    if not kept:
        raise DataError(f"{source}: no training utterance left after the length filters and the CTC feasibility "
                        f"check (first reasons: {'; '.join(f'{u}: {r}' for u, r in dropped[:3])})")
    if init is not None:
        cmvn_job = dataclasses.replace(cmvn_job, preset=GlobalCMVN.from_dict(init.payload["cmvn"]))
    cmvn = prepare_cmvn(exp_dir, kept, config.features, config.data.num_workers, write, cmvn_job)
    return Prepared(tokenizer, model_config, cmvn, records, kept, dropped)


def prepare_tokens(exp_dir: Path, records: Sequence[dict], write: bool = True) -> Tokenizer:
    """exp/tokens.txt: built from the texts of `records` on first use, read afterwards."""
    path = exp_dir / "tokens.txt"
    if write and not path.exists():
        tokenizer = Tokenizer.build(r["text"] for r in records)
        odd = [t for t in tokenizer.tokens[2:] if t not in EXPECTED_CHARACTERS]
        if odd:
            log.warning("%s: the training texts hold characters that normalised English transcripts do not "
                        "(%s): they become tokens; normalise the texts if that is not meant", path, " ".join(odd))
        tokenizer.save(path)
        log.info("wrote %s", path)
    tokenizer = Tokenizer.load(path)
    log.info("tokens: %d (blank included) from %s", tokenizer.vocab_size, path)
    return tokenizer


def cmvn_fingerprint(records: Sequence[dict], feature_config: FeatureConfig) -> str:
    """A digest of what CMVN statistics depend on: each utterance's id, audio and duration, and
    the feature options."""
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(feature_config), sort_keys=True).encode())
    for record in records:
        digest.update(f"{record['id']}\t{record['audio']}\t{float(record['duration']):.6f}\n".encode())
    return digest.hexdigest()[:16]


def prepare_cmvn(exp_dir: Path, records: Sequence[dict], feature_config: FeatureConfig, num_workers: int,
                 write: bool = True, job: CmvnJob = CmvnJob()) -> GlobalCMVN:
    """exp/cmvn.pt: global CMVN of the features of `records`, computed once and reused while its
    fingerprint (`cmvn_fingerprint`) matches; recomputed when it does not and no checkpoint was
    trained on it, refused when one was."""
    path = exp_dir / "cmvn.pt"
    fingerprint = cmvn_fingerprint(records, feature_config)
    if write and _stale_cmvn(path, fingerprint, exp_dir):
        if job.preset is not None:
            atomic_torch_save(job.preset.to_dict() | {"fingerprint": fingerprint}, path)
        elif not job.allowed:
            raise DataError(f"{path}: no CMVN statistics for this training set; a multi-process training does not "
                            "compute them (the other processes would wait behind a barrier): run `asr stats --config "
                            "CONFIG --train MANIFEST --exp EXP --nj N` first")
        else:
            _compute_cmvn_file(path, fingerprint, records, feature_config, num_workers, job)
    cmvn = GlobalCMVN.load(path)
    if cmvn.mean.numel() != feature_config.dim:
        raise ConfigError(f"{path} has {cmvn.mean.numel()} dimensions but the features have {feature_config.dim}; "
                          f"delete it (and tokens.txt, checkpoints) or use a new --exp")
    return cmvn


def _compute_cmvn_file(path: Path, fingerprint: str, records: Sequence[dict], feature_config: FeatureConfig,
                       num_workers: int, job: CmvnJob) -> None:
    started = time.monotonic()
    cmvn = compute_cmvn(list(records), feature_config, num_workers=num_workers, device=job.device, jobs=job.jobs)
    if not (torch.isfinite(cmvn.mean).all() and torch.isfinite(cmvn.std).all()):
        raise DataError(f"CMVN statistics of {len(records)} utterances are not finite: an audio file holds "
                        "NaN or infinite samples")
    atomic_torch_save(cmvn.to_dict() | {"fingerprint": fingerprint}, path)
    log.info("wrote %s (%d utterances, %.1f s)", path, len(records), time.monotonic() - started)


def _stale_cmvn(path: Path, fingerprint: str, exp_dir: Path) -> bool:
    """Whether cmvn.pt must be (re)computed. DataError when it is out of date but checkpoints
    of the experiment were trained on it."""
    if not path.exists():
        return True
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True).get("fingerprint")
    except Exception:  # unreadable: GlobalCMVN.load names the problem
        return False
    if stored is None or stored == fingerprint:  # files from before fingerprints are taken as they are
        return False
    if (exp_dir / "checkpoints" / "last.pt").exists():
        raise DataError(f"{path}: the training utterances or feature options changed since these statistics were "
                        "computed, and checkpoints were trained on them; use a new --exp (or restore the manifest)")
    log.warning("%s: the training utterances or feature options changed: recomputing CMVN", path)
    return True


def stats(config: ExperimentConfig, train_manifest: str | os.PathLike, exp_dir: str | os.PathLike,
          jobs: int = 1) -> dict:
    """`asr stats`: write exp/tokens.txt and exp/cmvn.pt from the training manifest (exactly what
    `asr train` does first; CMVN over `jobs` processes) and return a summary of the data."""
    exp_dir = Path(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    prepared = prepare_experiment(config, read_records(train_manifest), exp_dir, cmvn_job=CmvnJob(jobs=jobs),
                                  source=str(train_manifest))
    return {"utterances": len(prepared.records), "kept": len(prepared.kept), "dropped": len(prepared.dropped),
            "hours": float(prepared.kept.durations.sum()) / 3600, "vocab_size": prepared.tokenizer.vocab_size,
            "feature_dim": int(prepared.cmvn.mean.numel()), "tokens": str(exp_dir / "tokens.txt"),
            "cmvn": str(exp_dir / "cmvn.pt")}
