"""Checkpoints: plain dicts that load with `torch.load(weights_only=True)`, and the inference model.

A checkpoint carries everything needed to transcribe:

    {"model": state_dict, "model_config": dict, "feature_config": dict, "tokens": list[str],
     "cmvn": {"mean": (dim,), "std": (dim,)}, "step": int, "epoch": int,
     "valid": {"loss", "cer", "wer"} | None}

and, in training checkpoints (`last.pt`, `step-N.pt`), also "optimizer", "scheduler", "sampler",
"rng" and "config" (the full resolved experiment config as a plain dict), "best" (lowest valid
WER so far), "skipped_steps", and "scaler" with fp16.
Only plain Python values and tensors are stored (RNG states as tensors and lists, never numpy
objects), so loading never runs pickled code.

Experiment layout: `exp/checkpoints/{step-N.pt, last.pt, best.pt, avg-K.pt}`.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import zipfile
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from asr.errors import DataError
from asr.fileio import atomic_torch_save

# Keys that only training needs; dropped from best.pt and avg-K.pt.
TRAINING_KEYS = ("optimizer", "scheduler", "sampler", "rng", "config", "scaler", "best", "skipped_steps")
_STEP_RE = re.compile(r"^step-(\d+)\.pt$")
_AVG_RE = re.compile(r"^avg-(\d+)\.pt$")


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """Write `payload` (plain values and tensors only) to `path` atomically."""
    atomic_torch_save(payload, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint onto the CPU with `weights_only=True`.

    Raises DataError naming the file when it is missing, truncated or not a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: not a readable checkpoint ({first})") from err
    if not isinstance(payload, dict) or "model" not in payload:
        raise DataError(f"{path}: not an asr checkpoint (no 'model' entry)")
    return payload


def step_checkpoints(checkpoint_dir: str | os.PathLike) -> list[Path]:
    """The `step-N.pt` files in `checkpoint_dir`, by ascending N."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in checkpoint_dir.iterdir() if (m := _STEP_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A `.pt` file as is; an experiment folder (or its `checkpoints/`) -> the newest `avg-*.pt`,
    else `best.pt`, else `last.pt`. DataError when nothing is found."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataError(f"{path}: no such checkpoint file or experiment folder")
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    averages = [p for p in folder.glob("avg-*.pt") if _AVG_RE.match(p.name)]
    if averages:
        return max(averages, key=lambda p: (p.stat().st_mtime, p.name))
    for name in ("best.pt", "last.pt"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{path}: no checkpoint found (looked for avg-*.pt, best.pt, last.pt in {folder})")


def inference_payload(payload: dict) -> dict:
    """`payload` without the training-only keys (what best.pt and avg-K.pt hold)."""
    return {k: v for k, v in payload.items() if k not in TRAINING_KEYS}


def average_checkpoints(paths: Sequence[str | os.PathLike]) -> dict:
    """Element-wise mean of the model weights of `paths` (accumulated in float64).

    Floating-point tensors are averaged; integer tensors (e.g. BatchNorm's
    `num_batches_tracked`) are taken from the last checkpoint, as is everything else (configs,
    tokens, CMVN, step). Returns an inference checkpoint (no training-only keys) with
    "averaged_from": [file names]. DataError if the checkpoints' models differ in shape.
    """
    if not paths:
        raise DataError("average_checkpoints: no checkpoints given")
    paths = [Path(p) for p in paths]
    last = load_checkpoint(paths[-1])
    sums = {k: v.to(torch.float64).clone() for k, v in last["model"].items() if v.is_floating_point()}
    for path in paths[:-1]:
        state = load_checkpoint(path)["model"]
        if state.keys() != last["model"].keys():
            raise DataError(f"{path}: model weights do not match {paths[-1]} (different keys)")
        for key, total in sums.items():
            if state[key].shape != total.shape:
                raise DataError(f"{path}: '{key}' has shape {tuple(state[key].shape)}, {paths[-1]} has {tuple(total.shape)}")
            total += state[key].to(torch.float64)
    averaged = {
        k: (sums[k] / len(paths)).to(v.dtype) if k in sums else v.clone() for k, v in last["model"].items()
    }
    out = inference_payload(last)
    out["model"] = averaged
    out["averaged_from"] = [p.name for p in paths]
    return out


def average_experiment(exp_dir: str | os.PathLike, last: int) -> tuple[Path, list[Path]]:
    """Average the last `last` `step-N.pt` checkpoints of `exp_dir` into `checkpoints/avg-K.pt`.

    Returns (written path, averaged paths). DataError when fewer than `last` exist (raise
    `train.keep_last`, or average fewer).
    """
    if last < 1:
        raise DataError(f"--last must be >= 1, got {last}")
    checkpoint_dir = Path(exp_dir) / "checkpoints"
    found = step_checkpoints(checkpoint_dir)
    if len(found) < last:
        raise DataError(
            f"{checkpoint_dir}: {len(found)} step-N.pt checkpoint(s) found, cannot average the last {last}"
            + (f" (have: {', '.join(p.name for p in found)})" if found else "")
        )
    chosen = found[-last:]
    out = checkpoint_dir / f"avg-{last}.pt"
    save_checkpoint(out, average_checkpoints(chosen))
    return out, chosen


def featurize(
    waveforms: Tensor,
    wave_lengths: Tensor,
    feature_config,
    cmvn: torch.nn.Module,
    specaug: torch.nn.Module | None = None,
    narrowband: torch.nn.Module | None = None,
) -> tuple[Tensor, Tensor]:
    """The model's input, computed in batch on the waveforms' device, in float32.

    waveforms (B, samples), wave_lengths (B,) -> features (B, frames, dim), frame_lengths (B,).
    Narrow-band augmentation (if given) -> features -> global CMVN -> SpecAugment (if given); both
    augmentations act only in training mode. Training and inference share this function so that
    they cannot drift apart.
    """
    from asr.features import compute_features

    waveforms = waveforms.float()
    if narrowband is not None:
        waveforms = narrowband(waveforms, wave_lengths)
    features, frame_lengths = compute_features(waveforms, wave_lengths, feature_config)
    features = cmvn(features, frame_lengths)
    if specaug is not None:
        features = specaug(features, frame_lengths)
    return features, frame_lengths


def autocast_context(device: torch.device, amp: str):
    """Autocast for `amp` ("bf16" | "fp16" | "none") on CUDA; a no-op on any other device."""
    if device.type != "cuda" or amp == "none":
        return nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast("cuda", dtype=dtype)


class InferenceModel:
    """A trained model ready to run: waveforms in, CTC log-probabilities out.

    Attributes: model (BiRNNCTC, eval mode), feature_config (FeatureConfig), tokenizer
    (Tokenizer), cmvn (GlobalCMVN), device, amp, seconds_per_frame (output frame duration),
    checkpoint (the loaded dict minus weights), path.
    """

    def __init__(self, payload: dict, device: str | torch.device | None = None, path: Path | None = None,
                 amp: str = "auto") -> None:
        from asr.config import from_dict
        from asr.features import FeatureConfig, GlobalCMVN
        from asr.model import BiRNNCTC, ModelConfig
        from asr.text import Tokenizer

        where = str(path) if path else "<checkpoint>"
        for key in ("model_config", "feature_config", "tokens", "cmvn"):
            if key not in payload:
                raise DataError(f"{where}: checkpoint has no '{key}' entry")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.path = path
        self.model_config = from_dict(ModelConfig, payload["model_config"], where=f"{where} model_config")
        # Dither is a training-time augmentation: inference is deterministic.
        self.feature_config = dataclasses.replace(
            from_dict(FeatureConfig, payload["feature_config"], where=f"{where} feature_config"), dither=0.0)
        self.tokenizer = Tokenizer.from_list(payload["tokens"])
        self.cmvn = GlobalCMVN.from_dict(payload["cmvn"]).to(self.device).eval()
        self.model = BiRNNCTC(self.model_config)
        try:
            self.model.load_state_dict(payload["model"])
        except RuntimeError as err:
            raise DataError(f"{where}: weights do not match the model config: {str(err).splitlines()[0]}") from err
        self.model.to(self.device).eval()
        if self.device.type == "cpu":
            # oneDNN's conv2d on the front-end's 1-channel input is ~15x slower at batch 1 with NCHW
            # weights than with channels_last ones (10 s of audio, demo model, one thread: 2.5 s vs
            # 0.16 s, torch 2.14), and ~1.4x slower on batches; results equal up to float rounding.
            self.model.to(memory_format=torch.channels_last)
        if amp == "auto":
            amp = "bf16" if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else (
                "fp16" if self.device.type == "cuda" else "none")
        self.amp = amp
        self.seconds_per_frame = self.feature_config.frame_shift_ms / 1000.0 * self.model.subsample
        self.checkpoint = {k: v for k, v in payload.items() if k != "model"}

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device | None = None,
                        amp: str = "auto") -> "InferenceModel":
        """Load a `.pt` file or an experiment folder (see `resolve_checkpoint`).

        device: None -> CUDA if available, else CPU. amp: "auto" (bf16 or fp16 on CUDA, none on
        CPU), "bf16", "fp16" or "none".
        """
        path = resolve_checkpoint(path)
        return cls(load_checkpoint(path), device=device, path=path, amp=amp)

    @property
    def sample_rate(self) -> int:
        """Sample rate in Hz the model expects."""
        return self.feature_config.sample_rate

    @torch.no_grad()
    def forward(self, waveforms: Tensor, wave_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """waveforms (B, samples) float at `sample_rate`, wave_lengths (B,) ->
        (log_probs (B, T, vocab) float32 on the CPU, out_lengths (B,) int64 on the CPU)."""
        waveforms = waveforms.to(self.device, non_blocking=True)
        wave_lengths = wave_lengths.to(self.device)
        features, frame_lengths = featurize(waveforms, wave_lengths, self.feature_config, self.cmvn)
        with autocast_context(self.device, self.amp):
            log_probs, out_lengths = self.model(features, frame_lengths)
        return log_probs.float().cpu(), out_lengths.cpu()

    __call__ = forward
