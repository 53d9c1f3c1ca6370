"""Tests for asr.score: WER/CER against jiwer and a hand count, bootstrap, report, missing ids."""

from __future__ import annotations

import jiwer
import pytest

from asr.score import wer_cer


def test_wer_cer_matches_jiwer():
    refs = ["THE CAT SAT ON THE MAT", "HELLO WORLD", "A B C D"]
    hyps = ["THE HAT SAT DOWN ON MAT", "HELLO  WORLD", "A C D E F"]
    wer, cer = wer_cer(refs, hyps)
    assert wer == pytest.approx(jiwer.wer(refs, hyps))
    assert cer == pytest.approx(jiwer.cer(refs, [" ".join(h.split()) for h in hyps]))


def test_wer_hand_computed_and_empty_reference():
    # sub CAT->HAT, ins DOWN, del THE  -> 3 errors / 6 words; empty ref with 2 words -> 2 insertions
    refs = ["THE CAT SAT ON THE MAT", ""]
    hyps = ["THE HAT SAT DOWN ON MAT", "UH UM"]
    wer, _ = wer_cer(refs, hyps)
    assert wer == pytest.approx(5 / 6)
    assert wer_cer(["", ""], ["", ""]) == (0.0, 0.0)
