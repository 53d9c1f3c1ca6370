"""Tests for asr.decode: greedy against a naive reference, beam search with and without an LM."""

from __future__ import annotations

import torch

from asr.decode import GreedyDecoder, build_decoder, greedy_decode, word_pause_frames, word_spans

TOKENS = ["<blank>", "|", "'", "A", "B", "C", "D", "E", "O", "T"]


def naive_greedy(best: list[int]) -> list[tuple[int, int]]:
    """Frame-by-frame CTC collapse, the textbook way."""
    out = []
    previous = None
    for frame, token in enumerate(best):
        if token != 0 and token != previous:
            out.append((token, frame))
        previous = token
    return out


def one_hot_log_probs(paths: list[list[int]], vocab: int, frames: int) -> torch.Tensor:
    log_probs = torch.full((len(paths), frames, vocab), -10.0)
    for b, path in enumerate(paths):
        for t, token in enumerate(path):
            log_probs[b, t, token] = -0.01
        for t in range(len(path), frames):
            log_probs[b, t, 0] = -0.01
    return log_probs


def test_greedy_hand_built_repeats_and_blanks():
    # A A _ A B B | _ | C  ->  A A B | | C (repeats merge, a blank splits a repeat)
    path = [3, 3, 0, 3, 4, 4, 1, 0, 1, 5]
    log_probs = one_hot_log_probs([path, [0, 0, 7]], len(TOKENS), 12)
    lengths = torch.tensor([10, 3])
    result = greedy_decode(log_probs, lengths)
    assert result[0] == [(3, 0), (3, 3), (4, 4), (1, 6), (1, 8), (5, 9)]
    assert result[1] == [(7, 2)]
    hyps = GreedyDecoder(TOKENS).decode(log_probs, lengths)
    assert hyps[0].text == "AAB C"
    assert [w.word for w in hyps[0].words] == ["AAB", "C"]
    assert (hyps[0].words[0].start_frame, hyps[0].words[0].end_frame) == (0, 5)
    assert hyps[1].text == "E" and hyps[1].token_frames == [2]


def test_greedy_ends_a_word_at_a_long_pause():
    # "AB" with a 6-frame silence between A and B, then "|C": a pause of >= 6 frames splits AB.
    path = [3, 0, 0, 0, 0, 0, 4, 1, 5]
    log_probs = one_hot_log_probs([path], len(TOKENS), 10)
    lengths = torch.tensor([9])
    assert GreedyDecoder(TOKENS).decode(log_probs, lengths)[0].text == "AB C"
    assert GreedyDecoder(TOKENS, word_pause_frames=7).decode(log_probs, lengths)[0].text == "AB C"
    hyp = GreedyDecoder(TOKENS, word_pause_frames=6).decode(log_probs, lengths)[0]
    assert hyp.text == "A B C"
    assert [(w.word, w.start_frame, w.end_frame) for w in hyp.words] == [("A", 0, 1), ("B", 6, 7), ("C", 8, 9)]
    assert GreedyDecoder(TOKENS, word_pause_frames=6).settings() == {"decoder": "greedy", "word_pause_frames": 6}
    assert build_decoder("greedy", TOKENS, word_pause_frames=6).word_pause_frames == 6
    assert word_pause_frames(0.04) == 12 and word_pause_frames(0.01, 0.5) == 50


def test_greedy_matches_naive_on_random_inputs():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        batch, frames, vocab = 5, 40, len(TOKENS)
        # low-entropy random scores so that repeats and blanks are frequent
        log_probs = torch.log_softmax(3 * torch.randn(batch, frames, vocab, generator=gen), dim=-1)
        lengths = torch.randint(0, frames + 1, (batch,), generator=gen)
        result = greedy_decode(log_probs, lengths)
        best = log_probs.argmax(-1)
        for b in range(batch):
            assert result[b] == naive_greedy(best[b, : lengths[b]].tolist())
        hyps = GreedyDecoder(TOKENS).decode(log_probs, lengths)
        for b in range(batch):
            expected = log_probs[b, torch.arange(int(lengths[b])), best[b, : lengths[b]]].sum()
            assert abs(hyps[b].score - float(expected)) < 1e-4


def test_word_spans_confidence():
    frame_log_probs = torch.log(torch.tensor([[0.5, 0.0, 0.5], [0.0, 1.0, 0.0], [0.2, 0.0, 0.8]]) + 1e-12)
    spans = word_spans([2, 1, 2], [0, 1, 2], ["<blank>", "|", "X"], frame_log_probs)
    assert [(s.word, s.start_frame, s.end_frame) for s in spans] == [("X", 0, 1), ("X", 2, 3)]
    assert abs(spans[0].confidence - 0.5) < 1e-6 and abs(spans[1].confidence - 0.8) < 1e-6


# --- beam search ----------------------------------------------------------------------------------

import json  # noqa: E402

import pytest  # noqa: E402

from asr.decode import BeamSearchDecoder, load_tuned, tune_weights  # noqa: E402
from asr.errors import ConfigError, DataError  # noqa: E402
from asr.lm import build_lm  # noqa: E402

LETTERS = ["<blank>", "|", "'"] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]


def spell(text: str, tokens=LETTERS, peak: float = 0.95, ambiguous: dict | None = None, tail: int = 3) -> torch.Tensor:
    """(frames, vocab) log-probs that spell `text` with one peaked frame per character, a blank
    between characters, and `ambiguous` {position in text: {char: prob}} for uncertain frames."""
    rows = []
    rest = (1 - peak) / (len(tokens) - 1)
    for pos, char in enumerate(text):
        probs = torch.full((len(tokens),), rest)
        choices = (ambiguous or {}).get(pos, {"|" if char == " " else char: peak})
        probs.fill_((1 - sum(choices.values())) / (len(tokens) - len(choices)))
        for c, p in choices.items():
            probs[tokens.index(c)] = p
        rows.append(probs)
        blank = torch.full((len(tokens),), rest)
        blank[0] = peak
        rows.append(blank)
    for _ in range(tail):
        blank = torch.full((len(tokens),), rest)
        blank[0] = peak
        rows.append(blank)
    return torch.stack(rows).log()


def batch_of(*rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    frames = max(r.shape[0] for r in rows)
    out = torch.full((len(rows), frames, rows[0].shape[1]), -30.0)
    out[:, :, 0] = 0.0  # padding frames: certain blanks (and ignored through lengths anyway)
    for b, r in enumerate(rows):
        out[b, : r.shape[0]] = r
    return out, torch.tensor([r.shape[0] for r in rows])


def test_beam_without_lm_equals_greedy_on_peaked_log_probs():
    top = spell("ZZ TOP", tail=0)
    top = torch.cat([top[:1], top[:1], top])  # the first Z spans three frames: merged into one
    log_probs, lengths = batch_of(spell("THE CAT SAT"), spell("A DOG'S LOG"), top)
    greedy = GreedyDecoder(LETTERS).decode(log_probs, lengths)
    beam = BeamSearchDecoder(LETTERS, beam_size=8).decode(log_probs, lengths)
    assert [h.text for h in greedy] == ["THE CAT SAT", "A DOG'S LOG", "ZZ TOP"]
    assert greedy[2].token_frames[:2] == [0, 4]
    for g, b in zip(greedy, beam):
        assert (b.text, b.tokens, b.token_frames) == (g.text, g.tokens, g.token_frames)
        assert [(w.word, w.start_frame, w.end_frame) for w in b.words] == [
            (w.word, w.start_frame, w.end_frame) for w in g.words
        ]
    # random, flatter log-probs: the beam's path is at least as likely as the greedy path is not
    # guaranteed, but its frames must be valid and increasing
    gen = torch.Generator().manual_seed(0)
    log_probs = torch.log_softmax(torch.randn(3, 50, len(LETTERS), generator=gen), -1)
    for hyp in BeamSearchDecoder(LETTERS, beam_size=4).decode(log_probs, torch.tensor([50, 30, 1])):
        assert hyp.token_frames == sorted(hyp.token_frames)
        assert all(0 <= f < 50 for f in hyp.token_frames)


@pytest.fixture
def cat_lm(tmp_path):
    text = tmp_path / "lm.txt"
    text.write_text("the cat sat on the mat\n" * 20 + "the cat sat\nthe dog sat\na red hat\n", encoding="utf-8")
    build_lm(text, 3, tmp_path / "lm.arpa.gz")
    return tmp_path / "lm.arpa.gz"


def test_beam_with_lm_prefers_in_lm_words(cat_lm):
    # "H" is acoustically a little more likely than "C": alone, the acoustics say THE HAT SAT
    log_probs, lengths = batch_of(spell("THE CAT SAT", ambiguous={4: {"H": 0.5, "C": 0.45}}))
    assert GreedyDecoder(LETTERS).decode(log_probs, lengths)[0].text == "THE HAT SAT"
    assert BeamSearchDecoder(LETTERS, beam_size=16).decode(log_probs, lengths)[0].text == "THE HAT SAT"
    with_lm = BeamSearchDecoder(LETTERS, beam_size=16, lm=cat_lm, lm_weight=1.0)
    hyp = with_lm.decode(log_probs, lengths)[0]
    assert hyp.text == "THE CAT SAT"
    assert [w.word for w in hyp.words] == ["THE", "CAT", "SAT"]
    assert hyp.words[1].start_frame == 8  # C is the 5th character: frame 2 * 4
    # weight 0: LM off, acoustics win again (same loaded LM, reweighted)
    assert with_lm.with_weights(0.0, 0.0).decode(log_probs, lengths)[0].text == "THE HAT SAT"
    # the lexicon comes from the ARPA unigrams
    assert set(with_lm.lexicon.spellings) == {"THE", "CAT", "SAT", "ON", "MAT", "DOG", "A", "RED", "HAT"}
    assert with_lm.settings()["lexicon_words"] == 9


def test_beam_lm_needs_spellable_words_and_lexicon_for_binary(tmp_path, cat_lm):
    with pytest.raises(DataError, match="no word of the LM"):
        BeamSearchDecoder(["<blank>", "|", "X"], lm=cat_lm)
    binary = tmp_path / "lm.bin"
    binary.write_bytes(b"mmap lm http://kheafield.com/code format version 5\0")
    with pytest.raises(DataError, match="needs a lexicon"):
        BeamSearchDecoder(LETTERS, lm=binary)
    with pytest.raises(DataError, match="not found"):
        BeamSearchDecoder(LETTERS, lm=tmp_path / "missing.arpa")


def test_build_decoder_and_tuning(cat_lm, tmp_path):
    assert isinstance(build_decoder("greedy", LETTERS), GreedyDecoder)
    assert isinstance(build_decoder("greedy", LETTERS, lm=None, beam_size=None), GreedyDecoder)
    with pytest.raises(ConfigError, match="greedy decoder takes no options"):
        build_decoder("greedy", LETTERS, lm=str(cat_lm))
    with pytest.raises(ConfigError, match="unknown decoder"):
        build_decoder("viterbi", LETTERS)
    decoder = build_decoder("beam", LETTERS, lm=str(cat_lm), beam_size=16)
    emissions = [batch_of(spell("THE CAT SAT", ambiguous={4: {"H": 0.5, "C": 0.45}}), spell("THE DOG SAT"))]
    best, grid, hyps = tune_weights(decoder, emissions, ["THE CAT SAT", "THE DOG SAT"], [0.0, 1.0], [0.0])
    assert [(g["lm_weight"], g["wer"]) for g in grid] == [(0.0, pytest.approx(100 / 6)), (1.0, 0.0)]
    assert best == {"lm_weight": 1.0, "word_score": 0.0, "wer": 0.0}
    assert [h.text for h in hyps] == ["THE CAT SAT", "THE DOG SAT"]
    (tmp_path / "tuned.json").write_text(json.dumps({"lm_weight": 1.0, "word_score": 0.5}))
    (tmp_path / "results.json").write_text(json.dumps({"wer": 3.0, "tuned": {"lm_weight": 0.7, "word_score": -1}}))
    assert load_tuned(tmp_path / "tuned.json") == {"lm_weight": 1.0, "word_score": 0.5}
    assert load_tuned(tmp_path / "results.json") == {"lm_weight": 0.7, "word_score": -1.0}
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(DataError, match="other.json: no tuned"):
        load_tuned(tmp_path / "other.json")


# --- decoding a manifest --------------------------------------------------------------------------


def make_experiment(tmp_path):
    """A randomly initialised model checkpoint and a 4-utterance manifest of noise."""
    import soundfile

    from asr.checkpoint import save_checkpoint
    from asr.config import to_dict
    from asr.features import FeatureConfig
    from asr.model import BiRNNCTC, ModelConfig

    features = FeatureConfig(num_mel_bins=23)
    model_config = ModelConfig(input_dim=23, vocab_size=len(LETTERS), subsample=2, conv_channels=4, hidden=16, layers=1)
    torch.manual_seed(0)
    exp = tmp_path / "exp"
    save_checkpoint(exp / "checkpoints" / "best.pt", {
        "model": BiRNNCTC(model_config).state_dict(), "model_config": to_dict(model_config),
        "feature_config": to_dict(features), "tokens": LETTERS,
        "cmvn": {"mean": torch.zeros(23), "std": torch.ones(23)}, "step": 1, "epoch": 0, "valid": None,
    })
    rng = torch.Generator().manual_seed(1)
    texts = {"11-1-0": "THE CAT SAT", "11-1-1": "THE DOG SAT", "22-1-0": "A RED HAT", "22-1-1": "THE CAT"}
    lines = []
    for i, (utt, text) in enumerate(texts.items()):
        samples = 4000 + 2000 * i
        soundfile.write(tmp_path / f"{utt}.wav", (0.1 * torch.randn(samples, generator=rng)).numpy(), 16000)
        lines.append(json.dumps({"id": utt, "audio": f"{utt}.wav", "duration": samples / 16000, "text": text,
                                 "speaker": utt.split("-")[0]}))
    (tmp_path / "dev.jsonl").write_text("\n".join(lines) + "\n")
    return exp, tmp_path / "dev.jsonl", texts


def test_decode_manifest_greedy_and_tuned_beam(tmp_path, cat_lm, capsys):
    from asr.cli import main as cli_main
    from asr.decode import decode_manifest
    from asr.score import read_kaldi_text, score_files

    exp, manifest, texts = make_experiment(tmp_path)
    results = decode_manifest(exp, manifest, "greedy", device="cpu", max_duration=1.0)
    out = exp / "decode" / "dev" / "greedy"
    assert results["out_dir"] == str(out)
    assert read_kaldi_text(out / "ref.txt") == texts
    hyps = read_kaldi_text(out / "hyp.txt")
    assert set(hyps) == set(texts)
    written = json.loads((out / "results.json").read_text())
    rescored = score_files(out / "ref.txt", out / "hyp.txt")["systems"][0]
    assert written["wer"] == pytest.approx(rescored["wer"]) and written["cer"] == pytest.approx(rescored["cer"])
    assert written["utterances"] == 4 and written["ref_words"] == 11
    assert written["decoder_settings"] == {"decoder": "greedy", "word_pause_frames": 25} and written["rtf"] > 0
    assert "PER-UTTERANCE" in (out / "report.txt").read_text()

    # tune on "dev", reuse on another set through the CLI
    code = cli_main(["decode", "--exp", str(exp), "--manifest", str(manifest), "--decoder", "beam",
                     "--lm", str(cat_lm), "--beam-size", "4", "--tune", "--tune-lm-weights", "0.5,2",
                     "--tune-word-scores", "0", "--device", "cpu"])
    assert code == 0
    beam_dir = exp / "decode" / "dev" / "beam-lm"
    tuned = json.loads((beam_dir / "tuned.json").read_text())
    written = json.loads((beam_dir / "results.json").read_text())
    assert len(written["tune_grid"]) == 2
    assert tuned["lm_weight"] == written["tuned"]["lm_weight"] == written["decoder_settings"]["lm_weight"]
    assert written["wer"] == pytest.approx(min(g["wer"] for g in written["tune_grid"]))
    # every hypothesised word is an LM word
    vocabulary = {"THE", "CAT", "SAT", "ON", "MAT", "DOG", "A", "RED", "HAT"}
    assert all(set(t.split()) <= vocabulary for t in read_kaldi_text(beam_dir / "hyp.txt").values())
    assert "tuned: lm_weight" in capsys.readouterr().out
    code = cli_main(["decode", "--exp", str(exp), "--manifest", str(manifest), "--set", "test", "--decoder", "beam",
                     "--lm", str(cat_lm), "--beam-size", "4", "--tuned-from", str(beam_dir / "results.json"),
                     "--device", "cpu"])
    assert code == 0
    reused = json.loads((exp / "decode" / "test" / "beam-lm" / "results.json").read_text())
    assert reused["decoder_settings"]["lm_weight"] == tuned["lm_weight"]
    assert reused["wer"] == pytest.approx(written["wer"])
    # user errors: one line, exit 1
    assert cli_main(["decode", "--exp", str(exp), "--manifest", str(manifest), "--tune", "--device", "cpu"]) == 1
    assert "--tune and --tuned-from need --decoder beam with --lm" in capsys.readouterr().err
