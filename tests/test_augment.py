"""Training augmentations: each checked against an independent measurement of its effect
(the speed factor from lengths and pitch, the SNR and noise colour from the output, the RT60 of
the simulated room from its energy decay), identity in evaluation, no random draw when off."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from asr.augment import (
    AdditiveNoise,
    Gain,
    GainConfig,
    NoiseConfig,
    Reverb,
    ReverbConfig,
    SpeedConfig,
    SpeedPerturb,
    Vtlp,
    VtlpConfig,
    coloured_noise,
    fft_length,
    room_impulse_response,
)
from asr.errors import ConfigError

RATE = 16000


def sine(freq: float, seconds: float, amplitude: float = 0.3) -> torch.Tensor:
    return amplitude * torch.sin(2 * math.pi * freq * torch.arange(int(seconds * RATE)) / RATE)


def peak_hz(wave: torch.Tensor) -> float:
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    return float(np.argmax(spectrum)) * RATE / len(wave)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturbation_changes_length_and_pitch_by_the_factor(factor):
    waves = torch.zeros(2, RATE)
    waves[0] = sine(1000, 1.0)
    waves[1, :8000] = sine(500, 0.5)
    lengths = torch.tensor([RATE, 8000])
    out, new_lengths = SpeedPerturb(SpeedConfig(prob=1.0, factors=(factor,))).train()(waves, lengths)
    assert new_lengths.tolist() == [math.ceil(RATE / factor), math.ceil(8000 / factor)]
    assert out.shape[1] == int(new_lengths.max())
    assert peak_hz(out[0, : new_lengths[0]]) == pytest.approx(1000 * factor, abs=3)
    assert peak_hz(out[1, : new_lengths[1]]) == pytest.approx(500 * factor, abs=3)
    assert out[1, new_lengths[1]:].abs().max() == 0  # padding stays zero


def test_off_or_in_evaluation_every_augment_is_the_identity_and_draws_nothing():
    waves, lengths = torch.randn(3, 4000), torch.tensor([4000, 3000, 100])
    augments = [SpeedPerturb(SpeedConfig(prob=1.0)), Gain(GainConfig(prob=1.0)), AdditiveNoise(NoiseConfig(prob=1.0)),
                Reverb(ReverbConfig(prob=1.0), RATE)]
    off = [SpeedPerturb(SpeedConfig()), Gain(GainConfig()), AdditiveNoise(NoiseConfig()), Reverb(ReverbConfig(), RATE)]
    state = torch.get_rng_state()
    for augment in [a.eval() for a in augments] + off:
        out, out_lengths = augment(waves, lengths)
        assert out is waves and out_lengths is lengths
    assert Vtlp(VtlpConfig(prob=1.0)).eval()(waves) is None and Vtlp(VtlpConfig()).train()(waves) is None
    assert torch.equal(torch.get_rng_state(), state)


def test_vtlp_draws_a_factor_in_range_for_its_share_of_the_utterances():
    torch.manual_seed(0)
    factors = Vtlp(VtlpConfig(prob=0.5, warp=(0.9, 1.1))).train()(torch.zeros(4000, 10))
    warped = factors[factors != 1.0]
    assert len(warped) == pytest.approx(2000, abs=150)  # binomial(4000, 0.5): sd 32
    assert 0.9 <= warped.min() and warped.max() <= 1.1 and warped.std() == pytest.approx(0.2 / math.sqrt(12), rel=0.1)


def test_gain_scales_by_the_drawn_decibels():
    waves, lengths = torch.randn(2, 1000), torch.tensor([1000, 1000])
    out, _ = Gain(GainConfig(prob=1.0, db=(6.0, 6.0))).train()(waves, lengths)
    torch.testing.assert_close(out, waves * 10 ** (6 / 20))


@pytest.mark.parametrize("kind", ["white", "pink", "brown", "babble"])
def test_noise_is_added_at_the_drawn_snr(kind):
    torch.manual_seed(0)
    waves = torch.zeros(3, 2 * RATE)
    lengths = torch.tensor([2 * RATE, RATE, 24000])
    for row, (freq, length) in enumerate(zip((300, 700, 1200), lengths.tolist())):
        waves[row, :length] = sine(freq, length / RATE)
    out, _ = AdditiveNoise(NoiseConfig(prob=1.0, snr_db=(12.0, 12.0), kinds=(kind,))).train()(waves, lengths)
    for row, length in enumerate(lengths.tolist()):
        signal, noise = waves[row, :length], out[row, :length] - waves[row, :length]
        assert 10 * math.log10(signal.square().sum() / noise.square().sum()) == pytest.approx(12.0, abs=1e-3)
        assert out[row, length:].abs().sum() == 0


@pytest.mark.parametrize(("exponent", "slope"), [(0.0, 0.0), (1.0, -1.0), (2.0, -2.0)])
def test_coloured_noise_has_the_spectral_slope_of_its_colour(exponent, slope):
    torch.manual_seed(1)
    noise = coloured_noise((16, 1 << 14), exponent, torch.device("cpu"))
    power = (torch.fft.rfft(noise, dim=-1).abs() ** 2).mean(dim=0)[10:4000].numpy()
    freqs = np.arange(10, 4000)
    fitted = np.polyfit(np.log(freqs), np.log(power), 1)[0]
    assert fitted == pytest.approx(slope, abs=0.1)


def test_the_simulated_room_decays_60_db_in_rt60_and_has_the_drawn_drr():
    torch.manual_seed(2)
    rir = room_impulse_response(torch.tensor([0.5]), torch.tensor([3.0]), RATE)[0]
    assert 10 * math.log10(rir[0] ** 2 / rir[1:].square().sum()) == pytest.approx(3.0, abs=1e-3)
    # Schroeder backward integration of the tail: the -5..-25 dB slope, extrapolated to -60 dB.
    energy = torch.flip(torch.cumsum(torch.flip(rir[1:].square(), [0]), 0), [0])
    decay_db = 10 * torch.log10(energy / energy[0])
    t5, t25 = [int((decay_db > level).sum()) / RATE for level in (-5.0, -25.0)]
    assert 3 * (t25 - t5) == pytest.approx(0.5, rel=0.1)


def test_reverb_convolves_with_the_room_and_keeps_length_and_level():
    torch.manual_seed(3)
    impulse = torch.zeros(1, RATE)
    impulse[0, 100] = 1.0
    reverb = Reverb(ReverbConfig(prob=1.0, rt60=(0.3, 0.3), drr_db=(0.0, 0.0)), RATE).train()
    state = torch.get_rng_state()
    out, lengths = reverb(impulse, torch.tensor([RATE]))
    torch.set_rng_state(state)
    torch.rand(1)  # the choice of utterances, then the room's own draws, in that order
    rir = room_impulse_response(0.3 + 0.0 * torch.rand(1), 0.0 * torch.rand(1), RATE)[0]
    expected = torch.zeros(RATE)
    expected[100:100 + len(rir)] = rir[: RATE - 100]
    expected *= 1.0 / expected.norm()  # the level of the input (one unit impulse) is kept
    torch.testing.assert_close(out[0], expected, atol=1e-5, rtol=1e-4)
    assert lengths.tolist() == [RATE]


@pytest.mark.parametrize(("config", "values"), [
    (SpeedConfig, {"factors": (3.0,)}), (GainConfig, {"db": (6.0, -6.0)}), (NoiseConfig, {"kinds": ("pink", "rain")}),
    (ReverbConfig, {"rt60": (0.0, 0.5)}), (NoiseConfig, {"prob": 1.5}), (VtlpConfig, {"warp": (0.5, 1.1)})])
def test_bad_augmentation_settings_name_the_key(config, values):
    with pytest.raises(ConfigError, match=config.__name__.removesuffix("Config").lower()):
        config(**values)


def test_fft_length_is_the_next_length_of_only_2_3_and_5():
    def smooth(n: int) -> bool:
        for p in (2, 3, 5):
            while n % p == 0:
                n //= p
        return n == 1

    expected = [next(m for m in range(n, 2 * n + 2) if smooth(m)) for n in range(1, 3000)]
    assert [fft_length(n) for n in range(1, 3000)] == expected
    assert fft_length(171201) == 172800 and fft_length(1 << 20) == 1 << 20


def test_a_generator_gives_the_frontend_its_draws_and_leaves_the_global_stream_alone():
    from asr.features import FeatureConfig, GlobalCMVN
    from asr.frontend import Frontend

    features = FeatureConfig(num_mel_bins=23)
    frontend = Frontend(features, GlobalCMVN(torch.zeros(23), torch.ones(23)),
                        speed=SpeedConfig(prob=1.0), reverb=ReverbConfig(prob=1.0), noise=NoiseConfig(prob=1.0),
                        gain=GainConfig(prob=1.0), vtlp=VtlpConfig(prob=1.0)).train()
    waves, lengths = torch.randn(3, RATE), torch.tensor([RATE, 12000, 9000])

    def run(seed: int):
        return frontend(waves, lengths, torch.Generator().manual_seed(seed))

    state = torch.get_rng_state()
    (a, a_lengths), (b, b_lengths), (c, _) = run(7), run(7), run(8)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and torch.equal(a_lengths, b_lengths) and not torch.equal(a, c)
