"""Features: Kaldi-compatible fbank and MFCC computed in batch, global CMVN, SpecAugment and narrow-band
augmentation.

`compute_features` re-implements Kaldi's `compute-fbank-feats` / `compute-mfcc-feats` arithmetic
(as in `torchaudio.compliance.kaldi.fbank` / `.mfcc`) for a whole padded batch at once, on the
device the waveforms are on: framing with `unfold`, dither, DC removal, raw log energy,
pre-emphasis, window, zero-padding to a power of two, power spectrum with `torch.fft.rfft`,
triangular mel filterbank as one matrix product, log, and for MFCC a DCT matrix product and the
cepstral lifter. No Python loop runs over the batch. Constant matrices are built once per config
and device (cached) in float32, the way Kaldi and torchaudio build them, so fbank agrees with
torchaudio to within float32 rounding (~2e-6) and MFCC to ~1e-4.

Waveform scale: waveforms are float32 in [-1, 1] (what `asr.audio.load_audio` returns). Kaldi
works on int16-range samples, so the features are those of `waveform * 32768`: they match
`torchaudio.compliance.kaldi.fbank(waveform * 32768, ...)` within 1e-3. The factor is folded into
the window (a power of two, so it is exact), and `dither` is in int16 units as in Kaldi.

Typical use in training: `Narrowband` (waveforms, train only) -> features -> `GlobalCMVN` ->
`SpecAugment` (train only) -> model.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from dataclasses import asdict, dataclass

import torch
import torchaudio
from torch import Tensor, nn
from tqdm import tqdm

from asr.errors import AudioError, ConfigError, DataError
from asr.fileio import atomic_torch_save
from asr.lengths import valid_mask

WAVEFORM_SCALE = 32768.0  # float waveforms in [-1, 1] times this give Kaldi's int16 range
STD_FLOOR = 1e-2  # smallest CMVN standard deviation (feature units); guards near-constant dimensions
_EPSILON = torch.finfo(torch.float32).eps  # Kaldi's floor before every log
_BLACKMAN_COEFF = 0.42  # Kaldi's default for the "blackman" window
log = logging.getLogger("asr.features")
_WINDOW_TYPES = ("povey", "hanning", "hamming", "rectangular", "blackman")


@dataclass(frozen=True)
class FeatureConfig:
    """Options of the feature front end; names follow Kaldi's where they exist."""

    kind: str = "fbank"  # "fbank" (log mel filterbank) or "mfcc"
    sample_rate: int = 16000  # Hz; waveforms must already be at this rate
    num_mel_bins: int = 80  # triangular mel filters (also the MFCC filterbank size)
    num_ceps: int = 13  # MFCC coefficients kept, C0 included (mfcc only)
    frame_length_ms: float = 25.0  # analysis window length
    frame_shift_ms: float = 10.0  # hop between frames
    dither: float = 0.0  # Gaussian noise std in int16 units added per frame; 0 = off (use > 0 only in training)
    preemphasis: float = 0.97  # pre-emphasis coefficient, 0 = off
    low_freq: float = 20.0  # Hz, lowest mel filter edge
    high_freq: float = 0.0  # Hz, highest mel filter edge; <= 0 means offset from Nyquist
    window_type: str = "povey"  # "povey" | "hanning" | "hamming" | "rectangular" | "blackman"
    use_energy: bool = False  # fbank: prepend log energy (dim + 1); mfcc: log energy replaces C0
    snip_edges: bool = True  # True: only frames that fit entirely; False: reflect at the ends (Kaldi)
    cepstral_lifter: float = 22.0  # MFCC lifter coefficient, 0 = off (mfcc only)
    energy_floor: float = 1.0  # floor on the energy (linear) when use_energy; as torchaudio's default
    # After global CMVN, subtract each utterance's own mean (per dimension, over its frames; a
    # long file's: each chunk's): Kaldi's per-utterance apply-cmvn, means only. It takes out a
    # fixed channel (a microphone's or a room's response, a voice's spectral tilt). Applied by
    # `asr.frontend.Frontend`, not by `compute_features`.
    utterance_cmn: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.kind not in ("fbank", "mfcc"):
            problems.append(f"kind must be 'fbank' or 'mfcc', got {self.kind!r}")
        if self.window_type not in _WINDOW_TYPES:
            problems.append(f"window_type must be one of {', '.join(_WINDOW_TYPES)}, got {self.window_type!r}")
        if self.sample_rate <= 0:
            problems.append(f"sample_rate must be positive, got {self.sample_rate}")
        elif self.window_size < 2 or self.window_shift < 1:
            problems.append(
                f"frame_length_ms={self.frame_length_ms} / frame_shift_ms={self.frame_shift_ms} give "
                f"{self.window_size} / {self.window_shift} samples at {self.sample_rate} Hz"
            )
        if self.num_mel_bins <= 3:
            problems.append(f"num_mel_bins must be > 3, got {self.num_mel_bins}")
        if self.kind == "mfcc" and not 1 <= self.num_ceps <= self.num_mel_bins:
            problems.append(f"num_ceps must be in [1, num_mel_bins={self.num_mel_bins}], got {self.num_ceps}")
        if not 0.0 <= self.preemphasis <= 1.0:
            problems.append(f"preemphasis must be in [0, 1], got {self.preemphasis}")
        if self.dither < 0:
            problems.append(f"dither must be >= 0, got {self.dither}")
        if self.sample_rate > 0:
            nyquist = self.sample_rate / 2
            high = self.high_freq if self.high_freq > 0 else nyquist + self.high_freq
            if not (0.0 <= self.low_freq < nyquist and 0.0 < high <= nyquist and self.low_freq < high):
                problems.append(
                    f"need 0 <= low_freq < high_freq <= Nyquist ({nyquist} Hz), "
                    f"got low_freq={self.low_freq}, high_freq={self.high_freq}"
                )
        if problems:
            raise ConfigError("features: " + "; ".join(problems))

    @property
    def dim(self) -> int:
        """Feature dimension of `compute_features`' output."""
        if self.kind == "mfcc":
            return self.num_ceps
        return self.num_mel_bins + int(self.use_energy)

    @property
    def window_size(self) -> int:
        """Samples per frame (Kaldi truncates)."""
        return int(self.sample_rate * self.frame_length_ms * 0.001)

    @property
    def window_shift(self) -> int:
        """Samples between frame starts."""
        return int(self.sample_rate * self.frame_shift_ms * 0.001)

    @property
    def fft_size(self) -> int:
        """FFT length: the frame zero-padded to the next power of two, as Kaldi does."""
        return 1 << (self.window_size - 1).bit_length()

    def to_dict(self) -> dict:
        """Plain values, e.g. for a checkpoint; `FeatureConfig(**d)` restores it."""
        return asdict(self)


def num_frames(num_samples: Tensor | int, config: FeatureConfig) -> Tensor | int:
    """Frames `compute_features` returns for `num_samples` samples (an int or an integer Tensor).

    snip_edges=True: 1 + (n - window) // shift, or 0 when n < window. snip_edges=False:
    (n + shift // 2) // shift.
    """
    window, shift = config.window_size, config.window_shift
    if isinstance(num_samples, Tensor):
        n = num_samples.long()
        if config.snip_edges:
            return torch.where(n >= window, 1 + torch.div(n - window, shift, rounding_mode="floor"), 0)
        return torch.div(n + shift // 2, shift, rounding_mode="floor")
    n = int(num_samples)
    if config.snip_edges:
        return 1 + (n - window) // shift if n >= window else 0
    return (n + shift // 2) // shift


@functools.lru_cache(maxsize=32)
def _kernels(config: FeatureConfig, device: torch.device) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Constant tensors of a config on a device, built once: window (window_size,) scaled to the
    int16 range, mel matrix (fft_size//2+1, num_mel_bins), and for mfcc the DCT matrix
    (num_mel_bins, num_ceps) and the lifter (num_ceps,) (None when not used)."""
    window = _window(config.window_type, config.window_size) * WAVEFORM_SCALE
    mel = _mel_matrix(config)
    dct = lifter = None
    if config.kind == "mfcc":
        dct = _dct_matrix(config.num_mel_bins, config.num_ceps)
        if config.cepstral_lifter != 0.0:
            lifter = _lifter(config.num_ceps, config.cepstral_lifter)

    def to(tensor: Tensor | None) -> Tensor | None:
        return None if tensor is None else tensor.to(device=device, dtype=torch.float32)

    return to(window), to(mel), to(dct), to(lifter)


def _window(window_type: str, size: int) -> Tensor:
    """Kaldi's window functions, shape (size,), computed in float32 as torchaudio does."""
    if window_type in ("hanning", "povey"):
        hann = torch.hann_window(size, periodic=False, dtype=torch.float32)
        return hann.pow(0.85) if window_type == "povey" else hann
    if window_type == "hamming":
        return torch.hamming_window(size, periodic=False, alpha=0.54, beta=0.46, dtype=torch.float32)
    if window_type == "blackman":
        a = 2 * math.pi / (size - 1)
        n = torch.arange(size, dtype=torch.float32)
        return _BLACKMAN_COEFF - 0.5 * torch.cos(a * n) + (0.5 - _BLACKMAN_COEFF) * torch.cos(2 * a * n)
    return torch.ones(size, dtype=torch.float32)


def _mel_matrix(config: FeatureConfig, warp: Tensor | None = None) -> Tensor:
    """Kaldi's triangular mel filters as a (fft_size // 2 + 1, num_mel_bins) float32 matrix, or
    with `warp` (B,) VTLN factors one (B, fft_size // 2 + 1, num_mel_bins) matrix per factor.

    Filters are equally spaced on the mel scale between low_freq and high_freq and overlap by
    half; the Nyquist bin gets weight 0. Computed in float32 like Kaldi (BaseFloat): a narrow
    low filter can hold a single FFT bin with a tiny weight, whose rounding then shows in the
    log energies, so float64 weights would differ from Kaldi's by up to ~5e-4. A warp moves each
    filter's three corners through `vtln_warp_hz`, as Kaldi's MelBanks does for VTLN.
    """
    bins, fft_size = config.num_mel_bins, config.fft_size
    low_freq, high_freq = config.low_freq, _high_freq(config)
    mel_low, mel_high = (1127.0 * math.log(1.0 + f / 700.0) for f in (low_freq, high_freq))
    delta = (mel_high - mel_low) / (bins + 1)
    index = torch.arange(bins, dtype=torch.float32).unsqueeze(1)  # (bins, 1)
    corners = [mel_low + (index + offset) * delta for offset in (0.0, 1.0, 2.0)]  # left, center, right
    if warp is not None:
        factors = warp.detach().float().cpu().view(-1, 1, 1)  # (B, 1, 1)
        vtln_high = _from_nyquist(config, VTLN_HIGH)

        def warped(mel: Tensor) -> Tensor:
            hz = 700.0 * (torch.exp(mel / 1127.0) - 1.0)
            return _mel(vtln_warp_hz(hz, factors, low_freq, high_freq, VTLN_LOW, vtln_high))

        corners = [warped(mel) for mel in corners]  # each (B, bins, 1)
    left, center, right = corners
    fft_freq = config.sample_rate / fft_size * torch.arange(fft_size // 2, dtype=torch.float32)
    fft_mel = _mel(fft_freq).unsqueeze(0)  # (1, fft_size // 2)
    up = (fft_mel - left) / (center - left)
    down = (right - fft_mel) / (right - center)
    weights = torch.clamp(torch.minimum(up, down), min=0.0)  # ([B,] bins, fft_size // 2)
    weights = torch.cat([weights, weights.new_zeros(*weights.shape[:-1], 1)], dim=-1)  # Nyquist bin
    return weights.transpose(-1, -2).contiguous()


# Kaldi's --vtln-low and --vtln-high (Hz; a negative high is an offset from Nyquist): the warp is
# linear between them and bends at both ends to keep low_freq and high_freq in place.
VTLN_LOW, VTLN_HIGH = 100.0, -500.0


def _mel(hz: Tensor) -> Tensor:
    """Kaldi's mel scale, 1127 ln(1 + f / 700)."""
    return 1127.0 * (1.0 + hz / 700.0).log()


def _from_nyquist(config: FeatureConfig, freq: float) -> float:
    """A frequency option as Kaldi reads it: a value <= 0 is an offset from Nyquist."""
    return freq if freq > 0 else 0.5 * config.sample_rate + freq


def _high_freq(config: FeatureConfig) -> float:
    return _from_nyquist(config, config.high_freq)


def check_vtln(config: FeatureConfig, key: str = "vtlp") -> None:
    """ConfigError unless the filterbank leaves room for Kaldi's VTLN warp:
    low_freq < VTLN_LOW and VTLN_HIGH (from Nyquist) < high_freq."""
    high = _from_nyquist(config, VTLN_HIGH)
    if not config.low_freq < VTLN_LOW < high < _high_freq(config):
        raise ConfigError(f"{key}: the warp needs features.low_freq < {VTLN_LOW:g} Hz and features.high_freq "
                          f"above {high:g} Hz (Nyquist {VTLN_HIGH:g}), got low_freq={config.low_freq}, "
                          f"high_freq={config.high_freq}")


def vtln_warp_hz(freq: Tensor, warp: Tensor, low_freq: float, high_freq: float, vtln_low: float,
                 vtln_high: float) -> Tensor:
    """Kaldi's piecewise-linear VTLN warp (MelBanks::VtlnWarpFreq): frequencies divided by `warp`
    between the cut-offs vtln_low * max(1, warp) and vtln_high * min(1, warp), joined by straight
    lines to low_freq and high_freq, which stay in place; outside [low_freq, high_freq] unchanged.
    `freq` and `warp` broadcast."""
    low_cut = vtln_low * warp.clamp(min=1.0)
    high_cut = vtln_high * warp.clamp(max=1.0)
    scale = 1.0 / warp
    left = low_freq + (scale * low_cut - low_freq) / (low_cut - low_freq) * (freq - low_freq)
    right = high_freq + (high_freq - scale * high_cut) / (high_freq - high_cut) * (freq - high_freq)
    out = torch.where(freq < low_cut, left, torch.where(freq < high_cut, scale * freq, right))
    return torch.where((freq < low_freq) | (freq > high_freq), freq, out)


def _dct_matrix(num_mel_bins: int, num_ceps: int) -> Tensor:
    """Kaldi's DCT (orthonormal DCT-II, C0 weighted sqrt(1/num_mel_bins)), shape (num_mel_bins, num_ceps).

    Built in float32 exactly as torchaudio builds it (create_dct, then the lifter as a separate
    product after the matrix multiply in `compute_features`): a float64 matrix differs from it by
    ~7e-7 per entry, which the sum over 80 log energies of ~20 turns into ~5e-4.
    """
    dct = torchaudio.functional.create_dct(num_mel_bins, num_mel_bins, "ortho")  # (mel, mel) float32
    dct[:, 0] = math.sqrt(1.0 / num_mel_bins)
    return dct[:, :num_ceps].contiguous()


def _lifter(num_ceps: int, cepstral_lifter: float) -> Tensor:
    """Kaldi's cepstral lifter 1 + L/2 sin(pi i / L), shape (num_ceps,), float32."""
    i = torch.arange(num_ceps)
    return 1.0 + 0.5 * cepstral_lifter * torch.sin(math.pi * i / cepstral_lifter)


def _frames(waveforms: Tensor, lengths: Tensor, total: int, config: FeatureConfig) -> Tensor:
    """Cut (batch, samples) into (batch, total, window_size) frames."""
    window, shift = config.window_size, config.window_shift
    if config.snip_edges:
        return waveforms.unfold(1, window, shift)  # a view, no copy
    # Kaldi reflects the signal at both ends ([.. x1 x0 | x0 x1 ..]); the right end depends on each
    # utterance's own length, so gather through a per-utterance index.
    batch, samples = waveforms.shape
    pad = window // 2 - shift // 2
    device = waveforms.device
    index = (torch.arange(total, device=device) * shift - pad).unsqueeze(1) + torch.arange(window, device=device)
    index = torch.where(index < 0, -index - 1, index).unsqueeze(0)  # (1, total, window)
    n = lengths.to(device).view(batch, 1, 1)
    index = torch.where(index >= n, 2 * n - 1 - index, index).clamp_(0, max(samples - 1, 0))
    return waveforms.gather(1, index.reshape(batch, -1)).view(batch, total, window)


def compute_features(waveforms: Tensor, lengths: Tensor, config: FeatureConfig,
                     dither: float | None = None, warp: Tensor | None = None,
                     generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Kaldi fbank or MFCC features of a padded batch, computed on `waveforms.device`.

    Args:
        waveforms: (batch, samples) float in [-1, 1] at `config.sample_rate`, zero-padded
            (samples past each length are never used).
        lengths: (batch,) valid samples per utterance.
        config: the feature options.
        dither: Gaussian noise std (int16 units) in place of `config.dither`; `asr.frontend.Frontend`
            passes 0 in evaluation mode, `compute_cmvn` always.
        warp: (batch,) VTLN warp factors, one filterbank per utterance (1 = Kaldi's own); training's
            vocal tract length perturbation (`asr.augment.Vtlp`). None: no warp.
        generator: where the dither comes from (None: torch's global generator).

    Returns:
        feats: (batch, frames, config.dim) float32; frames past an utterance's length are 0.
        frame_lengths: (batch,) int64 valid frames per utterance, `num_frames(lengths, config)`.
    """
    if waveforms.dim() != 2:
        raise ValueError(f"waveforms must be (batch, samples), got shape {tuple(waveforms.shape)}")
    device = waveforms.device
    lengths = torch.as_tensor(lengths, device=device).long()
    frame_lengths = num_frames(lengths, config)
    batch, samples = waveforms.shape
    total = int(num_frames(samples, config))
    if total == 0 or batch == 0:
        return waveforms.new_zeros(batch, total, config.dim, dtype=torch.float32), frame_lengths
    window, mel, dct, lifter = _kernels(config, device)
    if warp is not None:
        mel = _mel_matrix(config, warp).to(device)  # (B, bins, mel): one filterbank per utterance
    feats = torch.zeros(batch, total, config.dim, dtype=torch.float32, device=device)
    # Mixed precision would cost the 1e-3 agreement with Kaldi and is no faster here.
    with torch.autocast(device_type=device.type, enabled=False):
        frames = _frames(waveforms.float(), lengths, total, config)  # (B, T, window), a view when snip_edges
        dither = config.dither if dither is None else dither
        for rows, steps in _blocks(frame_lengths, total, device):
            feats[rows, steps] = _block_features(frames[rows, steps], config, dither, window,
                                                 mel if mel.dim() == 2 else mel[rows], dct, lifter, generator)
        feats.masked_fill_(~valid_mask(frame_lengths, total).unsqueeze(-1), 0.0)
    return feats, frame_lengths


# On the CPU, features are computed in blocks of about this many frames: a block's frames, spectra
# and powers stay in cache, and pocketfft runs 2-4x faster on a few thousand frames than on tens of
# thousands (measured, torch 2.14, one thread). Other devices take the whole batch at once.
CPU_BLOCK_FRAMES = 2048


def _blocks(frame_lengths: Tensor, total: int, device: torch.device) -> list[tuple[slice, slice]]:
    """(rows, frames) slices that cover every valid frame of a (B, total) batch: groups of rows,
    each up to its longest utterance only, in time blocks of about CPU_BLOCK_FRAMES frames."""
    batch = frame_lengths.shape[0]
    if device.type != "cpu":
        return [(slice(0, batch), slice(0, total))]
    lengths = frame_lengths.tolist()
    step = min(total, CPU_BLOCK_FRAMES)  # total >= 1 here
    rows_per_block = max(1, CPU_BLOCK_FRAMES // total)
    out = []
    for first in range(0, batch, rows_per_block):
        rows = slice(first, min(batch, first + rows_per_block))
        longest = max(lengths[rows])
        out.extend((rows, slice(start, min(longest, start + step))) for start in range(0, longest, step))
    return out


def _block_features(
    frames: Tensor, config: FeatureConfig, dither: float, window: Tensor, mel_matrix: Tensor, dct_matrix: Tensor | None,
    lifter: Tensor | None, generator: torch.Generator | None = None,
) -> Tensor:
    """Features of raw frames (b, t, window_size) -> (b, t, config.dim), float32.

    Each step repeats Kaldi's (and torchaudio's) float32 arithmetic in the same order, so results
    agree to rounding. The frames are processed inside a zeroed (b, t, fft_size) buffer, which is
    the FFT's zero-padding.
    """
    padded = frames.new_zeros(*frames.shape[:2], config.fft_size)
    x = padded[..., : config.window_size]  # a view: every step below writes into the buffer
    if dither > 0.0:
        noise = torch.randn(frames.shape, dtype=frames.dtype, device=frames.device, generator=generator)
        frames = frames + noise * (dither / WAVEFORM_SCALE)
    torch.sub(frames, frames.mean(dim=-1, keepdim=True), out=x)  # remove DC offset, per frame
    if config.use_energy:  # Kaldi's raw energy: before pre-emphasis and window
        energy = x.square().sum(-1).mul_(WAVEFORM_SCALE**2).clamp_(min=_EPSILON).log_()  # (b, t)
        if config.energy_floor > 0.0:
            energy.clamp_(min=math.log(config.energy_floor))
    if config.preemphasis != 0.0:
        # x[j] -= c * x[j - 1] with x[-1] = x[0]; products first (from the unmodified x), then subtract
        previous = x[..., :-1] * config.preemphasis
        x[..., :1].sub_(x[..., :1] * config.preemphasis)
        x[..., 1:].sub_(previous)
        del previous
    x.mul_(window)  # window, and the scale to Kaldi's int16 range (exact: a power of two)
    # re^2 + im^2: twice as fast as abs().square() and equal to an ulp (rounding after the FFT
    # is not amplified, unlike rounding before it)
    spectrum = torch.view_as_real(torch.fft.rfft(padded))  # (b, t, fft/2+1, 2)
    power = spectrum[..., 0].square()
    power.addcmul_(spectrum[..., 1], spectrum[..., 1])
    del spectrum
    feats = torch.matmul(power, mel_matrix).clamp_(min=_EPSILON).log_()  # (b, t, mel); mel_matrix may be (b, ., .)
    if dct_matrix is not None:
        feats = torch.matmul(feats, dct_matrix)  # (b, t, ceps)
        if lifter is not None:
            feats.mul_(lifter)
        if config.use_energy:
            feats[..., 0] = energy
    elif config.use_energy:
        feats = torch.cat([energy.unsqueeze(-1), feats], dim=-1)
    return feats


class GlobalCMVN(nn.Module):
    """Global mean and variance normalisation: (feats - mean) / std, one mean/std per dimension."""

    def __init__(self, mean: Tensor, std: Tensor):
        super().__init__()
        if mean.shape != std.shape or mean.dim() != 1:
            raise ValueError(f"mean and std must be (dim,), got {tuple(mean.shape)} and {tuple(std.shape)}")
        self.register_buffer("mean", mean.detach().float().clone())
        self.register_buffer("std", std.detach().float().clone())

    @classmethod
    def from_stats(cls, sum: Tensor, sq_sum: Tensor, count: int | float | Tensor,
                   std_floor: float = STD_FLOOR) -> "GlobalCMVN":
        """From per-dimension sums of features and of their squares over `count` frames (float64 advised)."""
        count = float(count)
        if count <= 0:
            raise ValueError("CMVN statistics over zero frames")
        mean = sum.double() / count
        variance = (sq_sum.double() / count - mean.square()).clamp(min=0.0)
        return cls(mean, variance.sqrt().clamp(min=std_floor))

    def forward(self, feats: Tensor, frame_lengths: Tensor | None = None) -> Tensor:
        """Normalise feats (batch, frames, dim); with `frame_lengths` (batch,) padding frames stay 0."""
        normalised = (feats - self.mean) / self.std
        if frame_lengths is not None:
            padding = ~valid_mask(frame_lengths.to(feats.device), feats.shape[1])
            normalised = normalised.masked_fill_(padding[..., None], 0.0)
        return normalised

    def to_dict(self) -> dict[str, Tensor]:
        """{"mean": (dim,), "std": (dim,)} float32 cpu tensors, e.g. for a checkpoint."""
        return {"mean": self.mean.detach().cpu().clone(), "std": self.std.detach().cpu().clone()}

    @classmethod
    def from_dict(cls, state: dict) -> "GlobalCMVN":
        """Inverse of `to_dict`."""
        return cls(torch.as_tensor(state["mean"]), torch.as_tensor(state["std"]))

    def save(self, path: str | os.PathLike) -> None:
        """Write `to_dict()` to `path` (atomically, torch.save format)."""
        atomic_torch_save(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "GlobalCMVN":
        """Read a file written by `save`; DataError naming the file if it is missing or not CMVN stats."""
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such CMVN file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            return cls.from_dict(state)
        except Exception as error:  # unpickling, missing keys, bad shapes: all mean a bad file
            raise DataError(f"{path}: not a CMVN statistics file ({error})") from error


class _AudioFiles(torch.utils.data.Dataset):
    """Waveforms of manifest records, for compute_cmvn's loader; an unreadable file gives its
    error instead (it is left out of the statistics and named)."""

    def __init__(self, records: list[dict], sample_rate: int):
        self.records, self.sample_rate = records, sample_rate

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Tensor | str:
        from asr.audio import load_audio

        try:
            return load_audio(self.records[index]["audio"], self.sample_rate)
        except AudioError as error:
            return str(error)


def _pad_waveforms(items: list[Tensor | str]) -> tuple[Tensor, Tensor, list[str]]:
    waveforms = [w for w in items if not isinstance(w, str)]
    lengths = torch.tensor([len(w) for w in waveforms], dtype=torch.long)
    padded = nn.utils.rnn.pad_sequence(waveforms, batch_first=True) if waveforms else torch.zeros(0, 0)
    return padded, lengths, [w for w in items if isinstance(w, str)]


def cmvn_sums(records: list[dict], config: FeatureConfig, batch_size: int = 16, num_workers: int = 0,
              device: str | torch.device = "cpu", progress: bool = True) -> tuple[Tensor, Tensor, int, list[str]]:
    """Per-dimension sums of the features of `records` and of their squares (float64), their frame
    count, and the errors of the files that could not be read (left out).

    One streaming pass in order of duration (little padding); memory does not grow with the
    corpus. No dither (statistics of the clean signal).
    """
    from asr.data.dataset import build_loader

    order = sorted(range(len(records)), key=lambda i: float(records[i].get("duration", 0.0)))
    batches = [list(range(start, min(start + batch_size, len(order)))) for start in range(0, len(order), batch_size)]
    loader = build_loader(_AudioFiles([records[i] for i in order], config.sample_rate), batches, num_workers,
                          pin_memory=False, collate_fn=_pad_waveforms)
    device = torch.device(device)
    total = torch.zeros(config.dim, dtype=torch.float64, device=device)
    total_sq = torch.zeros(config.dim, dtype=torch.float64, device=device)
    count, errors = 0, []
    with torch.no_grad(), tqdm(total=len(records), unit="utt", desc="cmvn", disable=None if progress else True) as bar:
        for waveforms, lengths, failed in loader:
            errors.extend(failed)
            if len(lengths):
                feats, frame_lengths = compute_features(waveforms.to(device), lengths.to(device), config, dither=0.0)
                feats = feats.double()  # padding frames are 0 and add nothing
                total += feats.sum(dim=(0, 1))
                total_sq += feats.square().sum(dim=(0, 1))
                count += int(frame_lengths.sum())
            bar.update(len(lengths) + len(failed))
    return total.cpu(), total_sq.cpu(), count, errors


def _shard_sums(job: tuple[list[dict], FeatureConfig, int]) -> tuple[Tensor, Tensor, int, list[str]]:
    records, config, batch_size = job
    torch.set_num_threads(1)  # one process per core
    return cmvn_sums(records, config, batch_size, progress=False)


def compute_cmvn(
    records: list[dict],
    config: FeatureConfig,
    batch_size: int = 16,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    jobs: int = 1,
) -> GlobalCMVN:
    """Global CMVN statistics of the features of `records` (manifest dicts with "audio" and "duration").

    jobs > 1: the records (dealt round-robin in order of duration) are shared out to that many
    processes on the CPU and their sums added; the result equals one process's up to float64
    rounding. A file that cannot be read is left out with a warning naming it.
    """
    for position, record in enumerate(records):
        if "audio" not in record:
            raise DataError(f"manifest record {record.get('id', position)!r} has no 'audio' path")
    if jobs > 1:
        import multiprocessing

        order = sorted(records, key=lambda r: float(r.get("duration", 0.0)))
        shards = [(order[j::jobs], config, batch_size) for j in range(jobs)]
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            parts = list(tqdm(pool.imap(_shard_sums, shards), total=jobs, unit="job", desc="cmvn", disable=None))
        total, total_sq = sum(p[0] for p in parts), sum(p[1] for p in parts)
        count, errors = sum(p[2] for p in parts), [e for p in parts for e in p[3]]
    else:
        total, total_sq, count, errors = cmvn_sums(records, config, batch_size, num_workers, device)
    for error in errors:
        log.warning("left out of the CMVN statistics: %s", error)
    if count == 0 and errors:
        raise AudioError(f"no readable audio among {len(records)} records: {errors[0]}"
                         + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))
    if count == 0:
        raise DataError(f"no feature frames in {len(records)} records: every file is shorter than one frame")
    return GlobalCMVN.from_stats(total, total_sq, count)
