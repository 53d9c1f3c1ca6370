"""asr.audio: round trips through soundfile-written files, segments, resampling, errors."""

import math

import numpy as np
import pytest
import soundfile
import torch

from asr.audio import SAMPLE_RATE, AudioInfo, audio_info, load_audio, resample
from asr.errors import AudioError


def _signal(samples: int, rate: int, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    """A sine plus a little noise, peak below 0.6."""
    t = np.arange(samples) / rate
    noise = np.random.default_rng(seed).standard_normal(samples) * 0.02
    return (0.5 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


# (extension, libsndfile subtype, absolute tolerance of the round trip: quantisation step + scale)
FORMATS = [
    ("wav", "PCM_U8", 2.0 / 128),
    ("wav", "PCM_16", 2.0 / 32768),
    ("wav", "PCM_24", 2.0 / 2**23),
    ("wav", "PCM_32", 1e-7),
    ("wav", "FLOAT", 0.0),
    ("flac", "PCM_16", 2.0 / 32768),
    ("flac", "PCM_24", 2.0 / 2**23),
]


@pytest.mark.parametrize("ext,subtype,tolerance", FORMATS)
def test_round_trip_values(tmp_path, ext, subtype, tolerance):
    signal = _signal(8000, SAMPLE_RATE)
    path = tmp_path / f"a_{subtype}.{ext}"
    soundfile.write(path, signal, SAMPLE_RATE, subtype=subtype)
    waveform = load_audio(path)
    assert waveform.dtype == torch.float32 and waveform.shape == (8000,)
    np.testing.assert_allclose(waveform.numpy(), signal, atol=tolerance, rtol=0)


def test_ogg_vorbis_round_trip(tmp_path):
    signal = _signal(16000, SAMPLE_RATE)
    path = tmp_path / "a.ogg"
    soundfile.write(path, signal, SAMPLE_RATE, format="OGG", subtype="VORBIS")
    waveform = load_audio(path).numpy()
    assert waveform.shape == signal.shape
    # lossy: the decoded signal is still the same signal
    assert np.corrcoef(waveform, signal)[0, 1] > 0.99


def test_info_reads_header(tmp_path):
    path = tmp_path / "stereo.flac"
    soundfile.write(path, np.zeros((22050, 2), dtype=np.float32), 22050, subtype="PCM_16")
    info = audio_info(path)
    assert info == AudioInfo(sample_rate=22050, frames=22050, channels=2)
    assert info.duration == pytest.approx(1.0)


def test_stereo_is_averaged(tmp_path):
    left, right = _signal(4000, SAMPLE_RATE, 300.0, seed=1), _signal(4000, SAMPLE_RATE, 700.0, seed=2)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path).numpy(), (left + right) / 2, atol=1e-7)


@pytest.mark.parametrize("rate", [8000, 22050, 44100])
def test_resampled_to_requested_rate(tmp_path, rate):
    seconds, freq = 0.5, 440.0
    samples = int(seconds * rate)
    t = np.arange(samples) / rate
    path = tmp_path / f"sine_{rate}.wav"
    soundfile.write(path, (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, subtype="FLOAT")
    waveform = load_audio(path, SAMPLE_RATE).numpy()
    assert len(waveform) == math.ceil(samples * SAMPLE_RATE / rate)
    # away from the edges, the same 440 Hz sine sampled at 16 kHz
    expected = 0.5 * np.sin(2 * np.pi * freq * np.arange(len(waveform)) / SAMPLE_RATE)
    np.testing.assert_allclose(waveform[200:-200], expected[200:-200], atol=5e-3)


def test_resample_same_rate_is_identity():
    waveform = torch.randn(2, 100)
    assert resample(waveform, 16000, 16000) is waveform
    assert resample(waveform, 16000, 8000).shape == (2, 50)


@pytest.mark.parametrize("ext", ["wav", "flac"])
def test_segment_equals_slice_of_full_read(tmp_path, ext):
    path = tmp_path / f"long.{ext}"
    soundfile.write(path, _signal(32000, SAMPLE_RATE), SAMPLE_RATE, subtype="PCM_16")
    full = load_audio(path)
    segment = load_audio(path, offset=0.25, duration=0.5)
    assert torch.equal(segment, full[4000:12000])
    # past the end: cut at the end
    assert torch.equal(load_audio(path, offset=1.5, duration=10.0), full[24000:])
    assert torch.equal(load_audio(path, offset=1.0), full[16000:])


def _assert_names_file(path, call=load_audio):
    with pytest.raises(AudioError) as raised:
        call(path)
    assert str(path) in str(raised.value)
    return str(raised.value)


def test_missing_file(tmp_path):
    _assert_names_file(tmp_path / "nope.wav")
    _assert_names_file(tmp_path / "nope.flac", audio_info)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    assert "empty" in _assert_names_file(path)
    _assert_names_file(path, audio_info)


def test_undecodable_file(tmp_path):
    path = tmp_path / "noise.flac"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    _assert_names_file(path)


@pytest.mark.parametrize("ext,subtype", [("wav", "PCM_16"), ("flac", "PCM_16"), ("ogg", "VORBIS")])
def test_truncated_file(tmp_path, ext, subtype):
    whole = tmp_path / f"whole.{ext}"
    soundfile.write(whole, _signal(32000, SAMPLE_RATE), SAMPLE_RATE, subtype=subtype)
    data = whole.read_bytes()
    path = tmp_path / f"cut.{ext}"
    path.write_bytes(data[: len(data) // 2])
    _assert_names_file(path)


def test_header_without_samples(tmp_path):
    path = tmp_path / "zero.wav"
    soundfile.write(path, np.zeros(0, dtype=np.float32), SAMPLE_RATE, subtype="PCM_16")
    _assert_names_file(path)


def test_offset_past_end(tmp_path):
    path = tmp_path / "short.wav"
    soundfile.write(path, _signal(1600, SAMPLE_RATE), SAMPLE_RATE, subtype="PCM_16")
    message = _assert_names_file(path, lambda p: load_audio(p, offset=2.0))
    assert "past the end" in message


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("subtype", ["FLOAT", "DOUBLE"])
def test_non_finite_samples_are_refused(tmp_path, bad, subtype):
    samples = _signal(16000, SAMPLE_RATE)
    samples[8000] = bad
    path = tmp_path / "bad.wav"
    soundfile.write(path, samples, SAMPLE_RATE, subtype=subtype)
    message = _assert_names_file(path)
    assert "NaN or infinite" in message and "0.500 s" in message
    # A segment that leaves the bad sample out reads; one that holds it names the file.
    assert load_audio(path, duration=0.4).shape == (6400,)
    assert "0.500 s" in _assert_names_file(path, lambda p: load_audio(p, offset=0.25, duration=0.5))


def test_non_finite_stereo_and_resampled(tmp_path):
    samples = np.stack([_signal(8000, 8000), _signal(8000, 8000, seed=1)], axis=1)
    samples[100, 1] = math.nan  # one channel only: the mono average is NaN too
    path = tmp_path / "stereo.wav"
    soundfile.write(path, samples, 8000, subtype="FLOAT")
    _assert_names_file(path)
