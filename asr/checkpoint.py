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
`asr.inference.InferenceModel` turns a checkpoint into a runnable model.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Sequence

import torch

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

    Raises DataError naming the file when it is missing, truncated or not a checkpoint, and when
    its pickle names anything but tensors and plain values (loading it could run code): such a
    file is refused, never loaded another way.
    """
    import warnings

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():  # e.g. torch's "Detected pickle protocol 4" on a foreign file
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:  # the file is there but cannot be read (permission, I/O error)
        raise DataError(f"{path}: cannot read checkpoint: {err.strerror or err}") from None
    except Exception as err:  # noqa: BLE001 - whatever the bytes make torch.load raise (IndexError, KeyError, ...)
        text = str(err)
        unsafe = re.search(r"GLOBAL (\S+)", text) if isinstance(err, pickle.UnpicklingError) else None
        if unsafe:
            raise DataError(f"{path}: not a safe asr checkpoint: its pickle imports {unsafe.group(1)}, which "
                            "could run code when loaded; refused (asr checkpoints hold only tensors and plain "
                            "values)") from None
        # torch's weights_only message opens with advice to retry unsafely: keep only the reason.
        detail = re.search(r"WeightsUnpickler error: \s*(.+)", text)
        first = detail.group(1).strip() if detail else (text.strip().splitlines() or [""])[0]
        if not detail:
            first = type(err).__name__ if not first or "weights_only" in first else f"{type(err).__name__}: {first}"
        raise DataError(f"{path}: not an asr checkpoint, the file cannot be read as one ({first})") from None
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


def model_payload(model: torch.nn.Module, model_config, feature_config, tokens: list[str], cmvn, step: int,
                  epoch: int, valid: dict | None) -> dict:
    """The checkpoint entries that inference needs (what best.pt and avg-K.pt hold), from the
    trained model, its configs (dataclasses), tokens and `GlobalCMVN`."""
    from asr.config import to_dict

    return {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_config": to_dict(model_config),
        "feature_config": to_dict(feature_config),
        "tokens": list(tokens),
        "cmvn": cmvn.to_dict(),
        "step": step,
        "epoch": epoch,
        "valid": valid,
    }


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
                raise DataError(f"{path}: '{key}' has shape {tuple(state[key].shape)}, "
                                f"{paths[-1]} has {tuple(total.shape)}")
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
