"""Tests of asr export and the onnxruntime back end: parity with PyTorch on batches of varied
lengths, padding invariance inside the exported graphs, dynamic batch and length, the metadata a
caller needs for the features (checked by computing them independently with torchaudio), int8,
Transcriber / asr transcribe --backend onnx, and the CLI's errors."""

from __future__ import annotations

import dataclasses
import json
import string

import numpy as np
import onnx
import pytest
import soundfile
import torch

from asr.cli import main
from asr.decode import GreedyDecoder
from asr.errors import ConfigError, DataError
from asr.export import export_model, load_torchscript, max_valid_diff
from asr.inference import InferenceModel
from asr.onnx_backend import OnnxInferenceModel
from asr.transcribe import Transcriber

SR = 16000
TOKENS = ["<blank>", "|", "'", *string.ascii_uppercase]
WAVE_SECONDS = (2.3, 0.9, 1.6, 0.12)  # a batch of varied lengths, one shorter than most words


def make_checkpoint(path, seed: int = 0, **model_options):
    """A tiny untrained checkpoint; the blank is pushed down so that greedy decoding emits text."""
    from asr.checkpoint import save_checkpoint
    from asr.features import FeatureConfig
    from asr.model import ModelConfig, build_model

    torch.manual_seed(seed)
    feature_config = FeatureConfig(num_mel_bins=40)
    options = dict(hidden=16, layers=2, conv_channels=4, dropout=0.0, rnn_type="lstm", norm="layer")
    model_config = ModelConfig(input_dim=feature_config.dim, vocab_size=len(TOKENS), **{**options, **model_options})
    model = build_model(model_config)
    with torch.no_grad():
        model.head.bias[0] = -3.0
    generator = torch.Generator().manual_seed(seed)
    save_checkpoint(path, {
        "model": model.state_dict(), "model_config": dataclasses.asdict(model_config),
        "feature_config": dataclasses.asdict(feature_config), "tokens": TOKENS,
        "cmvn": {"mean": 5.0 + torch.rand(feature_config.dim, generator=generator),
                 "std": 2.0 + torch.rand(feature_config.dim, generator=generator)},
        "step": 7, "epoch": 0, "valid": None,
    })
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tiny LSTM checkpoint and its export folder (onnx, int8, torchscript)."""
    root = tmp_path_factory.mktemp("export")
    checkpoint = make_checkpoint(root / "tiny.pt")
    result = export_model(checkpoint, root / "out", int8=True)
    return checkpoint, result


def waves(seconds=WAVE_SECONDS, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A zero-padded batch of tone-and-noise waveforms (B, samples) and their lengths."""
    rng = np.random.default_rng(seed)
    lengths = [int(s * SR) for s in seconds]
    batch = torch.zeros(len(lengths), max(lengths))
    for row, n in enumerate(lengths):
        t = np.arange(n) / SR
        wave = 0.2 * np.sin(2 * np.pi * (220 + 90 * row) * t * (1 + 0.3 * t)) + 0.02 * rng.standard_normal(n)
        batch[row, :n] = torch.from_numpy(wave.astype(np.float32))
    return batch, torch.tensor(lengths)


def greedy_texts(log_probs, lengths) -> list[str]:
    return [h.text for h in GreedyDecoder(TOKENS).decode(log_probs, lengths)]


# --- parity -------------------------------------------------------------------------------------
def test_onnx_backend_matches_pytorch_on_a_batch_of_varied_lengths(exported):
    checkpoint, result = exported
    torch_model = InferenceModel.from_checkpoint(checkpoint, device="cpu")
    onnx_model = OnnxInferenceModel(result.out_dir)
    batch, lengths = waves()
    reference, ref_lengths = torch_model(batch, lengths)
    log_probs, out_lengths = onnx_model(batch, lengths)
    assert torch.equal(out_lengths, ref_lengths)
    assert log_probs.shape == reference.shape and log_probs.dtype == torch.float32
    assert max_valid_diff(log_probs, reference, ref_lengths) < 1e-4
    texts = greedy_texts(reference, ref_lengths)
    assert greedy_texts(log_probs, out_lengths) == texts
    assert sum(len(t) for t in texts) > 0  # the comparison is not between empty strings
    # the same interface as InferenceModel
    assert onnx_model.sample_rate == torch_model.sample_rate == SR
    assert onnx_model.seconds_per_frame == pytest.approx(torch_model.seconds_per_frame)
    assert onnx_model.tokenizer == torch_model.tokenizer and onnx_model.device.type == "cpu"
    assert onnx_model.path == result.files["onnx"]


@pytest.mark.parametrize("options", [
    dict(rnn_type="gru", norm="batch"),
    dict(rnn_type="rnn", nonlinearity="relu", layers=1),
    dict(frontend="none", subsample=1, bidirectional=False),
    dict(subsample=2, conv_kernels=((5, 11), (5, 11))),
], ids=["gru-batchnorm", "rnn-relu", "no-conv-unidirectional", "subsample2"])
def test_every_model_variant_exports_within_tolerance(tmp_path, options):
    checkpoint = make_checkpoint(tmp_path / "tiny.pt", seed=3, **options)
    result = export_model(checkpoint, tmp_path / "out", formats=("onnx", "torchscript"))
    assert result.max_abs_diff["onnx"] < 1e-4 and result.max_abs_diff["torchscript"] < 1e-4
    assert result.same_greedy == {"onnx": True, "torchscript": True}
    torch_model = InferenceModel.from_checkpoint(checkpoint, device="cpu")
    batch, lengths = waves((1.1, 0.4, 0.7), seed=4)
    reference, ref_lengths = torch_model(batch, lengths)
    log_probs, out_lengths = OnnxInferenceModel(result.files["onnx"])(batch, lengths)
    assert torch.equal(out_lengths, ref_lengths)
    assert max_valid_diff(log_probs, reference, ref_lengths) < 1e-4


def run_graph(kind, result, features, lengths):
    if kind == "torchscript":
        module, _ = load_torchscript(result.files["torchscript"])
        with torch.no_grad():
            return module(features, lengths)
    return OnnxInferenceModel(result.files[kind]).run_features(features, lengths)


@pytest.mark.parametrize("kind", ["onnx", "torchscript"])
def test_exported_graph_is_padding_invariant_at_any_batch_and_length(exported, kind):
    """An utterance alone gives the log-probs it gets beside a longer one, whatever the padding
    holds; batch sizes and lengths differ from those the graph was traced with."""
    _, result = exported
    generator = torch.Generator().manual_seed(5)
    features = torch.randn(3, 311, 40, generator=generator)
    lengths = torch.tensor([311, 45, 180])
    batch_log_probs, batch_lengths = run_graph(kind, result, features, lengths)
    for row in range(3):
        n = int(lengths[row])
        alone, alone_lengths = run_graph(kind, result, features[row : row + 1, :n], lengths[row : row + 1])
        assert int(alone_lengths[0]) == int(batch_lengths[row])
        t = int(alone_lengths[0])
        assert (alone[0, :t] - batch_log_probs[row, :t]).abs().max() < 1e-5
    garbage = features.clone()
    garbage[1, 45:] = 1e3  # padding may hold anything
    changed, _ = run_graph(kind, result, garbage, lengths)
    t = int(batch_lengths[1])
    assert (changed[1, :t] - batch_log_probs[1, :t]).abs().max() < 1e-5


def test_metadata_is_enough_to_compute_the_features_independently(exported):
    """model.json's feature config and CMVN, with torchaudio's Kaldi fbank (not asr.features),
    give the features the graph expects: its log-probs are PyTorch's."""
    import torchaudio

    checkpoint, result = exported
    metadata = json.loads(result.files["metadata"].read_text())
    embedded = onnx.load(result.files["onnx"]).metadata_props
    assert json.loads({p.key: p.value for p in embedded}["asr"]) == metadata
    assert load_torchscript(result.files["torchscript"])[1] == metadata
    payload = torch.load(checkpoint, weights_only=True)
    assert metadata["tokens"] == TOKENS and metadata["blank_id"] == 0 and metadata["word_separator"] == "|"
    assert torch.equal(torch.tensor(metadata["cmvn"]["mean"]), payload["cmvn"]["mean"])
    assert torch.equal(torch.tensor(metadata["cmvn"]["std"]), payload["cmvn"]["std"])
    assert metadata["seconds_per_frame"] == pytest.approx(0.04) and metadata["subsample"] == 4
    config = metadata["feature_config"]
    batch, lengths = waves((1.7,), seed=6)
    fbank = torchaudio.compliance.kaldi.fbank(
        batch[:1] * 32768, sample_frequency=config["sample_rate"], num_mel_bins=config["num_mel_bins"],
        frame_length=config["frame_length_ms"], frame_shift=config["frame_shift_ms"], dither=0.0,
        preemphasis_coefficient=config["preemphasis"], low_freq=config["low_freq"], high_freq=config["high_freq"],
        window_type=config["window_type"], use_energy=config["use_energy"], snip_edges=config["snip_edges"])
    features = (fbank - torch.tensor(metadata["cmvn"]["mean"])) / torch.tensor(metadata["cmvn"]["std"])
    log_probs, out_lengths = OnnxInferenceModel(result.out_dir).run_features(features[None], torch.tensor([len(fbank)]))
    reference, ref_lengths = InferenceModel.from_checkpoint(checkpoint, device="cpu")(batch, lengths)
    assert torch.equal(out_lengths, ref_lengths)
    assert max_valid_diff(log_probs, reference, ref_lengths) < 1e-3  # fbank agrees to ~1e-3 (features.py)


def test_int8_model_is_quantised_smaller_and_runs(exported):
    checkpoint, result = exported
    int8 = result.files["int8"]
    ops = {node.op_type for node in onnx.load(int8).graph.node}
    assert {"DynamicQuantizeLSTM", "MatMulInteger"} <= ops  # weights stored as int8
    assert int8.stat().st_size < 0.75 * result.files["onnx"].stat().st_size
    batch, lengths = waves()
    reference, ref_lengths = InferenceModel.from_checkpoint(checkpoint, device="cpu")(batch, lengths)
    log_probs, out_lengths = OnnxInferenceModel(int8)(batch, lengths)
    assert torch.equal(out_lengths, ref_lengths)
    # Quantisation moves the log-probs (reported by export, not asserted tight), but not wildly.
    assert 0 < max_valid_diff(log_probs, reference, ref_lengths) < 1.0
    assert "int8" in result.max_abs_diff and "int8" in result.same_greedy


# --- transcription through the ONNX back end ------------------------------------------------------
def test_transcriber_from_onnx_gives_pytorchs_text_and_word_times(exported, tmp_path):
    checkpoint, result = exported
    batch, lengths = waves((2.3,), seed=7)
    wave = np.concatenate([np.zeros(4000, np.float32), batch[0].numpy(), np.zeros(8000, np.float32),
                           batch[0].numpy()[: SR // 2]])
    path = tmp_path / "tones.wav"
    soundfile.write(path, wave, SR)
    expected = Transcriber.from_checkpoint(checkpoint, device="cpu").transcribe(path)
    got = Transcriber.from_onnx(result.out_dir).transcribe(path)
    assert expected.text and got.text == expected.text
    assert [(w.word, w.start, w.end) for w in got.words] == [(w.word, w.start, w.end) for w in expected.words]
    assert [w.confidence for w in got.words] == pytest.approx([w.confidence for w in expected.words], abs=1e-4)


def test_cli_export_then_transcribe_with_the_onnx_backend(tmp_path, capsys):
    checkpoint = make_checkpoint(tmp_path / "tiny.pt", seed=1)
    out = tmp_path / "deploy"
    assert main(["export", "--model", str(checkpoint), "--out", str(out), "--int8"]) == 0
    printed = capsys.readouterr().out
    for name in ("model.onnx", "model.int8.onnx", "model.torchscript.pt", "model.json"):
        assert (out / name).is_file() and name in printed
    assert "greedy text the same" in printed
    batch, lengths = waves((1.9,), seed=8)
    audio = tmp_path / "a.flac"
    soundfile.write(audio, batch[0].numpy(), SR)
    assert main(["transcribe", "--model", str(checkpoint), str(audio)]) == 0
    torch_text = capsys.readouterr().out
    assert main(["transcribe", "--backend", "onnx", "--model", str(out), str(audio)]) == 0
    assert capsys.readouterr().out == torch_text and torch_text.strip()
    assert main(["transcribe", "--backend", "onnx", "--model", str(out / "model.int8.onnx"), str(audio)]) == 0


# --- errors -----------------------------------------------------------------------------------------
def test_export_option_errors(exported, tmp_path):
    checkpoint, _ = exported
    with pytest.raises(ConfigError, match="--int8 quantises the ONNX model"):
        export_model(checkpoint, tmp_path / "x", formats=("torchscript",), int8=True)
    with pytest.raises(ConfigError, match="--format: expected some of onnx, torchscript"):
        export_model(checkpoint, tmp_path / "x", formats=("tflite",))
    with pytest.raises(DataError, match="missing.pt: no such checkpoint"):
        export_model(tmp_path / "missing.pt", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_onnx_backend_errors_name_the_file(exported, tmp_path, capsys):
    _, result = exported
    with pytest.raises(DataError, match="no model.onnx here"):
        OnnxInferenceModel(tmp_path)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(DataError, match=f"{bad}: not a readable ONNX model"):
        OnnxInferenceModel(bad)
    bare = onnx.load(result.files["onnx"])
    del bare.metadata_props[:]
    onnx.save(bare, tmp_path / "bare.onnx")
    with pytest.raises(DataError, match="without asr metadata"):
        OnnxInferenceModel(tmp_path / "bare.onnx")
    audio = tmp_path / "a.wav"
    soundfile.write(audio, np.zeros(SR, np.float32), SR)
    assert main(["transcribe", "--backend", "onnx", "--model", str(tmp_path / "nothing"), str(audio)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing: no such ONNX model" in err[0]


def test_bench_decode_reports_torch_onnx_and_int8_rows_in_one_run(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "bench_decode", Path(__file__).resolve().parents[1] / "scripts" / "bench_decode.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    checkpoint = make_checkpoint(tmp_path / "tiny.pt", seed=2)
    batch, lengths = waves((1.4, 0.8, 2.0), seed=9)
    records = []
    for i, n in enumerate(lengths.tolist()):
        soundfile.write(tmp_path / f"u{i}.wav", batch[i, :n].numpy(), SR)
        records.append({"id": f"u{i}", "audio": f"u{i}.wav", "duration": n / SR, "text": "A B", "speaker": "s"})
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert bench.main(["--model", str(checkpoint), "--manifest", str(manifest), "--decoders", "greedy",
                       "--backends", "torch,onnx,onnx-int8", "--repeat", "1"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[3:]]
    assert [row[:2] for row in rows] == [["torch", "greedy"], ["onnx", "greedy"], ["onnx-int8", "greedy"]]
    assert rows[0][-1] == rows[1][-1]  # fp32 ONNX: the same WER as PyTorch
    assert all(float(row[4]) > 0 for row in rows)  # x real time
    # with test-time VTLN: both backends warp through the same front-end, so the same words
    assert bench.main(["--model", str(checkpoint), "--manifest", str(manifest), "--decoders", "greedy",
                       "--backends", "torch,onnx", "--repeat", "1", "--vtln"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "test-time VTLN per utterance" in out[0]
    rows = [line.split() for line in out[3:]]
    assert [row[:2] for row in rows] == [["torch", "greedy"], ["onnx", "greedy"]]
    assert rows[0][-1] == rows[1][-1] and all(float(row[6]) > 0 for row in rows)  # WER; model seconds
    assert bench.main(["--model", str(checkpoint), "--manifest", str(manifest), "--backends", "tflite"]) == 1
    assert "unknown backend 'tflite'" in capsys.readouterr().err
