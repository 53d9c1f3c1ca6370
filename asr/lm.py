"""Word n-gram language models: training from text, reading ARPA files, lexicons for decoding.

Training uses `kaldingram` (pure Python): Kneser-Ney smoothing with one absolute discount per
order, D = n1 / (n1 + 2 n2), computed the way SRILM's `ngram-count -ukndiscount
-kn-modify-counts-at-end` does (the lower orders use continuation counts), in back-off ARPA
format; D is capped at `MAX_DISCOUNT` so that tiny corpora (no n-gram seen twice) do not give
zero-probability n-grams. Optional entropy pruning (Stolcke) with `kaldingram`'s pruner.

Text is normalised with `asr.text.normalize_text`, the same normaliser that made the training
transcripts, so the LM's words are spelled as the acoustic model spells them.

Every ARPA file written holds `<unk>`, so that a decoder allowing words outside the LM (or KenLM
scoring held-out text) gives them a probability instead of log10 -100: the Good-Turing estimate
of meeting an unseen word, P(<unk>) = (word types seen once) / (running words + sentence ends),
at least one type's worth. The other unigram probabilities are scaled by 1 - P(<unk>) and every
back-off weight recomputed, so each context's distribution still sums to 1 (`add_unk`).

KenLM's binary format is not written: the `kenlm` package is a source distribution here whose
Python module has no `build_binary`; flashlight, KenLM and pyctcdecode all load ARPA.

A lexicon spells every LM word as characters followed by the word separator `|`; it is built
from the ARPA unigrams, so any word list works. Words with characters the tokenizer lacks are
skipped and counted.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterable, Iterator, Sequence

from asr.errors import ConfigError, DataError
from asr.fileio import atomic_open
from asr.text import SPACE, normalize_text

MAX_ORDER = 5  # kaldingram trains orders 1..5
MAX_DISCOUNT = 0.9  # cap on the Kneser-Ney discount (it reaches 1 on tiny corpora; see _build_lm)
SPECIAL_WORDS = frozenset({"<s>", "</s>", "<unk>", "<UNK>"})  # ARPA markers, never spelled out


@dataclass(frozen=True)
class LmSummary:
    """What `build_lm` read and wrote."""

    path: str  # the ARPA file written
    order: int  # n-gram order
    sentences: int  # non-empty lines after normalisation
    words: int  # running words
    vocabulary: int  # distinct words
    ngrams: dict[int, int] = field(default_factory=dict)  # order -> number of n-grams in the ARPA file
    pruned: bool = False  # entropy pruning applied
    unk_prob: float = 0.0  # P(<unk>) in the unigram distribution


def open_text(path: str | os.PathLike) -> IO[str]:
    """Open a text file for reading, gzip-compressed when its name ends in `.gz`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def read_sentences(path: str | os.PathLike) -> Iterator[str]:
    """Normalised sentences of a text file (one per line, `.gz` allowed) or of a manifest
    (`.jsonl`: the `text` field of each record). Empty lines are skipped."""
    path = Path(path)
    is_manifest = path.name.endswith(".jsonl") or path.name.endswith(".jsonl.gz")
    with open_text(path) as f:
        for line_no, line in enumerate(f, 1):
            if is_manifest:
                if not line.strip():
                    continue
                try:
                    line = json.loads(line)["text"]
                except (ValueError, KeyError, TypeError) as e:
                    raise DataError(f"{path}:{line_no}: not a manifest record with a 'text' field: {e}") from None
            sentence = normalize_text(line)
            if sentence:
                yield sentence


def build_lm(
    text_paths: str | os.PathLike | Sequence[str | os.PathLike],
    order: int,
    out_path: str | os.PathLike,
    prune_threshold: float | None = None,
) -> LmSummary:
    """Train a Kneser-Ney n-gram LM on text and write it as ARPA (atomically; `.gz` allowed).

    Args:
        text_paths: one or more text files (one sentence per line) or manifests (`.jsonl`).
        order: n-gram order, 1 to 5.
        out_path: the ARPA file to write.
        prune_threshold: relative-entropy pruning threshold (e.g. 1e-7); None for no pruning.
    """
    if not 1 <= order <= MAX_ORDER:
        raise ConfigError(f"LM order must be between 1 and {MAX_ORDER}, got {order}")
    if prune_threshold is not None and prune_threshold <= 0:
        raise ConfigError(f"prune threshold must be positive, got {prune_threshold}")
    if isinstance(text_paths, (str, os.PathLike)):
        text_paths = [text_paths]
    # kaldingram draws a dozen tqdm bars per stage; keep them off logs (shown on a terminal).
    quiet = contextlib.nullcontext() if sys.stderr.isatty() else contextlib.redirect_stderr(io.StringIO())
    with quiet:
        return _build_lm(text_paths, order, Path(out_path), prune_threshold)


def _build_lm(text_paths: Sequence, order: int, out_path: Path, prune_threshold: float | None) -> LmSummary:
    from kaldingram.prune import ArpaParser, prune
    from kaldingram.train import NgramCounts

    counts = NgramCounts(order)
    sentences = words = 0
    frequencies: Counter[str] = Counter()
    for path in text_paths:
        for sentence in read_sentences(path):
            sentence_words = sentence.split()
            counts.add_raw_counts_from_line(sentence)
            sentences += 1
            words += len(sentence_words)
            frequencies.update(sentence_words)
    if sentences == 0:
        names = ", ".join(str(p) for p in text_paths)
        raise DataError(f"{names}: no text left after normalisation; cannot train a language model")
    counts.cal_discounting_constants()
    # D = n1 / (n1 + 2 n2) is 1 when an order has no n-gram seen twice (small corpora): every
    # n-gram seen once would get probability 0, written as log10 -99, which forbids it instead
    # of backing off. Cap D so that those n-grams keep a little probability.
    counts.d = [min(d, MAX_DISCOUNT) for d in counts.d]
    counts.cal_f()
    counts.cal_bow()
    buffer = io.StringIO()
    counts.print_as_arpa(fout=buffer)
    arpa_text = buffer.getvalue()
    pruned = prune_threshold is not None
    if pruned:
        model = ArpaParser().loads(arpa_text)[0]
        prune(model, prune_threshold, 1)
        buffer = io.StringIO()
        model.write(buffer)
        arpa_text = buffer.getvalue()
    unk_prob = unk_probability(frequencies, sentences)
    arpa_text = add_unk(arpa_text, unk_prob)
    if out_path.suffix == ".gz":
        with atomic_open(out_path, "wb", encoding=None) as f:
            f.write(gzip.compress(arpa_text.encode("utf-8")))
    else:
        with atomic_open(out_path, "w") as f:
            f.write(arpa_text)
    return LmSummary(
        path=str(out_path),
        order=order,
        sentences=sentences,
        words=words,
        vocabulary=len(frequencies),
        ngrams=arpa_ngram_counts(out_path),
        pruned=pruned,
        unk_prob=unk_prob,
    )


# --- <unk> ---------------------------------------------------------------------------------------

UNK = "<unk>"


def unk_probability(frequencies: Counter, sentences: int) -> float:
    """Good-Turing probability that the next token is a word never seen in training: word types
    seen once over the tokens the unigram distribution predicts (words and sentence ends); at
    least one type's worth, so that it is never 0."""
    singletons = sum(1 for n in frequencies.values() if n == 1)
    return max(singletons, 1) / (sum(frequencies.values()) + sentences)


def _parse_arpa(text: str) -> list[dict[tuple[str, ...], list]]:
    """ARPA text -> per order (index 0 = unigrams) {ngram: [log10 p, log10 backoff or None]}."""
    model: list[dict] = []
    order = 0
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("\\") and line.endswith("-grams:"):
            order = int(line[1:].split("-")[0])
            model.append({})
        elif line == "\\end\\":
            break
        elif order and line:
            fields = line.split()
            backoff = float(fields[order + 1]) if len(fields) > order + 1 else None
            model[order - 1][tuple(fields[1 : order + 1])] = [float(fields[0]), backoff]
    return model


def _format_arpa(model: list[dict]) -> str:
    lines = ["", "\\data\\"] + [f"ngram {n + 1}={len(grams)}" for n, grams in enumerate(model)]
    for n, grams in enumerate(model):
        lines += ["", f"\\{n + 1}-grams:"]
        for ngram, (logp, backoff) in grams.items():
            cells = [f"{logp:.7g}", " ".join(ngram)] + ([] if backoff is None else [f"{backoff:.7g}"])
            lines.append("\t".join(cells))
    return "\n".join(lines + ["", "\\end\\", ""])


def _backed_off(model: list[dict], context: tuple[str, ...], word: str) -> float:
    """P(word | context) of a back-off model (the word is in its vocabulary)."""
    weight = 1.0
    while True:
        entry = model[len(context)].get(context + (word,)) if len(context) < len(model) else None
        if entry is not None:
            return weight * 10 ** entry[0]
        if not context:
            raise KeyError(word)  # not in the unigrams: callers ask only for the model's words
        backoff = model[len(context) - 1].get(context, [0.0, None])[1]
        weight *= 10 ** (backoff or 0.0)
        context = context[1:]


def add_unk(arpa_text: str, unk_prob: float) -> str:
    """Add `<unk>` with probability `unk_prob` to an ARPA back-off LM: the other unigrams are
    scaled by 1 - unk_prob and every back-off weight is recomputed,
    bow(h) = (1 - sum of P(w | h) over the n-grams h w) / (1 - sum of P(w | h') over the same w),
    h' being h less its first word, so every context's distribution sums to 1 again. A model that
    already has `<unk>` is returned as it is."""
    model = _parse_arpa(arpa_text)
    if (UNK,) in model[0] or not 0 < unk_prob < 1:
        return arpa_text
    for ngram, entry in model[0].items():
        if ngram != ("<s>",):
            entry[0] += math.log10(1 - unk_prob)
    model[0] = {(UNK,): [math.log10(unk_prob), None], **model[0]}
    for n in range(len(model) - 1):  # contexts of n + 1 words, shortest first
        followers: dict[tuple, list[str]] = {}
        for ngram in model[n + 1]:
            followers.setdefault(ngram[:-1], []).append(ngram[-1])
        for context, entry in model[n].items():
            if entry[1] is None and context not in followers:
                continue
            words = followers.get(context, [])
            seen = sum(10 ** model[n + 1][context + (w,)][0] for w in words)
            lower = sum(_backed_off(model, context[1:], w) for w in words)
            entry[1] = math.log10(max(1 - seen, 1e-12) / max(1 - lower, 1e-12))
    return _format_arpa(model)


def is_arpa(path: str | os.PathLike) -> bool:
    """True when `path` is an ARPA text file (plain or `.gz`), False for anything else
    (e.g. a KenLM binary)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: language model not found")
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"\x1f\x8b":
        return True  # gzip: only ARPA is read compressed
    with open(path, "rb") as f:
        start = f.read(4096).lstrip()
    return start.startswith(b"\\data\\")


def _arpa_lines(path: str | os.PathLike) -> Iterator[str]:
    """Lines of an ARPA file, gzip-compressed or not (detected from the content, not the name)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: language model not found")
    opener = gzip.open if _is_gzip(path) else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            yield line.rstrip("\r\n")


def _is_gzip(path: str | os.PathLike) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def arpa_ngram_counts(path: str | os.PathLike) -> dict[int, int]:
    """The `ngram N=COUNT` lines of an ARPA header, as {order: count}."""
    counts: dict[int, int] = {}
    in_header = False
    for line in _arpa_lines(path):
        line = line.strip()
        if line == "\\data\\":
            in_header = True
        elif in_header and line.startswith("ngram "):
            order, count = line[len("ngram ") :].split("=")
            counts[int(order)] = int(count)
        elif in_header and line.startswith("\\"):
            break
    if not counts:
        raise DataError(f"{path}: not an ARPA file (no \\data\\ header with ngram counts)")
    return counts


def read_arpa_vocabulary(path: str | os.PathLike) -> list[str]:
    """The words of an ARPA LM's unigram section, in file order (`.gz` allowed).

    Raises DataError naming the file and line when the file is not ARPA.
    """
    if not is_arpa(path):
        raise DataError(f"{path}: not an ARPA file; a KenLM binary needs a word list (--lexicon)")
    words: list[str] = []
    in_unigrams = False
    for line_no, line in enumerate(_arpa_lines(path), 1):
        stripped = line.strip()
        if stripped == "\\1-grams:":
            in_unigrams = True
            continue
        if not in_unigrams:
            continue
        if not stripped:
            continue
        if stripped.startswith("\\"):
            break
        parts = stripped.split()
        if len(parts) < 2:
            raise DataError(f"{path}:{line_no}: malformed unigram line {line!r}")
        words.append(parts[1])
    if not in_unigrams:
        raise DataError(f"{path}: no \\1-grams: section")
    return words


def read_word_list(path: str | os.PathLike) -> list[str]:
    """Words of a word list or lexicon file: the first field of each non-empty line."""
    words = []
    with open_text(path) as f:
        for line in f:
            parts = line.split()
            if parts:
                words.append(parts[0])
    return words


@dataclass(frozen=True)
class Lexicon:
    """Spellings of words as token strings, each ending with the word separator."""

    spellings: dict[str, list[str]]  # word -> tokens, e.g. "CAT" -> ["C", "A", "T", "|"]
    skipped: dict[str, int] = field(default_factory=dict)  # characters outside the tokenizer -> words skipped for them
    skipped_words: int = 0  # words left out because of those characters

    def __len__(self) -> int:
        return len(self.spellings)

    def report(self) -> str:
        """One line: how many words are in the lexicon and how many were skipped, and why."""
        line = f"{len(self.spellings)} words in the lexicon"
        if self.skipped_words:
            chars = ", ".join(f"{c!r} x{n}" for c, n in sorted(self.skipped.items(), key=lambda kv: -kv[1])[:10])
            line += f"; {self.skipped_words} skipped for characters outside the tokenizer ({chars})"
        return line

    def write(self, path: str | os.PathLike) -> None:
        """Write the flashlight/Kaldi lexicon format atomically: `WORD T1 T2 ... |` per line."""
        with atomic_open(path, "w") as f:
            for word, spelling in self.spellings.items():
                f.write(f"{word} {' '.join(spelling)}\n")


def build_lexicon(words: Iterable[str], tokens: Sequence[str]) -> Lexicon:
    """Spell each word as its characters plus `|`; skip (and count) words with characters
    outside `tokens` and the ARPA markers `<s>`, `</s>`, `<unk>`.

    Args:
        words: the LM's vocabulary (e.g. `read_arpa_vocabulary(path)`).
        tokens: the tokenizer's token list (`Tokenizer.tokens`).
    """
    known = set(tokens[1:]) - {SPACE}
    spellings: dict[str, list[str]] = {}
    skipped: Counter[str] = Counter()
    skipped_words = 0
    for word in words:
        if word in SPECIAL_WORDS or word in spellings:
            continue
        missing = {c for c in word if c not in known}
        if missing:
            skipped_words += 1
            skipped.update(missing)
            continue
        spellings[word] = [*word, SPACE]
    return Lexicon(spellings, dict(skipped), skipped_words)
