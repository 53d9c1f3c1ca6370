"""Transcription: a checkpoint in, text with word times out, for audio files of any length.

The path of one file::

    file (libsndfile or FFmpeg, any rate, any channels) --asr.audio--> 16 kHz mono waveform
        --split_on_silence--> chunks of at most `max_chunk_s`, cut in silences (or at the
                              quietest point of a long stretch of sound), silences left out
        --batches of bounded padded duration--> features -> CMVN -> model -> log-probs
        --decoder (greedy | beam [+ LM])--> tokens with their output frames
        --word times = frame * seconds_per_frame + chunk start--> Transcript (text, words)
        --format_transcript--> text | json | srt | vtt | tsv | ctm

Memory is bounded by the chunk, not the file. A file up to `ChunkingConfig.read_block_s` long is
read whole (and shares model batches with other short files). A longer one streams, in two
passes over `asr.audio.stream_audio`'s blocks: the first keeps only the silence detector's frame
RMS (one float per hop, ~0.5 MB an hour), from which the chunks are planned exactly as for a
whole waveform (`chunk_intervals`); the second reads the audio again and cuts the chunks out of
it (`cut_chunks`), sending about `batch_s` seconds of chunks at a time through the model. Features,
model activations and log-probabilities only ever exist for one batch of chunks (`batch_s`
seconds of padded audio); what grows with the file is the list of recognised words.

Word times come from the CTC alignment: a word starts at the output frame of its first token
and ends one frame after its last token's frame (CTC emits a token on a spike, so the end is an
estimate that runs short by the length of the last sound). Confidence is the decoder's per-word
figure (`asr.decode.word_spans`: the geometric mean over the word's tokens of the posterior of
that token at its frame), in [0, 1].
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import torch

from asr.audio import SAMPLE_RATE, audio_info, load_audio, resample, stream_audio
from asr.calibrate import DomainCheck, PosteriorStats, check_domain, pool, posterior_stats
from asr.decode import DecodingOptions, build_decoder
from asr.errors import AsrError, AudioError, ConfigError
from asr.features import check_vtln, num_frames

OUTPUT_FORMATS = ("text", "json", "srt", "vtt", "tsv", "ctm")
OUTPUT_EXTENSIONS = {"text": ".txt", "json": ".json", "srt": ".srt", "vtt": ".vtt", "tsv": ".tsv", "ctm": ".ctm"}
STDIN = "-"  # the input name that reads audio from standard input
_GLOB_CHARS = frozenset("*?[")
T = TypeVar("T")


@dataclass(frozen=True)
class ChunkingConfig:
    """How long audio is cut into chunks and batched through the model."""

    top_db: float = 40.0  # a frame more than this many dB below the file's loudest frame is silence
    max_chunk_s: float = 20.0  # no chunk is longer than this (seconds)
    max_gap_s: float = 1.0  # silences up to this long are kept inside a chunk; longer ones separate chunks
    pad_s: float = 0.1  # audio kept on each side of a stretch of sound (seconds), for the model's context
    min_chunk_s: float = 0.25  # shorter chunks are widened to this, within the silence around them
    frame_length: int = 2048  # silence detector's analysis frame (samples at 16 kHz, librosa's default)
    hop_length: int = 512  # silence detector's hop (samples)
    batch_s: float = 160.0  # padded audio per model batch (seconds): bounds features and activations
    read_block_s: float = 300.0  # files up to this long (seconds) are read whole; longer ones stream
    stream_block_s: float = 30.0  # audio decoded per read when a file streams (seconds of the file)

    def __post_init__(self) -> None:
        if self.max_chunk_s <= 0 or self.batch_s < self.max_chunk_s:
            raise AsrError(f"chunking: need 0 < max_chunk_s ({self.max_chunk_s}) <= batch_s ({self.batch_s})")
        if self.min_chunk_s > self.max_chunk_s:
            raise AsrError(f"chunking: min_chunk_s ({self.min_chunk_s}) > max_chunk_s ({self.max_chunk_s})")


@dataclass(frozen=True)
class Word:
    """One recognised word with its place in the audio."""

    word: str  # the word's text
    start: float  # seconds from the start of the audio
    end: float  # seconds from the start of the audio, > start
    confidence: float  # in [0, 1]; see the module docstring


# One recognised chunk: (start in seconds, its words with times from the chunk's start, the
# posterior statistics of its frames and words).
ChunkResult = tuple[float, list[Word], PosteriorStats]


@dataclass(frozen=True)
class Transcript:
    """The recognised text of one recording."""

    text: str  # the words separated by single spaces
    words: list[Word] = field(default_factory=list)  # in order of time
    duration: float = 0.0  # length of the audio (seconds)
    # The model's posteriors judged against its calibration (`asr.calibrate`); None: the checkpoint
    # is not calibrated (or this transcript was built by hand).
    domain: DomainCheck | None = None
    # The file's pooled posterior statistics (what `domain` judged; `asr calibrate` reads them);
    # not part of the JSON output.
    posteriors: PosteriorStats | None = field(default=None, compare=False, repr=False)
    # The VTLN factor its features were warped by (`Transcriber` with `vtln_warps`); None: no warp.
    vtln_warp: float | None = None

    @property
    def out_of_domain(self) -> bool | None:
        """True when the audio is unlike the model's training data; None when not checked."""
        return None if self.domain is None else self.domain.out_of_domain

    def to_dict(self) -> dict:
        """Plain values for JSON: text, duration, words (word, start, end, confidence; all of
        them, as this output always had), segments (`segment_words`: start, end, text and
        their words), out_of_domain (true/false, null when the checkpoint is not calibrated) and,
        when checked, domain (`DomainCheck.to_dict`); seconds rounded to milliseconds."""
        def word(w: Word) -> dict:
            return {"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3),
                    "confidence": round(w.confidence, 4)}

        return {
            "text": self.text,
            "duration": round(self.duration, 3),
            "words": [word(w) for w in self.words],
            "segments": [
                {"start": round(segment[0].start, 3), "end": round(segment[-1].end, 3),
                 "text": " ".join(w.word for w in segment), "words": [word(w) for w in segment]}
                for segment in segment_words(self.words)
            ],
            "out_of_domain": self.out_of_domain,
            **({"domain": self.domain.to_dict()} if self.domain is not None else {}),
            **({"vtln_warp": self.vtln_warp} if self.vtln_warp is not None else {}),
        }

    @classmethod
    def from_dict(cls, payload: dict) -> "Transcript":
        """The inverse of `to_dict` (times as rounded there)."""
        words = [Word(w["word"], w["start"], w["end"], w["confidence"]) for w in payload["words"]]
        domain = payload.get("domain")
        domain = DomainCheck.from_dict(domain, payload["out_of_domain"]) if domain is not None else None
        return cls(payload["text"], words, payload["duration"], domain, vtln_warp=payload.get("vtln_warp"))


# --- silence splitting ------------------------------------------------------------------------
class FrameRms:
    """RMS of centred frames, as `librosa.feature.rms(y=waveform, center=True)` computes it (zero
    padding at both ends), of a waveform that arrives in blocks: `push` the samples in order, then
    `finish`. Memory is one float per hop plus less than a frame of samples, so an hour of audio
    never builds librosa's (frame_length, frames) array, and librosa's slow first import is avoided.
    The figures do not depend on how the waveform is cut into blocks.

    When frames and their centring pad are whole numbers of hops (librosa's 2048/512), each
    frame's energy is the sum of `frame_length // hop_length` consecutive hop energies (sums over
    a (hops, hop_length) reshape, ~2x faster than running sums over every sample); otherwise
    `block_frames` frames at a time from running sums. Float64 sums.
    """

    def __init__(self, frame_length: int = 2048, hop_length: int = 512, block_frames: int = 8192) -> None:
        self.frame_length, self.hop, self.block_frames = frame_length, hop_length, block_frames
        self.half = frame_length // 2
        self.by_hops = frame_length % hop_length == 0 and self.half % hop_length == 0
        self.samples = 0  # pushed so far
        self.pending = np.zeros(0, dtype=np.float64)  # samples not yet summed, from `pending_start` on
        self.pending_start = 0
        self.parts: list[np.ndarray] = []  # by hops: energy per hop; else: RMS per group of frames
        self.next_frame = 0  # (not by hops) first frame not yet computed

    def push(self, samples: np.ndarray | torch.Tensor) -> None:
        """Add the next samples of the waveform, (samples,) float."""
        samples = np.asarray(samples, dtype=np.float32).astype(np.float64)
        self.samples += samples.shape[0]
        self.pending = np.concatenate([self.pending, samples])
        if self.by_hops:
            whole = self.pending.shape[0] // self.hop * self.hop
            if whole:
                self.parts.append(np.square(self.pending[:whole]).reshape(-1, self.hop).sum(axis=1))
                self.pending, self.pending_start = self.pending[whole:], self.pending_start + whole
        else:
            self._frame_groups(total=None)

    def finish(self) -> np.ndarray:
        """(1 + samples // hop_length,) float32 RMS of every frame (frame i centred on sample i * hop)."""
        frames = 1 + (self.samples + 2 * self.half - self.frame_length) // self.hop
        if frames <= 0:
            return np.zeros(0, dtype=np.float32)
        if not self.by_hops:
            self._frame_groups(total=frames)
            return np.concatenate(self.parts).astype(np.float32)
        per_frame = self.frame_length // self.hop
        lead = self.half // self.hop  # zero hops before the first sample (the centring pad)
        hops = frames - 1 + per_frame
        body = self.parts + ([np.square(self.pending).sum(keepdims=True)] if self.pending.shape[0] else [])
        body = np.concatenate(body) if body else np.zeros(0)
        energy = np.zeros(hops, dtype=np.float64)
        energy[lead : lead + body.shape[0]] = body[: hops - lead]
        running = np.concatenate([[0.0], np.cumsum(energy)])
        power = (running[per_frame : per_frame + frames] - running[:frames]) / self.frame_length
        return np.sqrt(np.maximum(power, 0.0)).astype(np.float32)

    def _frame_groups(self, total: int | None) -> None:
        """Compute every group of `block_frames` frames whose samples are all here (`total`: the
        number of frames, once the waveform has ended; the rest is zero padding)."""
        while total is None or self.next_frame < total:
            first = self.next_frame
            count = self.block_frames if total is None else min(self.block_frames, total - first)
            # Samples of frames first .. first+count-1, in the padded signal's coordinates then the waveform's.
            lo = first * self.hop - self.half
            hi = (first + count - 1) * self.hop + self.frame_length - self.half
            if total is None and hi > self.samples:
                return
            piece = self.pending[max(lo, 0) - self.pending_start : min(hi, self.samples) - self.pending_start]
            piece = np.pad(piece, (max(0, -lo), max(0, hi - self.samples)))
            running = np.concatenate([[0.0], np.cumsum(piece * piece)])
            starts = np.arange(count) * self.hop
            power = (running[starts + self.frame_length] - running[starts]) / self.frame_length
            self.parts.append(np.sqrt(np.maximum(power, 0.0)))
            self.next_frame += count
            drop = max(self.next_frame * self.hop - self.half, 0) - self.pending_start
            if drop > 0:
                self.pending, self.pending_start = self.pending[drop:], self.pending_start + drop


def frame_rms(waveform: np.ndarray | torch.Tensor, frame_length: int = 2048, hop_length: int = 512,
              block_frames: int = 8192) -> np.ndarray:
    """`FrameRms` of a whole waveform: (samples,) float -> (1 + samples // hop_length,) float32."""
    meter = FrameRms(frame_length, hop_length, block_frames)
    meter.push(waveform)
    return meter.finish()


def sound_intervals(rms: np.ndarray, samples: int, top_db: float = 40.0, hop_length: int = 512) -> np.ndarray:
    """Stretches of sound from the frame RMS (`FrameRms`) of a waveform of `samples` samples.

    librosa's rule (frame RMS in dB relative to the loudest frame; above -top_db is sound),
    except that frames at or below librosa's amplitude floor (1e-5) are always silence.
    Returns (n, 2) int64 sample intervals [start, end), in order.
    """
    if samples == 0 or rms.shape[0] == 0:
        return np.zeros((0, 2), dtype=np.int64)
    amin = 1e-5  # librosa.amplitude_to_db's floor
    db = 20.0 * np.log10(np.maximum(rms, amin)) - 20.0 * np.log10(max(float(rms.max()), amin))
    # Digital silence (below librosa's amplitude floor) is silence even when nothing is louder;
    # librosa would call an all-zero file one long stretch of sound.
    sound = (db > -top_db) & (rms > amin)
    # Frame i is centred on sample i*hop: a run of sound frames [a, b) is samples [a*hop, b*hop).
    flips = np.flatnonzero(np.diff(sound.astype(np.int8))) + 1
    edges = np.concatenate([[0] if sound[0] else [], flips, [len(sound)] if sound[-1] else []]).astype(np.int64)
    edges = np.minimum(edges * hop_length, samples)
    return edges.reshape(-1, 2)


def nonsilent_intervals(waveform: np.ndarray | torch.Tensor, top_db: float = 40.0, frame_length: int = 2048,
                        hop_length: int = 512) -> np.ndarray:
    """Stretches of sound, as `librosa.effects.split(waveform, top_db=top_db)` finds them (see
    `sound_intervals` for the one difference). Returns (n, 2) int64 sample intervals [start, end)."""
    waveform = np.asarray(waveform, dtype=np.float32)
    return sound_intervals(frame_rms(waveform, frame_length, hop_length), waveform.shape[0], top_db, hop_length)


def chunk_intervals(rms: np.ndarray, samples: int, config: ChunkingConfig = ChunkingConfig(),
                    sample_rate: int = SAMPLE_RATE) -> list[tuple[int, int]]:
    """Chunks for the model from the frame RMS (`FrameRms` with the config's frame and hop) of a
    waveform of `samples` samples: `split_on_silence` without the waveform, so a long file's
    chunks are planned from its RMS alone (one float per hop) and its audio read again to cut them.
    """
    intervals = sound_intervals(rms, samples, config.top_db, config.hop_length)
    max_len = max(1, int(config.max_chunk_s * sample_rate))
    widened = _widen(intervals.tolist(), int(config.pad_s * sample_rate), samples)
    pieces = _cut_long(widened, rms, max_len, config.hop_length)
    chunks = _merge_close(pieces, int(config.max_gap_s * sample_rate), max_len)
    return _widen_short(chunks, min(int(config.min_chunk_s * sample_rate), max_len), samples)


def _widen(intervals: list[list[int]], pad: int, samples: int) -> list[list[int]]:
    """Widen each stretch of sound by `pad` samples on each side, merging stretches that then touch."""
    widened: list[list[int]] = []
    for start, end in intervals:
        start, end = max(0, start - pad), min(samples, end + pad)
        if widened and start <= widened[-1][1]:
            widened[-1][1] = max(widened[-1][1], end)
        else:
            widened.append([start, end])
    return widened


def _cut_long(stretches: list[list[int]], rms: np.ndarray, max_len: int, hop: int) -> list[tuple[int, int]]:
    """Cut stretches longer than `max_len` at their quietest frame in the second half of each
    `max_len` window (a hard cut when no frame is centred there)."""
    pieces: list[tuple[int, int]] = []
    for start, end in stretches:
        while end - start > max_len:
            first = -(-(start + max_len // 2) // hop)  # first frame centred in the window's second half
            last = (start + max_len) // hop  # last frame centred inside the window
            if first <= last:
                cut = (first + int(np.argmin(rms[first : last + 1]))) * hop
            else:
                cut = start + max_len
            cut = min(max(cut, start + 1), start + max_len)
            pieces.append((start, cut))
            start = cut
        pieces.append((start, end))
    return pieces


def _merge_close(pieces: list[tuple[int, int]], max_gap: int, max_len: int) -> list[list[int]]:
    """Merge neighbours across silences of at most `max_gap` while the chunk stays within `max_len`."""
    chunks: list[list[int]] = []
    for start, end in pieces:
        if chunks and start - chunks[-1][1] <= max_gap and end - chunks[-1][0] <= max_len:
            chunks[-1][1] = end
        else:
            chunks.append([start, end])
    return chunks


def _widen_short(chunks: list[list[int]], min_len: int, samples: int) -> list[tuple[int, int]]:
    """Widen chunks shorter than `min_len` into the silence around them (a few frames give the
    model no context)."""
    for i, chunk in enumerate(chunks):
        missing = min_len - (chunk[1] - chunk[0])
        if missing <= 0:
            continue
        lo = chunks[i - 1][1] if i > 0 else 0
        hi = chunks[i + 1][0] if i + 1 < len(chunks) else samples
        chunk[0] = max(lo, chunk[0] - missing // 2)
        chunk[1] = min(hi, chunk[0] + min_len)
        chunk[0] = max(lo, chunk[1] - min_len)
    return [(start, end) for start, end in chunks]


def split_on_silence(waveform: np.ndarray | torch.Tensor, config: ChunkingConfig = ChunkingConfig(),
                     sample_rate: int = SAMPLE_RATE) -> list[tuple[int, int]]:
    """Cut a waveform into chunks for the model.

    Stretches of sound (`nonsilent_intervals`) are widened by `pad_s`; one longer than
    `max_chunk_s` is cut at its quietest frame in the second half of each `max_chunk_s` window
    (a hard cut when there is no frame there); neighbours separated by at most `max_gap_s` of
    silence are merged while the result stays within `max_chunk_s`; chunks shorter than
    `min_chunk_s` are widened into the silence around them.

    waveform: (samples,). Returns [(start, end)) sample intervals, in order, not overlapping,
    each at most `max_chunk_s` long, together covering every stretch of sound.
    """
    waveform = np.asarray(waveform, dtype=np.float32)
    rms = frame_rms(waveform, config.frame_length, config.hop_length)
    return chunk_intervals(rms, waveform.shape[0], config, sample_rate)


def cut_chunks(blocks: Iterable[torch.Tensor],
               chunks: Sequence[tuple[int, int]]) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, samples) of each chunk [start, end) of `chunks` (in order, not overlapping) from a
    waveform that arrives in `blocks`; holds at most one block and one chunk of samples."""
    held, held_start, index = torch.zeros(0), 0, 0
    for block in blocks:
        held = torch.cat([held, block])
        while index < len(chunks) and chunks[index][1] <= held_start + held.shape[0]:
            start, end = chunks[index]
            yield start, held[start - held_start : end - held_start].clone()
            index += 1
        keep_from = chunks[index][0] if index < len(chunks) else held_start + held.shape[0]
        drop = min(max(keep_from - held_start, 0), held.shape[0])
        held, held_start = held[drop:], held_start + drop
    if index < len(chunks):
        raise AudioError(f"the audio ended at sample {held_start + held.shape[0]}, before chunk "
                         f"{chunks[index]} (it changed while it was read)")


def batch_chunks(lengths: Sequence[int], max_batch_samples: int) -> list[list[int]]:
    """Group chunk indices by length into batches whose padded size (count x longest) stays
    within `max_batch_samples`; longest chunks first. Each chunk is in exactly one batch."""
    from asr.data.sampler import pack_batches

    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return pack_batches(order, np.asarray(lengths, dtype=np.float64), max_batch_samples)


# --- words ----------------------------------------------------------------------------------
def hypothesis_words(hypothesis, token_strings: Sequence[str], seconds_per_frame: float,
                     frame_log_probs: torch.Tensor | None = None) -> list[Word]:
    """Words of one decoded chunk with times in seconds from the chunk's start.

    Uses the decoder's word spans when it filled them (`Hypothesis.words`), else groups the
    tokens at `"|"` itself (`asr.decode.word_spans`, confidences from `frame_log_probs` (T, V)).
    A word runs from its first token's frame to one frame after its last token's frame.
    """
    from asr.decode import word_spans

    spans = hypothesis.words
    if not spans and hypothesis.tokens:
        spans = word_spans(hypothesis.tokens, hypothesis.token_frames, token_strings, frame_log_probs)
    return [
        Word(span.word, span.start_frame * seconds_per_frame, span.end_frame * seconds_per_frame,
             float(span.confidence))
        for span in spans
    ]


def stitch(chunk_words: Iterable[tuple[float, list[Word]]], duration: float | None = None) -> list[Word]:
    """Words of all chunks in the order of the audio: each chunk's words are shifted by its
    start (seconds) and chunks are sorted by start. Ends are clipped to `duration` if given."""
    words: list[Word] = []
    for offset, chunk in sorted(chunk_words, key=lambda item: item[0]):
        for w in chunk:
            start, end = w.start + offset, w.end + offset
            if duration is not None:
                end = min(end, duration)
                start = min(start, end)
            words.append(Word(w.word, start, end, w.confidence))
    return words


# --- output formats -------------------------------------------------------------------------
def srt_timestamp(seconds: float, decimal: str = ",") -> str:
    """Seconds -> SRT time `HH:MM:SS,mmm` (WebVTT's `HH:MM:SS.mmm` with `decimal="."`)."""
    millis = max(0, int(round(seconds * 1000)))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def segment_words(words: Sequence[Word], max_s: float = 7.0, max_chars: int = 42,
                  max_pause_s: float = 1.5) -> list[list[Word]]:
    """Group words into segments (subtitle cues, JSON segments, TSV lines): a new segment starts
    when adding a word would make the segment longer than `max_s` seconds or `max_chars`
    characters, or after a pause longer than `max_pause_s`. A single word longer than the limits
    gets a segment of its own. Returns the words of each segment, in order."""
    segments: list[list[Word]] = []
    for w in words:
        if segments:
            current = segments[-1]
            text_len = sum(len(x.word) + 1 for x in current) + len(w.word)
            if (w.end - current[0].start <= max_s and text_len <= max_chars
                    and w.start - current[-1].end <= max_pause_s):
                current.append(w)
                continue
        segments.append([w])
    return segments


def _cues(transcript: Transcript, **segment_options) -> list[tuple[float, float, str]]:
    return [(seg[0].start, seg[-1].end, " ".join(w.word for w in seg))
            for seg in segment_words(transcript.words, **segment_options)]


def to_srt(transcript: Transcript, **segment_options) -> str:
    """SubRip text of a transcript: numbered cues `N`, `start --> end`, text, blank line."""
    return "\n".join(f"{number}\n{srt_timestamp(start)} --> {srt_timestamp(end)}\n{text}\n"
                     for number, (start, end, text) in enumerate(_cues(transcript, **segment_options), 1))


def to_vtt(transcript: Transcript, **segment_options) -> str:
    """WebVTT text of a transcript: the `WEBVTT` header, then cues `start --> end` and their
    text (`&`, `<`, `>` escaped as the WebVTT spec requires), each followed by a blank line."""
    def escape(text: str) -> str:
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    cues = "".join(f"{srt_timestamp(start, '.')} --> {srt_timestamp(end, '.')}\n{escape(text)}\n\n"
                   for start, end, text in _cues(transcript, **segment_options))
    return "WEBVTT\n\n" + cues


def to_tsv(transcript: Transcript, **segment_options) -> str:
    """Tab-separated segments: a `start<TAB>end<TAB>text` header, then one line per segment,
    times in seconds with three decimals."""
    return "start\tend\ttext\n" + "".join(f"{start:.3f}\t{end:.3f}\t{text}\n"
                                          for start, end, text in _cues(transcript, **segment_options))


def to_ctm(transcript: Transcript, recording: str) -> str:
    """sclite CTM lines `<file> <channel> <start> <duration> <word> <confidence>`, one per word,
    times in seconds; `recording` is the file field (whitespace becomes `_`)."""
    from asr.score import format_ctm

    name = "_".join(recording.split()) or "audio"
    return format_ctm((name, w.start, w.end, w.word, w.confidence) for w in transcript.words)


def format_transcript(transcript: Transcript, output_format: str, audio: str | None = None,
                      recording: str | None = None) -> str:
    """The transcript as `text` (one line), `json` (one object, with "audio" when given), `srt`,
    `vtt`, `tsv` or `ctm` (file field `recording`, default the stem of `audio`)."""
    if output_format == "text":
        return transcript.text + "\n"
    if output_format == "json":
        payload = {"audio": audio, **transcript.to_dict()} if audio is not None else transcript.to_dict()
        return json.dumps(payload, ensure_ascii=False) + "\n"
    if output_format == "ctm":
        return to_ctm(transcript, recording or (Path(audio).stem if audio else "audio"))
    writers = {"srt": to_srt, "vtt": to_vtt, "tsv": to_tsv}
    if output_format in writers:
        return writers[output_format](transcript)
    raise AsrError(f"unknown output format {output_format!r}, expected one of {', '.join(OUTPUT_FORMATS)}")


# --- inputs ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class AudioInput:
    """One file to transcribe and where its output goes."""

    path: Path  # the audio file
    name: Path  # relative output name without extension (path inside a given folder, or the file's stem)


def expand_inputs(inputs: Sequence[str], errors=None) -> list[AudioInput]:
    """Files, folders (searched recursively), glob patterns and `-` (standard input) -> files.

    A folder gives its files named as audio (`asr.data.librispeech.audio_extensions`: what
    libsndfile reads, and `asr.media.MEDIA_EXTENSIONS`), and any other file in it that libsndfile
    or FFmpeg opens (header only); the rest are listed on `errors` (default stderr),
    one `skipped PATH: reason` line each. A file named directly is taken as it is. Raises
    AsrError naming the argument when a path does not exist, a pattern matches nothing, a folder
    holds no audio, `-` is given twice, or two inputs would write the same output name. A corrupt
    file with an audio name is found when it is transcribed.
    """
    found: list[AudioInput] = []
    for arg in inputs:
        if arg == STDIN:
            found.append(AudioInput(Path(STDIN), Path("stdin")))
            continue
        if os.path.exists(arg):
            paths = [Path(arg)]
        elif _GLOB_CHARS & set(arg):
            paths = [Path(p) for p in sorted(glob.glob(arg, recursive=True))]
            if not paths:
                raise AsrError(f"{arg}: no file matches this pattern")
        else:
            raise AsrError(f"{arg}: no such file or folder")
        for path in paths:
            if path.is_dir():
                files = _folder_audio(path, errors)
                if not files and len(paths) == 1:
                    raise AsrError(f"{path}: folder holds no audio files that libsndfile or FFmpeg reads")
                found.extend(AudioInput(f, f.relative_to(path).with_suffix("")) for f in files)
            else:
                found.append(AudioInput(path, Path(path.stem)))
    return _unique(found)


def _folder_audio(folder: Path, errors=None) -> list[Path]:
    """The audio files below `folder` (see `expand_inputs`), sorted; the others listed on `errors`."""
    import sys

    from asr.data.librispeech import audio_extensions

    known = audio_extensions()
    taken = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix[1:].lower() in known:
            taken.append(path)
            continue
        try:
            audio_info(path)
        except AudioError as error:
            why = str(error).removeprefix(f"{path}: ")
            print(f"skipped {path}: {why}", file=sys.stderr if errors is None else errors, flush=True)
        else:
            taken.append(path)
    return taken


def _unique(found: list[AudioInput]) -> list[AudioInput]:
    """`found` without repeated files; AsrError when two files would write the same output name."""
    seen: dict[Path, Path] = {}
    unique: list[AudioInput] = []
    resolved: set[Path] = set()
    for item in found:
        if item.path.resolve() in resolved:
            if str(item.path) == STDIN:
                raise AsrError("- (standard input) is given twice")
            continue  # the same file named twice (e.g. by a file and a pattern)
        if item.name in seen:
            raise AsrError(f"{item.path} and {seen[item.name]} would both be written as {item.name}.*; "
                           "give their folder instead, or transcribe them separately")
        seen[item.name] = item.path
        resolved.add(item.path.resolve())
        unique.append(item)
    return unique


# --- the transcriber ------------------------------------------------------------------------
class Transcriber:
    """A trained model, a decoder and a chunking policy: audio of any length in, `Transcript` out.

    >>> t = Transcriber.from_checkpoint("exp/demo")           # doctest: +SKIP
    >>> t.transcribe("talk.flac").text                          # doctest: +SKIP
    """

    def __init__(self, inference_model, decoder, chunking: ChunkingConfig = ChunkingConfig(),
                 vtln_warps: Sequence[float] | None = None) -> None:
        """inference_model: an `asr.inference.InferenceModel`; decoder: from `asr.decode.build_decoder`.
        vtln_warps: test-time VTLN, each file's filterbank warped by the one of these factors its
        chunks' best paths score highest under (as `asr.evaluate.speaker_warps` per speaker; one more
        model pass per factor), e.g. `asr.inference.VTLN_WARPS`; None: no warp."""
        self.inference = inference_model
        self.decoder = decoder
        self.chunking = chunking
        self.vtln_warps = None
        if vtln_warps is not None:
            from asr.inference import check_warps

            self.vtln_warps = check_warps(vtln_warps)
            if not hasattr(inference_model, "run_features"):
                raise ConfigError("VTLN needs a model that computes its own features")
            check_vtln(inference_model.feature_config, "VTLN")
        self.feature_config = inference_model.feature_config
        self.sample_rate = int(inference_model.feature_config.sample_rate)
        self.seconds_per_frame = float(inference_model.seconds_per_frame)
        self.token_strings = list(inference_model.tokenizer.tokens)
        # The checkpoint's "calibration" (`asr calibrate`): None leaves files unchecked.
        self.calibration = (getattr(inference_model, "checkpoint", None) or {}).get("calibration")

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device | None = None,
                        options: DecodingOptions = DecodingOptions(),
                        chunking: ChunkingConfig = ChunkingConfig(),
                        vtln_warps: Sequence[float] | None = None) -> "Transcriber":
        """Load a checkpoint (a `.pt` file or an experiment folder) and build the decoder `options`
        describe (default: greedy, as `asr decode` and `asr transcribe` decode by default)."""
        from asr.inference import InferenceModel

        inference = InferenceModel.from_checkpoint(path, device=device)
        return cls(inference, build_decoder(options, inference.tokenizer, inference.seconds_per_frame), chunking,
                   vtln_warps)

    @classmethod
    def from_onnx(cls, path: str | os.PathLike, options: DecodingOptions = DecodingOptions(),
                  chunking: ChunkingConfig = ChunkingConfig(),
                  vtln_warps: Sequence[float] | None = None) -> "Transcriber":
        """Load a model written by `asr export` (an `.onnx` file, or the export folder's
        model.onnx), run by onnxruntime on the CPU (`asr.onnx_backend.OnnxInferenceModel`)."""
        from asr.onnx_backend import OnnxInferenceModel

        inference = OnnxInferenceModel(path)
        return cls(inference, build_decoder(options, inference.tokenizer, inference.seconds_per_frame), chunking,
                   vtln_warps)

    def transcribe(self, audio: str | os.PathLike | torch.Tensor | np.ndarray,
                   sample_rate: int | None = None) -> Transcript:
        """Transcribe a file (any format libsndfile or FFmpeg reads, any rate, any channels, any
        length: `transcribe_file`) or a waveform.

        A waveform is (samples,) or (channels, samples) float in [-1, 1] at `sample_rate` Hz
        (None: the model's rate, 16 kHz); channels are averaged. Raises AudioError naming the
        file when it is missing or cannot be decoded.
        """
        if isinstance(audio, (str, os.PathLike)):
            if sample_rate is not None:
                raise AsrError("sample_rate is only for waveforms; a file's rate comes from its header")
            return self.transcribe_file(audio)
        return self.transcribe_waveform(self._prepare_waveform(audio, sample_rate))

    def transcribe_file(self, path: str | os.PathLike) -> Transcript:
        """Transcribe a file: read whole when at most `read_block_s` long, else streamed in two
        passes (module docstring), the chunks planned exactly as for the whole waveform."""
        if audio_info(path).duration <= self.chunking.read_block_s:
            return self.transcribe_waveform(self.read(path))
        blocks = (lambda: stream_audio(path, self.sample_rate, self.chunking.stream_block_s))
        meter, samples = FrameRms(self.chunking.frame_length, self.chunking.hop_length), 0
        for block in blocks():
            meter.push(block.numpy())
            samples += block.shape[0]
        chunks = [chunk for chunk in chunk_intervals(meter.finish(), samples, self.chunking, self.sample_rate)
                  if self._usable(*chunk)]

        def windows() -> Iterator[list[tuple[int, torch.Tensor]]]:
            timed = (((start, wave), wave.shape[0] / self.sample_rate) for start, wave in cut_chunks(blocks(), chunks))
            return group_by_duration(timed, self.chunking.batch_s)

        warp = None
        if self.vtln_warps is not None:  # one more pass over the file: the warp its chunks score best under
            scores = [score for window in windows() for score in self._warp_scores(window)]
            warp = self._best_warp(scores)
        pieces: list[ChunkResult] = []
        for window in windows():
            pieces.extend(self._recognise_chunks(window, None if warp is None else [warp] * len(window)))
        return self._transcript(pieces, samples, warp)

    def read(self, path: str | os.PathLike) -> torch.Tensor:
        """The file as (samples,) float32 mono at the model's rate: one read when it is at most
        `read_block_s` long, else decoded `stream_block_s` at a time (`asr.audio.stream_audio`)."""
        if audio_info(path).duration <= self.chunking.read_block_s:
            return load_audio(path, self.sample_rate)
        return torch.cat(list(stream_audio(path, self.sample_rate, self.chunking.stream_block_s)))

    def _prepare_waveform(self, waveform, sample_rate: int | None) -> torch.Tensor:
        waveform = torch.as_tensor(waveform, dtype=torch.float32)
        if waveform.dim() == 2:
            waveform = waveform.mean(dim=0)
        elif waveform.dim() != 1:
            raise AsrError(f"waveform must be (samples,) or (channels, samples), got shape {tuple(waveform.shape)}")
        if sample_rate is not None and sample_rate != self.sample_rate:
            waveform = resample(waveform, int(sample_rate), self.sample_rate)
        return waveform.contiguous()

    def transcribe_waveform(self, waveform: torch.Tensor) -> Transcript:
        """Transcribe a (samples,) float32 mono waveform at the model's rate."""
        return self.transcribe_waveforms([waveform])[0]

    def transcribe_waveforms(self, waveforms: Sequence[torch.Tensor]) -> list[Transcript]:
        """Transcribe several (samples,) float32 mono waveforms at the model's rate together:
        the chunks of all of them share batches (faster than one by one for short recordings).
        Returns one Transcript per waveform, in order."""
        chunks: list[tuple[int, int, torch.Tensor]] = []  # (waveform, start sample, samples)
        for source, waveform in enumerate(waveforms):
            for start, end in split_on_silence(waveform.numpy(), self.chunking, self.sample_rate):
                if self._usable(start, end):
                    chunks.append((source, start, waveform[start:end]))
        spans = [(start, wave) for _, start, wave in chunks]
        warps: list[float | None] = [None] * len(waveforms)
        if self.vtln_warps is not None:  # per waveform, the warp its chunks score best under
            by_source: list[list[torch.Tensor]] = [[] for _ in waveforms]
            for (source, _, _), score in zip(chunks, self._warp_scores(spans)):
                by_source[source].append(score)
            warps = [self._best_warp(scores) for scores in by_source]
        chunk_warps = None if self.vtln_warps is None else [warps[source] for source, _, _ in chunks]
        chunk_results: list[list[ChunkResult]] = [[] for _ in waveforms]
        for (source, _, _), piece in zip(chunks, self._recognise_chunks(spans, chunk_warps)):
            chunk_results[source].append(piece)
        return [self._transcript(pieces, waveform.shape[0], warp)
                for waveform, pieces, warp in zip(waveforms, chunk_results, warps)]

    def _usable(self, start: int, end: int) -> bool:
        # A chunk shorter than one feature frame (only in a file that short) gives the model nothing.
        return num_frames(end - start, self.feature_config) > 0

    def _transcript(self, pieces: list[ChunkResult], samples: int, warp: float | None = None) -> Transcript:
        """A file's transcript from its chunks: words stitched in time, posterior statistics
        pooled over the chunks and judged against the calibration."""
        duration = samples / self.sample_rate
        words = stitch([(start, chunk_words) for start, chunk_words, _ in pieces], duration)
        stats = pool(chunk_stats for _, _, chunk_stats in pieces)
        return Transcript(" ".join(w.word for w in words), words, duration, check_domain(stats, self.calibration),
                          stats, warp)

    def _batches(self, chunks: Sequence[tuple[int, torch.Tensor]]) -> Iterator[tuple[list[int], torch.Tensor,
                                                                                     torch.Tensor]]:
        """(chunk indices, waves (B, samples) zero-padded, wave_lengths (B,)) per batch of chunks, by
        length (`batch_chunks`), at most `batch_s` seconds of padded audio a batch."""
        lengths = [wave.shape[0] for _, wave in chunks]
        for batch in batch_chunks(lengths, int(self.chunking.batch_s * self.sample_rate)):
            waves = torch.zeros(len(batch), lengths[batch[0]])
            for row, index in enumerate(batch):
                waves[row, : lengths[index]] = chunks[index][1]
            yield batch, waves, torch.tensor([lengths[i] for i in batch], dtype=torch.long)

    def _recognise_chunks(self, chunks: Sequence[tuple[int, torch.Tensor]],
                          warps: Sequence[float | None] | None = None) -> list[ChunkResult]:
        """(start sample, samples) chunks -> (start seconds, words, posterior statistics) per
        chunk, in the same order. warps: each chunk's VTLN factor (None: no warp)."""
        results: list[ChunkResult] = [(0.0, [], PosteriorStats())] * len(chunks)
        for batch, waves, wave_lengths in self._batches(chunks):
            warp = None if warps is None else torch.tensor([warps[i] for i in batch])
            for index, (words, stats) in zip(batch, self._recognise(waves, wave_lengths, warp)):
                results[index] = (chunks[index][0] / self.sample_rate, words, stats)
        return results

    @torch.inference_mode()
    def _warp_scores(self, chunks: Sequence[tuple[int, torch.Tensor]]) -> list[torch.Tensor]:
        """Per chunk, (len(vtln_warps),): the best path's log-probability summed over the chunk's
        output frames under each warp."""
        from asr.inference import warp_scores

        scores: list[torch.Tensor] = [torch.zeros(0)] * len(chunks)
        for batch, waves, wave_lengths in self._batches(chunks):
            for index, row in zip(batch, warp_scores(self.inference, waves, wave_lengths, self.vtln_warps)):
                scores[index] = row
        return scores

    def _best_warp(self, scores: Sequence[torch.Tensor]) -> float:
        """The warp of `vtln_warps` with the highest total of `_warp_scores` rows (1 for no chunks)."""
        if not scores:
            return 1.0
        return self.vtln_warps[int(torch.stack(list(scores)).sum(dim=0).argmax())]

    @torch.inference_mode()
    def _recognise(self, waves: torch.Tensor, wave_lengths: torch.Tensor,
                   warp: torch.Tensor | None = None) -> list[tuple[list[Word], PosteriorStats]]:
        """One batch of chunks (B, samples) -> (words, posterior statistics) per chunk, times from
        each chunk's start. warp: (B,) VTLN factors, or None."""
        features = frame_lengths = None
        if hasattr(self.inference, "run_features"):  # what the model hears too (feature_spread)
            features, frame_lengths = self.inference.features(waves, wave_lengths, warp)
            log_probs, out_lengths = self.inference.run_features(features, frame_lengths)
        else:  # a stand-in model: waveforms to log-probabilities only
            log_probs, out_lengths = self.inference(waves, wave_lengths)  # (B, T, V) on cpu, (B,)
        log_probs, out_lengths = log_probs.float().cpu(), out_lengths.cpu()
        hypotheses = self.decoder.decode(log_probs, out_lengths)
        out = []
        stats = posterior_stats(log_probs, out_lengths, self.token_strings, features, frame_lengths)
        for b, hyp in enumerate(hypotheses):
            frames = log_probs[b, : int(out_lengths[b])]
            out.append((hypothesis_words(hyp, self.token_strings, self.seconds_per_frame, frames), stats[b]))
        return out


def group_by_duration(items: Iterable[tuple[T, float]], batch_s: float) -> Iterator[list[T]]:
    """Consecutive items, from (item, seconds) pairs read lazily, in groups of at least `batch_s`
    seconds (the last may be shorter); batch_s <= 0: one item a group. How `transcribe_files`
    groups short files (their chunks then share model batches), how a long file's chunks go to
    the model, and how scripts/bench_decode.py groups utterances as `asr transcribe` would."""
    group: list[T] = []
    total = 0.0
    for item, seconds in items:
        group.append(item)
        total += seconds
        if total >= batch_s:
            yield group
            group, total = [], 0.0
    if group:
        yield group


@dataclass
class TranscribeSummary:
    """What `transcribe_files` did."""

    done: int = 0  # files transcribed
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, error message)
    audio_s: float = 0.0  # seconds of audio transcribed
    skipped: int = 0  # files left alone because their output exists (skip_existing)
    flagged: list[str] = field(default_factory=list)  # files whose audio is unlike the training data


def transcribe_files(transcriber: Transcriber, inputs: Sequence[str] | Sequence[AudioInput],
                     output_format: str = "text", output_dir: str | os.PathLike | None = None, stream=None, errors=None,
                     skip_existing: bool = False, stdin=None) -> TranscribeSummary:
    """Transcribe every file named by `inputs` (strings as for `expand_inputs`, or its result)
    and write the results in `output_format` (`OUTPUT_FORMATS`).

    With `output_dir`, each file's result goes to `<output_dir>/<name><OUTPUT_EXTENSIONS[format]>`
    (atomic write; `name` keeps the path below a given folder; `stdin` for `-`), and
    `skip_existing` leaves out the files whose output is already there. Without it, results go
    to `stream`: text as one line per file (`PATH<TAB>TEXT` when there are several files), JSON
    as one object per line with its "audio" path, CTM lines as they are (they name their file),
    SRT, WebVTT and TSV preceded by a `==> PATH <==` line when there are several.

    `-` reads `stdin` (default: the process's standard input, binary) into a temporary file
    first (both readers need to seek: a WAV header's length, an MP4's index at its end).

    A missing input, a pattern matching nothing or a folder without audio raises AsrError before
    anything is transcribed. A file that cannot be decoded is reported on `errors` (one line
    naming it) and skipped; the caller sees it in `summary.failed`. A file whose audio is unlike
    the model's training data (a calibrated checkpoint, `asr.calibrate`) gets one warning line on
    `errors` and is listed in `summary.flagged`. Short files are read and transcribed in groups
    of about `chunking.batch_s` seconds (shared model batches); a file longer than
    `chunking.read_block_s` streams (`Transcriber.transcribe_file`).
    """
    import sys

    if output_format not in OUTPUT_FORMATS:
        raise AsrError(f"unknown output format {output_format!r}, expected one of {', '.join(OUTPUT_FORMATS)}")
    if skip_existing and output_dir is None:
        raise AsrError("skip_existing needs an output folder (--output-dir): it looks for the outputs there")
    errors = sys.stderr if errors is None else errors
    items = list(inputs) if all(isinstance(i, AudioInput) for i in inputs) else expand_inputs(inputs, errors)
    summary = TranscribeSummary()
    if skip_existing:
        pending = [item for item in items if not _output_path(output_dir, item, output_format).exists()]
        summary.skipped, items = len(items) - len(pending), pending
    write = _writer(summary, output_format, output_dir, sys.stdout if stream is None else stream, len(items) > 1,
                    errors)
    with _sources(items, stdin) as source:
        def fail(item: AudioInput, error: AsrError) -> None:
            message = str(error).replace(str(source(item)), str(item.path))  # stdin's copy is named "-"
            summary.failed.append((str(item.path), message))
            print(f"error: {message}", file=errors, flush=True)

        for group in group_by_duration(_read_inputs(transcriber, items, source, fail), transcriber.chunking.batch_s):
            _transcribe_group(transcriber, group, source, write, fail)
    return summary


def _output_path(output_dir: str | os.PathLike, item: AudioInput, output_format: str) -> Path:
    return Path(output_dir) / item.name.with_name(item.name.name + OUTPUT_EXTENSIONS[output_format])


def _writer(summary: TranscribeSummary, output_format: str, output_dir, stream, several: bool, errors):
    """write(item, transcript): one result to its file in `output_dir`, else to `stream`; a file
    out of domain (`Transcript.domain`) also gets its warning line on `errors`."""
    from asr.fileio import atomic_write_text

    def write(item: AudioInput, transcript: Transcript) -> None:
        summary.done += 1
        summary.audio_s += transcript.duration
        if transcript.out_of_domain:
            summary.flagged.append(str(item.path))
            print(transcript.domain.warning(str(item.path)), file=errors, flush=True)
        body = format_transcript(transcript, output_format, audio=str(item.path), recording=item.name.as_posix())
        if output_dir is not None:
            atomic_write_text(_output_path(output_dir, item, output_format), body)
        elif output_format == "text" and several:
            stream.write(f"{item.path}\t{body}")
        elif output_format in ("srt", "vtt", "tsv") and several:
            stream.write(f"==> {item.path} <==\n{body}\n")
        else:
            stream.write(body)
        stream.flush()

    return write


@contextlib.contextmanager
def _sources(items: Sequence[AudioInput], stdin=None) -> Iterator[Callable[[AudioInput], Path]]:
    """source(item): the path to read for an input: its own, or for `-` a temporary copy of
    `stdin` (read in 1 MiB blocks; removed on leaving)."""
    import shutil
    import sys
    import tempfile

    if not any(str(item.path) == STDIN for item in items):
        yield lambda item: item.path
        return
    with tempfile.TemporaryDirectory(prefix="asr-stdin-") as folder:
        copy = Path(folder) / "stdin"
        with open(copy, "wb") as out:
            shutil.copyfileobj(sys.stdin.buffer if stdin is None else stdin, out, 1 << 20)
        yield lambda item: copy if str(item.path) == STDIN else item.path


def _read_inputs(transcriber: Transcriber, items: Sequence[AudioInput], source, fail):
    """((item, waveform), seconds) for each readable input, lazily; the waveform is None for a
    file longer than `read_block_s` (it streams when its turn comes). Failures go to `fail`."""
    for item in items:
        try:
            duration = audio_info(source(item)).duration
            short = duration <= transcriber.chunking.read_block_s
            yield (item, transcriber.read(source(item)) if short else None), duration
        except AudioError as error:
            fail(item, error)


def _transcribe_group(transcriber: Transcriber, group, source, write, fail) -> None:
    """Transcribe one group from `_read_inputs` (the short files together) and write the results in order."""
    together = iter(transcriber.transcribe_waveforms([wave for _, wave in group if wave is not None]))
    for item, wave in group:
        if wave is not None:
            write(item, next(together))
            continue
        try:
            transcript = transcriber.transcribe_file(source(item))
        except AudioError as error:
            fail(item, error)
        else:
            write(item, transcript)


__all__ = [
    "OUTPUT_FORMATS", "ChunkingConfig", "FrameRms", "Word", "Transcript",
    "Transcriber", "TranscribeSummary", "batch_chunks", "chunk_intervals", "cut_chunks", "expand_inputs",
    "format_transcript", "frame_rms", "group_by_duration", "hypothesis_words", "nonsilent_intervals",
    "segment_words", "sound_intervals", "split_on_silence", "srt_timestamp", "stitch", "to_ctm", "to_srt",
    "to_tsv", "to_vtt", "transcribe_files",
]
