"""The out-of-domain flag: posterior statistics against hand computations, the calibration rule,
the JSON field, and a tone model (tests/test_train.py's toy task, ~10 s of training) calibrated
on its own dev set that flags noise and tones outside the trained band but not held-out tone
utterances.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from test_train import TOY, write_tone_corpus

from asr.calibrate import PosteriorStats, calibration_from_values, check_domain, pool, posterior_stats
from asr.checkpoint import load_checkpoint
from asr.cli import main
from asr.errors import DataError
from asr.transcribe import Transcriber, Transcript, Word

TOKENS = ["<blk>", "|", "A", "B"]
SR = 16000


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_posterior_stats_match_a_hand_computation():
    """Frames: A A blank | B, then padding; the figures computed here from the probabilities."""
    probs = torch.tensor([[0.1, 0.0, 0.8, 0.1], [0.2, 0.0, 0.7, 0.1], [0.9, 0.05, 0.05, 0.0],
                          [0.1, 0.6, 0.2, 0.1], [0.3, 0.1, 0.0, 0.6], [0.25, 0.25, 0.25, 0.25]])
    log_probs = probs.clamp_min(1e-12).log()[None]  # (1, 6, 4)
    stats = posterior_stats(log_probs, torch.tensor([5]), TOKENS)[0]
    values = stats.values()
    assert stats.frames == 5 and stats.blank_frames == 1 and stats.words == 2
    assert values["frame_confidence"] == pytest.approx((0.8 + 0.7 + 0.9 + 0.6 + 0.6) / 5)
    assert values["token_confidence"] == pytest.approx((0.8 + 0.7 + 0.6 + 0.6) / 4)
    assert values["blank_ratio"] == pytest.approx(0.2)
    entropy = [-sum(p * math.log(p) for p in row if p > 0) for row in probs[:5].tolist()]
    assert values["entropy"] == pytest.approx(sum(entropy) / 5, rel=1e-5)
    # Words "A" (emitted at frame 0: 0.8) and "B" (frame 4: 0.6); the padding frame is ignored.
    assert values["word_confidence"] == pytest.approx((0.8 + 0.6) / 2)


def test_feature_spread_is_the_widest_band_of_per_dimension_deviations_and_pools_over_chunks():
    """8 feature dimensions in FEATURE_BANDS = 4 bands of 2; the deviations computed with numpy."""
    rng = np.random.default_rng(0)
    scale = np.array([1.0, 1.0, 0.5, 0.5, 2.0, 1.5, 0.2, 0.2])
    feats = rng.standard_normal((2, 30, 8)) * scale + rng.standard_normal(8)  # row 1: 18 valid frames
    log_probs = torch.full((2, 5, 4), math.log(0.25))
    lengths = torch.tensor([30, 18])
    stats = posterior_stats(log_probs, torch.tensor([5, 5]), TOKENS, torch.from_numpy(feats).float(), lengths)

    def spread(x):
        std = x.std(axis=0)  # population deviation of each dimension over the frames
        return max(std[2 * k: 2 * k + 2].mean() for k in range(4))

    assert stats[0].values()["feature_spread"] == pytest.approx(spread(feats[0]), rel=1e-5)
    assert stats[1].values()["feature_spread"] == pytest.approx(spread(feats[1, :18]), rel=1e-5)  # padding ignored
    whole = np.concatenate([feats[0], feats[1, :18]])
    assert pool(stats).values()["feature_spread"] == pytest.approx(spread(whole), rel=1e-5)
    # no features (a stand-in model): undefined, and pooling with it changes nothing
    bare = posterior_stats(log_probs, torch.tensor([5, 5]), TOKENS)[0]
    assert bare.values()["feature_spread"] is None
    assert (bare + stats[0]).values()["feature_spread"] == pytest.approx(spread(feats[0]), rel=1e-5)


def test_pooled_chunks_weigh_frames_and_words_and_a_wordless_file_scores_zero():
    a = PosteriorStats(frames=10, blank_frames=2, top_sum=9.0, token_top_sum=7.0, entropy_sum=1.0, words=1,
                       word_confidence_sum=0.9)
    b = PosteriorStats(frames=30, blank_frames=30, top_sum=15.0, entropy_sum=9.0)
    both = pool([a, b]).values()
    assert both["frame_confidence"] == pytest.approx(24 / 40) and both["blank_ratio"] == pytest.approx(32 / 40)
    assert both["word_confidence"] == pytest.approx(0.9) and both["token_confidence"] == pytest.approx(7 / 8)
    assert b.values()["word_confidence"] == 0.0 and b.values()["token_confidence"] is None
    assert PosteriorStats().values()["word_confidence"] is None  # no frames (silence only): no verdict
    rule = {"statistic": "word_confidence", "direction": "below", "threshold": 0.5, "reference": 0.6, "median": 0.9,
            "tail": 1.0}
    assert check_domain(PosteriorStats(), {"rules": [rule]}).out_of_domain is False


def test_calibration_rules_and_their_errors():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.8, 1.0, size=200)
    blank = rng.uniform(0.1, 0.3, size=200)
    values = [{"frame_confidence": c, "token_confidence": c, "word_confidence": c, "entropy": 1 - c,
               "blank_ratio": b} for c, b in zip(conf, blank)]
    cal = calibration_from_values(values, ["word_confidence", "entropy", "blank_ratio"], percentile=2.0, margin=0.5)
    word, entropy, blank_low, blank_high = cal["rules"]
    p2, median = np.percentile(conf, 2), np.median(conf)
    assert word["reference"] == pytest.approx(p2) and word["threshold"] == pytest.approx(p2 - 0.5 * (median - p2))
    assert entropy["direction"] == "above" and entropy["tail"] == 98 and entropy["threshold"] == pytest.approx(
        1 - word["threshold"])
    b98 = np.percentile(blank, 98)
    assert blank_high["threshold"] == pytest.approx(b98 + 0.5 * (b98 - np.median(blank)))
    assert blank_low["direction"] == "below"
    assert cal["dev"]["entropy"]["p98"] == pytest.approx(np.percentile(1 - conf, 98))

    def verdict(confidence, blank_ratio):
        return check_domain(PosteriorStats(frames=100, blank_frames=round(100 * blank_ratio), top_sum=100.0,
                                           entropy_sum=100 * (1 - confidence), words=1,
                                           word_confidence_sum=confidence), cal)

    assert not verdict(0.9, 0.2).out_of_domain
    unsure = verdict(word["threshold"] - 0.01, 0.2)  # breaks word confidence and entropy: names the worse
    assert unsure.out_of_domain and unsure.statistic in ("word_confidence", "entropy")
    busy = verdict(0.9, blank_high["threshold"] + 0.02)
    assert busy.out_of_domain and busy.statistic == "blank_ratio" and busy.direction == "above"
    assert "dev 98th percentile" in busy.warning("f.wav")
    with pytest.raises(DataError, match="unknown statistic loudness"):
        calibration_from_values(values, ["loudness"])
    with pytest.raises(DataError, match="undefined"):
        calibration_from_values([{**v, "token_confidence": None} for v in values], ["token_confidence"])


def test_json_carries_the_flag_and_reads_back():
    words = [Word("AB", 0.1, 0.4, 0.5)]
    plain = Transcript("AB", words, 1.0)
    assert plain.to_dict()["out_of_domain"] is None and "domain" not in plain.to_dict()
    cal = {"rules": [{"statistic": "word_confidence", "direction": "below", "threshold": 0.8, "reference": 0.85,
                      "median": 0.95, "tail": 1.0}]}
    stats = PosteriorStats(frames=5, top_sum=3.0, words=1, word_confidence_sum=0.5)
    flagged = Transcript("AB", words, 1.0, check_domain(stats, cal), stats)
    payload = json.loads(json.dumps(flagged.to_dict()))
    assert payload["out_of_domain"] is True and payload["domain"]["score"] == 0.5
    assert payload["words"] == payload["segments"][0]["words"]  # the rest of the format as it was
    back = Transcript.from_dict(payload)
    assert back == Transcript("AB", words, 1.0, flagged.domain) and back.out_of_domain
    assert "word confidence 0.50, dev 1st percentile 0.85" in flagged.domain.warning("x.wav")


# --- a tone model ---------------------------------------------------------------------------
def write_waves(folder: Path, name: str, waves: list[np.ndarray]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, wave in enumerate(waves):
        paths.append(folder / f"{name}{i}.flac")
        sf.write(paths[-1], wave.astype(np.float32), SR)
    return paths


def out_of_domain_waves(rng) -> dict[str, list[np.ndarray]]:
    """White noise, speech-like noise (low-passed, syllable-rate envelope), each 1.5-2.5 s, and
    tone 'letters' outside the trained band (300-1500 Hz)."""
    def tones(freqs):
        pieces = [np.zeros(1600)]
        for f in freqs:
            pieces += [0.3 * np.sin(2 * np.pi * f * np.arange(2400) / SR), np.zeros(800)]
        return np.concatenate(pieces + [np.zeros(3200)]) + 0.003 * rng.standard_normal(sum(map(len, pieces)) + 3200)

    def speechlike(n):
        t = np.arange(n) / SR
        return 0.3 * np.convolve(rng.standard_normal(n), np.ones(8) / 8, "same") * np.sin(2 * np.pi * 4 * t) ** 2

    return {
        "white": [0.1 * rng.standard_normal(int(SR * s)) for s in (1.5, 2.0, 2.5)],
        "speechlike": [speechlike(int(SR * s)) for s in (1.5, 2.0, 2.5)],
        # Tones far above the band only: 100-150 Hz tones, below it, some builds of the toy model
        # call confident "A"s (its lowest letter) and others do not, by the CPU's float kernels
        # (an AVX-512 VM trains different weights than an AVX2 one): the blind spot noted below.
        "tones": [tones(f) for f in ([4000, 5000, 6000], [7000, 5000], [6000, 6000, 6000, 6000])],
    }


@pytest.fixture(scope="module")
def tone_model(tmp_path_factory):
    """The toy tone model, trained once (~10 s), its dev (valid) manifest and held-out test audio."""
    root = tmp_path_factory.mktemp("calibrate")
    train = write_tone_corpus(root / "data", "train", 64, seed=0)
    valid = write_tone_corpus(root / "data", "valid", 64, seed=1)
    test = write_tone_corpus(root / "data", "test", 16, seed=2)
    exp = root / "exp"
    assert main(["train", "--train", str(train), "--valid", str(valid), "--exp", str(exp), *TOY,
                 "train.epochs=12"]) == 0
    tests = [root / "data" / json.loads(line)["audio"] for line in test.read_text().splitlines()]
    return {"exp": exp, "valid": valid, "test": tests, "root": root}


def test_calibrate_writes_a_copy_or_in_place_keeping_every_key(tone_model, tmp_path, capsys):
    best = tone_model["exp"] / "checkpoints" / "best.pt"
    before = best.read_bytes()
    out = tmp_path / "calibrated.pt"
    assert main(["calibrate", "--model", str(tone_model["exp"]), "--manifest", str(tone_model["valid"]),
                 "--out", str(out), "--device", "cpu"]) == 0
    assert "flag when word_confidence < " in capsys.readouterr().out
    assert best.read_bytes() == before  # --out leaves the source alone
    original, calibrated = load_checkpoint(best), load_checkpoint(out)
    assert set(calibrated) == set(original) | {"calibration"}
    assert all(torch.equal(calibrated["model"][k], v) for k, v in original["model"].items())
    cal = calibrated["calibration"]
    assert [(r["statistic"], r["direction"]) for r in cal["rules"]] == [
        ("word_confidence", "below"), ("entropy", "above"), ("blank_ratio", "below"), ("blank_ratio", "above"),
        ("feature_spread", "above")]
    assert cal["utterances"] == 64 and cal["percentile"] == 1.0
    word = cal["rules"][0]
    assert word["threshold"] < word["reference"] <= word["median"]
    assert word["median"] == pytest.approx(cal["dev"]["word_confidence"]["p50"])
    in_place = tmp_path / "in_place.pt"
    in_place.write_bytes(before)
    assert main(["calibrate", "--model", str(in_place), "--manifest", str(tone_model["valid"]),
                 "--statistics", "entropy", "--device", "cpu"]) == 0
    assert [r["direction"] for r in load_checkpoint(in_place)["calibration"]["rules"]] == ["above"]
    assert main(["calibrate", "--model", str(in_place), "--manifest", str(tmp_path / "none.jsonl")]) == 1
    assert "none.jsonl" in capsys.readouterr().err


def test_the_flag_fires_out_of_domain_and_stays_quiet_in_domain(tone_model, tmp_path):
    checkpoint = tmp_path / "calibrated.pt"
    assert main(["calibrate", "--model", str(tone_model["exp"]), "--manifest", str(tone_model["valid"]),
                 "--out", str(checkpoint), "--device", "cpu"]) == 0
    transcriber = Transcriber.from_checkpoint(checkpoint, device="cpu")
    in_domain = [transcriber.transcribe(path) for path in tone_model["test"]]
    # The rule flags the dev set's own 1% tails (less the margin): at most one of 16 held-out files.
    assert sum(t.out_of_domain for t in in_domain) <= 1, [t.domain for t in in_domain]
    flagged = {kind: [transcriber.transcribe(wave, SR).out_of_domain for wave in waves]
               for kind, waves in out_of_domain_waves(np.random.default_rng(7)).items()}
    # (Tones between or near the trained pitches, e.g. 2.5-3.5 kHz, or just below them, this model
    # may call confident letters: its posteriors cannot tell them apart, and they are not asserted here.)
    assert all(flagged["white"]) and all(flagged["speechlike"]) and all(flagged["tones"]), flagged


def test_transcribe_warns_once_per_flagged_file_and_says_nothing_uncalibrated(tone_model, tmp_path, capsys):
    checkpoint = tmp_path / "calibrated.pt"
    assert main(["calibrate", "--model", str(tone_model["exp"]), "--manifest", str(tone_model["valid"]),
                 "--out", str(checkpoint), "--device", "cpu"]) == 0
    noise = write_waves(tmp_path / "ood", "noise", out_of_domain_waves(np.random.default_rng(3))["white"][:2])
    inputs = [*map(str, noise), *map(str, tone_model["test"][:3])]
    capsys.readouterr()
    assert main(["transcribe", "--model", str(checkpoint), "--output-format", "json", "--device", "cpu",
                 *inputs]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2 and all(str(path) in w for path, w in zip(noise, warnings))
    line = (r"warning: \S+: audio unlike the model's training data "
            r"\((word confidence|entropy|blank ratio|feature spread) \d\.\d\d, dev (1st|99th) percentile \d\.\d\d\); "
            r"the transcript is likely wrong")
    assert all(re.fullmatch(line, w) for w in warnings), warnings
    assert "2 unlike the training data" in captured.err
    flags = {json.loads(line)["audio"]: json.loads(line)["out_of_domain"] for line in captured.out.splitlines()}
    assert flags == {path: path in map(str, noise) for path in inputs}

    assert main(["transcribe", "--model", str(tone_model["exp"]), "--output-format", "json", "--device", "cpu",
                 *inputs]) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err and "unlike" not in captured.err
    assert all(json.loads(line)["out_of_domain"] is None for line in captured.out.splitlines())
