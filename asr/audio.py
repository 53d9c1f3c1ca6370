"""Reading audio: any file libsndfile reads, as float32 mono at the model's sample rate.

Files are read with `soundfile` (libsndfile): WAV, FLAC, OGG/Vorbis, Opus, AIFF, ... at any bit
depth (8/16/24/32-bit integer, float). Samples come back as float32 in [-1, 1] (integer formats are
divided by their full scale, e.g. 32768 for 16-bit), several channels are averaged to mono, and
the result is resampled with `torchaudio.functional.resample` when the file's rate differs from
the one requested. `torchaudio.load` is deliberately not used: it needs torchcodec and FFmpeg.

Every problem a user can fix (a missing, empty, truncated or undecodable file, NaN or infinite
samples, a segment outside the file) raises `AudioError` with the file's path in the message.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

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
    """Sample rate, length and channels of `path`, from its header only (nothing is decoded).

    Raises AudioError naming the file when it is missing, empty, not audio, holds no samples, or
    (for WAV) is shorter than its header says.
    """
    _check_exists(path)
    try:
        info = soundfile.info(str(path), verbose=True)
    except (soundfile.SoundFileError, RuntimeError) as error:
        raise AudioError(f"{path}: cannot read audio header ({_reason(error)})") from error
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
    return AudioInfo(sample_rate=int(info.samplerate), frames=int(info.frames), channels=int(info.channels))


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
    holds NaN or infinite samples (a float file can).
    """
    info = audio_info(path)
    if offset < 0 or (duration is not None and duration < 0):
        raise AudioError(f"{path}: negative offset ({offset} s) or duration ({duration} s)")
    start = int(round(offset * info.sample_rate))
    if start > 0 and start >= info.frames:
        raise AudioError(f"{path}: offset {offset:.3f} s is past the end of the file ({info.duration:.3f} s)")
    stop = info.frames if duration is None else min(info.frames, start + int(round(duration * info.sample_rate)))
    try:
        samples = soundfile.read(str(path), start=start, stop=stop, dtype="float32", always_2d=True)[0]
    except (soundfile.SoundFileError, RuntimeError) as error:
        raise AudioError(f"{path}: cannot decode audio, the file is truncated or corrupt ({_reason(error)})") from error
    if samples.shape[0] != stop - start:
        raise AudioError(
            f"{path}: truncated file (expected {stop - start} samples from {start}, decoded {samples.shape[0]})"
        )
    if samples.shape[1] == 1:
        mono = samples[:, 0]
    else:
        mono = samples.mean(axis=1, dtype=np.float32)
    _check_finite(path, mono, info.sample_rate, start)
    waveform = torch.from_numpy(np.ascontiguousarray(mono))
    return resample(waveform, info.sample_rate, sample_rate)


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
