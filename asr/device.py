"""The device a verb runs on, from what a user typed (`--device`, `train.device`)."""

from __future__ import annotations

import re

import torch

from asr.errors import ConfigError

_NAME = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


def resolve_device(name: str | None) -> torch.device:
    """`None` or "auto" -> CUDA when available, else the CPU; "cpu", "cuda", "cuda:N" as named.

    Raises ConfigError (one line, naming the value) for any other name, for CUDA when this
    machine has none, and for a CUDA index past the last GPU. Checked before a model loads.
    """
    if name is None or name.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    match = _NAME.match(name.strip().lower())
    if match is None or (match.group(1) == "cpu" and match.group(2) is not None):
        raise ConfigError(f"device {name!r}: expected auto, cpu, cuda or cuda:N")
    if match.group(1) == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: CUDA is not available on this machine (use cpu)")
    index = int(match.group(2) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"device {name!r}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")
    return torch.device("cuda", index) if match.group(2) is not None else torch.device("cuda")
