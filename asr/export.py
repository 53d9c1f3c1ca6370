"""Exporting a checkpoint for deployment outside this package: ONNX (fp32, optionally dynamic int8)
and TorchScript, with the metadata a caller needs to compute the model's input.

    checkpoint --build_model, padded recurrent path--> torch.jit.trace (no_grad)
        --> OUT/model.onnx        legacy (TorchScript-based) torch.onnx.export, opset `OPSET`
        --> OUT/model.int8.onnx   onnxruntime.quantization.quantize_dynamic (int8 weights)
        --> OUT/model.torchscript.pt
        --> OUT/model.json        tokens, feature config, CMVN mean/std, seconds per frame, shapes

Every graph keeps the model's contract: `(features (B, F, D) float32, lengths (B,) int64) ->
(log_probs (B, T, V) float32, out_lengths (B,) int64)`, batch and frames dynamic. Features
(Kaldi fbank or MFCC, then global CMVN) are the caller's job: the feature code frames the
waveform with `unfold` over a length only known at run time, which the ONNX exporter refuses.
The metadata (also embedded in each ONNX file under `asr.onnx_backend.METADATA_KEY` and in the
TorchScript file as the extra file `model.json`) holds what computing them takes.

Why the padded path: the packed-sequence path (`pack_padded_sequence`) bakes the batch's
lengths into a traced graph; the padded one (`BiRNNCTC._run_padded`: functional LSTM/GRU/RNN calls
and a per-length reversal for the backward direction, as gathers) traces into ONNX LSTM/GRU/RNN
nodes with every shape dynamic, and padding still never reaches a valid frame. `torch.jit.script`
and `torch.export` fail on the model; the dynamo-based `torch.onnx.export` (onnxscript) exports
it but its graph fails at other batch shapes (torch 2.14, onnxruntime 1.32), so the legacy
exporter is used.

After writing, each file is run on a check batch of varied lengths and compared with the PyTorch
model (`ExportResult.max_abs_diff`); an fp32 graph that disagrees by more than `FP32_TOLERANCE`
is a bug and raises.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from asr.errors import ConfigError
from asr.fileio import atomic_open, atomic_write_text
from asr.onnx_backend import INPUT_NAMES, INT8_NAME, METADATA_KEY, ONNX_NAME, OUTPUT_NAMES

EXPORT_FORMATS = ("onnx", "torchscript")
TORCHSCRIPT_NAME = "model.torchscript.pt"
METADATA_NAME = "model.json"
METADATA_VERSION = 1  # bumped when a key of model.json changes meaning
OPSET = 17  # ONNX opset: LayerNormalization is a single node from 17 on
FP32_TOLERANCE = 1e-4  # largest |log-prob difference| allowed between an fp32 export and PyTorch
CHECK_FRAMES = (203, 160, 57, 9)  # input frames of the check batch: varied, one shorter than a word
_TRACE_FRAMES = (120, 77)  # input frames of the example batch the graph is traced with


@dataclass(frozen=True)
class ExportResult:
    """What `export_model` wrote and how closely each file reproduces the PyTorch model."""

    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)  # "onnx", "int8", "torchscript", "metadata" -> path
    # max |log-prob difference| from PyTorch on the check batch's valid frames, per graph file
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    # the check batch's greedy transcripts equal PyTorch's, per graph file
    same_greedy: dict[str, bool] = field(default_factory=dict)


def export_model(model: str | os.PathLike, out_dir: str | os.PathLike, formats: Sequence[str] = EXPORT_FORMATS,
                 int8: bool = False) -> ExportResult:
    """Export the checkpoint `model` (a `.pt` file or an experiment folder) into `out_dir`.

    formats: any of EXPORT_FORMATS; int8 also writes `model.int8.onnx` (needs "onnx").
    Raises ConfigError for an unknown format, DataError for a missing or bad checkpoint.
    """
    from asr.inference import InferenceModel

    unknown = [f for f in formats if f not in EXPORT_FORMATS]
    if unknown or not formats:
        raise ConfigError(f"--format: expected some of {', '.join(EXPORT_FORMATS)}, got {','.join(formats)!r}")
    if int8 and "onnx" not in formats:
        raise ConfigError("--int8 quantises the ONNX model: include onnx in --format")
    inference = InferenceModel.from_checkpoint(model, device="cpu")
    out_dir = Path(out_dir)
    metadata = export_metadata(inference)
    network = export_ready(inference)
    example = random_features(inference, _TRACE_FRAMES, seed=1)
    check = check_batch(inference)
    files: dict[str, Path] = {}
    if "onnx" in formats:
        files["onnx"] = write_onnx(network, example, out_dir / ONNX_NAME, metadata)
        if int8:
            files["int8"] = write_int8(files["onnx"], out_dir / INT8_NAME, metadata)
    if "torchscript" in formats:
        files["torchscript"] = write_torchscript(trace(network, example), out_dir / TORCHSCRIPT_NAME, metadata)
    files["metadata"] = out_dir / METADATA_NAME
    atomic_write_text(files["metadata"], json.dumps(metadata, indent=1) + "\n")
    diffs, greedy = compare_files(inference, files, check)
    return ExportResult(out_dir, files, diffs, greedy)


def export_metadata(inference) -> dict:
    """Plain JSON values describing an exported model's input and output: everything a caller
    outside this package needs to make features, read the log-probs and turn them into text."""
    feature_config = inference.feature_config
    return {
        "format": "asr-ctc-model", "version": METADATA_VERSION,
        "inputs": {
            INPUT_NAMES[0]: f"(batch, frames, {feature_config.dim}) float32: {feature_config.kind} features "
                            "(feature_config, Kaldi-compatible, waveform scaled to the int16 range) then "
                            "(x - cmvn.mean) / cmvn.std; frames past a row's length may hold anything",
            INPUT_NAMES[1]: "(batch,) int64: valid frames of each row",
        },
        "outputs": {
            OUTPUT_NAMES[0]: f"(batch, out_frames, {inference.tokenizer.vocab_size}) float32: log-softmax over "
                             "tokens; out_frames = ceil-like subsampling of frames (see out_lengths)",
            OUTPUT_NAMES[1]: "(batch,) int64: valid output frames of each row",
        },
        "tokens": inference.tokenizer.to_list(),
        "blank_id": inference.tokenizer.blank_id,
        "word_separator": inference.tokenizer.tokens[inference.tokenizer.space_id],
        "sample_rate": feature_config.sample_rate,
        "feature_config": feature_config.to_dict(),
        "cmvn": {key: value.tolist() for key, value in inference.frontend.cmvn.to_dict().items()},
        "subsample": int(inference.model.subsample),
        "seconds_per_frame": inference.seconds_per_frame,
        "model_config": inference.checkpoint["model_config"],
        "source": {"checkpoint": str(inference.path), "step": inference.checkpoint.get("step")},
    }


def export_ready(inference) -> nn.Module:
    """A fresh copy of the inference model's network in evaluation mode, contiguous weights (the
    CPU inference model keeps channels_last ones), on the padded recurrent path."""
    from asr.model import build_model

    model = build_model(inference.model_config)
    model.load_state_dict(inference.model.state_dict())
    model.eval()
    if hasattr(model, "use_packed"):
        model.use_packed = False  # see the module docstring
    return model


def random_features(inference, frames: Sequence[int], seed: int = 0) -> tuple[Tensor, Tensor]:
    """A padded batch of normalised-feature-like inputs: (B, max frames, D) N(0, 1), lengths (B,);
    padding holds noise too, so a graph that read it would show."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(len(frames), max(frames), inference.feature_config.dim, generator=generator)
    return features, torch.tensor(frames, dtype=torch.int64)


def trace(network: nn.Module, example: tuple[Tensor, Tensor]) -> torch.jit.ScriptModule:
    """`network` traced on `example` (features, lengths), under no_grad as tracing it needs."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice
        return torch.jit.trace(network, example, check_trace=False)


def check_batch(inference) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The check batch (features, lengths) and the PyTorch model's (log_probs, out_lengths) on it,
    from the model as `InferenceModel` runs it (packed path)."""
    features, lengths = random_features(inference, CHECK_FRAMES, seed=2)
    with torch.no_grad():
        log_probs, out_lengths = inference.model(features, lengths)
    return features, lengths, log_probs, out_lengths


def write_onnx(network: nn.Module, example: tuple[Tensor, Tensor], path: Path, metadata: dict) -> Path:
    """`network`, traced on `example`, as ONNX at `path` (atomic), batch and frames dynamic,
    metadata embedded."""
    import onnx

    buffer = io.BytesIO()
    dynamic = {INPUT_NAMES[0]: {0: "batch", 1: "frames"}, INPUT_NAMES[1]: {0: "batch"},
               OUTPUT_NAMES[0]: {0: "batch", 1: "out_frames"}, OUTPUT_NAMES[1]: {0: "batch"}}
    with torch.no_grad(), warnings.catch_warnings():
        # The legacy exporter's deprecation notice, and its warning that an RNN exported at batch 2
        # may fail at other batch sizes: the initial states here are built from the input's shape,
        # and the export is checked at another batch size (compare_files).
        warnings.simplefilter("ignore")
        torch.onnx.export(network, example, buffer, dynamo=False, opset_version=OPSET, input_names=list(INPUT_NAMES),
                          output_names=list(OUTPUT_NAMES), dynamic_axes=dynamic)
    model = onnx.load_from_string(buffer.getvalue())
    _write_onnx_with_metadata(model, path, metadata)
    return path


def write_int8(source: Path, path: Path, metadata: dict) -> Path:
    """Dynamic int8 quantisation of the ONNX model at `source` (weights int8, activations
    quantised per call) written to `path` (atomic), metadata embedded."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".int8-") as tmp:
        quantised = Path(tmp) / INT8_NAME
        logger = logging.getLogger()
        level = logger.level
        logger.setLevel(logging.ERROR)  # quantize_dynamic logs a pre-processing hint at WARNING for every call
        try:
            quantize_dynamic(source, quantised, weight_type=QuantType.QInt8)
        finally:
            logger.setLevel(level)
        _write_onnx_with_metadata(onnx.load(quantised), path, metadata)
    return path


def _write_onnx_with_metadata(model, path: Path, metadata: dict) -> None:
    import onnx

    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(metadata)})
    onnx.checker.check_model(model)
    with atomic_open(path, "wb") as f:
        f.write(model.SerializeToString())


def write_torchscript(traced: torch.jit.ScriptModule, path: Path, metadata: dict) -> Path:
    """The traced network as a TorchScript file at `path` (atomic), metadata as its extra file
    `model.json` (`torch.jit.load(path, _extra_files={"model.json": ""})` reads it back)."""
    with atomic_open(path, "wb") as f, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice
        torch.jit.save(traced, f, _extra_files={METADATA_NAME: json.dumps(metadata)})
    return path


def load_torchscript(path: str | os.PathLike) -> tuple[torch.jit.ScriptModule, dict]:
    """An exported TorchScript file and its metadata."""
    extra = {METADATA_NAME: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return module, json.loads(extra[METADATA_NAME])


def compare_files(inference, files: dict[str, Path], check) -> tuple[dict[str, float], dict[str, bool]]:
    """Run every written graph on the check batch: max |log-prob difference| from PyTorch over
    valid frames, and whether its greedy transcripts are PyTorch's. Raises RuntimeError when an
    fp32 graph is off by more than FP32_TOLERANCE or gives other output lengths (an export bug)."""
    from asr.onnx_backend import OnnxInferenceModel

    features, lengths, reference, out_lengths = check
    runners = {}
    for kind in ("onnx", "int8"):
        if kind in files:
            runners[kind] = OnnxInferenceModel(files[kind], threads=1).run_features
    if "torchscript" in files:
        module, _ = load_torchscript(files["torchscript"])
        runners["torchscript"] = module
    diffs, greedy = {}, {}
    for kind, run in runners.items():
        with torch.no_grad():
            log_probs, lengths_out = run(features, lengths)
        if not torch.equal(lengths_out, out_lengths):
            raise RuntimeError(f"{files[kind]}: output lengths {lengths_out.tolist()}, PyTorch {out_lengths.tolist()}")
        diffs[kind] = max_valid_diff(log_probs, reference, out_lengths)
        greedy[kind] = _greedy(log_probs, out_lengths) == _greedy(reference, out_lengths)
        if kind != "int8" and diffs[kind] > FP32_TOLERANCE:
            raise RuntimeError(f"{files[kind]}: log-probs differ from PyTorch by {diffs[kind]:.2e}")
    return diffs, greedy


def max_valid_diff(log_probs: Tensor, reference: Tensor, lengths: Tensor) -> float:
    """max |log_probs - reference| over the valid frames of each row ((B, T, V), lengths (B,))."""
    with contextlib.suppress(ValueError):  # max of no frames: an all-empty batch
        return max(float((log_probs[b, :n] - reference[b, :n]).abs().max()) for b, n in enumerate(lengths.tolist())
                   if n > 0)
    return 0.0


def _greedy(log_probs: Tensor, lengths: Tensor) -> list[list[int]]:
    from asr.decode import greedy_decode

    return [[token for token, _ in hyp] for hyp in greedy_decode(log_probs, lengths)]
