"""CTC decoding: greedy and beam search (with or without a word n-gram LM) behind one interface.

Every decoder takes log-probabilities `(batch, frames, vocab)` and their lengths `(batch,)` and
returns one `Hypothesis` per utterance: the text, the emitted tokens with the output frame of
each, and word spans (frames) from which a caller derives word times with the model's
`seconds_per_frame`.

Tokens follow `asr.text`: blank `"<blank>"` is id 0 and `"|"` separates words.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

BLANK_ID = 0  # the CTC blank is always token 0 (asr.text.BLANK)
SPACE_TOKEN = "|"  # the word separator token (asr.text.SPACE)


@dataclass
class WordSpan:
    """One decoded word and where it sits in the model's output frames."""

    word: str  # the word's text
    start_frame: int  # output frame of the word's first token
    end_frame: int  # output frame after the word's last token (exclusive)
    confidence: float  # mean posterior of the word's emitted tokens at their frames, in [0, 1]


@dataclass
class Hypothesis:
    """The decoder's best guess for one utterance."""

    text: str  # words separated by single spaces
    tokens: list[int]  # emitted token ids, after CTC collapse, blanks removed
    token_frames: list[int]  # output frame of each emitted token
    score: float = 0.0  # decoder score (greedy: best-path log-probability; beam: total search score)
    words: list[WordSpan] = field(default_factory=list)  # one span per word in `text`


def _token_list(tokenizer) -> list[str]:
    """The token strings of an `asr.text.Tokenizer` (or a plain list of tokens)."""
    tokens = list(getattr(tokenizer, "tokens", tokenizer))
    if not tokens:
        raise ValueError("empty token list")
    return tokens


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor | None = None) -> list[list[tuple[int, int]]]:
    """Best-path CTC decoding, vectorised over the batch and the frames.

    Args:
        log_probs: `(batch, frames, vocab)` log-probabilities (or any scores: only the argmax matters).
        lengths: `(batch,)` valid frames per utterance; `None` means all frames are valid.

    Returns:
        Per utterance, the `(token, frame)` pairs left after merging repeats and removing blanks
        (token 0); `frame` is the first frame of each run of the emitted token.
    """
    batch, frames, _ = log_probs.shape
    best = log_probs.argmax(dim=-1)  # (batch, frames)
    if lengths is None:
        lengths = torch.full((batch,), frames, dtype=torch.long)
    lengths = lengths.to(best.device)
    previous = torch.nn.functional.pad(best[:, :-1], (1, 0), value=BLANK_ID)  # (batch, frames)
    valid = torch.arange(frames, device=best.device)[None, :] < lengths[:, None]
    emit = (best != BLANK_ID) & (best != previous) & valid  # (batch, frames)
    rows, cols = emit.nonzero(as_tuple=True)  # row-major: sorted by utterance, then frame
    counts = emit.sum(dim=1).tolist()
    tokens = best[rows, cols].tolist()
    frames_list = cols.tolist()
    out: list[list[tuple[int, int]]] = []
    start = 0
    for n in counts:
        out.append(list(zip(tokens[start : start + n], frames_list[start : start + n])))
        start += n
    return out


def word_spans(
    tokens: Sequence[int],
    token_frames: Sequence[int],
    token_strings: Sequence[str],
    frame_log_probs: torch.Tensor | None = None,
) -> list[WordSpan]:
    """Group emitted tokens into words at the `"|"` separator.

    Args:
        tokens: emitted token ids (no blanks).
        token_frames: output frame of each token.
        token_strings: the tokenizer's token list.
        frame_log_probs: `(frames, vocab)` log-probabilities of this utterance, for confidences;
            without it every confidence is 1.0.
    """
    spans: list[WordSpan] = []
    chars: list[str] = []
    frames: list[int] = []
    scores: list[float] = []

    def close() -> None:
        if chars:
            conf = math.exp(sum(scores) / len(scores)) if scores else 1.0
            spans.append(WordSpan("".join(chars), frames[0], frames[-1] + 1, conf))
        chars.clear()
        frames.clear()
        scores.clear()

    token_scores: list[float] = []
    if frame_log_probs is not None and len(tokens):
        idx_f = torch.as_tensor(list(token_frames), dtype=torch.long)
        idx_t = torch.as_tensor(list(tokens), dtype=torch.long)
        token_scores = frame_log_probs[idx_f, idx_t].float().tolist()
    for i, (token, frame) in enumerate(zip(tokens, token_frames)):
        piece = token_strings[token]
        if piece == SPACE_TOKEN or token == BLANK_ID:
            close()
            continue
        chars.append(piece)
        frames.append(int(frame))
        if token_scores:
            scores.append(token_scores[i])
    close()
    return spans


def _text_from_tokens(tokens: Sequence[int], token_strings: Sequence[str]) -> str:
    """Token ids -> words separated by single spaces (blank dropped, "|" is a space)."""
    pieces = [" " if token_strings[t] == SPACE_TOKEN else token_strings[t] for t in tokens if t != BLANK_ID]
    return " ".join("".join(pieces).split())


class GreedyDecoder:
    """Best-path decoding: argmax per frame, merge repeats, drop blanks."""

    name = "greedy"

    def __init__(self, tokenizer) -> None:
        self.tokens = _token_list(tokenizer)

    def settings(self) -> dict:
        """The decoder's options, for results files."""
        return {"decoder": self.name}

    def decode(self, log_probs: torch.Tensor, lengths: torch.Tensor | None = None) -> list[Hypothesis]:
        """Decode a batch.

        Args:
            log_probs: `(batch, frames, vocab)` log-probabilities.
            lengths: `(batch,)` valid frames per utterance.
        """
        log_probs = log_probs.detach()
        batch, frames, _ = log_probs.shape
        if lengths is None:
            lengths = torch.full((batch,), frames, dtype=torch.long)
        lengths = lengths.to(log_probs.device)
        paths = greedy_decode(log_probs, lengths)
        valid = torch.arange(frames, device=log_probs.device)[None, :] < lengths[:, None]
        best_scores = (log_probs.max(dim=-1).values * valid).sum(dim=1).tolist()  # best-path log-prob
        log_probs_cpu = log_probs.float().cpu()
        hyps = []
        for b, path in enumerate(paths):
            tokens = [t for t, _ in path]
            token_frames = [f for _, f in path]
            hyps.append(
                Hypothesis(
                    text=_text_from_tokens(tokens, self.tokens),
                    tokens=tokens,
                    token_frames=token_frames,
                    score=float(best_scores[b]),
                    words=word_spans(tokens, token_frames, self.tokens, log_probs_cpu[b]),
                )
            )
        return hyps
