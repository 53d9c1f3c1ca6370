"""Training-only transforms, applied in batch on the model's device; each is the identity in
evaluation mode (`module.eval()`), so `asr.frontend.Frontend`'s mode is the only switch. In the
order the front-end applies them:

- `SpeedPerturb`: some utterances played faster or slower by resampling (Kaldi's and ESPnet's
  0.9/1.0/1.1 speed perturbation: tempo and pitch change together, lengths change).
- `Reverb`: convolution with a simulated room impulse response (see `Reverb`).
- `AdditiveNoise`: white, pink or brown noise, or babble (other utterances of the batch), at a
  random signal-to-noise ratio.
- `Gain`: a random level change in dB.
- `Narrowband`: some utterances pass through a lower sample rate (telephone band) and back.
- `Vtlp`: vocal tract length perturbation, a warp factor per utterance for the filterbank that
  `asr.features.compute_features` then applies (another speaker's formants, same tempo).
- `SpecAugment`: frequency and time masks on normalised features (Park et al. 2019).

Each has a config section with a probability (0 = off: no random number is drawn) and ranges.
Random draws come from the `generator` each forward takes (None: torch's global one); training
seeds one per batch from (seed, rank, epoch, batch), so an augmented run resumes exactly. Every
waveform transform takes (waveforms (B, samples), lengths (B,), generator) and returns
(waveforms, lengths), keeping padding at zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor, nn

from asr.errors import ConfigError
from asr.lengths import valid_mask


@dataclass(frozen=True)
class NarrowbandConfig:
    """Narrow-band augmentation: some training utterances are band-limited as if recorded at a
    lower sample rate (telephone 8 kHz, ...) and brought back to the model's rate."""

    prob: float = 0.0  # fraction of training utterances made narrow-band; 0 = off
    rates: tuple[int, ...] = (8000,)  # sample rates (Hz) to pass through, one drawn per chosen utterance

    def __post_init__(self) -> None:
        if not 0.0 <= self.prob <= 1.0:
            raise ConfigError(f"narrowband.prob: expected a probability in [0, 1], got {self.prob!r}")
        if not self.rates or not all(isinstance(r, int) and r > 0 for r in self.rates):
            raise ConfigError(f"narrowband.rates: expected positive sample rates in Hz, got {self.rates!r}")


class Narrowband(nn.Module):
    """Passes a random `prob` of the utterances of a batch through a lower sample rate, in
    training mode only (identity in eval mode).

    A model trained on 16 kHz full-band audio has never seen the empty upper half of the spectrum
    that an 8 kHz recording leaves after upsampling, and transcribes such audio badly. Each chosen
    utterance is resampled down to one of `rates` and back up with `asr.audio.resample` -- the
    same band-limited resampler `load_audio` uses on an 8 kHz file -- so training sees exactly what
    inference will. Rates at or above the model's are skipped. Lengths are unchanged.
    """

    def __init__(self, config: NarrowbandConfig, sample_rate: int):
        super().__init__()
        self.config = config
        self.sample_rate = sample_rate

    def forward(self, waveforms: Tensor, lengths: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """waveforms (batch, samples), lengths (batch,) -> band-limited copy (training) or waveforms."""
        from asr.audio import resample

        rates = [r for r in self.config.rates if r < self.sample_rate]
        if not self.training or self.config.prob <= 0.0 or not rates or waveforms.shape[0] == 0:
            return waveforms
        chosen = torch.rand(waveforms.shape[0], device=waveforms.device, generator=generator) < self.config.prob
        which = torch.randint(len(rates), (waveforms.shape[0],), device=waveforms.device, generator=generator)
        if not bool(chosen.any()):
            return waveforms
        out = waveforms.clone()
        samples = waveforms.shape[1]
        for index, rate in enumerate(rates):
            rows = (chosen & (which == index)).nonzero().squeeze(1)
            if rows.numel():
                low = resample(waveforms[rows], self.sample_rate, rate)
                out[rows] = resample(low, rate, self.sample_rate)[:, :samples]
        # Resampling spreads a little energy past each utterance's end; padding stays zero.
        return out.masked_fill_(~valid_mask(lengths.to(waveforms.device), samples), 0.0)


@dataclass(frozen=True)
class SpecAugmentConfig:
    """SpecAugment masks (Park et al. 2019), without time warping."""

    freq_masks: int = 2  # frequency masks per utterance
    freq_width: int = 27  # widest frequency mask, in feature dimensions (width drawn from [0, freq_width])
    time_masks: int = 2  # time masks per utterance
    time_width_ratio: float = 0.05  # widest time mask as a fraction of the utterance's frames
    max_time_width: int = 40  # widest time mask in frames, whatever the length


class SpecAugment(nn.Module):
    """Random frequency and time masks, drawn per utterance; identity in eval mode.

    Masked values are set to 0. Apply it after `GlobalCMVN`, where 0 is the global mean. Each
    mask's width is drawn uniformly from [0, max] and its start uniformly among the positions where
    it fits; time masks stay inside each utterance's valid frames, padding is left as it is.
    """

    def __init__(self, config: SpecAugmentConfig = SpecAugmentConfig()):
        super().__init__()
        self.config = config

    @staticmethod
    def _bands(size: int, max_width: Tensor, limit: Tensor, masks: int,
               generator: torch.Generator | None) -> Tensor:
        """(batch, size) True inside `masks` random bands of width <= max_width within [0, limit)."""
        batch = max_width.shape[0]
        device = max_width.device
        width_u, start_u = torch.rand(2, batch, masks, device=device, generator=generator)
        width = (width_u * (max_width.unsqueeze(1) + 1)).floor().long()
        width = torch.minimum(width, max_width.unsqueeze(1))  # rand() can round to 1.0 in float32
        start = (start_u * (limit.unsqueeze(1) - width + 1)).floor().long()
        start = torch.minimum(start, limit.unsqueeze(1) - width).clamp_(min=0)
        position = torch.arange(size, device=device).view(1, 1, size)
        inside = (position >= start.unsqueeze(-1)) & (position < (start + width).unsqueeze(-1))  # (B, masks, size)
        return inside.any(dim=1)

    def forward(self, feats: Tensor, frame_lengths: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """feats (batch, frames, dim), frame_lengths (batch,) -> masked copy (training) or feats (eval)."""
        if not self.training:
            return feats
        config = self.config
        batch, frames, dim = feats.shape
        device = feats.device
        mask = torch.zeros(batch, frames, dim, dtype=torch.bool, device=device)
        if config.freq_masks > 0 and config.freq_width > 0:
            max_width = torch.full((batch,), min(config.freq_width, dim), device=device, dtype=torch.long)
            limit = torch.full((batch,), dim, device=device, dtype=torch.long)
            mask |= self._bands(dim, max_width, limit, config.freq_masks, generator).unsqueeze(1)
        if config.time_masks > 0 and frames > 0:
            lengths = frame_lengths.to(device).long().clamp(max=frames)
            max_width = (lengths.double() * config.time_width_ratio).floor().long().clamp(max=config.max_time_width)
            mask |= self._bands(frames, max_width.clamp(min=0), lengths, config.time_masks, generator).unsqueeze(2)
        return feats.masked_fill(mask, 0.0)


class _Augment(nn.Module):
    """A transform with a config that has a `prob`; the waveform transforms take and return
    (waveforms, lengths, generator) and return (waveforms, lengths). `generator` (None: torch's
    global one) is where every draw comes from."""

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config

    def chosen(self, waveforms: Tensor, generator: torch.Generator | None) -> Tensor | None:
        """(B,) bool: the utterances to act on; None when none, in evaluation, or at prob 0 (no draw then)."""
        if not self.training or self.config.prob <= 0.0 or waveforms.shape[0] == 0 or waveforms.shape[1] == 0:
            return None
        chosen = torch.rand(waveforms.shape[0], device=waveforms.device, generator=generator) < self.config.prob
        return chosen if bool(chosen.any()) else None


def _uniform(low_high: tuple[float, float], count: int, device: torch.device,
             generator: torch.Generator | None) -> Tensor:
    low, high = low_high
    return low + (high - low) * torch.rand(count, device=device, generator=generator)


def _check_range(key: str, value: tuple[float, float], low: float = -math.inf, high: float = math.inf) -> None:
    if len(value) != 2 or not low <= value[0] <= value[1] <= high:
        raise ConfigError(f"{key}: expected [low, high] with {low} <= low <= high <= {high}, got {list(value)!r}")


def _check_prob(key: str, prob: float) -> None:
    if not 0.0 <= prob <= 1.0:
        raise ConfigError(f"{key}: expected a probability in [0, 1], got {prob!r}")


@dataclass(frozen=True)
class SpeedConfig:
    """Speed perturbation: resampling by a factor, as Kaldi's and ESPnet's recipes do (0.9/1.0/1.1)."""

    prob: float = 0.0  # fraction of training utterances perturbed; 0 = off
    factors: tuple[float, ...] = (0.9, 1.0, 1.1)  # speed factors, one drawn per chosen utterance (1.1 = 10% faster)

    def __post_init__(self) -> None:
        _check_prob("speed.prob", self.prob)
        if not self.factors or not all(0.5 <= f <= 2.0 for f in self.factors):
            raise ConfigError(f"speed.factors: expected factors in [0.5, 2], got {list(self.factors)!r}")


class SpeedPerturb(_Augment):
    """Plays chosen utterances `factor` times faster: resampled from factor*rate to rate (the
    band-limited resampler `load_audio` uses), so a length-n utterance becomes ceil(n / factor)
    samples and every frequency is multiplied by `factor`. The batch is re-padded to its new
    longest utterance."""

    def forward(self, waveforms: Tensor, lengths: Tensor,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        from asr.audio import resample

        chosen = self.chosen(waveforms, generator)
        if chosen is None:
            return waveforms, lengths
        which = torch.randint(len(self.config.factors), (waveforms.shape[0],), device=waveforms.device,
                              generator=generator)
        rows, new_lengths = [], lengths.clone()
        for index, factor in enumerate(self.config.factors):
            ratio = Fraction(factor).limit_denominator(100)
            picked = (chosen & (which == index)).nonzero().squeeze(1)
            if picked.numel() == 0 or ratio == 1:
                continue
            out = resample(waveforms[picked], ratio.numerator, ratio.denominator)
            new_lengths[picked] = torch.ceil(lengths[picked].double() * ratio.denominator / ratio.numerator).long()
            rows.append((picked, out))
        if not rows:
            return waveforms, lengths
        total = max(waveforms.shape[1], *(resampled.shape[1] for _, resampled in rows))
        out = waveforms.new_zeros(waveforms.shape[0], total)
        out[:, : waveforms.shape[1]] = waveforms
        for picked, resampled in rows:
            out[picked] = 0.0
            out[picked, : resampled.shape[1]] = resampled
        total = int(new_lengths.max())
        out = out[:, :total]
        return out.masked_fill_(~valid_mask(new_lengths, total), 0.0), new_lengths


@dataclass(frozen=True)
class VtlpConfig:
    """Vocal tract length perturbation (Jaitly and Hinton 2013): the filterbank's frequency axis
    warped per utterance, with Kaldi's VTLN warp function."""

    prob: float = 0.0  # fraction of training utterances warped; 0 = off
    warp: tuple[float, float] = (0.9, 1.1)  # warp factor range, drawn uniformly (Jaitly and Hinton: 0.9-1.1)

    def __post_init__(self) -> None:
        _check_prob("vtlp.prob", self.prob)
        _check_range("vtlp.warp", self.warp, 0.7, 1.3)


class Vtlp(_Augment):
    """Draws the warp factors of a batch: U(warp) for a `prob` of the utterances, 1 for the rest.
    The front-end hands them to `compute_features`, which builds one warped filterbank per
    utterance (Kaldi's piecewise-linear VTLN warp, `asr.features.vtln_warp_hz`): with factor a
    the filter Kaldi centres at f moves to f / a, so a formant at F reads as one at a * F (a > 1:
    a shorter vocal tract). Tempo is unchanged, unlike speed perturbation."""

    def forward(self, waveforms: Tensor, generator: torch.Generator | None = None) -> Tensor | None:
        """(B,) warp factors for the batch `waveforms` (B, samples); None when none is warped."""
        chosen = self.chosen(waveforms, generator)
        if chosen is None:
            return None
        return torch.where(chosen, _uniform(self.config.warp, waveforms.shape[0], waveforms.device, generator), 1.0)


@dataclass(frozen=True)
class GainConfig:
    """A random level change."""

    prob: float = 0.0  # fraction of training utterances; 0 = off
    db: tuple[float, float] = (-6.0, 6.0)  # gain range in dB, drawn uniformly

    def __post_init__(self) -> None:
        _check_prob("gain.prob", self.prob)
        _check_range("gain.db", self.db, -40.0, 40.0)


class Gain(_Augment):
    """Multiplies chosen utterances by 10^(g/20), g uniform in `db`."""

    def forward(self, waveforms: Tensor, lengths: Tensor,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        chosen = self.chosen(waveforms, generator)
        if chosen is None:
            return waveforms, lengths
        gain_db = _uniform(self.config.db, waveforms.shape[0], waveforms.device, generator) * chosen
        return waveforms * torch.pow(10.0, gain_db / 20.0)[:, None], lengths


NOISE_KINDS = ("white", "pink", "brown", "babble")


@dataclass(frozen=True)
class NoiseConfig:
    """Additive noise at a random signal-to-noise ratio."""

    prob: float = 0.0  # fraction of training utterances; 0 = off
    snr_db: tuple[float, float] = (10.0, 30.0)  # SNR range in dB (signal power over noise power), uniform
    kinds: tuple[str, ...] = NOISE_KINDS  # white | pink (1/f) | brown (1/f^2) | babble (other utterances)

    def __post_init__(self) -> None:
        _check_prob("noise.prob", self.prob)
        _check_range("noise.snr_db", self.snr_db, -20.0, 80.0)
        if not self.kinds or not set(self.kinds) <= set(NOISE_KINDS):
            raise ConfigError(f"noise.kinds: expected some of {NOISE_KINDS}, got {list(self.kinds)!r}")


def coloured_noise(shape: tuple[int, int], exponent: float, device: torch.device,
                   generator: torch.Generator | None = None) -> Tensor:
    """Gaussian noise (B, samples) whose power spectrum falls as 1/f^exponent (0 white, 1 pink, 2 brown).
    Shaped at a fast FFT length (`fft_length`) and cut to `samples`."""
    if exponent == 0.0:
        return torch.randn(shape, device=device, generator=generator)
    size = fft_length(shape[-1])
    spectrum = torch.fft.rfft(torch.randn(shape[0], size, device=device, generator=generator), dim=-1)
    freqs = torch.arange(spectrum.shape[-1], device=device, dtype=torch.float32).clamp(min=1.0)
    return torch.fft.irfft(spectrum * freqs.pow(-exponent / 2), n=size, dim=-1)[:, : shape[-1]]


def fft_length(n: int) -> int:
    """The smallest length >= n whose only prime factors are 2, 3 and 5: an FFT of an arbitrary
    length (a batch's padded samples) can be 5-15x slower than at this one, a few percent longer."""
    best = 1 << max(0, n - 1).bit_length()
    five = 1
    while five < best:
        three = five
        while three < best:
            size = three
            while size < n:
                size *= 2
            best = min(best, size)
            three *= 3
        five *= 5
    return best


class AdditiveNoise(_Augment):
    """Adds noise to chosen utterances so that (signal power / noise power) over each utterance's
    valid samples is the drawn SNR. Babble is the sum of the other utterances of the batch
    (rolled in time), scaled the same way."""

    def forward(self, waveforms: Tensor, lengths: Tensor,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        batch, samples = waveforms.shape
        chosen = self.chosen(waveforms, generator)
        if chosen is None:
            return waveforms, lengths
        device, valid = waveforms.device, valid_mask(lengths.to(waveforms.device), samples)
        snr_db = _uniform(self.config.snr_db, batch, device, generator)
        kind = torch.randint(len(self.config.kinds), (batch,), device=device, generator=generator)
        noise = torch.zeros_like(waveforms)
        for index, name in enumerate(self.config.kinds):
            rows = (chosen & (kind == index)).nonzero().squeeze(1)
            if rows.numel():
                noise[rows] = self._noise(name, waveforms, rows, generator)
        noise = noise.masked_fill(~valid, 0.0)
        count = valid.sum(dim=1).clamp(min=1)
        signal_power = waveforms.square().sum(dim=1) / count
        noise_power = noise.square().sum(dim=1) / count
        scale = torch.sqrt(signal_power / (noise_power.clamp(min=1e-20) * torch.pow(10.0, snr_db / 10.0)))
        return waveforms + noise * (scale * chosen)[:, None], lengths

    @staticmethod
    def _noise(name: str, waveforms: Tensor, rows: Tensor, generator: torch.Generator | None) -> Tensor:
        shape = (rows.numel(), waveforms.shape[1])
        if name != "babble":
            return coloured_noise(shape, {"white": 0.0, "pink": 1.0, "brown": 2.0}[name], waveforms.device, generator)
        others = torch.zeros(shape, device=waveforms.device)
        for shift in range(1, min(waveforms.shape[0], 4)):  # up to three other talkers
            others += torch.roll(waveforms, shifts=shift, dims=0)[rows].roll(shift * 1600, dims=1)
        return others if waveforms.shape[0] > 1 else coloured_noise(shape, 1.0, waveforms.device, generator)


@dataclass(frozen=True)
class ReverbConfig:
    """Room reverberation from a simulated impulse response (see `Reverb`)."""

    prob: float = 0.0  # fraction of training utterances; 0 = off
    rt60: tuple[float, float] = (0.2, 0.8)  # reverberation time range (s): the tail decays 60 dB in RT60
    drr_db: tuple[float, float] = (0.0, 12.0)  # direct-to-reverberant energy ratio range (dB)

    def __post_init__(self) -> None:
        _check_prob("reverb.prob", self.prob)
        _check_range("reverb.rt60", self.rt60, 0.05, 3.0)
        _check_range("reverb.drr_db", self.drr_db, -20.0, 40.0)


def room_impulse_response(rt60: Tensor, drr_db: Tensor, sample_rate: int,
                          generator: torch.Generator | None = None) -> Tensor:
    """Impulse responses (B, taps) of a statistical room model (Polack's): a direct-path impulse
    at t = 0, then a Gaussian-noise tail whose amplitude decays as exp(-3 ln(10) t / RT60) (energy
    down 60 dB at RT60), scaled so that direct energy / tail energy is `drr_db`. Taps cover the
    longest RT60."""
    taps = max(2, int(float(rt60.max()) * sample_rate))
    t = torch.arange(taps, device=rt60.device, dtype=torch.float32)[None, :] / sample_rate
    decay = torch.exp(-3 * math.log(10) * t / rt60[:, None])
    tail = torch.randn(rt60.shape[0], taps, device=rt60.device, generator=generator) * decay
    tail[:, 0] = 0.0
    tail_energy = tail.square().sum(dim=1, keepdim=True).clamp(min=1e-20)
    tail = tail * torch.sqrt(torch.pow(10.0, -drr_db / 10.0)[:, None] / tail_energy)
    tail[:, 0] = 1.0
    return tail


class Reverb(_Augment):
    """Convolves chosen utterances with `room_impulse_response` (FFT, in batch), keeps each
    utterance's length (the tail past its end is cut) and its level (RMS)."""

    def __init__(self, config: ReverbConfig, sample_rate: int) -> None:
        super().__init__(config)
        self.sample_rate = sample_rate

    def forward(self, waveforms: Tensor, lengths: Tensor,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        batch, samples = waveforms.shape
        chosen = self.chosen(waveforms, generator)
        if chosen is None:
            return waveforms, lengths
        rows = chosen.nonzero().squeeze(1)
        device = waveforms.device
        rir = room_impulse_response(_uniform(self.config.rt60, rows.numel(), device, generator),
                                    _uniform(self.config.drr_db, rows.numel(), device, generator), self.sample_rate,
                                    generator)
        size = fft_length(samples + rir.shape[1])  # no wrap-around: linear convolution
        dry = waveforms[rows]
        wet = torch.fft.irfft(torch.fft.rfft(dry, n=size) * torch.fft.rfft(rir, n=size), n=size)[:, :samples]
        valid = valid_mask(lengths.to(device)[rows], samples)
        wet = wet.masked_fill(~valid, 0.0)
        level = torch.sqrt(dry.square().sum(dim=1) / wet.square().sum(dim=1).clamp(min=1e-20))
        out = waveforms.clone()
        out[rows] = wet * level[:, None]
        return out, lengths
