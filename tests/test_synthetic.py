"""The synthetic corpus: grammar, voices, and a tiny corpus written in LibriSpeech layout."""

from __future__ import annotations

import collections
import hashlib
import itertools
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from asr.cli import main as cli_main
from asr.data import synthetic
from asr.data.grammar import MAX_WORDS, MIN_WORDS, number_words, sentence_generator
from asr.data.librispeech import prepare_corpus
from asr.data.manifest import read_manifest
from asr.data.synthetic import (
    ENGINE_PACKAGES,
    ENGINE_VOICES,
    ENGINES,
    ENGLISH_VARIANTS,
    LM_TEXT,
    TEST_FAMILIES,
    VOICE_VARIANTS,
    SynthConfig,
    Utterance,
    Voice,
    coloured_noise,
    engine_voice,
    generate_corpus,
    lm_text,
    plan_corpus,
    prose_sentences,
    read_text_file,
    render_utterance,
    spell_numbers,
    split_voices,
    text_seed,
    trim_silence,
    voice_catalogue,
)
from asr.errors import DataError

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng is not installed (apt-get install espeak-ng)")
MISSING_ENGINES = [e for e in ENGINES if shutil.which(e) is None]
needs_engines = pytest.mark.skipif(
    bool(MISSING_ENGINES), reason=f"not installed: {' '.join(MISSING_ENGINES)} (make setup)")

TINY = SynthConfig(seed=3, train_utts=6, dev_utts=2, test_utts=2)
SENTENCE = re.compile(r"^[A-Z']+( [A-Z']+)*$")
FLAC_NAME = re.compile(r"^(\d+)-(\d+)-(\d{4})\.flac$")


# --- grammar -------------------------------------------------------------------------------------
def test_generator_is_deterministic_varied_and_normalised():
    first = list(itertools.islice(sentence_generator(7), 300))
    again = list(itertools.islice(sentence_generator(7), 300))
    other = list(itertools.islice(sentence_generator(8), 300))
    assert first == again
    assert first != other
    sentences = list(itertools.islice(sentence_generator(0), 5000))
    for sentence in sentences:
        assert SENTENCE.match(sentence), sentence
        assert MIN_WORDS <= len(sentence.split()) <= MAX_WORDS, sentence
    vocabulary = collections.Counter(w for s in sentences for w in s.split())
    assert 300 <= len(vocabulary) <= 2000  # "some hundreds of words"
    assert len(set(sentences)) > 0.95 * len(sentences)
    starts = collections.Counter(s.split()[0] for s in sentences)
    assert starts["WHAT"] + starts["WHERE"] + starts["DID"] + starts["HOW"] > 100  # questions
    assert any("HUNDRED" in s for s in sentences) and any("O'CLOCK" in s for s in sentences)
    mean_words = sum(len(s.split()) for s in sentences) / len(sentences)
    assert 6 <= mean_words <= 11


@pytest.mark.parametrize("number, words", [
    (0, "zero"), (7, "seven"), (13, "thirteen"), (40, "forty"), (21, "twenty one"),
    (105, "one hundred and five"), (999, "nine hundred and ninety nine"),
    (2000, "two thousand"), (2024, "two thousand and twenty four"),
    (12345, "twelve thousand three hundred and forty five")])
def test_number_words(number, words):
    assert number_words(number) == words


# --- voices, plan, audio processing --------------------------------------------------------------
def _espeak_parts(voices):
    names = [v.name.split("+") for v in voices if v.engine == "espeak-ng"]
    return {language for language, _ in names}, {variant for _, variant in names}


def test_voice_splits_are_disjoint_and_train_covers_every_variant():
    config = SynthConfig(seed=5)
    splits = split_voices(config)
    ids = {split: {v.speaker for v in voices} for split, voices in splits.items()}
    assert not ids["train"] & ids["test"] and not ids["train"] & ids["dev"] and not ids["dev"] & ids["test"]
    assert len(ids["test"]) == config.test_voices and len(ids["dev"]) == config.dev_voices
    unused = [v for v in voice_catalogue(config) if v.speaker not in ids["train"] | ids["dev"] | ids["test"]]
    assert unused and {v.family for v in unused} <= set(TEST_FAMILIES)  # never heard at all
    assert _espeak_parts(splits["train"]) == (set(ENGLISH_VARIANTS), set(VOICE_VARIANTS))
    raised = collections.Counter()
    for voice in voice_catalogue(config):
        assert config.rate_range[0] <= voice.rate <= config.rate_range[1]
        if voice.engine != "espeak-ng":
            if voice.warp >= config.raised_warp_range[0] - 0.01:
                raised[voice.engine, voice.name] += 1
                assert voice.warp <= config.raised_warp_range[1] + 0.01
            else:
                assert config.warp_range[0] - 0.01 <= voice.warp <= config.warp_range[1] + 0.01
    # raised voices: of each man's voice whose speaker train hears (kal, awb, rms), never of the test's
    assert raised == {("flite", "kal16"): 3, ("flite", "awb"): 3, ("flite", "rms"): 3,
                      ("festival", "kal_diphone"): 3}
    assert split_voices(SynthConfig(seed=6)) != splits


@pytest.mark.parametrize("engines", [ENGINES, ("espeak-ng", "flite"), ("flite", "festival"), ("festival",)])
@pytest.mark.parametrize("seed", [0, 1])
def test_split_rule_no_test_family_in_train_or_dev(engines, seed):
    config = SynthConfig(seed=seed, engines=engines)
    splits = split_voices(config)
    families = {split: {v.family for v in voices} for split, voices in splits.items()}
    assert families["test"] and families["test"] <= set(TEST_FAMILIES)
    assert not families["test"] & (families["train"] | families["dev"])
    assert families["dev"] <= families["train"]  # dev: unseen voices of speakers train hears
    for split, voices in splits.items():
        assert {v.engine for v in voices} <= set(engines), split
    # test is spread over its engine voices: slt through flite and through festival's HTS
    sources = collections.Counter((v.engine, v.name) for v in splits["test"])
    assert max(sources.values()) - min(sources.values()) <= 1
    plan = plan_corpus(SynthConfig(seed=seed, engines=engines, train_utts=40, dev_utts=8, test_utts=12))
    readers = {split: collections.Counter(c.voice.family for c in chapters for _ in c.utterances)
               for split, chapters in plan.items()}
    assert set(readers["test"]) == families["test"]
    assert max(readers["train"].values()) - min(readers["train"].values()) <= 1  # equal shares


def test_espeak_only_tests_unseen_espeak_voices():
    splits = split_voices(SynthConfig(seed=2, engines=("espeak-ng",)))
    assert {v.family for s in splits.values() for v in s} == {"espeak"}
    names = {split: {v.name for v in voices} for split, voices in splits.items()}
    assert not names["test"] & names["train"]  # variant combinations never heard in train
    assert _espeak_parts(splits["train"]) == (set(ENGLISH_VARIANTS), set(VOICE_VARIANTS))
    with pytest.raises(DataError, match="unknown engine mbrola"):
        split_voices(SynthConfig(engines=("espeak-ng", "mbrola")))


def test_voice_ids_do_not_depend_on_the_engines():
    every = {(v.engine, v.name, v.rate, v.warp): v.speaker for v in voice_catalogue(SynthConfig())}
    for engines in (("flite",), ("festival", "espeak-ng")):
        for voice in voice_catalogue(SynthConfig(engines=engines)):
            assert every[(voice.engine, voice.name, voice.rate, voice.warp)] == voice.speaker


def test_plan_with_text_file_keeps_splits_apart(tmp_path):
    lines = [f"Sentence number {number_words(i)}, said the clerk." for i in range(1, 40)]
    text = tmp_path / "text.txt"
    text.write_text("\n".join(lines + ["", "room 42 is closed", "the 3rd mp3 costs 2.50", "café au lait"]) + "\n")
    sentences, skipped = read_text_file(text)
    assert skipped == 1 and len(sentences) == 41  # numbers spelt, "3rd" skipped, accents folded
    assert sentences[0] == "SENTENCE NUMBER ONE SAID THE CLERK"
    assert "ROOM FORTY TWO IS CLOSED" in sentences and "CAFE AU LAIT" in sentences
    plan = plan_corpus(SynthConfig(train_utts=20, dev_utts=5, test_utts=5), sentences)
    texts = {split: [u.text for c in chapters for u in c.utterances] for split, chapters in plan.items()}
    assert [len(texts[s]) for s in ("train", "dev", "test")] == [20, 5, 5]
    assert not set(texts["train"]) & set(texts["test"]) and not set(texts["dev"]) & set(texts["test"])
    empty = tmp_path / "empty.txt"
    empty.write_text("the 3rd\n\n")
    with pytest.raises(DataError, match="empty.txt"):
        read_text_file(empty)


WORDNET_LINES = [
    "  1 This software and database is being provided to you, the LICENSEE, by",
    '  2 Princeton University "AS IS" under the following license.',
    '00001740 03 n 01 entity 0 000 | that which is perceived or known or inferred to have its own '
    'distinct existence (living or nonliving)  ',
    '00002137 03 n 02 abstraction 0 abstract_entity 0 000 | a general concept; "the team is a unit"; '
    '"the oceans are teeming with life"  ',
    '00003553 03 n 01 whole 0 000 | an assemblage of parts; "how big is that part compared to the whole?"  ',
    '00004258 03 n 01 thing 0 000 | a separate part; "it was 2 feet long"; "the 3rd time"; "ok"  ',
]


def test_wordnet_examples_are_the_quoted_parts_of_glosses(tmp_path):
    folder = tmp_path / "wordnet"
    folder.mkdir()
    for name in ("data.noun", "data.verb", "data.adj"):
        (folder / name).write_text("\n".join(WORDNET_LINES) + "\n")
    with pytest.raises(DataError, match=r"not a WordNet folder .*data\.adv"):
        read_text_file(folder, "wordnet")
    (folder / "data.adv").write_text("")
    sentences, skipped = read_text_file(folder, "wordnet")
    # the licence's "AS IS" is not an example; numbers are spelt, "3rd" and one word are skipped
    assert sentences == ["THE TEAM IS A UNIT", "THE OCEANS ARE TEEMING WITH LIFE",
                         "HOW BIG IS THAT PART COMPARED TO THE WHOLE", "IT WAS TWO FEET LONG"] * 3
    assert skipped == 2 * 3
    assert read_text_file(folder / "data.noun", "wordnet")[0] == sentences[:4]


def test_grammar_share_mixes_grammar_and_file_sentences():
    sentences = [f"LINE {number_words(i).upper()} OF THE FILE" for i in range(1, 2000)]
    def texts(share):
        plan = plan_corpus(SynthConfig(train_utts=400, dev_utts=20, test_utts=20, grammar_share=share), sentences)
        return {split: [u.text for c in chapters for u in c.utterances] for split, chapters in plan.items()}
    from_file = {share: sum(t.startswith("LINE ") for t in texts(share)["train"]) for share in (0.0, 0.3, 1.0)}
    assert from_file[0.0] == 400 and from_file[1.0] == 0
    assert 240 <= from_file[0.3] <= 320  # 70% of 400 expected; binomial sd 9
    assert texts(1.0) == {split: [u.text for c in chapters for u in c.utterances]
                          for split, chapters in plan_corpus(SynthConfig(train_utts=400, dev_utts=20,
                                                                         test_utts=20)).items()}
    with pytest.raises(DataError, match="grammar_share"):
        plan_corpus(SynthConfig(grammar_share=1.5), sentences)


def test_lm_text_holds_train_and_unread_sentences_never_dev_or_test():
    sentences = [f"LINE {number_words(i).upper()} OF THE FILE" for i in range(1, 200)]
    plan = plan_corpus(SynthConfig(train_utts=60, dev_utts=20, test_utts=20, grammar_share=0.5), sentences)
    texts = {split: {u.text for c in chapters for u in c.utterances} for split, chapters in plan.items()}
    lines = lm_text(plan, sentences)
    assert len(lines) == len(set(lines))
    held_out = texts["dev"] | texts["test"]
    assert not set(lines) & held_out
    assert texts["train"] - held_out <= set(lines)  # the grammar's train sentences too
    assert set(sentences) - held_out <= set(lines)  # and every file sentence nobody held out reads
    assert set(lines) <= set(sentences) | texts["train"]


@pytest.mark.parametrize("exponent", [0.0, 1.0, 2.0])
def test_coloured_noise_has_unit_power_and_the_spectral_slope_asked_for(exponent):
    noise = coloured_noise(2 ** 16, exponent, np.random.default_rng(4))
    assert noise.shape == (2 ** 16,) and np.mean(noise ** 2) == pytest.approx(1.0, rel=1e-6)
    segments = noise.reshape(64, 1024) * np.hanning(1024)
    psd = (np.abs(np.fft.rfft(segments, axis=1)) ** 2).mean(axis=0)
    freqs = np.fft.rfftfreq(1024)
    band = (freqs > 0.01) & (freqs < 0.4)  # away from DC and Nyquist
    slope = np.polyfit(np.log(freqs[band]), np.log(psd[band]), 1)[0]
    assert slope == pytest.approx(-exponent, abs=0.1)


def test_spell_numbers_and_prose_sentences(tmp_path):
    assert (spell_numbers("Room 42, 1,500 men and 7 dogs")
            == "Room forty two, one thousand five hundred men and seven dogs")
    kept = "the 3rd of 2.5 mp3 files, 1000000 of them"  # read aloud in more than one way
    assert spell_numbers(kept) == kept
    fortunes = (
        "A banker is a fellow who lends you his umbrella when the sun is shining\n"
        "and wants it back the minute it begins to rain.\n\t\t-- Mark Twain\n%\n"
        "Yes.\n%\nHe had 3 cats.  They were all black! Why did they sleep all day?\n"
        "\t-- Anonymous\n%\n")
    assert prose_sentences(fortunes) == [
        "A banker is a fellow who lends you his umbrella when the sun is shining and wants it back "
        "the minute it begins to rain.", "Yes.", "He had 3 cats.", "They were all black!",
        "Why did they sleep all day?"]
    path = tmp_path / "fortunes"
    path.write_text(fortunes)
    sentences, skipped = read_text_file(path, "prose")
    assert sentences[1:] == ["HE HAD THREE CATS", "THEY WERE ALL BLACK", "WHY DID THEY SLEEP ALL DAY"]
    assert skipped == 1  # "Yes.": fewer than three words
    with pytest.raises(DataError, match="must be one of lines, prose, wordnet, got 'poems'"):
        read_text_file(path, "poems")


def test_hours_train_gives_about_that_much_text():
    plan = plan_corpus(SynthConfig(hours_train=0.05, dev_utts=0, test_utts=0))
    utterances = [u for c in plan["train"] for u in c.utterances]
    assert 30 < len(utterances) < 150
    assert all(c.utterances for split in plan.values() for c in split)


def test_trim_silence_keeps_margin():
    rate = 16000
    tone = 0.5 * np.sin(2 * np.pi * 220 * np.arange(rate) / rate).astype(np.float32)
    samples = np.concatenate([np.zeros(rate), tone, np.zeros(2 * rate)]).astype(np.float32)
    trimmed = trim_silence(samples, rate, keep=0.1)
    assert abs(len(trimmed) - int(1.2 * rate)) <= rate // 100
    assert np.all(trimmed[:int(0.09 * rate)] == 0) and np.any(trimmed[int(0.11 * rate):] != 0)
    # espeak-ng starts speaking at once: the start is padded to the margin
    padded = trim_silence(np.concatenate([tone, np.zeros(rate // 2)]).astype(np.float32), rate)
    assert len(padded) == int(1.2 * rate)
    assert np.all(padded[:int(0.1 * rate)] == 0) and np.array_equal(padded[int(0.1 * rate):][:rate], tone)


# --- a tiny corpus on disk -----------------------------------------------------------------------
def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    root = tmp_path_factory.mktemp("synth") / "corpus"
    summary = generate_corpus(root, TINY, num_workers=2)
    return root, summary


@needs_espeak
def test_tiny_corpus_layout_audio_and_transcripts(tiny_corpus):
    root, summary = tiny_corpus
    assert [(s.split, s.utterances, s.chapters_skipped) for s in summary.splits] == [
        ("train", 6, 0), ("dev", 2, 0), ("test", 2, 0)]
    assert summary.seconds_written > 0
    speakers, transcripts = {}, {}
    for split, count in (("train", 6), ("dev", 2), ("test", 2)):
        flacs = sorted((root / split).rglob("*.flac"))
        assert len(flacs) == count
        texts = {}
        for flac in flacs:
            speaker, chapter, _ = FLAC_NAME.match(flac.name).groups()
            assert flac.parent == root / split / speaker / chapter
            info = soundfile.info(str(flac))
            assert (info.format, info.subtype, info.samplerate, info.channels) == ("FLAC", "PCM_16", 16000, 1)
            assert 0.7 < info.duration < 10
            samples, _ = soundfile.read(str(flac), dtype="float32")
            # espeak's long silences are trimmed to ~0.1 s: speech starts soon, the start is quiet
            frames = samples[: len(samples) // 160 * 160].reshape(-1, 160)
            rms = np.sqrt((frames ** 2).mean(axis=1))
            first_loud = int(np.argmax(rms > 0.1 * rms.max()))
            assert 0.08 <= first_loud / 100 <= 0.3
            assert rms[:4].mean() < 0.05 * rms.max()
            transcript = flac.parent / f"{speaker}-{chapter}.trans.txt"
            for line in transcript.read_text().splitlines():
                utt, text = line.split(" ", 1)
                texts[utt] = text
            assert flac.stem in texts
        assert len(texts) == count
        expected = list(itertools.islice(sentence_generator(text_seed(TINY.seed, split)), count))
        assert sorted(texts.values()) == sorted(expected)
        speakers[split] = {p.name for p in (root / split).iterdir() if p.is_dir()}
        assert (root / split / ".done").is_file()
        transcripts[split] = set(texts.values())
    # the LM text: train's sentences, no dev or test sentence (the grammar: nothing else)
    lm_lines = (root / LM_TEXT).read_text().splitlines()
    assert set(lm_lines) == transcripts["train"] - transcripts["dev"] - transcripts["test"]
    assert summary.lm_sentences == len(lm_lines)
    assert not speakers["train"] & speakers["test"] and not speakers["train"] & speakers["dev"]
    # the test voices (espeak variant combinations) are never used in train
    names = {}
    for line in (root / "SPEAKERS.TXT").read_text().splitlines()[1:]:
        speaker, _, split, _, name = [f.strip() for f in line.split("|")]
        names.setdefault(split, set()).add(name.split()[0])
    assert not names["train"] & names["test"]


@needs_espeak
def test_tiny_corpus_is_reproducible_and_resumable(tiny_corpus, tmp_path):
    root, _ = tiny_corpus
    before = _digests(root)
    again = generate_corpus(root, TINY, num_workers=1)  # complete: nothing is redone
    assert all(s.chapters_written == 0 for s in again.splits)
    assert again.seconds_written == 0
    assert _digests(root) == before

    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    (copy / "train" / ".done").unlink()
    chapter = next((copy / "train").rglob("*.trans.txt"))
    chapter.unlink()  # an interrupted chapter: its transcript is written last
    resumed = generate_corpus(copy, TINY, num_workers=1)
    train = resumed.splits[0]
    assert train.chapters_written == 1 and train.chapters_skipped == train.speakers - 1
    assert _digests(copy) == before

    fresh = tmp_path / "fresh"  # same seed, another process count: byte-identical files
    generate_corpus(fresh, TINY, num_workers=1)
    assert _digests(fresh) == before

    with pytest.raises(DataError, match="other options"):
        generate_corpus(copy, SynthConfig(seed=4, train_utts=6, dev_utts=2, test_utts=2), num_workers=1)


@needs_espeak
def test_tiny_corpus_prepares_to_a_manifest(tiny_corpus, tmp_path):
    root, _ = tiny_corpus
    summary = prepare_corpus(root / "test", tmp_path / "test.jsonl", num_workers=1)
    assert summary.utterances == 2
    records = read_manifest(tmp_path / "test.jsonl")
    expected = list(itertools.islice(sentence_generator(text_seed(TINY.seed, "test")), 2))
    assert sorted(r["text"] for r in records) == sorted(expected)
    for record in records:
        assert record["duration"] == pytest.approx(soundfile.info(record["audio"]).duration, abs=1e-3)


@needs_espeak
def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli_main(["synth", "--out", str(out), "--train-utts", "2", "--dev-utts", "1",
                     "--test-utts", "1", "--num-workers", "1", "--no-augment"]) == 0
    assert "train: 2 utterances" in capsys.readouterr().out
    assert len(list(out.rglob("*.flac"))) == 4
    assert cli_main(["synth", "--voices", "--seed", "1"]) == 0
    assert "test: 16 voices" in capsys.readouterr().out
    assert cli_main(["synth", "--train-utts", "2"]) == 1  # --out missing: one line, exit 1
    assert "--out is required" in capsys.readouterr().err
    assert cli_main(["synth", "--out", str(out), "--grammar-share", "0.5"]) == 1
    assert "--grammar-share needs --text" in capsys.readouterr().err


# --- each engine -----------------------------------------------------------------------------------
SHORT = "THE OLD MAN WALKED TO THE STATION ON A COLD MORNING"
SOURCES = [("espeak-ng", "en-us+m3")] + [(b.engine, b.name) for b in ENGINE_VOICES]


def _median_f0(samples: np.ndarray, rate: int = 16000) -> float:
    """Median autocorrelation pitch (Hz) of the loud 40 ms frames."""
    size = int(0.04 * rate)
    loud = np.sqrt(np.mean(samples ** 2))
    values = []
    for start in range(0, len(samples) - size, size):
        frame = samples[start:start + size]
        if np.sqrt(np.mean(frame ** 2)) < 0.5 * loud:
            continue
        ac = np.correlate(frame, frame, "full")[size - 1:]
        lo, hi = rate // 400, rate // 60
        values.append(rate / (lo + int(np.argmax(ac[lo:hi]))))
    return float(np.median(values))


def _voice(engine: str, name: str, rate: float = 1.0, pitch: float = 1.0, warp: float = 1.0) -> Voice:
    if engine == "espeak-ng":
        pitch, warp = 50 * pitch, 1.0
    return Voice(1, engine, name, "x", "M", rate, pitch, warp)


def _say(voice: Voice, text: str = SHORT, seed: int = 0) -> np.ndarray:
    utterance = Utterance("1-1-0000", text, voice.rate, voice.pitch, seed)
    return render_utterance(utterance, voice, SynthConfig(augment=False)).astype(np.float32) / 32768


@pytest.mark.parametrize("engine, name", SOURCES, ids=[f"{e}:{n}" for e, n in SOURCES])
def test_engine_speaks_16k_speech_of_plausible_duration(engine, name):
    if shutil.which(engine) is None:
        pytest.skip(f"{engine} is not installed (apt-get install {ENGINE_PACKAGES[engine]})")
    normal = _say(_voice(engine, name))
    assert normal.ndim == 1  # mono, 16 kHz: render_utterance's contract, checked on disk below
    seconds = len(normal) / 16000
    assert 0.045 * len(SHORT) < seconds < 0.11 * len(SHORT), seconds  # about 3 words a second
    assert np.abs(normal).max() == pytest.approx(10 ** (-3 / 20), abs=0.01)  # peak-normalised
    assert 60 < _median_f0(normal) < 300  # voiced speech, a human pitch
    fast = _say(_voice(engine, name, rate=1.25))
    assert 1.2 < len(normal) / len(fast) < 1.4  # rate 1.25x: 1.25x shorter (silences kept)
    if engine != "espeak-ng":
        # warp: pitch and formants move, the duration is compensated
        low, high = _say(_voice(engine, name, warp=0.925)), _say(_voice(engine, name, warp=1.075))
        assert abs(len(low) / len(high) - 1) < 0.1
        assert 1.08 < _median_f0(high) / _median_f0(low) < 1.25
    if engine == "espeak-ng" or engine_voice(_voice(engine, name)).pitch:  # not rms, HTS
        higher = _say(_voice(engine, name, pitch=1.2))
        assert _median_f0(higher) / _median_f0(normal) > 1.08
    again = _say(_voice(engine, name))
    assert np.array_equal(again, normal)  # the same settings give the same audio


def _without(monkeypatch, *programs: str) -> None:
    which = shutil.which
    monkeypatch.setattr(synthetic.shutil, "which",
                        lambda name, *a, **k: None if name in programs else which(name, *a, **k))


@pytest.mark.parametrize("engine", ENGINES)
def test_missing_engine_is_one_line_naming_its_package(engine, monkeypatch, tmp_path, capsys):
    _without(monkeypatch, engine)
    with pytest.raises(DataError, match=f"{engine} not found on PATH; install it with: apt-get install "
                                        f"{ENGINE_PACKAGES[engine]}"):
        generate_corpus(tmp_path / "out", TINY, num_workers=1)
    assert cli_main(["synth", "--out", str(tmp_path / "cli"), "--train-utts", "2", "--num-workers", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"apt-get install {ENGINE_PACKAGES[engine]}" in err
    assert "--engines" in err  # how to do without it


@needs_espeak
def test_restricted_engines_need_only_those(monkeypatch, tmp_path):
    _without(monkeypatch, "flite", "festival")
    summary = generate_corpus(tmp_path / "out", SynthConfig(seed=1, train_utts=3, dev_utts=1, test_utts=1,
                                                            engines=("espeak-ng",)), num_workers=1)
    assert [s.utterances for s in summary.splits] == [3, 1, 1]


def test_missing_festival_voice_names_its_package(monkeypatch):
    if shutil.which("festival") is None:
        pytest.skip("festival is not installed")
    monkeypatch.setattr(synthetic, "_festival_voices", lambda: {"kal_diphone"})
    with pytest.raises(DataError, match="apt-get install festvox-kdlpc16k festvox-us-slt-hts"):
        synthetic.check_voices(split_voices(SynthConfig(engines=("festival",)))["test"])
