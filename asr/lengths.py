"""Padded batches: which frames of each row are real, and how many frames CTC needs.

Every module that pads a batch (features, CMVN, augmentation, the model, the decoders) asks
`valid_mask` which positions hold data, so that "padding never changes a result" has one meaning;
the selection of training utterances and the loss ask `ctc_labels` whether a transcript fits.
"""

from __future__ import annotations

import torch
from torch import Tensor


def valid_mask(lengths: Tensor, frames: int) -> Tensor:
    """lengths (B,) valid frames per row -> (B, frames) bool, True on valid frames (on lengths' device)."""
    return torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None]


def ctc_labels(flat: Tensor, offsets: Tensor) -> Tensor:
    """Fewest output frames CTC needs per utterance: its tokens plus its adjacent repeats (each
    repeat needs a blank between its two copies).

    flat (N,): the token ids of every utterance laid end to end; offsets (B + 1,) int64: utterance
    b is flat[offsets[b]:offsets[b + 1]]. Returns (B,) int64.
    """
    repeats = torch.zeros(flat.numel() + 1, dtype=torch.int64, device=flat.device)
    if flat.numel() > 1:
        repeats[2:] = torch.cumsum(flat[1:] == flat[:-1], dim=0)  # repeats[k]: adjacent repeats within flat[:k]
    starts, ends = offsets[:-1], offsets[1:]
    # pairs (i - 1, i) inside an utterance have starts < i < ends
    return (ends - starts) + repeats[ends] - repeats[torch.minimum(starts + 1, ends)]


def ctc_min_frames(targets: Tensor, target_lengths: Tensor) -> Tensor:
    """`ctc_labels` of a padded batch: targets (B, S), target_lengths (B,) -> (B,)."""
    flat = targets[valid_mask(target_lengths, targets.size(1))]
    offsets = torch.nn.functional.pad(torch.cumsum(target_lengths.long(), dim=0), (1, 0))
    return ctc_labels(flat, offsets)
