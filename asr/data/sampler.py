"""Duration-bucketing batch sampler: batches bounded by padded seconds of audio, DDP-aware, resumable.

Memory in a padded batch grows with `batch_size * longest_utterance`, so a batch is limited by
that *padded cost* in seconds (`max_duration`), never by a count. Utterances are sorted by
duration and cut into `num_buckets` equal-count buckets so that a batch holds similar lengths
and padding stays small.

One epoch's plan, a pure function of (durations, max_duration, num_buckets, shuffle, seed, epoch):

1. sort utterances by duration (ties by index);
2. with `shuffle`: split into buckets, shuffle inside each bucket, pack each bucket greedily
   into batches, then shuffle the order of all batches. Without `shuffle`: pack the sorted list
   greedily, batches in ascending length (least padding; for validation);
3. an utterance longer than `max_duration` gets a batch of its own (it is not dropped here:
   length filters live in `asr.data.dataset.filter_records`);
4. sharding for DDP: with `drop_last=False` the batch list is padded by repeating batches from
   its start until it divides by `world_size` (a few utterances are seen twice per epoch);
   with `drop_last=True` the remainder is dropped (a few are not seen this epoch). Rank r then
   takes batches r, r + world_size, ... so every rank gets the same number of batches and,
   apart from the padding repeats, disjoint utterances.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

log = logging.getLogger(__name__)


def _batch_ends(durations: list[float], max_duration: float) -> list[int]:
    """End positions of the greedy batches of `durations` (seconds, in batch order): a batch grows
    while `len(batch) * max(duration in batch)` stays <= `max_duration`."""
    ends: list[int] = []
    count, longest = 0, 0.0
    for position, duration in enumerate(durations):
        new_longest = duration if duration > longest else longest
        if count and (count + 1) * new_longest > max_duration:
            ends.append(position)
            count, new_longest = 0, duration
        count += 1
        longest = new_longest
    if count:
        ends.append(len(durations))
    return ends


def pack_batches(order: Sequence[int], durations: np.ndarray, max_duration: float) -> list[list[int]]:
    """Greedily cut `order` into consecutive batches whose padded cost
    `len(batch) * max(duration in batch)` stays <= `max_duration` seconds.

    An utterance longer than `max_duration` on its own forms a one-utterance batch.
    """
    order = np.asarray(order, dtype=np.int64)
    ends = _batch_ends(np.asarray(durations, dtype=np.float64)[order].tolist(), max_duration)
    indices = order.tolist()
    return [indices[start:end] for start, end in zip([0, *ends[:-1]], ends)]


@dataclass(frozen=True)
class _Plan:
    """An epoch's batches, compactly (no Python list per batch): batch k holds the utterances
    `flat[bounds[k]:bounds[k + 1]]`; `sequence` is the order the batches are dealt out in."""

    flat: np.ndarray  # (utterances,) int64 dataset indices, batch after batch
    bounds: np.ndarray  # (batches + 1,) int64
    sequence: np.ndarray  # (batches,) int64 batch numbers in dealing order

    def batch(self, k: int) -> list[int]:
        return self.flat[self.bounds[k]:self.bounds[k + 1]].tolist()


class BucketingBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices, one list per batch, for this rank.

    Args:
        durations: duration in seconds of each utterance, indexed like the dataset.
        max_duration: bound on padded seconds per batch: `batch_size * longest <= max_duration`.
        num_buckets: number of equal-count duration buckets used when shuffling.
        shuffle: shuffle within buckets and the order of batches (training); off: sorted.
        seed: base seed; the plan of an epoch depends only on (seed, epoch).
        rank, world_size: this process's place in DDP.
        drop_last: drop the batches that do not divide by `world_size` instead of repeating
            batches to fill up the last round.

    Resuming: `state_dict()` records the epoch and the number of batches handed out this epoch;
    after `load_state_dict`, the next `__iter__` skips those batches. A DataLoader fetches
    indices ahead of the training loop (prefetch with workers), so a trainer that wants an exact
    resume should pass the number of batches it really trained on: `state_dict(batches_done=n)`.
    """

    def __init__(
        self,
        durations: Sequence[float],
        max_duration: float,
        num_buckets: int = 10,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ):
        if max_duration <= 0:
            raise ValueError(f"max_duration must be > 0 seconds, got {max_duration}")
        if num_buckets < 1:
            raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of size {world_size}")
        self.durations = np.asarray(durations, dtype=np.float64)
        self.max_duration = float(max_duration)
        self.num_buckets = int(num_buckets)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.batches_done = 0  # batches handed out by __iter__ this epoch
        self._skip = 0  # batches to skip at the start of the next __iter__ (resume)
        self._plan_cache: tuple[int, _Plan] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose plan the next `__iter__` follows. A resume position loaded by
        `load_state_dict` is kept when `epoch` is the loaded epoch, cleared otherwise."""
        if epoch != self.epoch:
            self._skip = 0
            self.batches_done = 0
        self.epoch = int(epoch)

    def _plan(self) -> _Plan:
        """This epoch's plan (cached), across ranks."""
        if self._plan_cache is not None and self._plan_cache[0] == self.epoch:
            return self._plan_cache[1]
        # Stable sort: equal durations keep index order, so the plan is reproducible.
        order = np.argsort(self.durations, kind="stable")
        pieces, ends = [], []
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            for bucket in np.array_split(order, min(self.num_buckets, max(len(order), 1))):
                pieces.append(rng.permutation(bucket))
                offset = ends[-1] if ends else 0
                ends.extend(offset + end for end in _batch_ends(self.durations[pieces[-1]].tolist(), self.max_duration))
            sequence = rng.permutation(len(ends))
        else:
            pieces.append(order)
            ends = _batch_ends(self.durations[order].tolist(), self.max_duration)
            sequence = np.arange(len(ends))
        flat = np.concatenate(pieces).astype(np.int64) if pieces else np.zeros(0, dtype=np.int64)
        plan = _Plan(flat, np.array([0, *ends], dtype=np.int64), np.asarray(sequence, dtype=np.int64))
        self._plan_cache = (self.epoch, plan)
        return plan

    def _rank_sequence(self) -> list[int]:
        """Batch numbers of this rank's batches, in order."""
        sequence = self._plan().sequence.tolist()
        ws = self.world_size
        if self.drop_last:
            total = len(sequence) // ws * ws
        else:
            total = math.ceil(len(sequence) / ws) * ws
        # Padding repeats batches from the start of the (shuffled) list.
        return [sequence[i % len(sequence)] for i in range(self.rank, total, ws)]

    def __len__(self) -> int:
        """Batches per rank in a whole epoch (the same on every rank), resume skip not subtracted."""
        return len(self._rank_sequence())

    def __iter__(self) -> Iterator[list[int]]:
        plan, sequence = self._plan(), self._rank_sequence()
        skip, self._skip = self._skip, 0
        self.batches_done = skip
        for k in sequence[skip:]:
            # Count before yielding: the count is the number of batches handed out.
            self.batches_done += 1
            yield plan.batch(k)

    def state_dict(self, batches_done: int | None = None) -> dict:
        """Resume position: {"epoch", "batches_done", "seed", "world_size"}.

        `batches_done` defaults to the batches handed out so far this epoch; pass the number
        the training loop actually consumed when a DataLoader prefetches ahead.
        """
        return {
            "epoch": self.epoch,
            "batches_done": self.batches_done if batches_done is None else int(batches_done),
            "seed": self.seed,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next `__iter__` follows epoch `state["epoch"]` and skips the batches done.

        A different `world_size` than at saving cannot resume exactly; the skip is rescaled so
        that roughly the same share of the epoch is skipped, and a warning is logged.
        """
        self.epoch = int(state["epoch"])
        done = int(state["batches_done"])
        saved_ws = int(state.get("world_size", self.world_size))
        if saved_ws != self.world_size:
            log.warning(
                "sampler state saved with world_size %d, resuming with %d: mid-epoch position is approximate",
                saved_ws,
                self.world_size,
            )
            done = done * saved_ws // self.world_size
        if "seed" in state and int(state["seed"]) != self.seed:
            log.warning("sampler state saved with seed %s, now %s: batch order differs", state["seed"], self.seed)
        self._skip = done
        self.batches_done = done
