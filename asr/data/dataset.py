"""Dataset over manifest records, length filters, padded batches and the training DataLoader.

The dataset returns raw waveforms and token ids; features are computed later, batched, on the
model's device (`asr.features`), never inside the dataset.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset

from asr.data.sampler import BucketingBatchSampler
from asr.text import Tokenizer

log = logging.getLogger(__name__)


def filter_records(
    records: Sequence[dict],
    min_duration: float | None = None,
    max_duration: float | None = None,
    max_chars_per_second: float | None = None,
) -> tuple[list[dict], list[tuple[str, str]]]:
    """The one place where utterances are dropped for their length.

    Args:
        records: manifest records (`duration` in seconds, `text`).
        min_duration, max_duration: keep `min_duration <= duration <= max_duration` seconds;
            None means no bound.
        max_chars_per_second: drop an utterance whose transcript has more characters per second
            than this (CTC needs at least one output frame per token); None: no check.

    Returns:
        (kept records in their order, dropped as [(id, reason)]).
    """
    kept, dropped = [], []
    for record in records:
        duration = float(record["duration"])
        if min_duration is not None and duration < min_duration:
            dropped.append((record["id"], f"duration {duration:.2f} s < min_duration {min_duration} s"))
        elif max_duration is not None and duration > max_duration:
            dropped.append((record["id"], f"duration {duration:.2f} s > max_duration {max_duration} s"))
        elif max_chars_per_second is not None and len(record["text"]) > max_chars_per_second * duration:
            rate = len(record["text"]) / duration if duration > 0 else float("inf")
            dropped.append(
                (record["id"], f"{rate:.1f} characters/s > max_chars_per_second {max_chars_per_second}")
            )
        else:
            kept.append(record)
    return kept, dropped


class AudioDataset(Dataset):
    """Utterances of a manifest: `dataset[i]` -> dict(id, waveform, tokens, text).

    `waveform` is (samples,) float32 mono at `sample_rate`; `tokens` is (num_tokens,) int64.
    Transcripts are encoded once here, in the main process, so that out-of-vocabulary
    characters are counted in one place: they are in `tokenizer.oov` and logged as a warning
    (`self.oov_report` keeps the line).
    """

    def __init__(self, records: Sequence[dict], tokenizer: Tokenizer, sample_rate: int = 16000):
        self.records = list(records)
        self.sample_rate = sample_rate
        before = sum(tokenizer.oov.values())
        encoded = [tokenizer.encode(r["text"]) for r in self.records]
        # One flat array plus offsets instead of a list of lists: small, and no copy-on-access
        # in forked DataLoader workers.
        lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
        self._offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self._tokens = np.fromiter((t for e in encoded for t in e), dtype=np.int64, count=int(lengths.sum()))
        self.oov_report = ""
        if sum(tokenizer.oov.values()) > before:
            self.oov_report = tokenizer.oov_report()
            log.warning("%s (skipped while encoding transcripts)", self.oov_report)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def durations(self) -> list[float]:
        """Duration in seconds of each utterance, in dataset order (for the sampler)."""
        return [float(r["duration"]) for r in self.records]

    def tokens(self, index: int) -> torch.Tensor:
        """(num_tokens,) int64 token ids of utterance `index`."""
        start, end = self._offsets[index], self._offsets[index + 1]
        return torch.from_numpy(self._tokens[start:end].copy())

    def __getitem__(self, index: int) -> dict:
        from asr.audio import load_audio  # imported here: workers and tests that skip audio stay light

        record = self.records[index]
        return {
            "id": record["id"],
            "waveform": load_audio(record["audio"], self.sample_rate),
            "tokens": self.tokens(index),
            "text": record["text"],
        }


@dataclass(frozen=True)
class Batch:
    """A padded batch of utterances.

    Fields:
        ids: utterance ids, length B.
        waveforms: (B, samples) float32, zero-padded after each utterance.
        wave_lengths: (B,) int64, valid samples per utterance.
        targets: (B, max_tokens) int64, token ids padded with 0 (the blank).
        target_lengths: (B,) int64, valid tokens per utterance.
        texts: reference transcripts, length B.
    """

    ids: list[str]
    waveforms: torch.Tensor
    wave_lengths: torch.Tensor
    targets: torch.Tensor
    target_lengths: torch.Tensor
    texts: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def _map_tensors(self, fn) -> "Batch":
        return Batch(
            **{
                f.name: fn(v) if isinstance(v := getattr(self, f.name), torch.Tensor) else v
                for f in fields(self)
            }
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """A copy with every tensor on `device` (non_blocking pays off from pinned memory)."""
        return self._map_tensors(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        """A copy with every tensor in pinned memory (called by DataLoader(pin_memory=True))."""
        return self._map_tensors(lambda t: t.pin_memory())


def collate(items: list[dict]) -> Batch:
    """Pad a list of `AudioDataset` items into a `Batch` (see its fields for shapes)."""
    waveforms = [item["waveform"] for item in items]
    tokens = [item["tokens"] for item in items]
    return Batch(
        ids=[item["id"] for item in items],
        waveforms=pad_sequence(waveforms, batch_first=True, padding_value=0.0),
        wave_lengths=torch.tensor([w.shape[0] for w in waveforms], dtype=torch.int64),
        targets=pad_sequence(tokens, batch_first=True, padding_value=0).to(torch.int64),
        target_lengths=torch.tensor([t.shape[0] for t in tokens], dtype=torch.int64),
        texts=[item["text"] for item in items],
    )


def single_thread_worker(_worker_id: int) -> None:
    """DataLoader `worker_init_fn`: a worker decodes audio; intra-op threads per worker would
    oversubscribe the CPUs (one thread measured fastest)."""
    torch.set_num_threads(1)


def build_loader(dataset: Dataset, batches, num_workers: int, pin_memory: bool | None = None, seed: int = 0,
                 collate_fn=collate, prefetch_factor: int = 2) -> DataLoader:
    """The one DataLoader builder: `batches` is a batch sampler or a list of index lists.

    Workers (persistent, one thread each) draw their base seed from a generator seeded with
    `seed`, not from the global RNG, so a resumed run consumes the global RNG exactly as an
    uninterrupted one. `pin_memory` None: whether CUDA is available.
    """
    extra = {}
    if num_workers > 0:
        extra = {"prefetch_factor": prefetch_factor, "persistent_workers": True, "worker_init_fn": single_thread_worker}
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    return DataLoader(dataset, batch_sampler=batches, collate_fn=collate_fn, num_workers=num_workers,
                      pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed), **extra)


def make_loader(
    records: Sequence[dict],
    tokenizer: Tokenizer,
    max_duration: float,
    shuffle: bool,
    seed: int,
    num_workers: int,
    rank: int = 0,
    world_size: int = 1,
    num_buckets: int = 10,
    drop_last: bool = False,
    sample_rate: int = 16000,
    pin_memory: bool | None = None,
    prefetch_factor: int = 2,
) -> DataLoader:
    """DataLoader of `Batch`es over `records`, batched by `BucketingBatchSampler`.

    `max_duration` is padded seconds per batch. `pin_memory` defaults to whether CUDA is
    available. The sampler is `loader.batch_sampler` (call its `set_epoch`, `state_dict`,
    `load_state_dict`). Apply `filter_records` before calling this.
    """
    dataset = AudioDataset(records, tokenizer, sample_rate=sample_rate)
    sampler = BucketingBatchSampler(dataset.durations, max_duration, num_buckets=num_buckets, shuffle=shuffle,
                                    seed=seed, rank=rank, world_size=world_size, drop_last=drop_last)
    return build_loader(dataset, sampler, num_workers, pin_memory=pin_memory, seed=seed,
                        prefetch_factor=prefetch_factor)
