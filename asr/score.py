"""Word and character error rates, and the report a person reads.

WER = (substitutions + deletions + insertions) / reference words, summed over the corpus (not
averaged over utterances). An empty reference adds no reference words, and every word
hypothesised for it counts as an insertion. CER is the same over characters, spaces between
words included (jiwer's convention).
"""

from __future__ import annotations

from typing import Sequence

import jiwer


def _ratio(errors: int, total: int) -> float:
    """errors / total, with an empty reference set giving 0.0 (no errors) or inf (errors)."""
    if total:
        return errors / total
    return 0.0 if errors == 0 else float("inf")


def _squeeze(text: str) -> str:
    return " ".join(text.split())


def wer_cer(refs: Sequence[str], hyps: Sequence[str]) -> tuple[float, float]:
    """Corpus WER and CER, as fractions, of already normalised texts (whitespace is squeezed).

    Args:
        refs: reference transcripts, one per utterance.
        hyps: hypotheses, aligned with `refs`.
    """
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        return 0.0, 0.0
    refs = [_squeeze(r) for r in refs]
    hyps = [_squeeze(h) for h in hyps]
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    word_errors = words.substitutions + words.deletions + words.insertions
    char_errors = chars.substitutions + chars.deletions + chars.insertions
    wer = _ratio(word_errors, words.hits + words.substitutions + words.deletions)
    cer = _ratio(char_errors, chars.hits + chars.substitutions + chars.deletions)
    return wer, cer
