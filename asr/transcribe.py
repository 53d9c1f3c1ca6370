"""Transcription: a checkpoint in, text with word times out, for audio files of any length.

The path of one file::

    file (any rate, any channels) --load_audio--> 16 kHz mono waveform
        --split_on_silence--> chunks of at most `max_chunk_s`, cut in silences (or at the
                              quietest point of a long stretch of sound), silences left out
        --batches of bounded padded duration--> features -> CMVN -> model -> log-probs
        --decoder (greedy | beam [+ LM])--> tokens with their output frames
        --word times = frame * seconds_per_frame + chunk start--> Transcript (text, words)

Memory: the 16 kHz waveform of a file is held whole (an hour is 230 MB of float32) and is read
from disk in blocks (`ChunkingConfig.read_block_s`) so a long 44.1 kHz stereo file is never
decoded at once; the silence detector works block by block; features, model activations and
log-probabilities only ever exist for one batch of chunks (`ChunkingConfig.batch_s` seconds of
padded audio).

Word times come from the CTC alignment: a word starts at the output frame of its first token
and ends one frame after its last token's frame (CTC emits a token on a spike, so the end is an
estimate that runs short by the length of the last sound). Confidence is the decoder's per-word
figure (`asr.decode.word_spans`: the geometric mean over the word's tokens of the posterior of
that token at its frame), in [0, 1].
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from asr.audio import SAMPLE_RATE, audio_info, load_audio, resample
from asr.decode import DecodingOptions, build_decoder
from asr.errors import AsrError, AudioError
from asr.features import num_frames

# File name extensions taken when a folder is given (lower case; libsndfile reads all of these).
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".snd", ".caf", ".w64",
     ".rf64", ".sph", ".nist", ".voc", ".wv"}
)
OUTPUT_FORMATS = ("text", "json", "srt")
_GLOB_CHARS = frozenset("*?[")


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
    read_block_s: float = 300.0  # audio decoded from disk per read (seconds of the file)

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


@dataclass(frozen=True)
class Transcript:
    """The recognised text of one recording."""

    text: str  # the words separated by single spaces
    words: list[Word] = field(default_factory=list)  # in order of time
    duration: float = 0.0  # length of the audio (seconds)

    def to_dict(self) -> dict:
        """Plain values for JSON: times in seconds rounded to milliseconds."""
        return {
            "text": self.text,
            "duration": round(self.duration, 3),
            "words": [
                {"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3),
                 "confidence": round(w.confidence, 4)}
                for w in self.words
            ],
        }


# --- silence splitting ------------------------------------------------------------------------
def frame_rms(waveform: np.ndarray, frame_length: int = 2048, hop_length: int = 512,
              block_frames: int = 8192) -> np.ndarray:
    """RMS of centred frames, as `librosa.feature.rms(y=waveform, center=True)` computes it (zero
    padding at both ends), but block by block from running sums, so an hour of audio never
    builds librosa's (frame_length, frames) array and librosa's slow first import is avoided.

    waveform: (samples,) float. Returns (1 + samples // hop_length,) float32.
    """
    half = frame_length // 2
    frames = 1 + (waveform.shape[0] + 2 * half - frame_length) // hop_length
    if frame_length % hop_length == 0 and half % hop_length == 0 and frames > 0:
        return _frame_rms_by_hops(waveform, frame_length, hop_length, frames)
    out = np.empty(max(frames, 0), dtype=np.float32)
    for first in range(0, frames, block_frames):
        count = min(block_frames, frames - first)
        # Samples of frames first .. first+count-1, in the padded signal's coordinates then the waveform's.
        lo = first * hop_length - half
        hi = (first + count - 1) * hop_length + frame_length - half
        piece = waveform[max(lo, 0) : min(hi, waveform.shape[0])].astype(np.float64)
        piece = np.pad(piece, (max(0, -lo), max(0, hi - waveform.shape[0])))
        running = np.concatenate([[0.0], np.cumsum(piece * piece)])
        starts = np.arange(count) * hop_length
        power = (running[starts + frame_length] - running[starts]) / frame_length
        out[first : first + count] = np.sqrt(np.maximum(power, 0.0))
    return out


def _frame_rms_by_hops(waveform: np.ndarray, frame_length: int, hop_length: int, frames: int,
                       block_samples: int = 1 << 20) -> np.ndarray:
    """`frame_rms` when frames and their centring pad are whole numbers of hops (librosa's
    2048/512): each frame's energy is the sum of `frame_length // hop_length` consecutive hop
    energies, and those are sums over a (hops, hop_length) reshape, ~2x faster than running sums
    over every sample. Float64 sums, read `block_samples` at a time."""
    per_frame = frame_length // hop_length
    lead = frame_length // 2 // hop_length  # zero hops before the first sample (the centring pad)
    hops = frames - 1 + per_frame
    energy = np.zeros(hops, dtype=np.float64)
    block = max(hop_length, block_samples - block_samples % hop_length)
    for start in range(0, waveform.shape[0], block):
        piece = waveform[start : start + block].astype(np.float64)
        whole = piece.shape[0] // hop_length * hop_length
        first = lead + start // hop_length
        count = min(whole // hop_length, hops - first)
        if count > 0:
            squares = np.square(piece[: count * hop_length])
            energy[first : first + count] = squares.reshape(count, hop_length).sum(axis=1)
        if whole < piece.shape[0] and first + whole // hop_length < hops:  # a last, partial hop
            energy[first + whole // hop_length] = np.square(piece[whole:]).sum()
    running = np.concatenate([[0.0], np.cumsum(energy)])
    power = (running[per_frame : per_frame + frames] - running[:frames]) / frame_length
    return np.sqrt(np.maximum(power, 0.0)).astype(np.float32)


def nonsilent_intervals(waveform: np.ndarray | torch.Tensor, top_db: float = 40.0, frame_length: int = 2048,
                        hop_length: int = 512, rms: np.ndarray | None = None) -> np.ndarray:
    """Stretches of sound, as `librosa.effects.split(waveform, top_db=top_db)` finds them.

    Same rule as librosa (frame RMS in dB relative to the loudest frame; above -top_db is sound),
    except that frames at or below librosa's amplitude floor (1e-5) are always silence, with the
    RMS computed block-wise (`frame_rms`) to keep memory bounded on long audio.
    Returns (n, 2) int64 sample intervals [start, end), in order.
    """
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.shape[0] == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if rms is None:
        rms = frame_rms(waveform, frame_length, hop_length)
    amin = 1e-5  # librosa.amplitude_to_db's floor
    db = 20.0 * np.log10(np.maximum(rms, amin)) - 20.0 * np.log10(max(float(rms.max()), amin))
    # Digital silence (below librosa's amplitude floor) is silence even when nothing is louder;
    # librosa would call an all-zero file one long stretch of sound.
    sound = (db > -top_db) & (rms > amin)
    # Frame i is centred on sample i*hop: a run of sound frames [a, b) is samples [a*hop, b*hop).
    flips = np.flatnonzero(np.diff(sound.astype(np.int8))) + 1
    edges = np.concatenate([[0] if sound[0] else [], flips, [len(sound)] if sound[-1] else []]).astype(np.int64)
    edges = np.minimum(edges * hop_length, waveform.shape[0])
    return edges.reshape(-1, 2)


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
    total = waveform.shape[0]
    hop = config.hop_length
    rms = frame_rms(waveform, config.frame_length, hop)
    intervals = nonsilent_intervals(waveform, config.top_db, config.frame_length, hop, rms=rms)
    max_len = max(1, int(config.max_chunk_s * sample_rate))
    pad = int(config.pad_s * sample_rate)
    max_gap = int(config.max_gap_s * sample_rate)

    # Widen by pad_s, merging stretches that then touch.
    widened: list[list[int]] = []
    for start, end in intervals.tolist():
        start, end = max(0, start - pad), min(total, end + pad)
        if widened and start <= widened[-1][1]:
            widened[-1][1] = max(widened[-1][1], end)
        else:
            widened.append([start, end])

    # Cut stretches longer than max_len at their quietest frame.
    pieces: list[tuple[int, int]] = []
    for start, end in widened:
        while end - start > max_len:
            first = -(-(start + max_len // 2) // hop)  # first frame centred in the window's second half
            last = (start + max_len) // hop  # last frame centred inside the window
            if first <= last:
                quietest = first + int(np.argmin(rms[first : last + 1]))
                cut = quietest * hop
            else:
                cut = start + max_len
            cut = min(max(cut, start + 1), start + max_len)
            pieces.append((start, cut))
            start = cut
        pieces.append((start, end))

    # Merge neighbours across short silences while the chunk stays within max_len.
    chunks: list[list[int]] = []
    for start, end in pieces:
        if chunks and start - chunks[-1][1] <= max_gap and end - chunks[-1][0] <= max_len:
            chunks[-1][1] = end
        else:
            chunks.append([start, end])

    # Widen very short chunks into the silence around them (a few frames give the model no context).
    min_len = min(int(config.min_chunk_s * sample_rate), max_len)
    for i, chunk in enumerate(chunks):
        missing = min_len - (chunk[1] - chunk[0])
        if missing <= 0:
            continue
        lo = chunks[i - 1][1] if i > 0 else 0
        hi = chunks[i + 1][0] if i + 1 < len(chunks) else total
        chunk[0] = max(lo, chunk[0] - missing // 2)
        chunk[1] = min(hi, chunk[0] + min_len)
        chunk[0] = max(lo, chunk[1] - min_len)
    return [(start, end) for start, end in chunks]


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
def srt_timestamp(seconds: float) -> str:
    """Seconds -> SRT time `HH:MM:SS,mmm`."""
    millis = max(0, int(round(seconds * 1000)))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d},{millis:03d}"


def srt_cues(words: Sequence[Word], max_cue_s: float = 7.0, max_cue_chars: int = 42,
             max_pause_s: float = 1.5) -> list[tuple[float, float, str]]:
    """Group words into subtitle cues: a new cue starts when adding a word would make the cue
    longer than `max_cue_s` seconds or `max_cue_chars` characters, or after a pause longer than
    `max_pause_s`. A single word longer than the limits gets a cue of its own.
    Returns [(start, end, text)] in order."""
    cues: list[tuple[float, float, str]] = []
    current: list[Word] = []
    for w in words:
        if current:
            text_len = len(" ".join(x.word for x in current)) + 1 + len(w.word)
            if (w.end - current[0].start > max_cue_s or text_len > max_cue_chars
                    or w.start - current[-1].end > max_pause_s):
                cues.append((current[0].start, current[-1].end, " ".join(x.word for x in current)))
                current = []
        current.append(w)
    if current:
        cues.append((current[0].start, current[-1].end, " ".join(x.word for x in current)))
    return cues


def to_srt(transcript: Transcript, **cue_options) -> str:
    """SubRip text of a transcript: numbered cues `N`, `start --> end`, text, blank line."""
    blocks = []
    for number, (start, end, text) in enumerate(srt_cues(transcript.words, **cue_options), 1):
        blocks.append(f"{number}\n{srt_timestamp(start)} --> {srt_timestamp(end)}\n{text}\n")
    return "\n".join(blocks)


def format_transcript(transcript: Transcript, output_format: str, audio: str | None = None) -> str:
    """The transcript as `text` (one line), `json` (one object, with "audio" when given) or `srt`."""
    if output_format == "text":
        return transcript.text + "\n"
    if output_format == "json":
        payload = {"audio": audio, **transcript.to_dict()} if audio is not None else transcript.to_dict()
        return json.dumps(payload, ensure_ascii=False) + "\n"
    if output_format == "srt":
        return to_srt(transcript)
    raise AsrError(f"unknown output format {output_format!r}, expected one of {', '.join(OUTPUT_FORMATS)}")


# --- inputs ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class AudioInput:
    """One file to transcribe and where its output goes."""

    path: Path  # the audio file
    name: Path  # relative output name without extension (path inside a given folder, or the file's stem)


def expand_inputs(inputs: Sequence[str]) -> list[AudioInput]:
    """Files, folders (searched recursively for `AUDIO_EXTENSIONS`) and glob patterns -> files.

    Raises AsrError naming the argument when a path does not exist, a pattern matches nothing or
    a folder holds no audio, and when two inputs would write the same output name. Nothing is
    decoded here; a corrupt file is found when it is transcribed.
    """
    found: list[AudioInput] = []
    for arg in inputs:
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
                files = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
                if not files and len(paths) == 1:
                    raise AsrError(f"{path}: folder holds no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))})")
                found.extend(AudioInput(f, f.relative_to(path).with_suffix("")) for f in files)
            else:
                found.append(AudioInput(path, Path(path.stem)))
    seen: dict[Path, Path] = {}
    unique: list[AudioInput] = []
    for item in found:
        resolved = item.path.resolve()
        if resolved in {i.path.resolve() for i in unique}:
            continue  # the same file named twice (e.g. by a file and a pattern)
        if item.name in seen:
            raise AsrError(f"{item.path} and {seen[item.name]} would both be written as {item.name}.*; "
                           "give their folder instead, or transcribe them separately")
        seen[item.name] = item.path
        unique.append(item)
    return unique


# --- the transcriber ------------------------------------------------------------------------
class Transcriber:
    """A trained model, a decoder and a chunking policy: audio of any length in, `Transcript` out.

    >>> t = Transcriber.from_checkpoint("exp/demo")           # doctest: +SKIP
    >>> t.transcribe("talk.flac").text                          # doctest: +SKIP
    """

    def __init__(self, inference_model, decoder, chunking: ChunkingConfig = ChunkingConfig()) -> None:
        """inference_model: an `asr.inference.InferenceModel`; decoder: from `asr.decode.build_decoder`."""
        self.inference = inference_model
        self.decoder = decoder
        self.chunking = chunking
        self.feature_config = inference_model.feature_config
        self.sample_rate = int(inference_model.feature_config.sample_rate)
        self.seconds_per_frame = float(inference_model.seconds_per_frame)
        self.token_strings = list(inference_model.tokenizer.tokens)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device | None = None,
                        options: DecodingOptions = DecodingOptions(),
                        chunking: ChunkingConfig = ChunkingConfig()) -> "Transcriber":
        """Load a checkpoint (a `.pt` file or an experiment folder) and build the decoder `options`
        describe (default: greedy, as `asr decode` and `asr transcribe` decode by default)."""
        from asr.inference import InferenceModel

        inference = InferenceModel.from_checkpoint(path, device=device)
        return cls(inference, build_decoder(options, inference.tokenizer, inference.seconds_per_frame), chunking)

    @classmethod
    def from_onnx(cls, path: str | os.PathLike, options: DecodingOptions = DecodingOptions(),
                  chunking: ChunkingConfig = ChunkingConfig()) -> "Transcriber":
        """Load a model written by `asr export` (an `.onnx` file, or the export folder's
        model.onnx), run by onnxruntime on the CPU (`asr.onnx_backend.OnnxInferenceModel`)."""
        from asr.onnx_backend import OnnxInferenceModel

        inference = OnnxInferenceModel(path)
        return cls(inference, build_decoder(options, inference.tokenizer, inference.seconds_per_frame), chunking)

    def transcribe(self, audio: str | os.PathLike | torch.Tensor | np.ndarray,
                   sample_rate: int | None = None) -> Transcript:
        """Transcribe a file (any format libsndfile reads, any rate, any channels) or a waveform.

        A waveform is (samples,) or (channels, samples) float in [-1, 1] at `sample_rate` Hz
        (None: the model's rate, 16 kHz); channels are averaged. Raises AudioError naming the
        file when it is missing or cannot be decoded.
        """
        if isinstance(audio, (str, os.PathLike)):
            if sample_rate is not None:
                raise AsrError("sample_rate is only for waveforms; a file's rate comes from its header")
            waveform = self.read(audio)
        else:
            waveform = self._prepare_waveform(audio, sample_rate)
        return self.transcribe_waveform(waveform)

    def read(self, path: str | os.PathLike) -> torch.Tensor:
        """The file as (samples,) float32 mono at the model's rate, decoded `read_block_s` at a time."""
        info = audio_info(path)
        block = self.chunking.read_block_s
        if info.duration <= block:
            return load_audio(path, self.sample_rate)
        # Block boundaries fall on whole input samples; resampling each block alone costs a few
        # samples of edge error every `read_block_s`, far below what the model notices. The
        # output is filled in place: no second copy of an hour of audio.
        step = int(block * info.sample_rate)
        starts = range(0, info.frames, step)
        sizes = [min(step, info.frames - start) for start in starts]
        expected = sum(-(-size * self.sample_rate // info.sample_rate) for size in sizes)
        waveform = torch.empty(expected, dtype=torch.float32)
        filled = 0
        for start, size in zip(starts, sizes):
            piece = load_audio(path, self.sample_rate, offset=start / info.sample_rate,
                               duration=size / info.sample_rate)
            waveform[filled : filled + len(piece)] = piece
            filled += len(piece)
        return waveform[:filled]

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
        chunks: list[tuple[int, int, int]] = []  # (waveform, start, end) in samples
        for source, waveform in enumerate(waveforms):
            for start, end in split_on_silence(waveform.numpy(), self.chunking, self.sample_rate):
                # A chunk shorter than one feature frame (only in a file that short) gives the model nothing.
                if num_frames(end - start, self.feature_config) > 0:
                    chunks.append((source, start, end))
        lengths = [end - start for _, start, end in chunks]
        chunk_words: list[list[tuple[float, list[Word]]]] = [[] for _ in waveforms]
        max_batch = int(self.chunking.batch_s * self.sample_rate)
        for batch in batch_chunks(lengths, max_batch):
            waves = torch.zeros(len(batch), lengths[batch[0]])
            for row, index in enumerate(batch):
                source, start, end = chunks[index]
                waves[row, : end - start] = waveforms[source][start:end]
            wave_lengths = torch.tensor([lengths[i] for i in batch], dtype=torch.long)
            for index, words in zip(batch, self._recognise(waves, wave_lengths)):
                source, start, _ = chunks[index]
                chunk_words[source].append((start / self.sample_rate, words))
        transcripts = []
        for waveform, pieces in zip(waveforms, chunk_words):
            duration = waveform.shape[0] / self.sample_rate
            words = stitch(pieces, duration)
            transcripts.append(Transcript(" ".join(w.word for w in words), words, duration))
        return transcripts

    @torch.inference_mode()
    def _recognise(self, waves: torch.Tensor, wave_lengths: torch.Tensor) -> list[list[Word]]:
        """One batch of chunks (B, samples) -> words per chunk, times from each chunk's start."""
        log_probs, out_lengths = self.inference(waves, wave_lengths)  # (B, T, V) on cpu, (B,)
        log_probs, out_lengths = log_probs.float().cpu(), out_lengths.cpu()
        hypotheses = self.decoder.decode(log_probs, out_lengths)
        return [
            hypothesis_words(hyp, self.token_strings, self.seconds_per_frame, log_probs[b, : int(out_lengths[b])])
            for b, hyp in enumerate(hypotheses)
        ]


@dataclass
class TranscribeSummary:
    """What `transcribe_files` did."""

    done: int = 0  # files transcribed
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, error message)
    audio_s: float = 0.0  # seconds of audio transcribed


def transcribe_files(transcriber: Transcriber, inputs: Sequence[str] | Sequence[AudioInput], output_format: str = "text",
                     output_dir: str | os.PathLike | None = None, stream=None, errors=None) -> TranscribeSummary:
    """Transcribe every file named by `inputs` (strings as for `expand_inputs`, or its result)
    and write the results.

    With `output_dir`, each file's result goes to `<output_dir>/<name>.<txt|json|srt>` (atomic
    write; `name` keeps the path below a given folder). Without it, results go to `stream`:
    text as one line per file (`PATH<TAB>TEXT` when there are several files), JSON as one object
    per line with its "audio" path, SRT preceded by a `==> PATH <==` line when there are several.

    A missing input, a pattern matching nothing or a folder without audio raises AsrError before
    anything is transcribed. A file that cannot be decoded is reported on `errors` (one line
    naming it) and skipped; the caller sees it in `summary.failed`. Short files are read and
    transcribed in groups of about `chunking.batch_s` seconds (shared model batches).
    """
    import sys

    from asr.fileio import atomic_write_text

    if output_format not in OUTPUT_FORMATS:
        raise AsrError(f"unknown output format {output_format!r}, expected one of {', '.join(OUTPUT_FORMATS)}")
    stream = sys.stdout if stream is None else stream
    errors = sys.stderr if errors is None else errors
    if all(isinstance(i, AudioInput) for i in inputs):
        items = list(inputs)
    else:
        items = expand_inputs(inputs)
    extension = {"text": ".txt", "json": ".json", "srt": ".srt"}[output_format]
    summary = TranscribeSummary()

    def fail(item: AudioInput, error: AsrError) -> None:
        summary.failed.append((str(item.path), str(error)))
        print(f"error: {error}", file=errors, flush=True)

    def write(item: AudioInput, transcript: Transcript) -> None:
        summary.done += 1
        summary.audio_s += transcript.duration
        body = format_transcript(transcript, output_format, audio=str(item.path))
        if output_dir is not None:
            atomic_write_text(Path(output_dir) / item.name.with_name(item.name.name + extension), body)
        elif output_format == "text" and len(items) > 1:
            stream.write(f"{item.path}\t{body}")
        elif output_format == "srt" and len(items) > 1:
            stream.write(f"==> {item.path} <==\n{body}\n")
        else:
            stream.write(body)
        stream.flush()

    # Short files are transcribed in groups of up to `batch_s` seconds so that their chunks
    # share model batches; a long file is a group of its own. Output stays in input order.
    group: list[tuple[AudioInput, torch.Tensor]] = []
    group_s = 0.0
    for position, item in enumerate(items):
        try:
            duration = audio_info(item.path).duration
            waveform = transcriber.read(item.path)
        except AudioError as error:
            fail(item, error)
            waveform = None
        if waveform is not None:
            group.append((item, waveform))
            group_s += duration
        if group and (group_s >= transcriber.chunking.batch_s or position == len(items) - 1):
            for (done, _), transcript in zip(group, transcriber.transcribe_waveforms([w for _, w in group])):
                write(done, transcript)
            group, group_s = [], 0.0
    return summary


__all__ = [
    "AUDIO_EXTENSIONS", "ChunkingConfig", "Word", "Transcript", "Transcriber", "TranscribeSummary",
    "batch_chunks", "expand_inputs", "format_transcript", "frame_rms", "hypothesis_words",
    "nonsilent_intervals", "split_on_silence", "srt_cues", "srt_timestamp", "stitch", "to_srt",
    "transcribe_files",
]
