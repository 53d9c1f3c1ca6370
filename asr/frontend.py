"""The front-end: a padded waveform batch -> the model's input, as one module.

    waveforms (B, samples) --Narrowband (training)--> --fbank/MFCC (dither, Vtlp's warped
        filterbanks in training)-->
        --global CMVN--> [--utterance mean removed (features.utterance_cmn)-->]
        --SpecAugment (training)--> features (B, frames, dim), frame_lengths (B,)

Training and inference run this same module, so they cannot drift apart; its `train()`/`eval()`
mode is the only switch: in evaluation there is no augmentation and no dither, and the output is
a deterministic function of the waveforms.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from asr.augment import (
    AdditiveNoise,
    Gain,
    GainConfig,
    Narrowband,
    NarrowbandConfig,
    NoiseConfig,
    Reverb,
    ReverbConfig,
    SpecAugment,
    SpecAugmentConfig,
    SpeedConfig,
    SpeedPerturb,
    Vtlp,
    VtlpConfig,
)
from asr.features import WAVEFORM_SCALE, FeatureConfig, GlobalCMVN, check_vtln, compute_features
from asr.lengths import valid_mask


class Frontend(nn.Module):
    """Waveforms -> normalised (and, in training, augmented) features, on the waveforms' device.

    It holds no trainable parameters: CMVN statistics are buffers; the augmentations draw from the
    generator `forward` is given (training seeds one per batch) or torch's global one.
    """

    def __init__(self, features: FeatureConfig, cmvn: GlobalCMVN, specaug: SpecAugmentConfig = SpecAugmentConfig(),
                 narrowband: NarrowbandConfig = NarrowbandConfig(), speed: SpeedConfig = SpeedConfig(),
                 reverb: ReverbConfig = ReverbConfig(), noise: NoiseConfig = NoiseConfig(),
                 gain: GainConfig = GainConfig(), vtlp: VtlpConfig = VtlpConfig()) -> None:
        super().__init__()
        if vtlp.prob > 0:
            check_vtln(features)
        self.features = features
        self.cmvn = cmvn
        # in the order they apply: the room, then the noise in it, then the recording chain
        self.waveform_augments = nn.ModuleList([SpeedPerturb(speed), Reverb(reverb, features.sample_rate),
                                                AdditiveNoise(noise), Gain(gain)])
        self.narrowband = Narrowband(narrowband, features.sample_rate)
        self.vtlp = Vtlp(vtlp)
        self.specaug = SpecAugment(specaug)

    @classmethod
    def for_training(cls, config, cmvn: GlobalCMVN) -> "Frontend":
        """The front-end of an `asr.experiment.ExperimentConfig`, with every augmentation section."""
        return cls(config.features, cmvn, config.specaug, config.narrowband, config.speed, config.reverb,
                   config.noise, config.gain, config.vtlp)

    @property
    def sample_rate(self) -> int:
        """Sample rate (Hz) the waveforms must have."""
        return self.features.sample_rate

    @property
    def dim(self) -> int:
        """Feature dimension of the output."""
        return self.features.dim

    @torch.no_grad()
    def forward(self, waveforms: Tensor, wave_lengths: Tensor, generator: torch.Generator | None = None,
                warp: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """waveforms (B, samples) at `sample_rate`, zero-padded, float in [-1, 1] or int16 (the loader's
        batches, `asr.data.dataset.Batch`: divided by WAVEFORM_SCALE here, on the device); wave_lengths
        (B,) -> features (B, frames, dim) float32 (padding frames 0), frame_lengths (B,) int64. Speed
        perturbation (training) changes lengths: frame_lengths follow it. Every random draw (augmentation,
        dither) comes from `generator` (None: torch's global one), on the waveforms' device. `warp`
        (B,): VTLN factors of the filterbank, one per utterance, in place of training's VTLP draw
        (test-time speaker normalisation: `asr.evaluate.speaker_warps`); ConfigError if the
        filterbank leaves no room for the warp (`asr.features.check_vtln`)."""
        if warp is not None:
            check_vtln(self.features, "VTLN")
            warp = torch.as_tensor(warp, dtype=torch.float32)
        waveforms = waveforms.float() / WAVEFORM_SCALE if waveforms.dtype == torch.int16 else waveforms.float()
        for augment in self.waveform_augments:
            waveforms, wave_lengths = augment(waveforms, wave_lengths, generator)
        waveforms = self.narrowband(waveforms, wave_lengths, generator)
        dither = self.features.dither if self.training else 0.0
        features, frame_lengths = compute_features(waveforms, wave_lengths, self.features, dither=dither,
                                                   warp=self.vtlp(waveforms, generator) if warp is None else warp,
                                                   generator=generator)
        features = self.cmvn(features, frame_lengths)
        if self.features.utterance_cmn:
            features = utterance_mean_removed(features, frame_lengths)
        return self.specaug(features, frame_lengths, generator), frame_lengths


def utterance_mean_removed(features: Tensor, frame_lengths: Tensor) -> Tensor:
    """features (B, F, D) with padding frames 0 -> each utterance's valid frames less their own
    mean per dimension; padding stays 0."""
    mask = valid_mask(frame_lengths.to(features.device), features.shape[1])[..., None]  # (B, F, 1)
    mean = features.sum(dim=1, keepdim=True) / frame_lengths.to(features.device).clamp(min=1).view(-1, 1, 1)
    return (features - mean).masked_fill_(~mask, 0.0)
