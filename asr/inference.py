"""A checkpoint -> a runnable model: front-end (features, CMVN) and acoustic model, in
evaluation mode, on one device. `asr decode`, `asr transcribe` and the benchmarks all run
checkpoints through `InferenceModel`.

    waveforms (B, samples) at `sample_rate` --Frontend (eval)--> features --model--> log_probs (B, T, V)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from asr.checkpoint import load_checkpoint, resolve_checkpoint
from asr.decode import best_path_scores
from asr.errors import ConfigError, DataError
from asr.runtime import autocast_context, recurrent_dtype

# Test-time VTLN (`asr decode --vtln`, `asr transcribe --vtln`): the warps tried for each speaker
# or file, around 1 as far as the demo's vocal tract length perturbation goes in training
# (conf/demo.yaml vtlp.warp).
VTLN_WARPS = (0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15)


def check_warps(warps: Sequence[float]) -> tuple[float, ...]:
    """VTLN warps as floats; ConfigError unless there is at least one and every one is positive."""
    if not warps or min(warps) <= 0:
        raise ConfigError(f"VTLN warps must be positive, got {list(warps)}")
    return tuple(float(w) for w in warps)


def warp_scores(model, waveforms: Tensor, wave_lengths: Tensor, warps: Sequence[float]) -> Tensor:
    """(B, len(warps)) float64: each utterance's best-path score (`asr.decode.best_path_scores`)
    with its features under each VTLN warp, one model pass per warp; what test-time VTLN chooses
    by (`asr.evaluate.speaker_warps`, `asr.transcribe.Transcriber`). `model`: an InferenceModel
    or OnnxInferenceModel (its `features` and `run_features`)."""
    scores = []
    for warp in warps:
        warp = torch.full((waveforms.shape[0],), float(warp))
        log_probs, out_lengths = model.run_features(*model.features(waveforms, wave_lengths, warp))
        scores.append(best_path_scores(log_probs.float().cpu(), out_lengths.cpu()))
    return torch.stack(scores, dim=1)


class InferenceModel:
    """A trained model ready to run: waveforms in, CTC log-probabilities out.

    Attributes: model (from `asr.model.build_model`, eval mode), frontend (`asr.frontend.Frontend`,
    eval mode: no augmentation, no dither), feature_config (FeatureConfig), tokenizer (Tokenizer),
    device, amp, seconds_per_frame (output frame duration), checkpoint (the loaded dict minus
    weights), path.
    """

    def __init__(self, payload: dict, device: str | torch.device | None = None, path: Path | None = None,
                 amp: str = "auto") -> None:
        from asr.config import from_dict
        from asr.features import FeatureConfig, GlobalCMVN
        from asr.frontend import Frontend
        from asr.model import ModelConfig, build_model
        from asr.text import Tokenizer

        where = str(path) if path else "<checkpoint>"
        for key in ("model_config", "feature_config", "tokens", "cmvn"):
            if key not in payload:
                raise DataError(f"{where}: checkpoint has no '{key}' entry")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.path = path
        self.model_config = from_dict(ModelConfig, payload["model_config"], where=f"{where} model_config")
        self.feature_config = from_dict(FeatureConfig, payload["feature_config"], where=f"{where} feature_config")
        self.tokenizer = Tokenizer.from_list(payload["tokens"])
        self.frontend = Frontend(self.feature_config, GlobalCMVN.from_dict(payload["cmvn"])).to(self.device).eval()
        self.model = build_model(self.model_config)
        try:
            self.model.load_state_dict(payload["model"])
        except RuntimeError as err:
            raise DataError(f"{where}: weights do not match the model config: {str(err).splitlines()[0]}") from err
        self.model.to(self.device).eval()
        if self.device.type == "cpu":
            # oneDNN's conv2d on the front-end's 1-channel input is ~15x slower at batch 1 with NCHW
            # weights than with channels_last ones (10 s of audio, demo model, one thread: 2.5 s vs
            # 0.16 s, torch 2.14), and ~1.4x slower on batches; results equal up to float rounding.
            self.model.to(memory_format=torch.channels_last)
        if amp == "auto":
            amp = "bf16" if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else (
                "fp16" if self.device.type == "cuda" else "none")
        self.amp = amp
        self.model.rnn_dtype = recurrent_dtype(self.device, amp)
        self.seconds_per_frame = self.feature_config.frame_shift_ms / 1000.0 * self.model.subsample
        self.checkpoint = {k: v for k, v in payload.items() if k != "model"}

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device | None = None,
                        amp: str = "auto") -> "InferenceModel":
        """Load a `.pt` file or an experiment folder (see `resolve_checkpoint`).

        device: None -> CUDA if available, else CPU. amp: "auto" (bf16 or fp16 on CUDA, none on
        CPU), "bf16", "fp16" or "none".
        """
        path = resolve_checkpoint(path)
        return cls(load_checkpoint(path), device=device, path=path, amp=amp)

    @property
    def sample_rate(self) -> int:
        """Sample rate in Hz the model expects."""
        return self.feature_config.sample_rate

    @torch.no_grad()
    def forward(self, waveforms: Tensor, wave_lengths: Tensor, warp: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """waveforms (B, samples) float at `sample_rate`, wave_lengths (B,) ->
        (log_probs (B, T, vocab) float32 on the CPU, out_lengths (B,) int64 on the CPU).
        warp: (B,) VTLN factors of the filterbank (`features`), or None."""
        return self.run_features(*self.features(waveforms, wave_lengths, warp))

    @torch.no_grad()
    def features(self, waveforms: Tensor, wave_lengths: Tensor, warp: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The model's input: waveforms (B, samples), wave_lengths (B,) -> features (B, F, D) after
        CMVN and frame_lengths (B,), on the device. warp: (B,) VTLN factors, one filterbank per
        utterance (Kaldi's VTLN warp; 1 = none), or None (`asr.frontend.Frontend`)."""
        return self.frontend(waveforms.to(self.device, non_blocking=True), wave_lengths.to(self.device), warp=warp)

    @torch.no_grad()
    def run_features(self, features: Tensor, frame_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """The network alone: `features` output -> (log_probs (B, T, V) float32, out_lengths (B,)) on the CPU."""
        features, frame_lengths = features.to(self.device), frame_lengths.to(self.device)
        with autocast_context(self.device, self.amp):
            log_probs, out_lengths = self.model(features, frame_lengths)
        return log_probs.float().cpu(), out_lengths.cpu()

    __call__ = forward
