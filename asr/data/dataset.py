"""Compact manifest records, the dataset over them, length filters, padded batches and the
training DataLoader.

Memory is bounded by the batch, not by the corpus: `Records` hold a manifest as a few numpy
arrays (strings as one UTF-8 byte array plus offsets, durations as float64, token ids as one
flat uint8/int16/int32 array plus offsets), never as a Python object per utterance. Forked
DataLoader workers read those arrays without writing to their pages, so they share them with the
main process instead of copying every record they touch (a list of dicts is copied page by page
as the workers' reference counting writes to it). Batches cross from the workers to the main
process as int16 samples, half the shared memory of float32; the front-end
(`asr.frontend.Frontend`) turns them into floats on the device.

The dataset returns raw waveforms and token ids; features are computed later, batched, on the
model's device (`asr.features`), never inside the dataset.
"""

from __future__ import annotations

import logging
import os
from array import array
from dataclasses import dataclass, fields
from itertools import accumulate
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset

from asr.data.sampler import BucketingBatchSampler
from asr.features import WAVEFORM_SCALE
from asr.text import BLANK, SPACE, Tokenizer

log = logging.getLogger(__name__)

_CHUNK_ROWS = 8192  # rows gathered at a time by the vectorised passes (bounds their scratch memory)


# --- compact records -------------------------------------------------------------------------
@dataclass(frozen=True)
class Ragged:
    """Rows of different lengths as one flat array plus offsets: row r is `flat[offsets[r]:offsets[r + 1]]`."""

    flat: np.ndarray  # (total,) the rows' elements, one after another
    offsets: np.ndarray  # (rows + 1,) int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, r: int) -> np.ndarray:
        """Row `r` (a view)."""
        return self.flat[self.offsets[r]:self.offsets[r + 1]]

    def lengths(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows),) int64 length of each row in `rows`."""
        return self.offsets[rows + 1] - self.offsets[rows]

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The elements of `rows` one after another, and their (len(rows) + 1,) offsets in it."""
        starts, lengths = self.offsets[rows], self.lengths(rows)
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        positions = np.arange(offsets[-1], dtype=np.int64) + np.repeat(starts - offsets[:-1], lengths)
        return self.flat[positions], offsets


class _StringsBuilder:
    """Appends strings to a growing UTF-8 buffer; `build()` gives the `Ragged` uint8 column."""

    def __init__(self) -> None:
        self.data, self.offsets = bytearray(), array("q", [0])

    def extend(self, texts: list[str]) -> None:
        joined = "".join(texts)
        if joined.isascii():  # one byte a character: the lengths are the offsets' steps
            self.data += joined.encode("ascii")
            self.offsets.extend(accumulate(map(len, texts), initial=self.offsets[-1]))
            self.offsets.pop(-len(texts) - 1)  # the initial value, already there
            return
        for text in texts:
            self.data += text.encode("utf-8")
            self.offsets.append(len(self.data))

    def build(self) -> Ragged:
        """The column (a view of the buffers, no copy: the builder must not be extended again)."""
        return Ragged(np.frombuffer(self.data, dtype=np.uint8), np.frombuffer(self.offsets, dtype=np.int64))


def _decode(column: Ragged, r: int) -> str:
    return column.row(r).tobytes().decode("utf-8")


def _decode_rows(column: Ragged, rows: np.ndarray) -> Iterator[str]:
    """The strings of `rows`, decoded a chunk of rows at a time."""
    for start in range(0, len(rows), _CHUNK_ROWS):
        data, offsets = column.gather(rows[start:start + _CHUNK_ROWS])
        data, bounds = data.tobytes(), offsets.tolist()
        if data.isascii():  # byte offsets are character offsets: slice one decoded string
            yield from map(data.decode("ascii").__getitem__, map(slice, bounds[:-1], bounds[1:]))
        else:
            yield from (data[a:b].decode("utf-8") for a, b in zip(bounds[:-1], bounds[1:]))


@dataclass(frozen=True)
class Tokens:
    """Token ids of utterances, encoded once: a `Ragged` over the rows of `Records`' columns (rows
    never encoded are empty), the tokenizer's vocabulary and the out-of-vocabulary report of that
    encoding ("" when none)."""

    ids: Ragged  # flat uint8 (<= 256 tokens), int16 or int32
    vocabulary: tuple[str, ...]  # Tokenizer.tokens they were encoded with
    oov_report: str


@dataclass(frozen=True)
class _Columns:
    """A manifest's columns, one row per line (see `Records`)."""

    ids: Ragged
    audio: Ragged
    texts: Ragged
    speakers: Ragged
    durations: np.ndarray  # (rows,) float64 seconds
    tokens: Tokens | None = None


class Records:
    """A manifest's utterances stored by column (see the module docstring), in a given order.

    `Records` is a read-only sequence of record dicts, `records[i]` -> {"id", "audio", "duration",
    "text", "speaker"} (built on access; extra manifest keys are not kept), so code written for a
    list of dicts keeps working; hot paths use the columns: `durations`, `id(i)`, `text(i)`,
    `audio(i)`, `tokens(i)`. `take(positions)` selects utterances without copying any column.
    """

    def __init__(self, columns: _Columns, rows: np.ndarray | None = None) -> None:
        self._columns = columns
        self.rows = np.arange(len(columns.durations), dtype=np.int64) if rows is None else rows  # column rows

    @classmethod
    def from_dicts(cls, records: Iterable[dict]) -> "Records":
        """Columns of record dicts (`id`, `duration` and `text` required; `audio` and `speaker` "" when absent)."""
        builders = [_StringsBuilder() for _ in range(4)]
        pending: list[list[str]] = [[], [], [], []]  # id, audio, text, speaker of the rows not yet built
        durations = array("d")
        for number, record in enumerate(records, 1):
            pending[0].append(record["id"])
            pending[1].append(str(record.get("audio", "")))
            pending[2].append(record["text"])
            pending[3].append(str(record.get("speaker", "")))
            durations.append(float(record["duration"]))
            if number % _CHUNK_ROWS == 0:
                for builder, texts in zip(builders, pending):
                    builder.extend(texts)
                    texts.clear()
        for builder, texts in zip(builders, pending):
            builder.extend(texts)
        ids, audio, texts, speakers = (builder.build() for builder in builders)
        return cls(_Columns(ids, audio, texts, speakers, np.frombuffer(durations, dtype=np.float64)))

    @classmethod
    def read(cls, path: str | os.PathLike) -> "Records":
        """The records of a JSONL manifest (the checks and errors of `asr.data.manifest.read_manifest`),
        read line by line into columns: no list of dicts is ever held."""
        from asr.data.manifest import iter_manifest

        return cls.from_dicts(iter_manifest(path))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        r = self.rows[index]
        c = self._columns
        return {"id": _decode(c.ids, r), "audio": _decode(c.audio, r), "duration": float(c.durations[r]),
                "text": _decode(c.texts, r), "speaker": _decode(c.speakers, r)}

    def __iter__(self) -> Iterator[dict]:
        c = self._columns
        columns = [_decode_rows(column, self.rows) for column in (c.ids, c.audio, c.texts, c.speakers)]
        for (utt, audio, text, speaker), duration in zip(zip(*columns), self.durations.tolist()):
            yield {"id": utt, "audio": audio, "duration": duration, "text": text, "speaker": speaker}

    def __repr__(self) -> str:
        return f"Records({len(self)} utterances)"

    @property
    def durations(self) -> np.ndarray:
        """(len,) float64 seconds of each utterance, in order."""
        return self._columns.durations[self.rows]

    def id(self, index: int) -> str:
        return _decode(self._columns.ids, self.rows[index])

    def audio(self, index: int) -> str:
        return _decode(self._columns.audio, self.rows[index])

    def text(self, index: int) -> str:
        return _decode(self._columns.texts, self.rows[index])

    def ids(self) -> Iterator[str]:
        """Utterance ids in order."""
        return _decode_rows(self._columns.ids, self.rows)

    def texts(self) -> Iterator[str]:
        """Transcripts in order."""
        return _decode_rows(self._columns.texts, self.rows)

    def take(self, positions: Sequence[int] | np.ndarray) -> "Records":
        """The utterances at `positions` (indices into this sequence), sharing the columns."""
        return Records(self._columns, self.rows[np.asarray(positions, dtype=np.int64)])

    @property
    def encoded(self) -> Tokens | None:
        """The token ids stored with the columns, if `encode` was called."""
        return self._columns.tokens

    def tokens(self, index: int) -> np.ndarray:
        """Token ids of utterance `index` (after `encode`), a read-only view."""
        return self._columns.tokens.ids.row(self.rows[index])

    def token_lengths(self) -> np.ndarray:
        """(len,) int64 number of tokens of each utterance (after `encode`)."""
        return self._columns.tokens.ids.lengths(self.rows)

    def encode(self, tokenizer: Tokenizer) -> "Records":
        """These records with the token ids of their texts (`Tokenizer.encode`, vectorised: the same
        ids, the same out-of-vocabulary counts in `tokenizer.oov`), encoded once and reused by
        everything downstream (the CTC feasibility check, the dataset). Already encoded with this
        vocabulary: returned as they are."""
        tokens = self._columns.tokens
        if tokens is not None and tokens.vocabulary == tuple(tokenizer.tokens):
            return self
        columns = self._columns
        before = sum(tokenizer.oov.values())
        rows = self.rows if np.all(self.rows[1:] > self.rows[:-1]) else np.unique(self.rows)
        ids = encode_texts(columns.texts, rows, tokenizer)
        report = tokenizer.oov_report() if sum(tokenizer.oov.values()) > before else ""
        encoded = _Columns(columns.ids, columns.audio, columns.texts, columns.speakers, columns.durations,
                           Tokens(ids, tuple(tokenizer.tokens), report))
        return Records(encoded, self.rows)

    def ctc_labels(self) -> np.ndarray:
        """(len,) int64 fewest CTC output frames each utterance needs (after `encode`): tokens plus
        adjacent repeats (a repeat needs a blank between its two copies), as
        `asr.lengths.ctc_labels` counts them (the loss applies the same rule to its batches)."""
        from asr.lengths import ctc_labels

        labels = np.empty(len(self), dtype=np.int64)
        for start in range(0, len(self), _CHUNK_ROWS):
            flat, offsets = self._columns.tokens.ids.gather(self.rows[start:start + _CHUNK_ROWS])
            counted = ctc_labels(torch.from_numpy(flat.astype(np.int64)), torch.from_numpy(offsets.astype(np.int64)))
            labels[start:start + len(offsets) - 1] = counted.numpy()
        return labels

    def text_lengths(self) -> np.ndarray:
        """(len,) int64 characters (code points) of each transcript."""
        texts = self._columns.texts
        lengths = np.empty(len(self), dtype=np.int64)
        for start in range(0, len(self), _CHUNK_ROWS):
            data, offsets = texts.gather(self.rows[start:start + _CHUNK_ROWS])
            heads = np.zeros(len(data) + 1, dtype=np.int64)
            np.cumsum((data & 0xC0) != 0x80, out=heads[1:])  # bytes that begin a UTF-8 sequence
            lengths[start:start + len(offsets) - 1] = np.diff(heads[offsets])
        return lengths


def as_records(records: Sequence[dict] | Records) -> Records:
    """`records` as `Records` (record dicts are converted; `Records` returned as they are)."""
    return records if isinstance(records, Records) else Records.from_dicts(records)


def _token_table(tokenizer: Tokenizer) -> np.ndarray:
    """Token id of each code point below the largest one in the vocabulary (-1: not a token): what
    `Tokenizer.encode` maps a character to (a space to `|`; the tokens of one character but blank
    and `|`)."""
    table = {ord(" "): tokenizer.space_id}
    for token_id, token in enumerate(tokenizer.tokens):
        if len(token) == 1 and token not in (BLANK, SPACE):
            table[ord(token)] = token_id
    lookup = np.full(max(table) + 1, -1, dtype=np.int64)
    lookup[list(table)] = list(table.values())
    return lookup


def _token_dtype(vocab_size: int) -> np.dtype:
    for dtype in (np.uint8, np.int16, np.int32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def _code_points(data: np.ndarray, byte_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes of rows -> (their code points, the rows' offsets in them)."""
    raw = data.tobytes()
    if raw.isascii():
        return data.astype(np.int32), byte_offsets
    heads = np.zeros(len(data) + 1, dtype=np.int64)
    np.cumsum((data & 0xC0) != 0x80, out=heads[1:])  # bytes that begin a UTF-8 sequence
    return np.frombuffer(raw.decode("utf-8").encode("utf-32-le"), dtype="<u4").astype(np.int32), heads[byte_offsets]


def encode_texts(texts: Ragged, rows: np.ndarray, tokenizer: Tokenizer) -> Ragged:
    """Token ids of the UTF-8 texts of `rows` (ascending column rows), as `Tokenizer.encode` gives
    them, a chunk of rows at a time; a `Ragged` over all of `texts`' rows (the others empty), in the
    smallest integer type that holds the vocabulary. Characters outside the vocabulary are skipped
    and counted in `tokenizer.oov`, first seen first (as `encode` counts them)."""
    lookup = _token_table(tokenizer)
    dtype = _token_dtype(tokenizer.vocab_size)
    pieces, lengths = [], np.zeros(len(texts), dtype=np.int64)
    for start in range(0, len(rows), _CHUNK_ROWS):
        chunk = rows[start:start + _CHUNK_ROWS]
        chars, char_offsets = _code_points(*texts.gather(chunk))
        ids = lookup[np.minimum(chars, len(lookup) - 1)]
        known = (chars < len(lookup)) & (ids >= 0)
        if not known.all():
            unknown = chars[~known]
            found, first, counts = np.unique(unknown, return_index=True, return_counts=True)
            for order in np.argsort(first, kind="stable"):
                tokenizer.oov[chr(int(found[order]))] += int(counts[order])
        kept = np.zeros(len(chars) + 1, dtype=np.int64)
        np.cumsum(known, out=kept[1:])
        lengths[chunk] = np.diff(kept[char_offsets])
        pieces.append(ids[known].astype(dtype))
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Ragged(np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype), offsets)


# --- length filters, the dataset ---------------------------------------------------------------
def filter_records(
    records: Sequence[dict] | Records,
    min_duration: float | None = None,
    max_duration: float | None = None,
    max_chars_per_second: float | None = None,
) -> tuple[Records, list[tuple[str, str]]]:
    """The one place where utterances are dropped for their length.

    Args:
        records: `Records`, or manifest record dicts (`duration` in seconds, `text`).
        min_duration, max_duration: keep `min_duration <= duration <= max_duration` seconds;
            None means no bound.
        max_chars_per_second: drop an utterance whose transcript has more characters per second
            than this (CTC needs at least one output frame per token); None: no check.

    Returns:
        (kept records in their order, as `Records` sharing the input's columns; dropped as [(id, reason)]).
    """
    records = as_records(records)
    durations = records.durations
    too_short = durations < min_duration if min_duration is not None else np.zeros(len(records), dtype=bool)
    too_long = durations > max_duration if max_duration is not None else np.zeros(len(records), dtype=bool)
    too_dense = np.zeros(len(records), dtype=bool)
    if max_chars_per_second is not None:
        chars = records.text_lengths()
        too_dense = chars > max_chars_per_second * durations
    dropped = []
    for index in np.flatnonzero(too_short | too_long | too_dense).tolist():
        duration = float(durations[index])
        if too_short[index]:
            reason = f"duration {duration:.2f} s < min_duration {min_duration} s"
        elif too_long[index]:
            reason = f"duration {duration:.2f} s > max_duration {max_duration} s"
        else:
            rate = chars[index] / duration if duration > 0 else float("inf")
            reason = f"{rate:.1f} characters/s > max_chars_per_second {max_chars_per_second}"
        dropped.append((records.id(index), reason))
    return records.take(np.flatnonzero(~(too_short | too_long | too_dense))), dropped


class AudioDataset(Dataset):
    """Utterances of a manifest: `dataset[i]` -> dict(id, waveform, tokens, text).

    `waveform` is (samples,) float32 mono at `sample_rate`; `tokens` is (num_tokens,) int64.
    `records` are `Records` (record dicts are converted); their transcripts are encoded once, in
    the main process, unless they already were with this tokenizer's vocabulary
    (`Records.encode`), so that out-of-vocabulary characters are counted in one place: they are in
    `tokenizer.oov` and logged as a warning (`self.oov_report` keeps the line).
    """

    def __init__(self, records: Sequence[dict] | Records, tokenizer: Tokenizer, sample_rate: int = 16000):
        was_encoded = isinstance(records, Records) and records.encoded is not None
        self.records = as_records(records).encode(tokenizer)
        self.sample_rate = sample_rate
        self.oov_report = self.records.encoded.oov_report
        if self.oov_report and not was_encoded:
            log.warning("%s (skipped while encoding transcripts)", self.oov_report)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def durations(self) -> np.ndarray:
        """(len,) float64 duration in seconds of each utterance, in dataset order (for the sampler)."""
        return self.records.durations

    def tokens(self, index: int) -> torch.Tensor:
        """(num_tokens,) int64 token ids of utterance `index`."""
        return torch.from_numpy(self.records.tokens(index).astype(np.int64))

    def __getitem__(self, index: int) -> dict:
        from asr.audio import load_audio  # imported here: workers and tests that skip audio stay light

        return {
            "id": self.records.id(index),
            "waveform": load_audio(self.records.audio(index), self.sample_rate),
            "tokens": self.tokens(index),
            "text": self.records.text(index),
        }


# --- batches ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Batch:
    """A padded batch of utterances.

    Fields:
        ids: utterance ids, length B.
        waveforms: (B, samples) int16 samples (float in [-1, 1] times `WAVEFORM_SCALE`, as 16-bit
            audio files hold them), zero-padded after each utterance; `asr.frontend.Frontend`
            turns them into float32 / WAVEFORM_SCALE on the device. (A float tensor is taken too.)
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


def to_int16(waveform: torch.Tensor) -> torch.Tensor:
    """(samples,) float in [-1, 1] -> int16 samples (x WAVEFORM_SCALE, rounded, clipped); exact for
    what a 16-bit file held. int16 is returned as it is."""
    if waveform.dtype == torch.int16:
        return waveform
    return (waveform * WAVEFORM_SCALE).round_().clamp_(-WAVEFORM_SCALE, WAVEFORM_SCALE - 1).to(torch.int16)


def collate(items: list[dict]) -> Batch:
    """Pad a list of `AudioDataset` items into a `Batch` of int16 waveforms (see its fields)."""
    waveforms = [to_int16(item["waveform"]) for item in items]
    tokens = [item["tokens"] for item in items]
    return Batch(
        ids=[item["id"] for item in items],
        waveforms=pad_sequence(waveforms, batch_first=True, padding_value=0),
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
