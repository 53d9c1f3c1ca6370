"""CTC decoding: greedy and beam search (with or without a word n-gram LM) behind one interface.

`DecodingOptions` says which decoder and how; `build_decoder(options, tokenizer, seconds_per_frame)`
makes it. Every decoder takes log-probabilities `(batch, frames, vocab)` and their lengths
`(batch,)` and returns one `Hypothesis` per utterance: the text, the emitted tokens with the
output frame of each, and word spans (frames) from which a caller derives word times with the
model's `seconds_per_frame`. Decoding a whole manifest and scoring it is `asr.evaluate`.

Tokens follow `asr.text`: blank `"<blank>"` is id 0 and `"|"` separates words.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from asr.errors import ConfigError, DataError
from asr.lengths import valid_mask
from asr.text import BLANK, SPACE, Tokenizer

BLANK_ID = Tokenizer.blank_id  # the CTC blank's id (always 0)
DECODERS = ("greedy", "beam")

# A pause this long between two characters ends a word in greedy decoding. Inside a word CTC
# emits characters well under 0.3 s apart (at most 0.24 s on the demo's test set); a model trained
# on single sentences often emits no "|" across the silence between two sentences, which would
# otherwise glue their words together ("BEACH GEORGE" -> "BEACHGEORGE").
WORD_PAUSE_S = 0.5


@dataclass(frozen=True)
class DecodingOptions:
    """How log-probabilities become text: the options `asr decode` and `asr transcribe` share.

    Each field is the command-line option of the same name (`beam_size` is `--beam-size`) and
    these are its only defaults: `DecodingOptions()` is what `asr decode` does by default
    (greedy, with the word-pause rule). A combination that means nothing (an LM for the greedy
    decoder, an LM weight without an LM) is a ConfigError when the object is made. Override
    with `dataclasses.replace`.
    """

    decoder: str = "greedy"  # "greedy" (best path) or "beam" (CTC prefix beam search)
    word_pause: float = WORD_PAUSE_S  # greedy: a pause this long (seconds) between two characters ends a word; 0: off
    beam_size: int = 50  # beam: hypotheses kept after each frame
    beam_threshold: float = 25.0  # beam: hypotheses scoring more than this below the best are pruned
    lm: str | None = None  # beam: word n-gram LM, ARPA (.arpa, .arpa.gz) or KenLM binary; None: no LM
    lexicon: str | None = None  # beam: word list or lexicon file (first field of a line); None: the ARPA's words
    lm_weight: float = 0.5  # beam + LM: weight of the LM log-probability (natural log of KenLM's log10 scores)
    word_score: float = 0.0  # beam + LM or lexicon: score added per word (positive favours more words)
    tuned_from: str | None = None  # the `--tune` result that lm_weight and word_score were read from, or None

    def __post_init__(self) -> None:
        for name in ("lm", "lexicon", "tuned_from"):  # paths are kept as strings (results.json)
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, os.fspath(value))
        if self.decoder not in DECODERS:
            raise ConfigError(f"unknown decoder {self.decoder!r}: choose 'greedy' or 'beam'")
        changed = {f.name for f in dataclasses.fields(self) if getattr(self, f.name) != f.default}
        if self.decoder == "greedy" and changed - {"decoder", "word_pause"}:
            given = ", ".join(_option(name) for name in sorted(changed - {"decoder", "word_pause"}))
            raise ConfigError(f"the greedy decoder takes no options (got {given}); they need --decoder beam")
        if self.lm is None and changed & {"lm_weight", "tuned_from"}:
            raise ConfigError(f"{_option(min(changed & {'lm_weight', 'tuned_from'}))} needs --decoder beam with --lm")
        if "word_score" in changed and self.lm is None and self.lexicon is None:
            raise ConfigError("--word-score needs --lm or --lexicon")
        if self.decoder == "beam" and "word_pause" in changed:
            raise ConfigError("--word-pause is a rule of the greedy decoder (--decoder greedy)")
        if self.beam_size < 1:
            raise ConfigError(f"--beam-size must be at least 1, got {self.beam_size}")
        if not self.beam_threshold >= 0:
            raise ConfigError(f"--beam-threshold must be 0 or more, got {self.beam_threshold}")
        if not self.word_pause >= 0:
            raise ConfigError(f"--word-pause must be 0 or more seconds, got {self.word_pause}")


def _option(field_name: str) -> str:
    """The command-line spelling of a DecodingOptions field: beam_size -> --beam-size."""
    return "--" + field_name.replace("_", "-")


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
    valid = valid_mask(lengths, frames)
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


def best_path_scores(log_probs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(batch, frames, vocab) log-probabilities, (batch,) valid frames -> (batch,) float64: the
    best path's log-probability, the best token's log-probability summed over the valid frames.
    Greedy hypotheses' score; test-time VTLN's choice of warp (`asr.evaluate.speaker_warps`)."""
    valid = valid_mask(lengths.to(log_probs.device), log_probs.shape[1])
    return (log_probs.max(dim=-1).values * valid).sum(dim=1, dtype=torch.float64)


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
        if piece == SPACE or token == BLANK_ID:
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
    pieces = [" " if token_strings[t] == SPACE else token_strings[t] for t in tokens if t != BLANK_ID]
    return " ".join("".join(pieces).split())


def word_pause_frames(seconds_per_frame: float, pause_s: float = WORD_PAUSE_S) -> int:
    """Output frames of a word-ending pause for a model with `seconds_per_frame` per frame."""
    return max(1, round(pause_s / seconds_per_frame))


def _split_at_pauses(tokens: list[int], frames: list[int], space_id: int,
                     pause_frames: int) -> tuple[list[int], list[int]]:
    """Insert a word separator between two characters emitted `pause_frames` or more frames apart."""
    out_tokens: list[int] = []
    out_frames: list[int] = []
    for token, frame in zip(tokens, frames):
        if (out_tokens and token != space_id and out_tokens[-1] != space_id
                and frame - out_frames[-1] >= pause_frames):
            out_tokens.append(space_id)
            out_frames.append(out_frames[-1])
        out_tokens.append(token)
        out_frames.append(frame)
    return out_tokens, out_frames


class GreedyDecoder:
    """Best-path decoding: argmax per frame, merge repeats, drop blanks.

    word_pause_frames > 0: a run of at least that many frames between two characters also ends a
    word (see WORD_PAUSE_S; `build_decoder` sets it from `DecodingOptions.word_pause` and the
    model's frame rate).
    """

    name = "greedy"

    def __init__(self, tokenizer, word_pause_frames: int = 0) -> None:
        self.tokens = _token_list(tokenizer)
        self.word_pause_frames = int(word_pause_frames)
        self.space_id = self.tokens.index(SPACE) if SPACE in self.tokens else None

    def settings(self) -> dict:
        """The decoder's options, for results files."""
        out = {"decoder": self.name}
        if self.word_pause_frames > 0:
            out["word_pause_frames"] = self.word_pause_frames
        return out

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
        best_scores = best_path_scores(log_probs, lengths).tolist()
        log_probs_cpu = log_probs.float().cpu()
        hyps = []
        for b, path in enumerate(paths):
            tokens = [t for t, _ in path]
            token_frames = [f for _, f in path]
            if self.word_pause_frames > 0 and self.space_id is not None:
                tokens, token_frames = _split_at_pauses(tokens, token_frames, self.space_id, self.word_pause_frames)
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


def _strip_separators(tokens: list[int], frames: list[int], space_id: int) -> tuple[list[int], list[int]]:
    """Drop leading, trailing and repeated word separators (the beam search pads with them)."""
    out_tokens: list[int] = []
    out_frames: list[int] = []
    for token, frame in zip(tokens, frames):
        if token == space_id and (not out_tokens or out_tokens[-1] == space_id):
            continue
        out_tokens.append(token)
        out_frames.append(frame)
    if out_tokens and out_tokens[-1] == space_id:
        out_tokens.pop()
        out_frames.pop()
    return out_tokens, out_frames


class BeamSearchDecoder:
    """CTC prefix beam search (flashlight, through `torchaudio.models.decoder.ctc_decoder`).

    Without `lm` and `lexicon` the search is over characters (lexicon-free). With a word LM
    the search is constrained to the lexicon's words; the lexicon is built from the LM's
    unigrams unless one is given. Score of a hypothesis = acoustic log-prob
    + `lm_weight` * LM log-prob + `word_score` * words.

    The temporary lexicon (and a decompressed copy of an `.arpa.gz`) live in a temporary
    folder owned by the decoder and removed with it.
    """

    name = "beam"

    def __init__(
        self,
        tokenizer,
        beam_size: int = DecodingOptions.beam_size,
        beam_threshold: float = DecodingOptions.beam_threshold,
        lm: str | os.PathLike | None = None,
        lm_weight: float = DecodingOptions.lm_weight,
        word_score: float = DecodingOptions.word_score,
        lexicon=None,
        beam_size_token: int | None = None,
        _shared: "BeamSearchDecoder | None" = None,
    ) -> None:
        """
        Args:
            tokenizer: `asr.text.Tokenizer` (or its token list).
            beam_size, beam_threshold, lm, lm_weight, word_score: see `DecodingOptions`.
            lexicon: an `asr.lm.Lexicon`, a lexicon/word-list file (first field of each line is a
                word), or None (built from the ARPA unigrams when `lm` is given).
            beam_size_token: tokens considered per frame; None for all.
        """
        from torchaudio.models.decoder import ctc_decoder

        self._ctc_decoder = ctc_decoder
        self.tokens = _token_list(tokenizer)
        if self.tokens[0] != BLANK or SPACE not in self.tokens:
            raise ValueError(f"token list must start with {BLANK!r} and contain {SPACE!r}")
        self.space_id = self.tokens.index(SPACE)
        self.beam_size = int(beam_size)
        self.beam_threshold = float(beam_threshold)
        self.beam_size_token = beam_size_token
        self.lm_weight = float(lm_weight)
        self.word_score = float(word_score)
        if _shared is not None:  # same LM and lexicon, other weights: reuse the loaded LM
            self.lm_path, self.lexicon, self._lexicon_path = _shared.lm_path, _shared.lexicon, _shared._lexicon_path
            self.lexicon_file, self._workdir, self._kenlm = _shared.lexicon_file, _shared._workdir, _shared._kenlm
        else:
            self._setup(lm, lexicon)
        self._decoder = self._make_decoder()

    def _setup(self, lm, lexicon) -> None:
        from asr import lm as lm_module

        self.lm_path = os.fspath(lm) if lm is not None else None
        self.lexicon_file = os.fspath(lexicon) if isinstance(lexicon, (str, os.PathLike)) else None
        self.lexicon = None
        self._lexicon_path = None
        self._kenlm = None
        self._workdir = None
        if lm is None and lexicon is None:
            return
        self._workdir = tempfile.TemporaryDirectory(prefix="asr-decode-")
        workdir = Path(self._workdir.name)
        is_arpa = _lm_format(lm) == "arpa" if lm is not None else False
        if isinstance(lexicon, lm_module.Lexicon):
            self.lexicon = lexicon
        elif lexicon is not None:
            self.lexicon = lm_module.build_lexicon(lm_module.read_word_list(lexicon), self.tokens)
        elif is_arpa:
            self.lexicon = lm_module.build_lexicon(lm_module.read_arpa_vocabulary(lm), self.tokens)
        else:
            raise DataError(f"{lm}: a KenLM binary LM needs a lexicon or word list (--lexicon)")
        self._lexicon_path = str(workdir / "lexicon.txt")
        self.lexicon.write(self._lexicon_path)
        if lm is not None:
            lm_file = _plain_arpa(lm, workdir) if is_arpa else Path(lm)
            # A corrupt ARPA can look like an LM none of whose words can be spelled: KenLM, the
            # reference reader, decides first. Loaded once, with the word dictionary ctc_decoder
            # builds from the lexicon file, so that re-weighting (tuning) does not reload it.
            self._kenlm = _load_kenlm(lm, lm_file, self._lexicon_path, is_arpa)
        if len(self.lexicon) == 0:
            raise DataError(f"{lm or lexicon}: no word of the LM can be spelled with the tokenizer "
                            f"({self.lexicon.report()})")

    def _make_decoder(self):
        return self._ctc_decoder(
            lexicon=self._lexicon_path,
            tokens=self.tokens,
            lm=self._kenlm,
            nbest=1,
            beam_size=self.beam_size,
            beam_size_token=self.beam_size_token,
            beam_threshold=self.beam_threshold,
            lm_weight=self.lm_weight,
            word_score=self.word_score,
            blank_token=self.tokens[BLANK_ID],
            sil_token=SPACE,
            unk_word="<unk>",
        )

    def with_weights(self, lm_weight: float, word_score: float) -> "BeamSearchDecoder":
        """The same decoder (same loaded LM and lexicon) with other LM weight and word score."""
        return BeamSearchDecoder(
            self.tokens,
            beam_size=self.beam_size,
            beam_threshold=self.beam_threshold,
            lm_weight=lm_weight,
            word_score=word_score,
            beam_size_token=self.beam_size_token,
            _shared=self,
        )

    def settings(self) -> dict:
        """The decoder's options, for results files."""
        out = {
            "decoder": self.name,
            "beam_size": self.beam_size,
            "beam_threshold": self.beam_threshold,
            "lm": self.lm_path,
        }
        if self.lm_path is not None:
            out.update(lm_weight=self.lm_weight, word_score=self.word_score)
        if self.lexicon_file is not None:
            out["lexicon"] = self.lexicon_file
        if self.lexicon is not None:
            out.update(lexicon_words=len(self.lexicon), lexicon_skipped=self.lexicon.skipped_words)
        return out

    def decode(self, log_probs: torch.Tensor, lengths: torch.Tensor | None = None) -> list[Hypothesis]:
        """Decode a batch.

        Args:
            log_probs: `(batch, frames, vocab)` log-probabilities.
            lengths: `(batch,)` valid frames per utterance.
        """
        emissions = log_probs.detach().float().cpu().contiguous()
        batch, frames, vocab = emissions.shape
        if vocab != len(self.tokens):
            raise ValueError(f"log_probs have {vocab} classes but the tokenizer has {len(self.tokens)} tokens")
        if lengths is None:
            lengths = torch.full((batch,), frames, dtype=torch.int32)
        lengths = lengths.detach().cpu().to(torch.int32)
        results = self._decoder(emissions, lengths)
        hyps = []
        for b, nbest in enumerate(results):
            n = int(lengths[b])
            if not nbest:
                hyps.append(Hypothesis(text="", tokens=[], token_frames=[], score=float("-inf")))
                continue
            best = nbest[0]
            # flashlight pads the frame sequence with one separator frame on each side, so its
            # timesteps are one ahead of our frames.
            frames_b = [min(max(int(t) - 1, 0), max(n - 1, 0)) for t in best.timesteps.tolist()]
            tokens, token_frames = _strip_separators(best.tokens.tolist(), frames_b, self.space_id)
            text = " ".join(best.words) if self.lexicon is not None else _text_from_tokens(tokens, self.tokens)
            hyps.append(
                Hypothesis(
                    text=text,
                    tokens=tokens,
                    token_frames=token_frames,
                    score=float(best.score),
                    words=word_spans(tokens, token_frames, self.tokens, emissions[b]),
                )
            )
        return hyps




def build_decoder(options: DecodingOptions, tokenizer, seconds_per_frame: float):
    """The decoder `options` describe: a `GreedyDecoder` or a `BeamSearchDecoder`.

    Args:
        options: which decoder and its settings.
        tokenizer: `asr.text.Tokenizer` (or its token list).
        seconds_per_frame: the model's output frame period (seconds), for the greedy word pause.
    """
    if options.decoder == "greedy":
        pause = word_pause_frames(seconds_per_frame, options.word_pause) if options.word_pause > 0 else 0
        return GreedyDecoder(tokenizer, word_pause_frames=pause)
    return BeamSearchDecoder(tokenizer, beam_size=options.beam_size, beam_threshold=options.beam_threshold,
                             lm=options.lm, lm_weight=options.lm_weight, word_score=options.word_score,
                             lexicon=options.lexicon)


# --- KenLM files ----------------------------------------------------------------------------------

_KENLM_MAGIC = b"mmap lm http://kheafield.com/code"  # how every KenLM binary file begins


def _lm_format(path: str | os.PathLike) -> str:
    """"arpa" (plain or gzip) or "binary" (KenLM); DataError naming the file for anything else."""
    from asr.lm import is_arpa

    if is_arpa(path):
        return "arpa"
    with open(path, "rb") as f:
        if f.read(len(_KENLM_MAGIC)) == _KENLM_MAGIC:
            return "binary"
    raise DataError(f"{path}: not a language model: neither ARPA (no \\data\\ header) nor a KenLM binary")


def _plain_arpa(path: str | os.PathLike, workdir: Path) -> Path:
    """The ARPA file itself, or a decompressed copy in `workdir` (KenLM reads plain ARPA only)."""
    from asr.lm import _is_gzip

    if not _is_gzip(path):
        return Path(path)
    plain = workdir / "lm.arpa"
    with gzip.open(path, "rb") as src, open(plain, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return plain


# What KenLM writes on stderr while it reads an ARPA file, every time: dropped. Anything else it
# writes (e.g. "The ARPA file is missing <unk>") is passed on, prefixed with the LM's name.
_KENLM_CHATTER = re.compile(r"^(Loading the LM will be faster if you build a binary file\.|Reading .*|[-0-9*]*)$")


def _load_kenlm(lm: str | os.PathLike, lm_file: Path, lexicon_path: str, is_arpa: bool):
    """flashlight's KenLM over `lm_file`, its loading chatter kept off the terminal.

    KenLM writes from C++ to file descriptor 2, so that descriptor (not `sys.stderr`) is sent to
    a temporary file while it loads. A file KenLM refuses is a DataError naming `lm` and, for an
    ARPA file, the line KenLM stopped at.
    """
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import create_word_dict, load_words

    word_dict = create_word_dict(load_words(lexicon_path))
    sys.stderr.flush()
    saved = os.dup(2)
    error = None
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            model = KenLM(str(lm_file), word_dict)
        except Exception as e:  # KenLM raises a bare RuntimeError on a corrupt file
            error = e
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        said = capture.read().decode("utf-8", "replace")
    if error is not None:
        raise DataError(_kenlm_error(lm, lm_file, str(error), is_arpa)) from None
    for line in said.splitlines():
        line = line.strip().strip("*").strip()
        if line and not _KENLM_CHATTER.match(line):
            print(f"{lm}: {line}", file=sys.stderr)
    return model


def _kenlm_error(lm: str | os.PathLike, lm_file: Path, message: str, is_arpa: bool) -> str:
    """One line from a KenLM exception: `LM:LINE: not a valid ARPA LM: reason` for ARPA files.

    KenLM's message is `SOURCE:LINE in FUNCTION threw XException because `CONDITION'.` then the
    reason, ending with ` Byte: N` (the offset in the plain ARPA file) when it knows where.
    """
    lines = message.strip().splitlines()
    reason = " ".join(lines[1:] if len(lines) > 1 and " threw " in lines[0] else lines).strip()
    offset = re.search(r"\s*Byte: (\d+)$", reason)
    reason = reason[: offset.start()] if offset else reason
    if not is_arpa:
        return f"{lm}: cannot load the KenLM binary LM: {reason}"
    where = f"{lm}:{_line_at(lm_file, int(offset.group(1)))}" if offset else f"{lm}"
    return f"{where}: not a valid ARPA LM: {reason}"


def _line_at(path: Path, offset: int) -> int:
    """1-based number of the line holding byte `offset` of `path`."""
    newlines = 0
    with open(path, "rb") as f:
        while offset > 0:
            block = f.read(min(offset, 1 << 20))
            if not block:
                break
            newlines += block.count(b"\n")
            offset -= len(block)
    return newlines + 1
