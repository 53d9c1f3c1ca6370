"""Tests of forced alignment: times from hand-built posteriors peaked at known frames, the CTC
frame budget and characters outside the tokens, the CTM format, the CLI end to end on a tiny
checkpoint (failures listed, never dropped), and word times of a briefly trained tone model
against the known boundaries of concatenated utterances."""

from __future__ import annotations

import json
import math
import string

import numpy as np
import pytest
import soundfile
import torch

from asr.align import (
    Alignment,
    AlignmentFailure,
    Span,
    WordAlignment,
    align_labels,
    align_utterance,
    frames_needed,
    to_ctm,
)
from asr.cli import main
from asr.text import Tokenizer

SR = 16000
TOKENS = ["<blank>", "|", "'", *string.ascii_uppercase]
TOKENIZER = Tokenizer(TOKENS)


def peaked_log_probs(frames: int, peaks: dict[int, str], peak: float = 0.9) -> torch.Tensor:
    """(frames, V) log-probs: `peaks[t]` has probability `peak` at frame t, the blank elsewhere;
    the rest of each frame's mass is spread evenly. The probability varies a little per frame, so
    that confidences are not all equal."""
    probs = np.empty((frames, len(TOKENS)))
    for t in range(frames):
        best = TOKENS.index(peaks.get(t, "<blank>"))
        top = peak - 0.01 * (t % 5)
        probs[t] = (1 - top) / (len(TOKENS) - 1)
        probs[t, best] = top
    return torch.tensor(np.log(probs), dtype=torch.float32), probs


# --- the alignment function -----------------------------------------------------------------------
def test_times_come_from_the_frames_the_posteriors_peak_at():
    peaks = {3: "H", 4: "H", 7: "I", 12: "|", 13: "|", 18: "S", 21: "E", 23: "E", 27: "|", 31: "U", 32: "S"}
    log_probs, probs = peaked_log_probs(40, peaks)
    spf = 0.04
    text, words = align_utterance(log_probs, "hi, see us!", TOKENIZER, spf)
    assert text == "HI SEE US"
    expected_chars = [[("H", 3, 5), ("I", 7, 8)], [("S", 18, 19), ("E", 21, 22), ("E", 23, 24)],
                      [("U", 31, 32), ("S", 32, 33)]]
    assert [w.word.text for w in words] == ["HI", "SEE", "US"]
    for word, chars in zip(words, expected_chars):
        assert [(c.text, c.start, c.end) for c in word.chars] == [
            (char, pytest.approx(a * spf), pytest.approx(b * spf)) for char, a, b in chars]
        assert word.word.start == pytest.approx(chars[0][1] * spf)
        assert word.word.end == pytest.approx(chars[-1][2] * spf)
        logs = []
        for char, (letter, a, b) in zip(word.chars, chars):
            span_logs = [math.log(probs[t, TOKENS.index(letter)]) for t in range(a, b)]
            assert char.confidence == pytest.approx(math.exp(np.mean(span_logs)), rel=1e-5)
            logs.append(np.mean(span_logs))
        assert word.word.confidence == pytest.approx(math.exp(np.mean(logs)), rel=1e-5)


def test_frame_budget_counts_a_blank_between_repeats():
    see = TOKENIZER.encode("SEE")
    assert frames_needed(see) == 4 and frames_needed(TOKENIZER.encode("SE")) == 2 and frames_needed([]) == 0
    log_probs, _ = peaked_log_probs(4, {0: "S", 1: "E", 3: "E"})
    assert [(label, a, b) for label, a, b, _ in align_labels(log_probs, see)] == [
        (TOKENS.index("S"), 0, 1), (TOKENS.index("E"), 1, 2), (TOKENS.index("E"), 3, 4)]
    with pytest.raises(AlignmentFailure, match=r"needs 4 CTC frames \(3 labels \+ 1 repeats\) but the audio gives 3"):
        align_labels(log_probs[:3], see)
    assert align_utterance(log_probs, "", TOKENIZER, 0.04) == ("", [])


def test_characters_outside_the_tokens_are_a_failure_not_skipped():
    log_probs, _ = peaked_log_probs(30, {})
    with pytest.raises(AlignmentFailure, match=r"2 characters outside the model's tokens: '4' x1, '2' x1"):
        align_utterance(log_probs, "CAFÉ 42", TOKENIZER, 0.04)
    assert not TOKENIZER.oov  # the count does not leak into the next utterance
    text, words = align_utterance(log_probs, "CAFÉ", TOKENIZER, 0.04)  # É normalises to E
    assert text == "CAFE" and [w.word.text for w in words] == ["CAFE"]


def test_ctm_lines_follow_sclites_word_format_sorted_by_file_then_time():
    def word(text, start, end, conf):
        return WordAlignment(Span(text, start, end, conf))

    alignments = [
        Alignment("utt-b", "X Y", 2.0, [word("X", 0.12, 0.4, 0.5), word("Y", 1.0, 1.24, 0.25)]),
        Alignment("utt-a", "Z", 1.0, [word("Z", 0.5, 0.62, 1.0)]),
    ]
    assert to_ctm(alignments) == ("utt-a 1 0.500 0.120 Z 1.0000\n"
                                  "utt-b 1 0.120 0.280 X 0.5000\n"
                                  "utt-b 1 1.000 0.240 Y 0.2500\n")


# --- the CLI ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny untrained checkpoint (any alignment is a valid one for it)."""
    import dataclasses

    from asr.checkpoint import save_checkpoint
    from asr.features import FeatureConfig
    from asr.model import ModelConfig, build_model

    torch.manual_seed(0)
    feature_config = FeatureConfig(num_mel_bins=40)
    model_config = ModelConfig(input_dim=feature_config.dim, vocab_size=len(TOKENS), hidden=16, layers=1,
                               conv_channels=4, dropout=0.0, rnn_type="lstm")
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, {
        "model": build_model(model_config).state_dict(), "model_config": dataclasses.asdict(model_config),
        "feature_config": dataclasses.asdict(feature_config), "tokens": TOKENS,
        "cmvn": {"mean": torch.full((feature_config.dim,), 5.0), "std": torch.full((feature_config.dim,), 3.0)},
        "step": 0, "epoch": 0, "valid": None,
    })
    return path


def noise_file(path, seconds: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    soundfile.write(path, (0.1 * rng.standard_normal(int(seconds * SR))).astype(np.float32), SR)


def read_ctm(path) -> list[tuple[str, str, float, float, str, float]]:
    rows = []
    for line in path.read_text().splitlines():
        utt, channel, start, duration, word, conf = line.split(" ")  # exactly six fields
        rows.append((utt, channel, float(start), float(duration), word, float(conf)))
    return rows


def test_cli_aligns_a_manifest_and_lists_every_failure(checkpoint, tmp_path, capsys):
    texts = {"ok-1": "HELLO WORLD", "ok-2": "A BE SEE", "too-long": "THIS SENTENCE IS FAR TOO LONG FOR IT",
             "oov": "CAFE 42", "missing": "NO AUDIO"}
    seconds = {"ok-1": 2.1, "ok-2": 1.3, "too-long": 0.4, "oov": 1.0}
    records = []
    for seed, (utt, text) in enumerate(texts.items()):
        if utt in seconds:
            noise_file(tmp_path / f"{utt}.wav", seconds[utt], seed)
        records.append({"id": utt, "audio": f"{utt}.wav", "duration": seconds.get(utt, 1.0), "text": text,
                        "speaker": "s"})
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out"
    assert main(["align", "--model", str(checkpoint), "--manifest", str(manifest), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "aligned 2 of 5 utterance(s)" in err and "3 failed" in err
    failed = dict(line.split("\t") for line in (out / "failed.txt").read_text().splitlines())
    assert list(failed) == ["too-long", "oov", "missing"]
    assert failed["too-long"].endswith("needs 37 CTC frames (36 labels + 1 repeats) but the audio gives 10")
    assert "'4' x1, '2' x1" in failed["oov"]
    assert "missing.wav" in failed["missing"]
    for utt in failed:
        assert f"asr align: {utt}: " in err

    aligned = [json.loads(line) for line in (out / "alignments.jsonl").read_text().splitlines()]
    assert [a["id"] for a in aligned] == ["ok-1", "ok-2"]
    for a in aligned:
        assert [w["word"] for w in a["words"]] == texts[a["id"]].split() and a["text"] == texts[a["id"]]
        assert a["duration"] == pytest.approx(seconds[a["id"]], abs=1e-3)
        previous_end = 0.0
        for w in a["words"]:
            assert previous_end <= w["start"] < w["end"] <= a["duration"] + 1e-3
            assert "".join(c["char"] for c in w["chars"]) == w["word"]
            assert w["chars"][0]["start"] == w["start"] and w["chars"][-1]["end"] == w["end"]
            assert all(a_["end"] <= b_["start"] for a_, b_ in zip(w["chars"], w["chars"][1:]))
            assert 0.0 <= w["confidence"] <= 1.0
            previous_end = w["end"]
    ctm = read_ctm(out / "alignments.ctm")
    assert [(u, word) for u, _, _, _, word, _ in ctm] == [
        (a["id"], w["word"]) for a in aligned for w in a["words"]]
    for (_, channel, start, duration, _, conf), w in zip(ctm, [w for a in aligned for w in a["words"]]):
        assert channel == "1" and start == pytest.approx(w["start"], abs=1e-3)
        assert duration == pytest.approx(w["end"] - w["start"], abs=2e-3) and duration > 0
        assert conf == pytest.approx(w["confidence"], abs=1e-4)


def test_cli_audio_and_text(checkpoint, tmp_path, capsys):
    audio = tmp_path / "my talk.wav"
    noise_file(audio, 1.5, 9)
    out = tmp_path / "out"
    assert main(["align", "--model", str(checkpoint), "--audio", str(audio), "--text", "Good morning.",
                 "--out", str(out)]) == 0
    assert (out / "failed.txt").read_text() == ""
    assert [row[0] for row in read_ctm(out / "alignments.ctm")] == ["my_talk", "my_talk"]
    assert json.loads((out / "alignments.jsonl").read_text())["text"] == "GOOD MORNING"
    capsys.readouterr()
    assert main(["align", "--model", str(checkpoint), "--audio", str(audio), "--out", str(out)]) == 1
    assert capsys.readouterr().err.strip() == "asr align: error: --audio and --text go together (or give --manifest)"
    assert main(["align", "--model", str(checkpoint), "--audio", str(tmp_path / "none.wav"), "--text", "A",
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.wav" in err[0]


# --- a trained toy model against known boundaries --------------------------------------------------
FREQ = {"A": 300, "B": 800, "C": 1500}  # letters as tones, as tests/test_train.py's toy task
LETTER_S, GAP_S, WORD_GAP_S, LEAD_S = 0.15, 0.05, 0.2, 0.1


def tone_utterance(words: list[str], rng) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Waveform of tone-coded words and each word's true (start, end) in seconds."""
    pieces, bounds, t = [np.zeros(int(LEAD_S * SR))], [], LEAD_S
    for word in words:
        start = t
        for letter in word:
            pieces += [0.3 * np.sin(2 * np.pi * FREQ[letter] * np.arange(int(LETTER_S * SR)) / SR),
                       np.zeros(int(GAP_S * SR))]
            t += LETTER_S + GAP_S
        bounds.append((start, t - GAP_S))
        pieces.append(np.zeros(int(WORD_GAP_S * SR)))
        t += WORD_GAP_S
    wave = np.concatenate(pieces)
    return (wave + 0.003 * rng.standard_normal(len(wave))).astype(np.float32), bounds


def tone_corpus(root, name: str, count: int, seed: int, words_per_utt=(1, 3)) -> tuple:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    records, bounds = [], {}
    for i in range(count):
        words = ["".join(rng.choice(list("ABC"), size=rng.integers(1, 3))) for _ in range(rng.integers(*words_per_utt))]
        wave, bounds[f"{name}{i}"] = tone_utterance(words, rng)
        soundfile.write(root / f"{name}{i}.flac", wave, SR)
        records.append({"id": f"{name}{i}", "audio": f"{name}{i}.flac", "duration": len(wave) / SR,
                        "text": " ".join(words), "speaker": "s"})
    manifest = root / f"{name}.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    return manifest, bounds


def test_trained_toy_model_finds_the_word_boundaries_of_concatenated_utterances(tmp_path):
    """Trained ~10 s on 1-2-word utterances (as test_train's toy task), the model aligns 5-7-word
    utterances: each word starts within 80 ms before to 40 ms after its first tone's onset (the
    model fires a little early: an output frame's time is the start of its first analysis
    window), and ends inside its last tone (CTC spikes: ends run short, as documented)."""
    train, _ = tone_corpus(tmp_path / "data", "train", 64, seed=0)
    valid, _ = tone_corpus(tmp_path / "data", "valid", 8, seed=1)
    exp = tmp_path / "exp"
    assert main(["train", "--train", str(train), "--valid", str(valid), "--exp", str(exp),
                 "features.num_mel_bins=23", "model.hidden=64", "model.layers=2", "model.conv_channels=8",
                 "model.subsample=2", "model.dropout=0", "specaug.freq_masks=0", "specaug.time_masks=0",
                 "narrowband.prob=0", "data.max_duration=12", "data.num_workers=0", "data.min_utt_duration=0",
                 "train.epochs=12", "train.log_every=50", "train.seed=0", "optim.warmup_steps=20", "optim.lr=3e-3",
                 "optim.decay=constant"]) == 0
    test, truth = tone_corpus(tmp_path / "data", "test", 6, seed=2, words_per_utt=(5, 8))
    out = tmp_path / "align"
    assert main(["align", "--model", str(exp), "--manifest", str(test), "--out", str(out)]) == 0
    aligned = [json.loads(line) for line in (out / "alignments.jsonl").read_text().splitlines()]
    assert [a["id"] for a in aligned] == list(truth)
    pairs = [(w, bounds) for a in aligned for w, bounds in zip(a["words"], truth[a["id"]], strict=True)]
    assert len(pairs) >= 30
    report = [(w["word"], w["start"], w["end"], round(start, 3), round(end, 3)) for w, (start, end) in pairs]
    slack = 1e-9  # times are whole output frames (20 ms): a start exactly 40 ms late is inside the bound
    for w, (start, end) in pairs:
        assert start - 0.08 - slack <= w["start"] <= start + 0.04 + slack, report
        assert end - LETTER_S - slack <= w["end"] <= end + slack, report
    assert np.median([abs(w["start"] - start) for w, (start, _) in pairs]) < 0.05, report
