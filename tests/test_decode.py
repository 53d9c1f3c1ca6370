"""Tests for asr.decode: greedy against a naive reference, beam search with and without an LM."""

from __future__ import annotations

import torch

from asr.decode import DecodingOptions, GreedyDecoder, build_decoder, greedy_decode, word_pause_frames, word_spans

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
    assert build_decoder(DecodingOptions(word_pause=0.06), TOKENS, 0.01).word_pause_frames == 6
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

import pytest  # noqa: E402

from asr.decode import BeamSearchDecoder  # noqa: E402
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


def write_cat_lm(folder):
    """A trigram ARPA (gzip) of nine words: THE CAT SAT ON MAT DOG A RED HAT."""
    text = folder / "lm.txt"
    text.write_text("the cat sat on the mat\n" * 20 + "the cat sat\nthe dog sat\na red hat\n", encoding="utf-8")
    build_lm(text, 3, folder / "lm.arpa.gz")
    return folder / "lm.arpa.gz"


@pytest.fixture
def cat_lm(tmp_path):
    return write_cat_lm(tmp_path)


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


def test_build_decoder_from_options(cat_lm):
    assert isinstance(build_decoder(DecodingOptions(), LETTERS, 0.02), GreedyDecoder)
    assert isinstance(build_decoder(DecodingOptions(decoder="greedy", lm=None), LETTERS, 0.02), GreedyDecoder)
    with pytest.raises(ConfigError, match="greedy decoder takes no options"):
        DecodingOptions(decoder="greedy", lm=str(cat_lm))
    with pytest.raises(ConfigError, match="unknown decoder"):
        DecodingOptions(decoder="viterbi")
    options = DecodingOptions(decoder="beam", lm=str(cat_lm), beam_size=16, beam_threshold=12.5, lm_weight=1.0,
                              word_score=0.5)
    decoder = build_decoder(options, LETTERS, 0.02)
    assert isinstance(decoder, BeamSearchDecoder)
    assert (decoder.beam_size, decoder.beam_threshold, decoder.lm_path, decoder.lm_weight, decoder.word_score) == (
        16, 12.5, str(cat_lm), 1.0, 0.5)
    assert decoder.settings()["lm"] == str(cat_lm)


def test_default_options_are_what_asr_decode_does_by_default():
    # training's validation decodes with DecodingOptions(): greedy with the 0.5 s word pause
    options = DecodingOptions()
    assert (options.decoder, options.word_pause, options.lm, options.lexicon) == ("greedy", 0.5, None, None)
    assert build_decoder(options, LETTERS, 0.02).settings() == {"decoder": "greedy", "word_pause_frames": 25}
    assert build_decoder(DecodingOptions(word_pause=0), LETTERS, 0.02).settings() == {"decoder": "greedy"}
    beam = BeamSearchDecoder(LETTERS)  # the class's defaults are the options' defaults
    assert (beam.beam_size, beam.beam_threshold, beam.lm_weight, beam.word_score) == (
        options.beam_size, options.beam_threshold, options.lm_weight, options.word_score)


def test_decoding_options_refuse_combinations_that_mean_nothing(tmp_path):
    import dataclasses

    cases = [
        (dict(decoder="greedy", beam_size=4), "greedy decoder takes no options \\(got --beam-size\\)"),
        (dict(lexicon="words.txt"), "got --lexicon.*need --decoder beam"),
        (dict(tuned_from="tuned.json"), "got --tuned-from.*need --decoder beam"),
        (dict(decoder="beam", lm_weight=1.0), "--lm-weight needs --decoder beam with --lm"),
        (dict(decoder="beam", tuned_from="tuned.json"), "--tuned-from needs --decoder beam with --lm"),
        (dict(decoder="beam", word_score=1.0), "--word-score needs --lm or --lexicon"),
        (dict(decoder="beam", word_pause=0.3), "--word-pause is a rule of the greedy decoder"),
        (dict(decoder="beam", beam_size=0), "--beam-size must be at least 1"),
        (dict(decoder="beam", beam_threshold=-1.0), "--beam-threshold must be 0 or more"),
        (dict(word_pause=float("nan")), "--word-pause must be 0 or more"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=message):
            DecodingOptions(**kwargs)
    DecodingOptions(decoder="beam", lexicon="words.txt", word_score=1.0)  # a lexicon alone takes a word score
    options = DecodingOptions(decoder="beam", lm=tmp_path / "lm.arpa")
    assert options.lm == str(tmp_path / "lm.arpa")  # paths are kept as strings
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.beam_size = 3
    assert dataclasses.replace(options, lm_weight=2.0).lm_weight == 2.0
    with pytest.raises(ConfigError, match="--lm-weight needs"):
        dataclasses.replace(options, lm=None, lm_weight=2.0)


# --- LM files: corrupt ARPA, KenLM binaries, KenLM's stderr ---------------------------------------

# A hand-written bigram ARPA file (KenLM's format; no <unk>, so KenLM warns about it).
SMALL_ARPA = """\\data\\
ngram 1=5
ngram 2=4

\\1-grams:
-0.6989700\t<s>\t-0.2
-0.6989700\tTHE\t-0.1
-1.0000000\tCAT\t-0.1
-1.0000000\tSAT\t-0.1
-0.6989700\t</s>

\\2-grams:
-0.2\t<s> THE
-0.5\tTHE CAT
-0.5\tCAT SAT
-0.3\tSAT </s>

\\end\\
"""


def write_arpa(path, text: str):
    if str(path).endswith(".gz"):
        import gzip

        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_small_arpa_loads_and_kenlm_chatter_is_silenced(tmp_path, capfd):
    lm = write_arpa(tmp_path / "small.arpa", SMALL_ARPA)
    decoder = BeamSearchDecoder(LETTERS, lm=lm, lm_weight=1.0)
    log_probs, lengths = batch_of(spell("THE CAT SAT", ambiguous={4: {"H": 0.5, "C": 0.45}}))
    assert decoder.decode(log_probs, lengths)[0].text == "THE CAT SAT"
    err = capfd.readouterr().err
    for chatter in ("Loading the LM", "Reading ", "----5---10", "****"):
        assert chatter not in err
    # what is not chatter is passed on, naming the LM: here KenLM's warning about the missing <unk>
    assert err.splitlines() == [f"{lm}: The ARPA file is missing <unk>.  Substituting log10 probability -100."]


@pytest.mark.parametrize("name", ["lm.arpa", "lm.arpa.gz"])
def test_corrupt_arpa_is_reported_as_not_a_valid_arpa_lm_with_its_line(tmp_path, name):
    # fields swapped in the unigrams: before, "no word of the LM can be spelled" (the words read as numbers)
    swapped = SMALL_ARPA.replace("-1.0000000\tCAT\t-0.1", "CAT\t-1.0000000\t-0.1")
    bad_number = SMALL_ARPA.replace("-0.5\tCAT SAT", "x.y\tCAT SAT")
    cut = SMALL_ARPA[: SMALL_ARPA.index("-0.5\tCAT SAT")] + "-0.5\tCAT SA"  # ends inside the 2-grams
    for text, line, reason in [(swapped, 8, 'Could not parse "CAT" into a float'),
                               (bad_number, 15, 'Could not parse "x.y" into a float'),
                               (cut, 15, "")]:
        lm = write_arpa(tmp_path / name, text)
        with pytest.raises(DataError) as caught:
            BeamSearchDecoder(LETTERS, lm=lm)
        message = str(caught.value)
        assert message.startswith(f"{lm}:{line}: not a valid ARPA LM: {reason}"), message
        assert "\n" not in message and "threw" not in message and "no word of the LM" not in message


def test_beam_lm_needs_spellable_words_and_lexicon_for_binary(tmp_path, cat_lm):
    with pytest.raises(DataError, match="no word of the LM"):
        BeamSearchDecoder(["<blank>", "|", "X"], lm=cat_lm)
    binary = tmp_path / "lm.bin"
    binary.write_bytes(b"mmap lm http://kheafield.com/code format version 5\0")
    with pytest.raises(DataError, match="needs a lexicon") as caught:
        BeamSearchDecoder(LETTERS, lm=binary)
    assert "(--lexicon)" in str(caught.value) and "lexicon=" not in str(caught.value)
    with pytest.raises(DataError, match="not found"):
        BeamSearchDecoder(LETTERS, lm=tmp_path / "missing.arpa")
    # a word list makes the binary readable; this one is cut short, so KenLM refuses it by name
    words = tmp_path / "words.txt"
    words.write_text("THE\nCAT\n")
    with pytest.raises(DataError, match=f"{binary}: cannot load the KenLM binary LM: "):
        BeamSearchDecoder(LETTERS, lm=binary, lexicon=words)
    text = tmp_path / "notes.arpa"
    text.write_text("just some text\n")
    with pytest.raises(DataError, match="notes.arpa: not a language model: neither ARPA"):
        BeamSearchDecoder(LETTERS, lm=text)
