"""Padded batches: which frames of each row are real.

Every module that pads a batch (features, CMVN, augmentation, the model, the decoders) asks this
one function which positions hold data, so that "padding never changes a result" has one meaning.
"""

from __future__ import annotations

import torch
from torch import Tensor


def valid_mask(lengths: Tensor, frames: int) -> Tensor:
    """lengths (B,) valid frames per row -> (B, frames) bool, True on valid frames (on lengths' device)."""
    return torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None]
