"""asr.features: Kaldi agreement, frame counts, CMVN statistics, SpecAugment masks."""

import dataclasses
import math

import pytest
import soundfile
import torch
import torchaudio.compliance.kaldi as kaldi

from asr import features
from asr.augment import SpecAugment, SpecAugmentConfig
from asr.errors import ConfigError, DataError
from asr.features import (
    STD_FLOOR,
    WAVEFORM_SCALE,
    FeatureConfig,
    GlobalCMVN,
    compute_cmvn,
    compute_features,
    num_frames,
)

# lengths around the edge cases: several seconds, not a multiple of the shift, exactly one window,
# one sample short of a window (no frames)
LENGTHS = [16000, 12345, 400, 399, 7000]


def _batch(lengths, seed=0):
    """Zero-padded batch of speech-like signals (tones with harmonics + noise + a DC offset), in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    waveforms = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        t = torch.arange(n) / 16000
        f0 = 120.0 + 40 * i
        tone = sum(0.2 / k * torch.sin(2 * math.pi * f0 * k * t) for k in range(1, 6))
        waveforms[i, :n] = tone + 0.02 * torch.randn(n, generator=generator) + 0.01
    return waveforms, torch.tensor(lengths)


def _kaldi(waveform, config, warp=1.0):
    """Reference features of one utterance (samples,) with torchaudio's Kaldi port (`warp`: its
    VTLN warp factor)."""
    options = dict(
        vtln_warp=warp,
        num_mel_bins=config.num_mel_bins,
        frame_length=config.frame_length_ms,
        frame_shift=config.frame_shift_ms,
        dither=0.0,
        preemphasis_coefficient=config.preemphasis,
        low_freq=config.low_freq,
        high_freq=config.high_freq,
        window_type=config.window_type,
        use_energy=config.use_energy,
        snip_edges=config.snip_edges,
        sample_frequency=config.sample_rate,
        energy_floor=config.energy_floor,
    )
    scaled = waveform.unsqueeze(0) * WAVEFORM_SCALE
    if config.kind == "mfcc":
        return kaldi.mfcc(scaled, num_ceps=config.num_ceps, cepstral_lifter=config.cepstral_lifter, **options)
    return kaldi.fbank(scaled, **options)


CONFIGS = [
    FeatureConfig(),
    FeatureConfig(kind="mfcc", num_mel_bins=40),
    FeatureConfig(num_mel_bins=40, use_energy=True, window_type="hamming"),
    FeatureConfig(kind="mfcc", num_mel_bins=23, use_energy=True, low_freq=40.0, high_freq=-400.0),
    FeatureConfig(kind="mfcc", snip_edges=False, preemphasis=0.0, frame_shift_ms=12.5),
]


@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[3]], ids=["fbank", "mfcc"])
def test_warped_filterbanks_match_kaldis_vtln_per_utterance(config, monkeypatch):
    # vocal tract length perturbation: one factor per utterance, each row against Kaldi's VTLN
    # warp of that factor; 1.0 is Kaldi's own filterbank. Time blocks split the rows too.
    monkeypatch.setattr(features, "CPU_BLOCK_FRAMES", 150)
    waveforms, lengths = _batch(LENGTHS[:3])
    warp = torch.tensor([0.88, 1.0, 1.13])
    feats, frame_lengths = compute_features(waveforms, lengths, config, dither=0.0, warp=warp)
    unwarped, _ = compute_features(waveforms, lengths, config, dither=0.0)
    for i, n in enumerate(LENGTHS[:3]):
        valid = int(frame_lengths[i])
        reference = _kaldi(waveforms[i, :n], config, warp=float(warp[i]))
        torch.testing.assert_close(feats[i, :valid], reference, atol=1e-3, rtol=0)
        if warp[i] != 1.0:
            assert (unwarped[i, :valid] - reference).abs().max() > 1.0  # the warp changed them


def test_a_warp_moves_a_tone_to_the_filter_of_its_warped_frequency():
    config = FeatureConfig()
    t = torch.arange(16000) / 16000
    tone = (0.5 * torch.sin(2 * math.pi * 1000.0 * t)).repeat(3, 1)
    feats, _ = compute_features(tone, torch.full((3,), 16000), config, dither=0.0, warp=torch.tensor([1.0, 1.1, 0.9]))

    def mel(hz):
        return 1127.0 * math.log(1.0 + hz / 700.0)

    spacing = (mel(8000.0) - mel(config.low_freq)) / (config.num_mel_bins + 1)
    expected = [round((mel(factor * 1000.0) - mel(config.low_freq)) / spacing) - 1 for factor in (1.0, 1.1, 0.9)]
    assert feats.mean(dim=1).argmax(dim=-1).tolist() == expected  # a formant at F reads as one at a * F


@pytest.mark.parametrize("block", [None, 7, 200], ids=["one-block", "time-blocks", "row-blocks"])
@pytest.mark.parametrize("config", CONFIGS,
                         ids=lambda c: f"{c.kind}-{c.num_mel_bins}-e{int(c.use_energy)}-s{int(c.snip_edges)}")
def test_matches_kaldi_per_utterance_in_one_batch(config, block, monkeypatch):
    # The CPU computes in blocks of frames: 7 splits every utterance in time, 200 puts two
    # utterances (98 frames long at most) in each block.
    if block is not None:
        monkeypatch.setattr(features, "CPU_BLOCK_FRAMES", block)
    waveforms, lengths = _batch(LENGTHS)
    feats, frame_lengths = compute_features(waveforms, lengths, config)
    assert feats.dtype == torch.float32
    assert feats.shape == (len(LENGTHS), num_frames(max(LENGTHS), config), config.dim)
    assert frame_lengths.tolist() == [num_frames(n, config) for n in LENGTHS]
    for i, n in enumerate(LENGTHS):
        valid = int(frame_lengths[i])
        if n >= config.window_size:  # the Kaldi port refuses shorter input
            reference = _kaldi(waveforms[i, :n], config)
            assert reference.shape == (valid, config.dim)
            torch.testing.assert_close(feats[i, :valid], reference, atol=1e-3, rtol=0)
        elif config.snip_edges:
            assert valid == 0
        assert torch.all(feats[i, valid:] == 0), "padding frames must be zero"


def test_padding_content_is_ignored():
    waveforms, lengths = _batch([16000, 9000])
    noisy = waveforms.clone()
    noisy[1, 9000:] = 0.5  # garbage past the end of utterance 1
    a, _ = compute_features(waveforms, lengths, FeatureConfig())
    b, _ = compute_features(noisy, lengths, FeatureConfig())
    assert torch.equal(a, b)


def test_num_frames_rule():
    config = FeatureConfig()  # 400-sample window, 160-sample shift
    for n in [0, 1, 399, 400, 559, 560, 16000]:
        expected = 0 if n < 400 else 1 + (n - 400) // 160
        assert num_frames(n, config) == expected
    counts = num_frames(torch.tensor([0, 399, 400, 560, 16000]), config)
    assert counts.dtype == torch.int64 and counts.tolist() == [0, 0, 1, 2, 98]
    reflected = dataclasses.replace(config, snip_edges=False)
    assert num_frames(16000, reflected) == 100 and num_frames(79, reflected) == 0


def test_all_too_short_batch():
    feats, frame_lengths = compute_features(torch.zeros(2, 300), torch.tensor([300, 100]), FeatureConfig())
    assert feats.shape == (2, 0, 80) and frame_lengths.tolist() == [0, 0]


def test_dither_only_when_configured():
    waveforms, lengths = _batch([8000])
    clean, _ = compute_features(waveforms, lengths, FeatureConfig())
    dithered, _ = compute_features(waveforms, lengths, FeatureConfig(dither=1.0))
    assert not torch.equal(clean, dithered)
    assert (clean - dithered).abs().mean() < 0.1  # one int16 step of noise on a loud signal


def test_bad_config_is_a_config_error():
    with pytest.raises(ConfigError, match="kind"):
        FeatureConfig(kind="plp")
    with pytest.raises(ConfigError, match="num_ceps"):
        FeatureConfig(kind="mfcc", num_mel_bins=10, num_ceps=13)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    waveforms, lengths = _batch(LENGTHS)
    for config in CONFIGS[:2]:
        cpu, cpu_lengths = compute_features(waveforms, lengths, config)
        with torch.autocast("cuda", dtype=torch.float16):
            gpu, gpu_lengths = compute_features(waveforms.cuda(), lengths.cuda(), config)
        assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
        assert torch.equal(gpu_lengths.cpu(), cpu_lengths)
        torch.testing.assert_close(gpu.cpu(), cpu, atol=2e-3, rtol=0)


def _write_corpus(folder, lengths):
    records = []
    waveforms, _ = _batch(lengths, seed=3)
    for i, n in enumerate(lengths):
        path = folder / f"utt{i}.flac"
        soundfile.write(path, waveforms[i, :n].numpy(), 16000, subtype="PCM_16")
        records.append({"id": f"utt{i}", "audio": str(path), "duration": n / 16000, "text": "A"})
    return records


@pytest.mark.parametrize("kind", ["fbank", "mfcc"])
def test_cmvn_matches_direct_computation(tmp_path, kind):
    from asr.audio import load_audio

    records = _write_corpus(tmp_path, [16000, 5000, 12000, 300, 9000])
    config = FeatureConfig(kind=kind)
    cmvn = compute_cmvn(records, config, batch_size=2)
    # independent: Kaldi features of each file, concatenated
    feats = torch.cat(
        [_kaldi(load_audio(r["audio"]), config) for r in records if r["duration"] * 16000 >= 400]
    ).double()
    torch.testing.assert_close(cmvn.mean.double(), feats.mean(0), atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(cmvn.std.double(), feats.std(0, unbiased=False), atol=1e-3, rtol=1e-4)


def test_cmvn_apply_save_load(tmp_path):
    mean, std = torch.randn(5), torch.rand(5) + 0.5
    cmvn = GlobalCMVN(mean, std)
    feats = torch.randn(2, 4, 5)
    feats[1, 2:] = 0
    out = cmvn(feats, torch.tensor([4, 2]))
    torch.testing.assert_close(out[0], (feats[0] - mean) / std)
    torch.testing.assert_close(out[1, :2], (feats[1, :2] - mean) / std)
    assert torch.all(out[1, 2:] == 0)
    cmvn.save(tmp_path / "cmvn.pt")
    loaded = GlobalCMVN.load(tmp_path / "cmvn.pt")
    assert torch.equal(loaded.mean, cmvn.mean) and torch.equal(loaded.std, cmvn.std)
    assert set(cmvn.to_dict()) == {"mean", "std"}
    with pytest.raises(DataError, match="missing.pt"):
        GlobalCMVN.load(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(DataError, match="junk.pt"):
        GlobalCMVN.load(tmp_path / "junk.pt")


def test_utterance_cmn_removes_each_utterances_own_mean_after_global_cmvn():
    from asr.frontend import Frontend

    torch.manual_seed(0)
    mean, std = torch.randn(80), torch.rand(80) + 0.5
    waves = torch.randn(2, 16000) * 0.1
    waves[1, 9000:] = 0.0  # padding of the shorter utterance
    lengths = torch.tensor([16000, 9000])
    plain = Frontend(FeatureConfig(), GlobalCMVN(mean, std)).eval()
    cmn = Frontend(FeatureConfig(utterance_cmn=True), GlobalCMVN(mean, std)).eval()
    (reference, frames), (out, frames_cmn) = plain(waves, lengths), cmn(waves, lengths)
    assert torch.equal(frames, frames_cmn)
    for row, n in enumerate(frames.tolist()):
        valid = reference[row, :n].double()
        torch.testing.assert_close(out[row, :n].double(), valid - valid.mean(dim=0), atol=1e-5, rtol=0)
        assert torch.all(out[row, n:] == 0)
    # so the global mean no longer matters: another one gives the same output
    shifted = Frontend(FeatureConfig(utterance_cmn=True), GlobalCMVN(mean + 1.0, std)).eval()
    torch.testing.assert_close(shifted(waves, lengths)[0], out, atol=1e-5, rtol=0)


def test_the_training_frontend_warps_with_vtlp_and_refuses_a_filterbank_without_room_for_it():
    from asr.augment import VtlpConfig
    from asr.frontend import Frontend

    mean, std = torch.zeros(80), torch.ones(80)
    waves, lengths = _batch([16000, 12000])
    config = FeatureConfig(dither=0.0)
    no_masks = SpecAugmentConfig(freq_masks=0, time_masks=0)
    frontend = Frontend(config, GlobalCMVN(mean, std), no_masks, vtlp=VtlpConfig(prob=1.0, warp=(1.1, 1.1))).train()
    out, _ = frontend(waves, lengths)
    torch.testing.assert_close(out, compute_features(waves, lengths, config, warp=torch.tensor([1.1, 1.1]))[0])
    torch.testing.assert_close(frontend.eval()(waves, lengths)[0], compute_features(waves, lengths, config)[0])
    with pytest.raises(ConfigError, match="vtlp: the warp needs features.low_freq < 100 Hz"):
        Frontend(FeatureConfig(low_freq=150.0), GlobalCMVN(mean, std), vtlp=VtlpConfig(prob=0.5))


def test_cmvn_from_stats_floors_std():
    values = torch.tensor([[1.0, 3.0], [1.0, 5.0], [1.0, 7.0]], dtype=torch.float64)  # column 0 constant
    cmvn = GlobalCMVN.from_stats(values.sum(0), values.square().sum(0), 3)
    torch.testing.assert_close(cmvn.mean, torch.tensor([1.0, 5.0]))
    torch.testing.assert_close(cmvn.std, torch.tensor([STD_FLOOR, math.sqrt(8 / 3)]))


def test_cmvn_unreadable_record_names_file(tmp_path):
    from asr.errors import AudioError

    records = [{"id": "x", "audio": str(tmp_path / "gone.wav"), "duration": 1.0}]
    with pytest.raises(AudioError, match="gone.wav"):
        compute_cmvn(records, FeatureConfig())


def test_specaugment_eval_is_identity():
    augment = SpecAugment(SpecAugmentConfig()).eval()
    feats = torch.randn(3, 50, 80)
    assert augment(feats, torch.tensor([50, 30, 10])) is feats


def test_specaugment_masks_within_limits():
    config = SpecAugmentConfig(freq_masks=2, freq_width=10, time_masks=3, time_width_ratio=0.1, max_time_width=8)
    augment = SpecAugment(config).train()
    torch.manual_seed(0)
    lengths = torch.tensor([200, 120, 60, 7])
    batch, frames, dim = 4, 200, 40
    masked_cols = masked_rows = 0
    column_patterns = set()
    for _ in range(20):
        feats = torch.randn(batch, frames, dim).abs() + 1.0  # never zero
        valid = torch.arange(frames).unsqueeze(0) < lengths.unsqueeze(1)
        feats[~valid] = 0.0
        out = augment(feats, lengths)
        for i, n in enumerate(lengths.tolist()):
            zero = out[i, :n] == 0
            unchanged = out[i, :n] == feats[i, :n]
            assert torch.all(zero | unchanged), "values are either kept or zeroed"
            zero_cols = zero.all(dim=0)  # frequency bands masked over all valid frames
            zero_rows = zero.all(dim=1)  # frames masked over all dimensions
            # every zero lies in a masked band or a masked frame (at most 2 x 10 of 40 bands are
            # masked, so a masked frame is never also a fully masked band and vice versa)
            assert torch.equal(zero, zero_cols.unsqueeze(0) | zero_rows.unsqueeze(1))
            assert zero_cols.sum() <= config.freq_masks * config.freq_width
            widest = min(config.max_time_width, int(n * config.time_width_ratio))
            assert zero_rows.sum() <= config.time_masks * widest
            masked_cols += int(zero_cols.sum())
            column_patterns.add(tuple(zero_cols.tolist()))
            masked_rows += int(zero_rows.sum())
            assert torch.all(out[i, n:] == 0), "padding stays zero"
    assert masked_cols > 0 and masked_rows > 0, "masks were applied"
    assert len(column_patterns) > 5, "masks are drawn per utterance"


def test_narrowband_passes_chosen_utterances_through_the_lower_rate():
    from asr.audio import resample
    from asr.augment import Narrowband, NarrowbandConfig

    waveforms, lengths = _batch([16000, 9000])
    waveforms[:, :] += 0.05 * torch.randn(waveforms.shape, generator=torch.Generator().manual_seed(1))
    waveforms[1, 9000:] = 0.0
    narrowband = Narrowband(NarrowbandConfig(prob=1.0, rates=(8000,)), 16000)
    out = narrowband(waveforms, lengths)
    assert out.shape == waveforms.shape
    # Exactly what loading an 8 kHz recording of the utterance at 16 kHz gives.
    expected = resample(resample(waveforms[0], 16000, 8000), 8000, 16000)[:16000]
    torch.testing.assert_close(out[0], expected)
    assert torch.all(out[1, 9000:] == 0), "padding stays zero"
    # The added white noise had half its energy above 4 kHz; under 1% of that is left.
    power = torch.fft.rfft(out[0]).abs().square()
    original = torch.fft.rfft(waveforms[0]).abs().square()
    assert power[4100:].sum() < 1e-2 * original[4100:].sum()
    torch.testing.assert_close(power[:3900].sum(), original[:3900].sum(), rtol=0.02, atol=0)


def test_narrowband_is_identity_in_eval_and_at_probability_zero():
    from asr.augment import Narrowband, NarrowbandConfig

    waveforms, lengths = _batch([8000, 5000])
    assert Narrowband(NarrowbandConfig(prob=1.0), 16000).eval()(waveforms, lengths) is waveforms
    assert Narrowband(NarrowbandConfig(prob=0.0), 16000)(waveforms, lengths) is waveforms
    # A rate at or above the model's is no narrowing.
    assert Narrowband(NarrowbandConfig(prob=1.0, rates=(16000,)), 16000)(waveforms, lengths) is waveforms


def test_narrowband_chooses_about_prob_of_the_utterances():
    from asr.augment import Narrowband, NarrowbandConfig

    torch.manual_seed(0)
    waveforms = torch.randn(400, 1600) * 0.1
    lengths = torch.full((400,), 1600)
    out = Narrowband(NarrowbandConfig(prob=0.25, rates=(8000, 11025)), 16000)(waveforms, lengths)
    changed = (out - waveforms).abs().amax(dim=1) > 1e-3
    assert 70 <= int(changed.sum()) <= 130


@pytest.mark.parametrize("values,key", [({"prob": 1.5}, "narrowband.prob"), ({"rates": ()}, "narrowband.rates"),
                                        ({"rates": (0,)}, "narrowband.rates")])
def test_narrowband_config_errors_name_the_key(values, key):
    from asr.augment import NarrowbandConfig

    with pytest.raises(ConfigError, match=key):
        NarrowbandConfig(**values)
