"""Checkpoints: plain dicts loadable with weights_only, resolving, averaging, the inference model."""

from __future__ import annotations

import os
import time

import pytest
import torch

from asr.checkpoint import (
    average_checkpoints,
    average_experiment,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    step_checkpoints,
)
from asr.config import to_dict
from asr.errors import DataError
from asr.features import FeatureConfig, GlobalCMVN, compute_features
from asr.inference import InferenceModel
from asr.model import BiRNNCTC, ModelConfig
from asr.text import Tokenizer

FEATURES = FeatureConfig(num_mel_bins=23)
MODEL = ModelConfig(input_dim=23, vocab_size=6, subsample=2, conv_channels=4, hidden=8, layers=2, norm="batch")
TOKENS = ["<blank>", "|", "A", "B", "C", "D"]


def make_payload(seed: int, step: int = 0, training: bool = False) -> dict:
    torch.manual_seed(seed)
    model = BiRNNCTC(MODEL)
    payload = {
        "model": model.state_dict(),
        "model_config": to_dict(MODEL),
        "feature_config": to_dict(FEATURES),
        "tokens": TOKENS,
        "cmvn": {"mean": torch.randn(23), "std": torch.rand(23) + 0.5},
        "step": step,
        "epoch": 0,
        "valid": None,
    }
    if training:
        payload["rng"] = {"torch": torch.get_rng_state(), "python": [3, list(range(5)), None]}
        payload["optimizer"] = torch.optim.AdamW(model.parameters()).state_dict()
    return payload


def test_round_trip_weights_only(tmp_path):
    payload = make_payload(0, step=7, training=True)
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint(path, payload)
    loaded = torch.load(path, weights_only=True)
    assert loaded["step"] == 7 and loaded["tokens"] == TOKENS
    for key, value in payload["model"].items():
        assert torch.equal(loaded["model"][key], value)
    assert load_checkpoint(path)["model_config"] == to_dict(MODEL)
    assert sorted(os.listdir(path.parent)) == ["last.pt"]


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(DataError, match="bad.pt"):
        load_checkpoint(bad)
    truncated = tmp_path / "truncated.pt"
    save_checkpoint(tmp_path / "good.pt", make_payload(0))
    truncated.write_bytes((tmp_path / "good.pt").read_bytes()[:500])
    with pytest.raises(DataError, match="truncated.pt"):
        load_checkpoint(truncated)


def test_resolve_order(tmp_path):
    folder = tmp_path / "checkpoints"
    with pytest.raises(DataError):
        resolve_checkpoint(tmp_path)
    save_checkpoint(folder / "last.pt", make_payload(0))
    assert resolve_checkpoint(tmp_path) == folder / "last.pt"
    save_checkpoint(folder / "best.pt", make_payload(0))
    assert resolve_checkpoint(tmp_path) == folder / "best.pt"
    save_checkpoint(folder / "avg-2.pt", make_payload(0))
    save_checkpoint(folder / "avg-5.pt", make_payload(0))
    past = time.time() - 100
    os.utime(folder / "avg-2.pt", (past, past))
    assert resolve_checkpoint(tmp_path) == folder / "avg-5.pt"
    assert resolve_checkpoint(folder) == folder / "avg-5.pt"
    assert resolve_checkpoint(folder / "last.pt") == folder / "last.pt"


def test_average_is_the_mean(tmp_path):
    folder = tmp_path / "checkpoints"
    payloads = [make_payload(seed, step=10 * (seed + 1), training=True) for seed in range(4)]
    for p in payloads:
        save_checkpoint(folder / f"step-{p['step']}.pt", p)
    save_checkpoint(folder / "step-5.pt", make_payload(9, step=5))  # the oldest: not in the last 3
    assert [p.name for p in step_checkpoints(folder)] == ["step-5.pt", "step-10.pt", "step-20.pt", "step-30.pt",
                                                          "step-40.pt"]

    out, used = average_experiment(tmp_path, last=3)
    assert out == folder / "avg-3.pt"
    assert [p.name for p in used] == ["step-20.pt", "step-30.pt", "step-40.pt"]
    averaged = torch.load(out, weights_only=True)
    assert "optimizer" not in averaged and "rng" not in averaged
    assert averaged["step"] == 40
    for key, value in payloads[-1]["model"].items():
        if value.is_floating_point():
            expected = torch.stack([p["model"][key] for p in payloads[1:]]).mean(dim=0)
            torch.testing.assert_close(averaged["model"][key], expected, rtol=0, atol=1e-6)
        else:  # num_batches_tracked: from the last checkpoint
            assert torch.equal(averaged["model"][key], value)
    assert resolve_checkpoint(tmp_path) == out
    with pytest.raises(DataError, match="5 step-N.pt checkpoint"):
        average_experiment(tmp_path, last=6)
    assert average_checkpoints([folder / "step-40.pt"])["model"].keys() == payloads[-1]["model"].keys()


def test_inference_model_matches_manual_pipeline(tmp_path):
    payload = make_payload(3, step=1)
    save_checkpoint(tmp_path / "checkpoints" / "best.pt", payload)
    inference = InferenceModel.from_checkpoint(tmp_path, device="cpu")
    assert not inference.model.training
    assert inference.tokenizer == Tokenizer.from_list(TOKENS)
    assert inference.seconds_per_frame == pytest.approx(0.02)

    torch.manual_seed(0)
    waveforms = torch.randn(2, 8000) * 0.1
    lengths = torch.tensor([8000, 5000])
    log_probs, out_lengths = inference(waveforms, lengths)

    model = BiRNNCTC(MODEL)
    model.load_state_dict(payload["model"])
    model.eval()
    cmvn = GlobalCMVN.from_dict(payload["cmvn"])
    feats, frame_lengths = compute_features(waveforms, lengths, FEATURES)
    with torch.no_grad():
        expected, expected_lengths = model(cmvn(feats, frame_lengths), frame_lengths)
    assert log_probs.dtype == torch.float32 and log_probs.device.type == "cpu"
    assert torch.equal(out_lengths, expected_lengths)
    torch.testing.assert_close(log_probs, expected)


def test_inference_model_rejects_mismatched_weights(tmp_path):
    payload = make_payload(0)
    payload["model_config"] = dict(payload["model_config"], hidden=9)
    save_checkpoint(tmp_path / "x.pt", payload)
    with pytest.raises(DataError, match="x.pt"):
        InferenceModel.from_checkpoint(tmp_path / "x.pt", device="cpu")
