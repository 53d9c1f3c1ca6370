"""Reading audio: any file libsndfile or FFmpeg reads, as float32 mono at the model's sample rate.

Files are read with `soundfile` (libsndfile): WAV, FLAC, OGG/Vorbis, Opus, AIFF, MP3, ... at any
bit depth (8/16/24/32-bit integer, float). A file libsndfile refuses goes to FFmpeg through PyAV
(`asr.media`): M4A/MP4/AAC, WebM/Matroska, WMA, the audio track of a video file. Samples come back
as float32 in [-1, 1] (integer formats are divided by their full scale, e.g. 32768 for 16-bit),
several channels are averaged to mono, and the result is resampled with
`torchaudio.functional.resample` when the file's rate differs from the one requested.
`torchaudio.load` is deliberately not used: it needs torchcodec and a system FFmpeg.
`stream_audio` hands a long file on in blocks, resampled exactly as a whole read would be.

Every problem a user can fix (a missing, empty, truncated or undecodable file, NaN or infinite
samples, a segment outside the file) raises `AudioError` with the file's path in the message.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import soundfile
import torch
import torchaudio

from asr.errors import AudioError

SAMPLE_RATE = 16000  # Hz, the rate every model in this package is trained at

# libsndfile's header log says e.g. "data : 64000 (should be 31978)" when a WAV file is shorter
# than its header claims; libsndfile then silently reads what is there.
_SHORT_DATA_CHUNK = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Sizes that streaming writers put in a header when they do not know the length yet.
_UNKNOWN_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF}


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says about it."""

    sample_rate: int  # Hz
    frames: int  # samples per channel
    channels: int  # 1 for mono, 2 for stereo, ...

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.frames / self.sample_rate if self.sample_rate > 0 else 0.0


def _check_exists(path: str | os.PathLike) -> None:
    if not os.path.exists(path):
        raise AudioError(f"{path}: no such audio file")
    if os.path.isdir(path):
        raise AudioError(f"{path}: is a folder, not an audio file")
    if os.path.getsize(path) == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Sample rate, length and channels of `path`, from its header only (nothing is decoded, except
    for a media stream whose header states no length: `asr.media.media_info`).

    Raises AudioError naming the file when it is missing, empty, not audio, holds no samples, or
    (for WAV) is shorter than its header says.
    """
    return _probe(path)[0]


def _probe(path: str | os.PathLike) -> tuple[AudioInfo, bool]:
    """`audio_info` and whether the file is read through FFmpeg (True) or libsndfile (False)."""
    _check_exists(path)
    try:
        info = soundfile.info(str(path), verbose=True)
    except (soundfile.SoundFileError, RuntimeError) as error:
        from asr.media import media_info

        try:
            return media_info(path), True
        except AudioError as media_error:
            why = str(media_error).removeprefix(f"{path}: ").removeprefix("FFmpeg ")
            raise AudioError(f"{path}: cannot read audio header (libsndfile: {_reason(error)}; "
                             f"FFmpeg: {why})") from error
    if info.samplerate <= 0 or info.channels <= 0:
        raise AudioError(f"{path}: invalid header (rate {info.samplerate} Hz, {info.channels} channels)")
    if info.frames <= 0:
        raise AudioError(f"{path}: no audio samples (empty or truncated file)")
    short = _SHORT_DATA_CHUNK.search(info.extra_info or "")
    if short and int(short.group(1)) not in _UNKNOWN_SIZES and int(short.group(2)) < int(short.group(1)):
        raise AudioError(
            f"{path}: truncated file (header declares {short.group(1)} bytes of samples, "
            f"only {short.group(2)} present)"
        )
    return AudioInfo(sample_rate=int(info.samplerate), frames=int(info.frames), channels=int(info.channels)), False


def load_audio(
    path: str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    offset: float = 0.0,
    duration: float | None = None,
) -> torch.Tensor:
    """Read `path` as a float32 mono waveform at `sample_rate` Hz, shape (samples,), values in [-1, 1].

    `offset` and `duration` (seconds) select a segment; only that segment is decoded (soundfile
    start/stop), so reading a few seconds of an hour-long file is cheap. A segment that runs past
    the end of the file is cut at the end; one that starts at or past the end is an error.
    Channels are averaged; the result is resampled when the file's rate differs from `sample_rate`.

    Raises AudioError naming the file when it is missing, empty, truncated, cannot be decoded, or
    holds NaN or infinite samples (a float file can). A file read through FFmpeg is decoded from
    its start up to the segment's end (compressed streams have no exact sample seek).
    """
    info, media = _probe(path)
    if offset < 0 or (duration is not None and duration < 0):
        raise AudioError(f"{path}: negative offset ({offset} s) or duration ({duration} s)")
    start = int(round(offset * info.sample_rate))
    if start > 0 and start >= info.frames:
        raise AudioError(f"{path}: offset {offset:.3f} s is past the end of the file ({info.duration:.3f} s)")
    stop = info.frames if duration is None else min(info.frames, start + int(round(duration * info.sample_rate)))
    if media:
        return _load_media(path, info.sample_rate, sample_rate, start, None if duration is None else stop)
    try:
        samples = soundfile.read(str(path), start=start, stop=stop, dtype="float32", always_2d=True)[0]
    except (soundfile.SoundFileError, RuntimeError) as error:
        raise AudioError(f"{path}: cannot decode audio, the file is truncated or corrupt ({_reason(error)})") from error
    if samples.shape[0] != stop - start:
        raise AudioError(
            f"{path}: truncated file (expected {stop - start} samples from {start}, decoded {samples.shape[0]})"
        )
    mono = _mono(samples)
    _check_finite(path, mono, info.sample_rate, start)
    waveform = torch.from_numpy(np.ascontiguousarray(mono))
    return resample(waveform, info.sample_rate, sample_rate)


def _mono(samples: np.ndarray) -> np.ndarray:
    """(samples, channels) float32 -> (samples,), channels averaged."""
    return samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1, dtype=np.float32)


def _load_media(path, file_rate: int, sample_rate: int, start: int, stop: int | None) -> torch.Tensor:
    """`load_audio` of samples [start, stop) (stop None: to the end) of a file FFmpeg reads."""
    from asr.media import media_blocks

    pieces, position = [], 0
    for block in media_blocks(path):
        lo, hi = max(start - position, 0), len(block) if stop is None else min(stop - position, len(block))
        if hi > lo:
            pieces.append(block[lo:hi])
        position += len(block)
        if stop is not None and position >= stop:
            break
    if not pieces:
        raise AudioError(f"{path}: offset {start / file_rate:.3f} s is past the end of the decoded audio "
                         f"({position / file_rate:.3f} s)")
    mono = np.concatenate(pieces)
    _check_finite(path, mono, file_rate, start)
    return resample(torch.from_numpy(mono), file_rate, sample_rate)


def stream_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE,
                 block_s: float = 30.0) -> Iterator[torch.Tensor]:
    """`load_audio(path, sample_rate)` handed on in pieces: (samples,) float32 blocks of about
    `block_s` seconds whose concatenation equals the whole read (exactly when the file is at
    most `block_s` long: then it is that one read; otherwise to float rounding, see
    `StreamResampler`). Memory holds one block, whatever the file's length. The same
    AudioErrors as `load_audio`; a NaN or a truncation is found when the reading reaches it.
    """
    info, media = _probe(path)
    if info.duration <= block_s:
        yield load_audio(path, sample_rate)
        return
    resampler = StreamResampler(info.sample_rate, sample_rate)
    read = 0
    for block in (_media_source if media else _sndfile_source)(path, info, block_s):
        _check_finite(path, block, info.sample_rate, read)
        read += len(block)
        out = resampler.push(block)
        if len(out):
            yield out
    out = resampler.finish()
    if len(out):
        yield out


def _sndfile_source(path, info: AudioInfo, block_s: float) -> Iterator[np.ndarray]:
    """Mono float32 blocks at the file's rate, read with libsndfile."""
    read = 0
    try:
        for block in soundfile.blocks(str(path), blocksize=max(1, int(block_s * info.sample_rate)),
                                      dtype="float32", always_2d=True):
            read += block.shape[0]
            yield _mono(block)
    except (soundfile.SoundFileError, RuntimeError) as error:
        raise AudioError(f"{path}: cannot decode audio, the file is truncated or corrupt ({_reason(error)})") from error
    if read != info.frames:
        raise AudioError(f"{path}: truncated file (expected {info.frames} samples, decoded {read})")


def _media_source(path, info: AudioInfo, block_s: float) -> Iterator[np.ndarray]:
    from asr.media import media_blocks

    return media_blocks(path, block_s)


class StreamResampler:
    """`resample` of a signal that arrives in pieces, equal to resampling it whole up to float
    rounding: each piece is resampled with enough real samples around it to fill torchaudio's
    sinc kernel (lowpass width 6, rolloff 0.99), so every output sample is computed from the same
    input samples as in a whole read; no block joins. Holds about two kernel widths of input.
    """

    def __init__(self, orig_rate: int, new_rate: int) -> None:
        gcd = math.gcd(int(orig_rate), int(new_rate))
        self.orig, self.new = int(orig_rate) // gcd, int(new_rate) // gcd
        width = math.ceil(6 * self.orig / (min(self.orig, self.new) * 0.99))  # kernel half-width, input samples
        self.context = self.orig * math.ceil((width + 1) / self.orig)  # kept before the next output's input
        self.buffer = np.zeros(0, dtype=np.float32)
        self.lead = 0  # samples in `buffer` before the input of the next output sample

    def push(self, samples: np.ndarray) -> torch.Tensor:
        """Add input samples; returns the output samples that are now final."""
        samples = np.asarray(samples, dtype=np.float32)
        if self.orig == self.new:
            return torch.from_numpy(samples.copy())
        self.buffer = np.concatenate([self.buffer, samples])
        after = self.context + self.orig  # input beyond its own that the last output of a piece reads
        ready = (len(self.buffer) - self.lead - after) // self.orig * self.orig
        return self._emit(self.lead + ready + after, ready) if ready > 0 else torch.zeros(0)

    def finish(self) -> torch.Tensor:
        """The remaining output samples (the signal has ended)."""
        if len(self.buffer) <= self.lead:
            return torch.zeros(0)
        return self._emit(len(self.buffer), len(self.buffer) - self.lead)

    def _emit(self, stop: int, ready: int) -> torch.Tensor:
        """Outputs of input samples [lead, lead + ready) of the buffer, resampling buffer[:stop]."""
        out = resample(torch.from_numpy(self.buffer[:stop].copy()), self.orig, self.new)
        first = self.lead * self.new // self.orig
        out = out[first : first + -(-ready * self.new // self.orig)].clone()
        consumed = self.lead + ready
        keep = min(self.context, consumed)
        self.buffer, self.lead = self.buffer[consumed - keep :], keep
        return out


def _check_finite(path: str | os.PathLike, samples: np.ndarray, sample_rate: int, start: int) -> None:
    """AudioError naming the file when `samples` (read from sample `start` on) hold NaN or infinity.

    Only float files can hold them; one such sample turns every statistic computed from the
    file (CMVN, the silence detector's levels, the loss) into NaN, so it is refused where it is read.
    """
    finite = np.isfinite(samples)
    if finite.all():
        return
    bad = np.flatnonzero(~finite)
    first = (start + int(bad[0])) / sample_rate
    raise AudioError(f"{path}: {bad.size} sample(s) are NaN or infinite (the first at {first:.3f} s); "
                     "the file is corrupt, re-export or remove it")


def resample(waveform: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Resample `waveform` (..., samples) from `orig_rate` to `new_rate` Hz (band-limited sinc).

    Returns the input unchanged when the rates are equal. Output length is ceil(samples * new / orig).
    """
    if orig_rate == new_rate:
        return waveform
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} and {new_rate}")
    gcd = math.gcd(int(orig_rate), int(new_rate))
    return torchaudio.functional.resample(waveform, int(orig_rate) // gcd, int(new_rate) // gcd)


def _reason(error: Exception) -> str:
    """libsndfile's message without its repetition of the path."""
    text = str(error).strip()
    return text.split(": ", 1)[1] if text.startswith("Error opening") and ": " in text else text
