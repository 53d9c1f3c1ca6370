"""Reading media files through FFmpeg (PyAV): what libsndfile does not read.

M4A/MP4/MOV (AAC, ALAC), WebM/Matroska (Opus, Vorbis), raw AAC, MP3, WMA, AMR, 3GP, and the audio
track of a video file: `asr.audio.audio_info` and `asr.audio.load_audio` come here when libsndfile
refuses a file. PyAV's wheels carry the FFmpeg libraries, so no system FFmpeg is needed.

The first audio stream of a file is decoded packet by packet (a video track is demuxed past,
never decoded) and handed on in blocks of mono float32 samples at the stream's own rate, so memory
does not grow with the file; channels are averaged as `load_audio` averages them, and resampling
to the model's rate is `asr.audio`'s job, the same for every reader.

Lengths: MP4 and Matroska headers state the length exactly; raw AAC and MP3 streams only let
FFmpeg estimate it from the bit rate, and a file with no length at all is decoded once to count.
A file that decodes to clearly less than its header states is refused as truncated.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from asr.audio import AudioInfo
from asr.errors import AudioError

# Name extensions (lower case) of media that FFmpeg reads and libsndfile does not: a folder given
# to `asr transcribe` takes these without looking inside.
MEDIA_EXTENSIONS = frozenset(
    {".m4a", ".m4b", ".mp4", ".m4v", ".mov", ".3gp", ".3g2", ".aac", ".adts", ".webm", ".mkv", ".mka", ".wma",
     ".wmv", ".asf", ".amr", ".ac3", ".eac3", ".avi", ".flv", ".mpg", ".mpeg", ".ape", ".tta", ".spx", ".mp2"}
)  # not .ts/.mts/.dts: source files share them (an MPEG-TS file is still taken: FFmpeg opens it)
# Containers whose header states the exact length (FFmpeg's demuxer names): a shortfall is truncation.
_EXACT_LENGTH = ("mov", "matroska", "flac", "wav")
_TRUNCATION_SLACK_S = 0.5  # decoded audio may fall this much short of the stated length (priming, rounding)


def _open(path: str | os.PathLike):
    """(container, its first audio stream), or AudioError naming the file."""
    import av

    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as error:
        raise AudioError(f"{path}: FFmpeg cannot open it ({_reason(error)})") from error
    if not container.streams.audio:
        kind = container.format.name
        container.close()
        raise AudioError(f"{path}: no audio stream (FFmpeg reads it as {kind!r})")
    return container, container.streams.audio[0]


def _stated_seconds(container, stream) -> float | None:
    """The length the header states (seconds), or None when it states none."""
    import av

    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


def media_info(path: str | os.PathLike) -> AudioInfo:
    """Rate, length and channels of the first audio stream of a media file (header only, unless
    the header states no length: then the stream is decoded once, block by block, to count)."""
    container, stream = _open(path)
    with container:
        rate = int(stream.codec_context.sample_rate or 0)
        channels = int(stream.codec_context.channels or 0)
        seconds = _stated_seconds(container, stream)
    if rate <= 0 or channels <= 0:
        raise AudioError(f"{path}: invalid audio stream (rate {rate} Hz, {channels} channels)")
    frames = int(round(seconds * rate)) if seconds is not None else sum(len(b) for b in media_blocks(path))
    if frames <= 0:
        raise AudioError(f"{path}: no audio samples (empty or truncated file)")
    return AudioInfo(sample_rate=rate, frames=frames, channels=channels)


def media_blocks(path: str | os.PathLike, block_s: float = 10.0) -> Iterator[np.ndarray]:
    """The first audio stream of `path` as mono float32 blocks at its own rate (`media_rate`),
    about `block_s` seconds each (the last shorter), in order. Raises AudioError naming the file
    when it cannot be opened or decoded, when the rate changes inside the stream, or when it
    decodes to clearly less than its header states."""
    import av

    container, stream = _open(path)
    with container:
        rate = int(stream.codec_context.sample_rate)
        stated = _stated_seconds(container, stream) if any(
            name in container.format.name for name in _EXACT_LENGTH) else None
        pending: list[np.ndarray] = []
        held = decoded = 0
        try:
            for frame in container.decode(stream):
                if frame.sample_rate != rate:
                    raise AudioError(f"{path}: the sample rate changes inside the stream ({rate} -> "
                                     f"{frame.sample_rate} Hz); convert the file first")
                pending.append(_mono(frame))
                held += pending[-1].shape[0]
                if held >= block_s * rate:
                    decoded += held
                    yield np.concatenate(pending)
                    pending, held = [], 0
        except av.error.FFmpegError as error:
            raise AudioError(f"{path}: cannot decode audio, the file is truncated or corrupt "
                             f"({_reason(error)})") from error
        decoded += held
        if pending:
            yield np.concatenate(pending)
    if stated is not None and decoded / rate < stated - _TRUNCATION_SLACK_S:
        raise AudioError(f"{path}: truncated file (header states {stated:.3f} s, decoded {decoded / rate:.3f} s)")


def media_rate(path: str | os.PathLike) -> int:
    """Sample rate (Hz) of the first audio stream, the rate of `media_blocks`' samples."""
    container, stream = _open(path)
    with container:
        return int(stream.codec_context.sample_rate)


def _mono(frame) -> np.ndarray:
    """One decoded frame (any sample format, any channels) as (samples,) float32 in [-1, 1],
    channels averaged."""
    samples = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if not frame.format.is_planar:  # interleaved: (1, samples * channels)
        samples = samples.reshape(-1, channels).T
    kind = samples.dtype.kind
    if kind == "u":  # unsigned 8-bit: 128 is zero
        samples = (samples.astype(np.float32) - 128.0) / 128.0
    elif kind == "i":
        samples = samples.astype(np.float32) / float(2 ** (8 * samples.dtype.itemsize - 1))
    else:
        samples = samples.astype(np.float32, copy=False)
    return samples[0].copy() if channels == 1 else samples.mean(axis=0, dtype=np.float32)


def _reason(error: Exception) -> str:
    """FFmpeg's message without the errno and the repeated path."""
    text = getattr(error, "strerror", None) or str(error)
    return str(text).strip()


__all__ = ["MEDIA_EXTENSIONS", "media_blocks", "media_info", "media_rate"]
