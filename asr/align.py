"""Forced alignment: a known transcript + its audio -> start and end times of every word and
character, from the model's CTC posteriors.

    audio --InferenceModel--> log_probs (T, V)
    text --normalize_text, Tokenizer--> labels (L,), words separated by `|`
    torchaudio.functional.forced_align(log_probs, labels) --> one label or blank per frame
    torchaudio.functional.merge_tokens --> one span per label: [start, end) frames, mean log-prob
    character time = frame * seconds_per_frame; a word runs from its first character's start
    to its last character's end

A CTC model marks a character with a spike of one or a few frames, often near its onset, so a
character's span is where the model placed it, not the whole sound: starts are the reliable
figure, ends run short (the same convention as `asr.transcribe`'s word times). Confidence is
exp of the mean log-posterior of the label over its frames (a word's: the geometric mean over
its characters), in [0, 1].

An utterance whose transcript cannot be aligned -- a character outside the model's tokens, more
CTC labels (+ one blank between each repeated pair) than output frames, unreadable audio -- is
reported with the reason (`AlignmentFailure`), never dropped silently. Each utterance runs
through the model in one piece (no chunking): meant for utterances up to a few minutes.

Output files (`write_alignments`): `alignments.jsonl` (one JSON object per aligned utterance,
input order), `alignments.ctm` (sclite's word format `<file> <channel> <start> <duration> <word>
<confidence>`, sorted by file then start, channel `1`), `failed.txt` (`ID<TAB>reason` per failure).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from asr.errors import AsrError, AudioError

ALIGNMENTS_NAME = "alignments.jsonl"
CTM_NAME = "alignments.ctm"
FAILED_NAME = "failed.txt"
BATCH_S = 160.0  # padded audio per model batch (seconds), as `asr.transcribe.ChunkingConfig.batch_s`


class AlignmentFailure(AsrError):
    """This utterance's transcript cannot be aligned to its audio; the message says why."""


@dataclass(frozen=True)
class Span:
    """One character or word and where it sits in the audio."""

    text: str  # the character, or the word
    start: float  # seconds from the start of the audio
    end: float  # seconds, > start
    confidence: float  # in [0, 1]; see the module docstring


@dataclass(frozen=True)
class WordAlignment:
    """A word of the transcript with its time and its characters' times."""

    word: Span
    chars: list[Span] = field(default_factory=list)  # in order; the word's span covers them


@dataclass(frozen=True)
class Alignment:
    """The aligned transcript of one utterance."""

    id: str  # utterance id (the CTM file field)
    text: str  # the transcript as aligned (normalised)
    duration: float  # seconds of audio
    words: list[WordAlignment] = field(default_factory=list)  # in order of time

    def to_dict(self) -> dict:
        """Plain values for JSON: times rounded to milliseconds, confidences to 4 digits."""
        def span(s: Span, key: str) -> dict:
            return {key: s.text, "start": round(s.start, 3), "end": round(s.end, 3),
                    "confidence": round(s.confidence, 4)}

        return {"id": self.id, "text": self.text, "duration": round(self.duration, 3),
                "words": [{**span(w.word, "word"), "chars": [span(c, "char") for c in w.chars]} for w in self.words]}


def frames_needed(labels: Sequence[int]) -> int:
    """Output frames a CTC alignment of `labels` needs: one per label, plus a blank between each
    pair of equal neighbours (CTC would merge them otherwise)."""
    return len(labels) + sum(1 for a, b in zip(labels, labels[1:]) if a == b)


def encode_transcript(text: str, tokenizer) -> tuple[str, list[int]]:
    """The normalised transcript and its CTC labels; AlignmentFailure naming the characters
    outside the model's tokens (they would otherwise be skipped and shift every time after them)."""
    from asr.text import normalize_text

    normalised = normalize_text(text)
    tokenizer.oov.clear()
    labels = tokenizer.encode(normalised)
    if tokenizer.oov:
        report = tokenizer.oov_report()
        tokenizer.oov.clear()
        raise AlignmentFailure(report.replace("the vocabulary", "the model's tokens"))
    return normalised, labels


def align_labels(log_probs: Tensor, labels: Sequence[int], blank: int = 0) -> list[tuple[int, int, int, float]]:
    """The CTC forced alignment of `labels` to `log_probs` (T, V): per label, in order,
    (label, start frame, end frame (exclusive), mean log-prob over its frames).

    Raises AlignmentFailure when the frames cannot hold the labels (`frames_needed`)."""
    import torchaudio.functional as F

    frames = log_probs.shape[0]
    if not labels:
        return []
    needed = frames_needed(labels)
    if needed > frames:
        raise AlignmentFailure(f"the transcript needs {needed} CTC frames ({len(labels)} labels + "
                               f"{needed - len(labels)} repeats) but the audio gives {frames}")
    targets = torch.tensor([list(labels)], dtype=torch.int32)
    path, scores = F.forced_align(log_probs[None].float().cpu(), targets, torch.tensor([frames], dtype=torch.int32),
                                  torch.tensor([len(labels)], dtype=torch.int32), blank=blank)
    spans = F.merge_tokens(path[0], scores[0], blank=blank)
    return [(int(s.token), int(s.start), int(s.end), float(s.score)) for s in spans]


def word_alignments(spans: Sequence[tuple[int, int, int, float]], tokenizer,
                    seconds_per_frame: float) -> list[WordAlignment]:
    """Group label spans (from `align_labels`) into words at the separator `|`; times in seconds."""
    words: list[WordAlignment] = []
    chars: list[Span] = []
    log_conf: list[float] = []

    def close() -> None:
        if chars:
            word = Span("".join(c.text for c in chars), chars[0].start, chars[-1].end,
                        math.exp(sum(log_conf) / len(log_conf)))
            words.append(WordAlignment(word, list(chars)))
            chars.clear()
            log_conf.clear()

    for label, start, end, score in spans:
        if label == tokenizer.space_id:
            close()
            continue
        chars.append(Span(tokenizer.tokens[label], start * seconds_per_frame, end * seconds_per_frame,
                          math.exp(min(score, 0.0))))
        log_conf.append(min(score, 0.0))
    close()
    return words


def align_utterance(log_probs: Tensor, text: str, tokenizer,
                    seconds_per_frame: float) -> tuple[str, list[WordAlignment]]:
    """Align `text` to one utterance's log-probs (T, V) -> (normalised text, words). Raises
    AlignmentFailure (characters outside the tokens, too few frames)."""
    normalised, labels = encode_transcript(text, tokenizer)
    spans = align_labels(log_probs, labels, tokenizer.blank_id)
    return normalised, word_alignments(spans, tokenizer, seconds_per_frame)


@dataclass
class AlignSummary:
    """What `align_records` did."""

    alignments: list[Alignment] = field(default_factory=list)  # aligned utterances, in input order
    failed: list[tuple[str, str]] = field(default_factory=list)  # (utterance id, reason), in input order


def align_records(inference, records: Sequence[dict], batch_s: float = BATCH_S) -> AlignSummary:
    """Align manifest-like records (`id`, `audio` path, `text`, `duration` seconds) with an
    `InferenceModel` (or any object of its interface). Records are read in consecutive groups of
    about `batch_s` seconds (their manifest durations), so memory is bounded by the group, and each
    group goes through the model in padded batches of at most `batch_s` seconds. Every record ends
    in `alignments` or in `failed`, in input order."""
    summary = AlignSummary()
    group: list[dict] = []
    group_s = 0.0
    for position, record in enumerate(records):
        group.append(record)
        group_s += float(record.get("duration", 0.0))
        if group_s >= batch_s or position == len(records) - 1:
            for record_, outcome in zip(group, _align_group(inference, group, batch_s)):
                if isinstance(outcome, Alignment):
                    summary.alignments.append(outcome)
                else:
                    summary.failed.append((str(record_["id"]), outcome))
            group, group_s = [], 0.0
    return summary


def _align_group(inference, records: Sequence[dict], batch_s: float) -> list[Alignment | str]:
    """One group of records -> per record its Alignment or the reason it failed."""
    from asr.audio import load_audio
    from asr.transcribe import batch_chunks

    results: list[Alignment | str] = [""] * len(records)
    waveforms: dict[int, Tensor] = {}
    for index, record in enumerate(records):
        try:
            waveforms[index] = load_audio(record["audio"], inference.sample_rate)
        except AudioError as err:
            results[index] = str(err)
    order = sorted(waveforms)
    lengths = [len(waveforms[i]) for i in order]
    for batch in batch_chunks(lengths, max(1, int(batch_s * inference.sample_rate))):
        members = [order[b] for b in batch]
        waves = torch.zeros(len(members), max(len(waveforms[i]) for i in members))
        for row, index in enumerate(members):
            waves[row, : len(waveforms[index])] = waveforms[index]
        wave_lengths = torch.tensor([len(waveforms[i]) for i in members], dtype=torch.int64)
        log_probs, out_lengths = inference(waves, wave_lengths)
        for row, index in enumerate(members):
            try:
                text, words = align_utterance(log_probs[row, : int(out_lengths[row])], records[index]["text"],
                                              inference.tokenizer, inference.seconds_per_frame)
            except AlignmentFailure as err:
                results[index] = str(err)
                continue
            duration = len(waveforms[index]) / inference.sample_rate
            results[index] = Alignment(str(records[index]["id"]), text, duration, words)
    return results


def to_ctm(alignments: Sequence[Alignment]) -> str:
    """sclite CTM lines `<file> <channel> <start> <duration> <word> <confidence>` for every word,
    sorted by file (utterance id) then start time, as sclite expects; times in seconds (3 decimals)."""
    from asr.score import format_ctm

    rows = [(alignment.id, w.word.start, w.word.end, w.word.text, w.word.confidence)
            for alignment in alignments for w in alignment.words]
    return format_ctm(sorted(rows, key=lambda row: (row[0], row[1])))


def write_alignments(summary: AlignSummary, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write `alignments.jsonl`, `alignments.ctm` and `failed.txt` (empty when nothing failed, so
    a rerun never leaves a stale list) into `out_dir`, atomically; returns their paths."""
    from asr.fileio import atomic_write_text

    out_dir = Path(out_dir)
    paths = {"json": out_dir / ALIGNMENTS_NAME, "ctm": out_dir / CTM_NAME, "failed": out_dir / FAILED_NAME}
    atomic_write_text(paths["json"], "".join(json.dumps(a.to_dict(), ensure_ascii=False) + "\n"
                                             for a in summary.alignments))
    atomic_write_text(paths["ctm"], to_ctm(summary.alignments))
    atomic_write_text(paths["failed"], "".join(f"{utt}\t{reason}\n" for utt, reason in summary.failed))
    return paths
