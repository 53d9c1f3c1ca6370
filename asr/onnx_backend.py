"""Running an exported ONNX model with onnxruntime, behind the interface of `asr.inference.InferenceModel`.

    waveforms (B, samples) --Frontend (eval, torch, CPU)--> features (B, F, D), lengths (B,)
        --onnxruntime: model.onnx or model.int8.onnx--> log_probs (B, T, V), out_lengths (B,)

The ONNX graph holds the acoustic model only; features (Kaldi fbank or MFCC + global CMVN) are the
caller's job. The file carries what a caller needs for them (`asr.export`): the feature config,
the CMVN statistics, the tokens and the output frame duration, as JSON in its metadata under
`METADATA_KEY` (and in `model.json` beside it). Here they are computed by `asr.frontend.Frontend`,
the module training and `InferenceModel` use, so the features cannot drift from the model's.

`OnnxInferenceModel` can stand wherever an `InferenceModel` does: `asr.transcribe.Transcriber`,
`asr transcribe --backend onnx`, `scripts/bench_decode.py`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from asr.errors import DataError

METADATA_KEY = "asr"  # key of the export's metadata JSON in the ONNX file's metadata_props
ONNX_NAME = "model.onnx"  # the fp32 model in an export folder
INT8_NAME = "model.int8.onnx"  # its dynamic int8 quantisation
INPUT_NAMES = ("features", "lengths")
OUTPUT_NAMES = ("log_probs", "out_lengths")


def resolve_onnx(path: str | os.PathLike) -> Path:
    """An `.onnx` file, or an export folder -> its `model.onnx`; DataError naming what is missing."""
    path = Path(path)
    if path.is_dir():
        path = path / ONNX_NAME
        if not path.is_file():
            raise DataError(f"{path.parent}: no {ONNX_NAME} here (write one with `asr export`)")
    elif not path.is_file():
        raise DataError(f"{path}: no such ONNX model")
    return path


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session for `path`, with `threads` intra-op threads (None: torch's
    current number, so `torch.set_num_threads(1)` gives a one-core run of both back ends)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its warnings are about graph rewrites, not the user's data
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own classes for unreadable and invalid files
        raise DataError(f"{path}: not a readable ONNX model ({str(err).splitlines()[0]})") from err


def read_metadata(session, path: str | os.PathLike) -> dict:
    """The export metadata embedded in an ONNX session's model; DataError if it has none."""
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if text is None:
        raise DataError(f"{path}: ONNX model without asr metadata (not written by `asr export`)")
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: its asr metadata is not valid JSON ({err.msg})") from None
    for key in ("tokens", "feature_config", "cmvn", "seconds_per_frame"):
        if key not in metadata:
            raise DataError(f"{path}: asr metadata has no {key!r} entry")
    return metadata


class OnnxInferenceModel:
    """An exported model run by onnxruntime on the CPU: waveforms in, CTC log-probabilities out.

    Same interface as `asr.inference.InferenceModel`: call it with (waveforms, wave_lengths);
    attributes tokenizer, feature_config, frontend, sample_rate, seconds_per_frame, device (CPU),
    path, metadata (the export's JSON).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        from asr.config import from_dict
        from asr.features import FeatureConfig, GlobalCMVN
        from asr.frontend import Frontend
        from asr.text import Tokenizer

        self.path = resolve_onnx(path)
        self.session = onnx_session(self.path, threads)
        self.metadata = read_metadata(self.session, self.path)
        where = f"{self.path} metadata"
        self.feature_config = from_dict(FeatureConfig, self.metadata["feature_config"], where=f"{where} feature_config")
        cmvn = GlobalCMVN(torch.tensor(self.metadata["cmvn"]["mean"]), torch.tensor(self.metadata["cmvn"]["std"]))
        self.frontend = Frontend(self.feature_config, cmvn).eval()
        self.tokenizer = Tokenizer.from_list(self.metadata["tokens"])
        self.seconds_per_frame = float(self.metadata["seconds_per_frame"])
        self.device = torch.device("cpu")
        self.amp = "none"

    @property
    def sample_rate(self) -> int:
        """Sample rate in Hz the model expects."""
        return self.feature_config.sample_rate

    @torch.no_grad()
    def forward(self, waveforms: Tensor, wave_lengths: Tensor, warp: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """waveforms (B, samples) float at `sample_rate`, wave_lengths (B,) ->
        (log_probs (B, T, vocab) float32, out_lengths (B,) int64), both on the CPU. warp: as
        `features`."""
        return self.run_features(*self.features(waveforms, wave_lengths, warp))

    @torch.no_grad()
    def features(self, waveforms: Tensor, wave_lengths: Tensor, warp: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The graph's input: features (B, F, D) after CMVN and frame_lengths (B,), on the CPU.
        warp: (B,) VTLN factors, as `asr.inference.InferenceModel.features`."""
        return self.frontend(waveforms.cpu(), wave_lengths.cpu(), warp=warp)

    def run_features(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """The graph alone: features (B, F, D) float32 after CMVN, lengths (B,) ->
        (log_probs (B, T, V), out_lengths (B,)), as the PyTorch model's forward."""
        feed = {INPUT_NAMES[0]: np.ascontiguousarray(features.float().numpy()),
                INPUT_NAMES[1]: lengths.to(torch.int64).numpy()}
        log_probs, out_lengths = self.session.run(list(OUTPUT_NAMES), feed)
        return torch.from_numpy(log_probs), torch.from_numpy(out_lengths)

    __call__ = forward
