"""Tests for asr.lm: Kneser-Ney LM training with kaldingram, ARPA reading, lexicons."""

from __future__ import annotations

import gzip
import io
from collections import Counter

import pytest
from kaldingram.train import NgramCounts

from asr.cli import main as cli_main
from asr.errors import ConfigError, DataError
from asr.lm import (
    MAX_DISCOUNT,
    add_unk,
    arpa_ngram_counts,
    build_lexicon,
    build_lm,
    is_arpa,
    read_arpa_vocabulary,
    read_sentences,
)

TEXT = """The cat sat on the mat.
the dog -- sat on the log!
A cat's hat; a dog's hat

The cat sat.
"""


def read_arpa(path):
    """{order: {ngram tuple: (log10 p, log10 backoff or None)}} by a plain independent parser."""
    opener = gzip.open if str(path).endswith(".gz") else open
    out, order = {}, None
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("\\") and line.endswith("-grams:"):
                order = int(line[1:].split("-")[0])
                out[order] = {}
            elif line == "\\end\\":
                order = None
            elif order and line:
                parts = line.split()
                ngram = tuple(parts[1 : 1 + order])
                backoff = float(parts[1 + order]) if len(parts) > 1 + order else None
                out[order][ngram] = (float(parts[0]), backoff)
    return out


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_build_lm_normalises_and_counts(text_file, tmp_path):
    summary = build_lm(text_file, 3, tmp_path / "lm.arpa")
    arpa = read_arpa(tmp_path / "lm.arpa")
    assert summary.sentences == 4 and summary.words == 6 + 6 + 6 + 3
    vocab = set(read_arpa_vocabulary(tmp_path / "lm.arpa"))
    assert vocab == {"<s>", "</s>", "<unk>", "THE", "CAT", "SAT", "ON", "MAT", "DOG", "LOG", "A", "CAT'S", "HAT",
                     "DOG'S"}
    assert summary.vocabulary == len(vocab) - 3
    assert summary.ngrams == {n: len(arpa[n]) for n in (1, 2, 3)} == arpa_ngram_counts(tmp_path / "lm.arpa")
    # Kneser-Ney unigram distribution is proper: probabilities of all predicted words sum to 1
    total = sum(10 ** lp for (w,), (lp, _) in arpa[1].items() if w != "<s>")
    assert total == pytest.approx(1.0, abs=1e-4)
    # bigram distribution after THE (explicit bigrams + backed-off unigrams) sums to 1 too
    explicit = {ng[1]: lp for ng, (lp, _) in arpa[2].items() if ng[0] == "THE"}
    backoff = arpa[1][("THE",)][1]
    total = sum(
        10 ** explicit[w] if w in explicit else 10 ** (backoff + lp)
        for (w,), (lp, _) in arpa[1].items()
        if w != "<s>"
    )
    assert total == pytest.approx(1.0, abs=1e-4)


def test_build_lm_gz_prune_and_manifest(text_file, tmp_path):
    full = build_lm(text_file, 3, tmp_path / "full.arpa")
    pruned = build_lm(text_file, 3, tmp_path / "lm.arpa.gz", prune_threshold=1e-2)
    with open(tmp_path / "lm.arpa.gz", "rb") as f:
        assert f.read(2) == b"\x1f\x8b"
    assert is_arpa(tmp_path / "lm.arpa.gz")
    assert pruned.pruned and sum(pruned.ngrams.values()) < sum(full.ngrams.values())
    assert set(read_arpa_vocabulary(tmp_path / "lm.arpa.gz")) == set(read_arpa_vocabulary(tmp_path / "full.arpa"))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "audio": "a.wav", "duration": 1.0, "text": "HELLO WORLD"}\n\n', encoding="utf-8")
    assert build_lm(manifest, 2, tmp_path / "m.arpa").words == 2


def test_build_lm_errors(tmp_path, text_file):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n ... \n", encoding="utf-8")
    with pytest.raises(DataError, match="no text left"):
        build_lm(empty, 3, tmp_path / "x.arpa")
    with pytest.raises(ConfigError, match="order"):
        build_lm(text_file, 7, tmp_path / "x.arpa")
    with pytest.raises(DataError, match="not found"):
        build_lm(tmp_path / "missing.txt", 3, tmp_path / "x.arpa")
    assert not (tmp_path / "x.arpa").exists()
    not_arpa = tmp_path / "bin.lm"
    not_arpa.write_bytes(b"mmap lm http://kheafield.com/code format version 5\0\1\2")
    assert not is_arpa(not_arpa)
    with pytest.raises(DataError, match="not an ARPA"):
        read_arpa_vocabulary(not_arpa)


def test_lexicon_from_vocabulary_skips_unknown_characters():
    tokens = ["<blank>", "|", "'", "A", "C", "T"]
    lexicon = build_lexicon(["<s>", "</s>", "<unk>", "CAT", "TACT", "CAFÉ", "ÉTÉ", "CAT'S", "A", "CAT"], tokens)
    assert lexicon.spellings == {"CAT": ["C", "A", "T", "|"], "TACT": ["T", "A", "C", "T", "|"], "A": ["A", "|"]}
    assert lexicon.skipped_words == 3  # CAFÉ, ÉTÉ (É), CAT'S (S)
    assert lexicon.skipped == dict(Counter({"É": 2, "F": 1, "S": 1}))
    assert "3 skipped" in lexicon.report()


def test_cli_lm_build(text_file, tmp_path, capsys):
    assert cli_main(["lm", "build", "--text", str(text_file), "--order", "2", "--out", str(tmp_path / "lm.arpa")]) == 0
    out = capsys.readouterr().out
    assert "2-grams" in out and "P(<unk>) 0.2000" in out  # 5 singletons / (21 words + 4 sentence ends)
    assert read_arpa(tmp_path / "lm.arpa")[2]
    assert cli_main(["lm", "build", "--text", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "x.arpa")]) == 1
    assert "not found" in capsys.readouterr().err


def test_tiny_corpus_has_no_zero_probability_ngrams(tmp_path):
    # No trigram is seen twice, so the plain discount would be 1 and every trigram seen once
    # would get probability 0 (log10 -99), forbidding it instead of backing off.
    text = tmp_path / "t.txt"
    text.write_text("the cat sat\nthe dog ran\na red hat\n", encoding="utf-8")
    build_lm(text, 3, tmp_path / "lm.arpa")
    arpa = read_arpa(tmp_path / "lm.arpa")
    zero = [ng for order in (2, 3) for ng, (lp, _) in arpa[order].items() if lp <= -90]
    assert zero == []
    assert all(lp > -90 for (w,), (lp, _) in arpa[1].items() if w != "<s>")


def probability(arpa, context, word):
    """P(word | context) by the ARPA back-off rule, from the test's own parse."""
    weight = 1.0
    while True:
        n = len(context) + 1
        if n in arpa and context + (word,) in arpa[n]:
            return weight * 10 ** arpa[n][context + (word,)][0]
        backoff = arpa[len(context)].get(context, (0.0, None))[1] if context else None
        weight *= 10 ** (backoff or 0.0)
        context = context[1:]


def assert_every_context_sums_to_one(arpa):
    predicted = [w for (w,) in arpa[1] if w != "<s>"]
    contexts = [()] + [ng for n in range(1, max(arpa)) for ng in arpa[n]]
    for context in contexts:
        total = sum(probability(arpa, context, w) for w in predicted)
        assert total == pytest.approx(1.0, abs=1e-5), context


def test_unk_has_the_singleton_mass_and_every_distribution_sums_to_one(text_file, tmp_path):
    summary = build_lm(text_file, 3, tmp_path / "lm.arpa")
    arpa = read_arpa(tmp_path / "lm.arpa")
    # 21 words and 4 sentence ends; MAT, DOG, LOG, CAT'S and DOG'S are seen once
    assert summary.unk_prob == pytest.approx(5 / 25)
    assert 10 ** arpa[1][("<unk>",)][0] == pytest.approx(5 / 25, rel=1e-5)
    assert arpa[1][("<unk>",)][1] is None
    assert_every_context_sums_to_one(arpa)
    # an unknown word after THE now has a probability: bow(THE) * P(<unk>)
    assert 0 < probability(arpa, ("<s>", "THE"), "<unk>") < 0.2
    # the known words keep their relative probabilities
    before = {ng: lp for ng, (lp, _) in read_arpa(lm_without_unk(text_file, tmp_path))[1].items()}
    ratio = {ng: 10 ** (arpa[1][ng][0] - lp) for ng, lp in before.items() if ng != ("<s>",)}
    assert all(r == pytest.approx(1 - 5 / 25, rel=1e-5) for r in ratio.values())


def lm_without_unk(text_file, tmp_path):
    """The same trigram LM as build_lm trains, without <unk> (add_unk with probability 0 leaves
    a model as it is)."""
    counts = NgramCounts(3)
    for sentence in read_sentences(text_file):
        counts.add_raw_counts_from_line(sentence)
    counts.cal_discounting_constants()
    counts.d = [min(d, MAX_DISCOUNT) for d in counts.d]
    counts.cal_f()
    counts.cal_bow()
    buffer = io.StringIO()
    counts.print_as_arpa(fout=buffer)
    assert add_unk(buffer.getvalue(), 0.0) == buffer.getvalue()
    path = tmp_path / "plain.arpa"
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


@pytest.mark.parametrize("order, prune", [(2, None), (4, None), (3, 1e-2)])
def test_distributions_sum_to_one_at_every_order_and_after_pruning(tmp_path, order, prune):
    text = tmp_path / "t.txt"
    sentences = ["the cat sat on the mat", "the dog sat on the log", "a cat sat on a dog", "the red hat sat",
                 "a dog ran", "the cat ran on the mat"]
    text.write_text("\n".join(sentences * 2) + "\n", encoding="utf-8")
    build_lm(text, order, tmp_path / "lm.arpa", prune_threshold=prune)
    arpa = read_arpa(tmp_path / "lm.arpa")
    assert ("<unk>",) in arpa[1]
    assert_every_context_sums_to_one(arpa)
    assert add_unk((tmp_path / "lm.arpa").read_text(), 0.3) == (tmp_path / "lm.arpa").read_text()  # has one
