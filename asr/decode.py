"""CTC decoding: greedy and beam search (with or without a word n-gram LM) behind one interface.

Every decoder takes log-probabilities `(batch, frames, vocab)` and their lengths `(batch,)` and
returns one `Hypothesis` per utterance: the text, the emitted tokens with the output frame of
each, and word spans (frames) from which a caller derives word times with the model's
`seconds_per_frame`.

Tokens follow `asr.text`: blank `"<blank>"` is id 0 and `"|"` separates words.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from asr.errors import ConfigError, DataError
from asr.fileio import atomic_write_text

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


# A pause this long between two characters ends a word in greedy decoding. Inside a word CTC
# emits characters well under 0.3 s apart (at most 0.24 s on the demo's test set); a model trained
# on single sentences often emits no "|" across the silence between two sentences, which would
# otherwise glue their words together ("BEACH GEORGE" -> "BEACHGEORGE").
WORD_PAUSE_S = 0.5


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
    word (see WORD_PAUSE_S; `asr decode` and `asr transcribe` set it from the model's frame rate).
    """

    name = "greedy"

    def __init__(self, tokenizer, word_pause_frames: int = 0) -> None:
        self.tokens = _token_list(tokenizer)
        self.word_pause_frames = int(word_pause_frames)
        self.space_id = self.tokens.index(SPACE_TOKEN) if SPACE_TOKEN in self.tokens else None

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
        valid = torch.arange(frames, device=log_probs.device)[None, :] < lengths[:, None]
        best_scores = (log_probs.max(dim=-1).values * valid).sum(dim=1).tolist()  # best-path log-prob
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
        beam_size: int = 50,
        beam_threshold: float = 25.0,
        lm: str | os.PathLike | None = None,
        lm_weight: float = 0.5,
        word_score: float = 0.0,
        lexicon=None,
        beam_size_token: int | None = None,
        _shared: "BeamSearchDecoder | None" = None,
    ) -> None:
        """
        Args:
            tokenizer: `asr.text.Tokenizer` (or its token list).
            beam_size: hypotheses kept after each frame.
            beam_threshold: hypotheses scoring more than this below the best are pruned.
            lm: word n-gram LM, ARPA (`.arpa`, `.arpa.gz`) or KenLM binary; None for no LM.
            lm_weight: weight of the LM log-probability (natural log scale of KenLM's log10 * ln 10).
            word_score: score added per word (positive favours more words).
            lexicon: an `asr.lm.Lexicon`, a lexicon/word-list file (first field of each line is a
                word), or None (built from the ARPA unigrams when `lm` is given).
            beam_size_token: tokens considered per frame; None for all.
        """
        from torchaudio.models.decoder import ctc_decoder

        self._ctc_decoder = ctc_decoder
        self.tokens = _token_list(tokenizer)
        if self.tokens[0] != "<blank>" or SPACE_TOKEN not in self.tokens:
            raise ValueError(f"token list must start with '<blank>' and contain {SPACE_TOKEN!r}")
        self.space_id = self.tokens.index(SPACE_TOKEN)
        self.beam_size = int(beam_size)
        self.beam_threshold = float(beam_threshold)
        self.beam_size_token = beam_size_token
        self.lm_weight = float(lm_weight)
        self.word_score = float(word_score)
        if _shared is not None:  # same LM and lexicon, other weights: reuse the loaded LM
            self.lm_path, self.lexicon, self._lexicon_path = _shared.lm_path, _shared.lexicon, _shared._lexicon_path
            self._workdir, self._kenlm = _shared._workdir, _shared._kenlm
        else:
            self._setup(lm, lexicon)
        self._decoder = self._make_decoder()

    def _setup(self, lm, lexicon) -> None:
        from asr import lm as lm_module

        self.lm_path = str(lm) if lm is not None else None
        self.lexicon = None
        self._lexicon_path = None
        self._kenlm = None
        self._workdir = None
        if lm is None and lexicon is None:
            return
        self._workdir = tempfile.TemporaryDirectory(prefix="asr-decode-")
        workdir = Path(self._workdir.name)
        if isinstance(lexicon, lm_module.Lexicon):
            self.lexicon = lexicon
        else:
            if lexicon is not None:
                words = lm_module.read_word_list(lexicon)
            elif lm_module.is_arpa(lm):
                words = lm_module.read_arpa_vocabulary(lm)
            else:
                raise DataError(f"{lm}: a KenLM binary LM needs a lexicon or word list (lexicon=...)")
            self.lexicon = lm_module.build_lexicon(words, self.tokens)
        if len(self.lexicon) == 0:
            raise DataError(f"{lm or lexicon}: no word of the LM can be spelled with the tokenizer ({self.lexicon.report()})")
        self._lexicon_path = str(workdir / "lexicon.txt")
        self.lexicon.write(self._lexicon_path)
        if lm is not None:
            from flashlight.lib.text.decoder.kenlm import KenLM
            from flashlight.lib.text.dictionary import create_word_dict, load_words

            lm_file = Path(lm)
            if lm_module._is_gzip(lm_file):  # KenLM reads plain ARPA or its binary only
                lm_file = workdir / "lm.arpa"
                with gzip.open(lm, "rb") as src, open(lm_file, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            # Load the LM once with the same word dictionary ctc_decoder builds from the lexicon
            # file, so that re-weighting (tuning) does not reload it.
            word_dict = create_word_dict(load_words(self._lexicon_path))
            try:
                self._kenlm = KenLM(str(lm_file), word_dict)
            except Exception as e:  # KenLM raises a bare RuntimeError on a corrupt file
                raise DataError(f"{lm}: cannot load language model: {e}") from None

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
            sil_token=SPACE_TOKEN,
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


def build_decoder(name: str, tokenizer, **options):
    """A decoder by name: "greedy" (option: word_pause_frames) or "beam" (options of
    `BeamSearchDecoder`; word_pause_frames is ignored there).

    Options that are None are left at their defaults.
    """
    options = {k: v for k, v in options.items() if v is not None}
    pause = options.pop("word_pause_frames", 0)
    if name == "greedy":
        if options:
            raise ConfigError(f"the greedy decoder takes no options (got {', '.join(sorted(options))}); use --decoder beam")
        return GreedyDecoder(tokenizer, word_pause_frames=pause)
    if name == "beam":
        return BeamSearchDecoder(tokenizer, **options)
    raise ConfigError(f"unknown decoder {name!r}: choose 'greedy' or 'beam'")


# --- decoding a manifest -------------------------------------------------------------------------

DEFAULT_TUNE_LM_WEIGHTS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)  # grid searched by --tune
DEFAULT_TUNE_WORD_SCORES = (-1.0, 0.0, 1.0, 2.0)


def load_tuned(path: str | os.PathLike) -> dict:
    """LM weight and word score from a `tuned.json` or a `results.json` written by `--tune`.

    Returns {"lm_weight": float, "word_score": float}; DataError naming the file otherwise.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a JSON file: {e}") from None
    tuned = data.get("tuned", data) if isinstance(data, dict) else None
    if not isinstance(tuned, dict) or "lm_weight" not in tuned or "word_score" not in tuned:
        raise DataError(f"{path}: no tuned 'lm_weight' and 'word_score' (write one with asr decode --tune)")
    return {"lm_weight": float(tuned["lm_weight"]), "word_score": float(tuned["word_score"])}


def lm_weights(tuned_from: str | os.PathLike | None, lm_weight: float | None,
               word_score: float | None) -> tuple[float | None, float | None]:
    """(lm_weight, word_score): those of a `--tune` run when `tuned_from` names one, else as given.

    ConfigError when both a tuned file and explicit weights are given.
    """
    if tuned_from is None:
        return lm_weight, word_score
    if lm_weight is not None or word_score is not None:
        raise ConfigError("give either --tuned-from or --lm-weight/--word-score, not both")
    tuned = load_tuned(tuned_from)
    return tuned["lm_weight"], tuned["word_score"]


def decoder_label(name: str, lm: str | os.PathLike | None) -> str:
    """Folder name of a decoder's results: "greedy", "beam", or "beam-<LM file stem>"."""
    if name != "beam" or lm is None:
        return name
    stem = Path(lm).name
    for suffix in (".gz", ".arpa", ".bin", ".binary", ".klm"):
        stem = stem.removesuffix(suffix)
    return f"beam-{stem}"


def _decode_all(decoder, emissions: list[tuple[torch.Tensor, torch.Tensor]]) -> list[Hypothesis]:
    hyps: list[Hypothesis] = []
    for log_probs, lengths in emissions:
        hyps.extend(decoder.decode(log_probs, lengths))
    return hyps


def tune_weights(
    decoder: BeamSearchDecoder,
    emissions: list[tuple[torch.Tensor, torch.Tensor]],
    refs: Sequence[str],
    lm_weights: Sequence[float] = DEFAULT_TUNE_LM_WEIGHTS,
    word_scores: Sequence[float] = DEFAULT_TUNE_WORD_SCORES,
) -> tuple[dict, list[dict], list[Hypothesis]]:
    """Grid search of LM weight and word score on log-probs computed once.

    Args:
        decoder: a beam decoder with an LM (its LM is loaded once and shared).
        emissions: batches of (log_probs (B, T, V), lengths (B,)), in the order of `refs`.
        refs: reference texts, normalised.

    Returns:
        (best {"lm_weight", "word_score", "wer"}, the grid [{"lm_weight", "word_score", "wer"}],
        the hypotheses of the best point). Ties go to the first point in grid order.
    """
    from asr.score import wer_cer

    if decoder.lm_path is None:
        raise ConfigError("--tune needs a beam decoder with an LM (--decoder beam --lm LM)")
    grid: list[dict] = []
    best: dict | None = None
    best_hyps: list[Hypothesis] = []
    points = [(w, s) for w in lm_weights for s in word_scores]
    for lm_weight, word_score in tqdm(points, desc="tune", unit="point", disable=None):
        hyps = _decode_all(decoder.with_weights(lm_weight, word_score), emissions)
        wer, _ = wer_cer(refs, [h.text for h in hyps])
        grid.append({"lm_weight": lm_weight, "word_score": word_score, "wer": 100 * wer})
        if best is None or grid[-1]["wer"] < best["wer"]:
            best, best_hyps = grid[-1], hyps
    return dict(best), grid, best_hyps


def decode_manifest(
    exp: str | os.PathLike,
    manifest: str | os.PathLike,
    decoder: str = "greedy",
    checkpoint: str | os.PathLike | None = None,
    set_name: str | None = None,
    lm: str | os.PathLike | None = None,
    lm_weight: float | None = None,
    word_score: float | None = None,
    beam_size: int | None = None,
    beam_threshold: float | None = None,
    lexicon: str | os.PathLike | None = None,
    tune: bool = False,
    tuned_from: str | os.PathLike | None = None,
    tune_lm_weights: Sequence[float] = DEFAULT_TUNE_LM_WEIGHTS,
    tune_word_scores: Sequence[float] = DEFAULT_TUNE_WORD_SCORES,
    max_duration: float = 200.0,
    num_workers: int = 0,
    device: str | None = None,
) -> dict:
    """Decode every utterance of a manifest with a trained model and score it.

    Writes under `exp/decode/<set>/<decoder label>/` (see `decoder_label`), each atomically:
    `hyp.txt`, `ref.txt` (Kaldi `UTT-ID WORDS`), `report.txt` (see `asr.score.format_report`),
    `results.json` (WER, CER, SER, counts, 95% CI, decoder settings, real-time factors) and,
    with `tune`, `tuned.json` (the best LM weight and word score, reusable with `tuned_from`).

    Args:
        exp: experiment folder (outputs go there; the checkpoint too unless `checkpoint`).
        manifest: JSONL manifest to decode.
        decoder: "greedy" or "beam".
        checkpoint: a `.pt` file; default: `asr.checkpoint.resolve_checkpoint(exp)`.
        set_name: name of the set in the output path; default: the manifest's file stem.
        lm, lm_weight, word_score, beam_size, beam_threshold, lexicon: beam search options.
        tune: grid-search LM weight and word score on this manifest (log-probs computed once).
        tuned_from: take LM weight and word score from a previous `--tune` (tuned.json or results.json).
        max_duration: padded seconds of audio per model batch.
        num_workers: audio loading worker processes.
        device: "cpu", "cuda", ...; default CUDA when available.

    Returns:
        the dict written to results.json.
    """
    from asr.checkpoint import InferenceModel
    from asr.data.dataset import make_loader
    from asr.data.manifest import read_manifest
    from asr.score import format_report, score_texts, write_kaldi_text

    lm_weight, word_score = lm_weights(tuned_from, lm_weight, word_score)
    if (tune or tuned_from is not None) and (decoder != "beam" or lm is None):
        raise ConfigError("--tune and --tuned-from need --decoder beam with --lm")
    records = read_manifest(manifest)
    if not records:
        raise DataError(f"{manifest}: manifest has no utterances")
    set_name = set_name or Path(manifest).name.removesuffix(".gz").removesuffix(".jsonl")
    model = InferenceModel.from_checkpoint(checkpoint if checkpoint is not None else exp, device=device)
    dec = build_decoder(decoder, model.tokenizer, lm=lm, lm_weight=lm_weight, word_score=word_score,
                        beam_size=beam_size, beam_threshold=beam_threshold, lexicon=lexicon,
                        word_pause_frames=word_pause_frames(model.seconds_per_frame))
    out_dir = Path(exp) / "decode" / set_name / decoder_label(decoder, lm)

    loader = make_loader(records, model.tokenizer, max_duration, shuffle=False, seed=0,
                         num_workers=num_workers, sample_rate=model.sample_rate)
    by_id = {r["id"]: r for r in records}
    ids: list[str] = []
    emissions: list[tuple[torch.Tensor, torch.Tensor]] = []
    hyps: list[Hypothesis] = []
    model_seconds = decode_seconds = audio_seconds = 0.0
    for batch in tqdm(loader, desc=f"decode {set_name}", unit="batch", disable=None):
        start = time.perf_counter()
        log_probs, out_lengths = model(batch.waveforms, batch.wave_lengths)
        middle = time.perf_counter()
        if not tune:
            hyps.extend(dec.decode(log_probs, out_lengths))
        end = time.perf_counter()
        model_seconds += middle - start
        decode_seconds += end - middle
        audio_seconds += float(batch.wave_lengths.sum()) / model.sample_rate
        ids.extend(batch.ids)
        if tune:
            emissions.append((log_probs, out_lengths))
    refs = [by_id[u]["text"] for u in ids]
    tuned = grid = None
    if tune:
        start = time.perf_counter()
        tuned, grid, hyps = tune_weights(dec, emissions, [" ".join(r.split()) for r in refs],
                                         tune_lm_weights, tune_word_scores)
        decode_seconds = (time.perf_counter() - start) / len(grid)  # one decoding pass
        dec = dec.with_weights(tuned["lm_weight"], tuned["word_score"])

    order = sorted(range(len(ids)), key=lambda i: ids[i])
    ids = [ids[i] for i in order]
    refs = [refs[i] for i in order]
    hyp_texts = [hyps[i].text for i in order]
    result = score_texts(ids, refs, hyp_texts)
    summary = result.summary()
    results = {
        "set": set_name,
        "manifest": str(manifest),
        "checkpoint": str(model.path),
        "decoder_settings": dec.settings(),
        **summary,
        "audio_seconds": audio_seconds,
        "rtf": (model_seconds + decode_seconds) / audio_seconds if audio_seconds else None,
        "rtf_model": model_seconds / audio_seconds if audio_seconds else None,
        "rtf_decoder": decode_seconds / audio_seconds if audio_seconds else None,
        "device": str(model.device),
    }
    if tuned_from is not None:
        results["tuned_from"] = str(tuned_from)
    if tune:
        results["tuned"] = {"lm_weight": tuned["lm_weight"], "word_score": tuned["word_score"], "wer": tuned["wer"]}
        results["tune_grid"] = grid
    header = (f"set {set_name}  manifest {manifest}\ncheckpoint {model.path}\n"
              f"decoder {json.dumps(dec.settings())}\n")
    if getattr(dec, "lexicon", None) is not None and dec.lexicon.skipped_words:
        header += dec.lexicon.report() + "\n"
    write_kaldi_text(out_dir / "hyp.txt", list(zip(ids, hyp_texts)))
    write_kaldi_text(out_dir / "ref.txt", list(zip(ids, refs)))
    atomic_write_text(out_dir / "report.txt", header + format_report(result))
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    if tune:
        tuned_out = {"lm": str(lm), "lm_weight": tuned["lm_weight"], "word_score": tuned["word_score"],
                     "wer": tuned["wer"], "set": set_name, "checkpoint": str(model.path)}
        atomic_write_text(out_dir / "tuned.json", json.dumps(tuned_out, indent=2) + "\n")
    results["out_dir"] = str(out_dir)
    return results
