"""Training-only transforms, applied in batch on the model's device; each is the identity in
evaluation mode (`module.eval()`), so `asr.frontend.Frontend`'s mode is the only switch.

- `Narrowband`: some utterances pass through a lower sample rate (telephone band) and back.
- `SpecAugment`: frequency and time masks on normalised features (Park et al. 2019).

Random draws come from torch's global generator, which training seeds per rank and checkpoints,
so an augmented run resumes exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    def forward(self, waveforms: Tensor, lengths: Tensor) -> Tensor:
        """waveforms (batch, samples), lengths (batch,) -> band-limited copy (training) or waveforms."""
        from asr.audio import resample

        rates = [r for r in self.config.rates if r < self.sample_rate]
        if not self.training or self.config.prob <= 0.0 or not rates or waveforms.shape[0] == 0:
            return waveforms
        chosen = torch.rand(waveforms.shape[0], device=waveforms.device) < self.config.prob
        which = torch.randint(len(rates), (waveforms.shape[0],), device=waveforms.device)
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
    def _bands(size: int, max_width: Tensor, limit: Tensor, masks: int) -> Tensor:
        """(batch, size) True inside `masks` random bands of width <= max_width within [0, limit)."""
        batch = max_width.shape[0]
        device = max_width.device
        width = (torch.rand(batch, masks, device=device) * (max_width.unsqueeze(1) + 1)).floor().long()
        width = torch.minimum(width, max_width.unsqueeze(1))  # rand() can round to 1.0 in float32
        start = (torch.rand(batch, masks, device=device) * (limit.unsqueeze(1) - width + 1)).floor().long()
        start = torch.minimum(start, limit.unsqueeze(1) - width).clamp_(min=0)
        position = torch.arange(size, device=device).view(1, 1, size)
        inside = (position >= start.unsqueeze(-1)) & (position < (start + width).unsqueeze(-1))  # (B, masks, size)
        return inside.any(dim=1)

    def forward(self, feats: Tensor, frame_lengths: Tensor) -> Tensor:
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
            mask |= self._bands(dim, max_width, limit, config.freq_masks).unsqueeze(1)
        if config.time_masks > 0 and frames > 0:
            lengths = frame_lengths.to(device).long().clamp(max=frames)
            max_width = (lengths.double() * config.time_width_ratio).floor().long().clamp(max=config.max_time_width)
            mask |= self._bands(frames, max_width.clamp(min=0), lengths, config.time_masks).unsqueeze(2)
        return feats.masked_fill(mask, 0.0)
