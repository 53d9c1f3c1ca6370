"""Word and character error rates, the reports a person reads, and tests that compare systems.

Alignment follows NIST sclite exactly (and so its S/D/I counts): a dynamic programme over word
costs correct 0, substitution 4, insertion 3, deletion 3 (sclite's defaults), traced back from
the ends of both texts; where two paths cost the same, the step taken back is a substitution or
match first, then an insertion, then a deletion. So `long primer` -> `primer assert` aligns as
`(long->*) primer (*->assert)` (cost 6) rather than two substitutions (cost 8); the vendored
sclite outputs under tests/data/sclite/ check this. Words compare exactly after the normaliser,
so `--normalize none` is case-sensitive (sclite's `-s`).

WER = (substitutions + deletions + insertions) / reference words, summed over the corpus (not
averaged over utterances). Both sides go through the same named normaliser
(`asr.text.get_normalizer`: librispeech, english, none). An empty reference adds no reference
words, and every word hypothesised for it counts as an insertion. CER is the edit distance over
characters, spaces between words included (jiwer's convention).

Files: Kaldi text (`UTT-ID WORDS`), sclite `trn` (`WORDS (UTT-ID)`), and an `stm` reference with
a `ctm` hypothesis, matched by file and channel, words in time order (no time-mediated
alignment: one scoring unit per file and channel).

Comparisons: a paired bootstrap over utterances (P(A better), P(B better), P(equal)) and sclite's
matched-pairs sentence-segment word error test (MAPSSWE, as `sc_stats -t mapsswe`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import jiwer
import numpy as np

from asr.errors import ConfigError, DataError
from asr.fileio import atomic_open, atomic_write_text, read_text
from asr.text import NORMALIZERS, get_normalizer, squeeze_spaces

COST_SUB = 4  # sclite's default word costs; a match costs 0
COST_INS = 3
COST_DEL = 3
MAPSSWE_BOUNDARY_WORDS = 2  # sc_stats: segments are separated by >= 2 words both systems got right
FORMATS = ("auto", "kaldi", "trn", "stm", "ctm")  # transcript file formats
IGNORE_SEGMENT = "IGNORE_TIME_SEGMENT_IN_SCORING"  # stm: a stretch of audio that is not scored


def _ratio(errors: int, total: int) -> float:
    """errors / total, with an empty reference set giving 0.0 (no errors) or inf (errors)."""
    if total:
        return errors / total
    return 0.0 if errors == 0 else float("inf")


_squeeze = squeeze_spaces


def _normalizer(normalize: bool | str) -> tuple[str, Callable[[str], str]]:
    """(name, function) of a normaliser given by name, or True (librispeech) / False (none)."""
    if isinstance(normalize, bool):
        normalize = "librispeech" if normalize else "none"
    return normalize, get_normalizer(normalize)


def wer_cer(refs: Sequence[str], hyps: Sequence[str]) -> tuple[float, float]:
    """Corpus WER and CER, as fractions, of already normalised texts (whitespace is squeezed).

    The word errors are those of the sclite alignment (`align_words`); as alignments of minimal
    sclite cost, their total can exceed the plain Levenshtein distance by a little.

    Args:
        refs: reference transcripts, one per utterance.
        hyps: hypotheses, aligned with `refs`.
    """
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        return 0.0, 0.0
    result = score_texts([str(i) for i in range(len(refs))], refs, hyps, normalize=False)
    return result.wer, result.cer


# --- alignment -----------------------------------------------------------------------------------


def _cost_matrix(ref: Sequence[str], hyp: Sequence[str]) -> np.ndarray:
    """(len(ref) + 1, len(hyp) + 1) cheapest cost of aligning each pair of prefixes."""
    ids: dict[str, int] = {}
    ref_ids = np.array([ids.setdefault(w, len(ids)) for w in ref], dtype=np.int64)
    hyp_ids = np.array([ids.setdefault(w, len(ids)) for w in hyp], dtype=np.int64)
    ramp = np.arange(len(hyp) + 1, dtype=np.int64) * COST_INS
    cost = np.empty((len(ref) + 1, len(hyp) + 1), dtype=np.int64)
    cost[0] = ramp
    best = np.empty(len(hyp) + 1, dtype=np.int64)
    for i in range(1, len(ref) + 1):
        # best[j]: the cheaper of a diagonal step and a deletion into (i, j); an insertion run
        # then adds COST_INS per word: cost[i, j] = min over k <= j of best[k] + COST_INS (j - k).
        best[0] = cost[i - 1, 0] + COST_DEL
        np.minimum(cost[i - 1, :-1] + np.where(hyp_ids == ref_ids[i - 1], 0, COST_SUB),
                   cost[i - 1, 1:] + COST_DEL, out=best[1:])
        cost[i] = np.minimum.accumulate(best - ramp) + ramp
    return cost


def align_words(ref: Sequence[str], hyp: Sequence[str]) -> list[tuple[str, str | None, str | None]]:
    """sclite's alignment of two word sequences.

    Returns:
        one (op, ref word, hyp word) per alignment column, op "C" (correct), "S", "D" (hyp word
        None) or "I" (ref word None), in text order.
    """
    cost = _cost_matrix(ref, hyp).tolist()
    columns = []
    i, j = len(ref), len(hyp)
    while i or j:
        here = cost[i][j]
        if i and j and here == cost[i - 1][j - 1] + (0 if ref[i - 1] == hyp[j - 1] else COST_SUB):
            columns.append(("C" if ref[i - 1] == hyp[j - 1] else "S", ref[i - 1], hyp[j - 1]))
            i, j = i - 1, j - 1
        elif j and here == cost[i][j - 1] + COST_INS:
            columns.append(("I", None, hyp[j - 1]))
            j -= 1
        else:
            columns.append(("D", ref[i - 1], None))
            i -= 1
    columns.reverse()
    return columns


def aligned_text(columns: Sequence[tuple[str, str | None, str | None]]) -> str:
    """One line a person reads: `the (cat->hat) sat (*->down)`."""
    return " ".join(r if op == "C" else f"({r or '*'}->{h or '*'})" for op, r, h in columns)


# --- scoring texts -------------------------------------------------------------------------------


def speaker_of(utterance_id: str) -> str:
    """Speaker of an utterance id when nothing names it: the part before the first '-'
    (LibriSpeech `1089-134686-0000`), else before the first '_' (sclite `spk_utt`), else the id."""
    for separator in "-_":
        if separator in utterance_id:
            return utterance_id.split(separator, 1)[0]
    return utterance_id


SPEAKERS_FROM_ID = "utterance id prefix (before the first '-', else '_')"


@dataclass
class ScoreResult:
    """Per-utterance and total error counts of one system against the references."""

    ids: list[str]  # utterance ids, reference order
    refs: list[str]  # normalised references
    hyps: list[str]  # normalised hypotheses
    ref_words: np.ndarray  # (utterances,) reference words
    substitutions: np.ndarray  # (utterances,) word substitutions
    deletions: np.ndarray  # (utterances,) word deletions
    insertions: np.ndarray  # (utterances,) word insertions
    ref_chars: np.ndarray  # (utterances,) reference characters (spaces between words included)
    char_errors: np.ndarray  # (utterances,) character edit errors
    aligned: list[str]  # per utterance, "the (cat->hat) sat (*->down)"
    sub_pairs: Counter = field(default_factory=Counter)  # (ref word, hyp word) -> count
    deleted: Counter = field(default_factory=Counter)  # ref word -> count
    inserted: Counter = field(default_factory=Counter)  # hyp word -> count
    ignored_hyp_ids: list[str] = field(default_factory=list)  # hypotheses without a reference
    missing_hyp_ids: list[str] = field(default_factory=list)  # references scored with an empty hypothesis
    alignments: list[list] = field(default_factory=list)  # per utterance, align_words' columns
    speakers: list[str] = field(default_factory=list)  # per utterance
    speaker_source: str = SPEAKERS_FROM_ID  # where `speakers` came from, for the report
    normalizer: str = "librispeech"  # the normaliser applied to both sides

    @property
    def word_errors(self) -> np.ndarray:
        """(utterances,) S + D + I per utterance."""
        return self.substitutions + self.deletions + self.insertions

    @property
    def correct(self) -> np.ndarray:
        """(utterances,) reference words recognised correctly."""
        return self.ref_words - self.substitutions - self.deletions

    @property
    def wer(self) -> float:
        """Corpus WER, a fraction."""
        return _ratio(int(self.word_errors.sum()), int(self.ref_words.sum()))

    @property
    def cer(self) -> float:
        """Corpus CER, a fraction."""
        return _ratio(int(self.char_errors.sum()), int(self.ref_chars.sum()))

    @property
    def ser(self) -> float:
        """Sentence error rate: the fraction of utterances with at least one word error."""
        return float((self.word_errors > 0).mean()) if len(self.ids) else 0.0

    def summary(self, bootstrap_samples: int = 1000, seed: int = 0) -> dict:
        """Totals as a plain dict (for results.json): rates in percent, counts, 95% CI of WER,
        the normaliser and where the speakers came from."""
        low, high = bootstrap_wer_ci(self.word_errors, self.ref_words, bootstrap_samples, seed=seed)
        return {
            "wer": 100 * self.wer,
            "cer": 100 * self.cer,
            "ser": 100 * self.ser,
            "wer_ci95": [100 * low, 100 * high],
            "utterances": len(self.ids),
            "ref_words": int(self.ref_words.sum()),
            "word_errors": int(self.word_errors.sum()),
            "substitutions": int(self.substitutions.sum()),
            "deletions": int(self.deletions.sum()),
            "insertions": int(self.insertions.sum()),
            "ref_chars": int(self.ref_chars.sum()),
            "char_errors": int(self.char_errors.sum()),
            "missing_hypotheses": len(self.missing_hyp_ids),
            "ignored_hypotheses": len(self.ignored_hyp_ids),
            "normalizer": self.normalizer,
            "speakers_from": self.speaker_source,
        }


def _char_errors(refs: list[str], hyps: list[str]) -> tuple[list[int], list[int]]:
    """Per utterance (reference characters, character edit errors), by jiwer."""
    chars = jiwer.process_characters(refs, hyps)
    lengths = [len(r) for r in chars.references]
    errors = [sum(max(c.ref_end_idx - c.ref_start_idx, c.hyp_end_idx - c.hyp_start_idx)
                  for c in alignment if c.type != "equal") for alignment in chars.alignments]
    return lengths, errors


def score_texts(
    ids: Sequence[str],
    refs: Sequence[str],
    hyps: Sequence[str],
    normalize: bool | str = True,
    speakers: Sequence[str] | None = None,
    speaker_source: str | None = None,
) -> ScoreResult:
    """Align hypotheses with references word by word (sclite) and character by character.

    Args:
        ids: utterance ids.
        refs: reference texts.
        hyps: hypothesis texts, aligned with `refs`.
        normalize: a normaliser name (`asr.text.NORMALIZERS`) applied to both sides; True means
            "librispeech", False "none" (only whitespace squeezed).
        speakers: speaker of each utterance; default `speaker_of(id)`.
        speaker_source: where `speakers` came from, named in the report.
    """
    if not (len(ids) == len(refs) == len(hyps)):
        raise ValueError("ids, refs and hyps must have the same length")
    if speakers is not None and len(speakers) != len(ids):
        raise ValueError("speakers must have one entry per utterance")
    name, norm = _normalizer(normalize)
    refs = [norm(r) for r in refs]
    hyps = [norm(h) for h in hyps]
    n = len(ids)
    counts = np.zeros((6, n), dtype=np.int64)  # ref words, S, D, I, ref chars, char errors
    result = ScoreResult(
        ids=list(ids), refs=refs, hyps=hyps, ref_words=counts[0], substitutions=counts[1], deletions=counts[2],
        insertions=counts[3], ref_chars=counts[4], char_errors=counts[5], aligned=[],
        speakers=list(speakers) if speakers is not None else [speaker_of(u) for u in ids],
        speaker_source=speaker_source or (SPEAKERS_FROM_ID if speakers is None else "given"),
        normalizer=name,
    )
    for i, (ref, hyp) in enumerate(zip(refs, hyps)):
        columns = align_words(ref.split(), hyp.split())
        result.alignments.append(columns)
        result.aligned.append(aligned_text(columns))
        ops = Counter(op for op, _, _ in columns)
        counts[:4, i] = (ops["C"] + ops["S"] + ops["D"], ops["S"], ops["D"], ops["I"])
        result.sub_pairs.update((r, h) for op, r, h in columns if op == "S")
        result.deleted.update(r for op, r, _ in columns if op == "D")
        result.inserted.update(h for op, _, h in columns if op == "I")
    if n:
        counts[4], counts[5] = _char_errors(refs, hyps)
    return result


# --- reading transcripts -------------------------------------------------------------------------


@dataclass(frozen=True)
class StmSegment:
    """One line of an stm reference."""

    file: str
    channel: str
    speaker: str
    begin: float  # seconds
    end: float  # seconds
    text: str
    line: int  # line number in the file, for messages


@dataclass(frozen=True)
class CtmWord:
    """One line of a ctm hypothesis."""

    file: str
    channel: str
    begin: float  # seconds
    duration: float  # seconds
    word: str


def _content_lines(path: Path, comments: bool = False) -> Iterator[tuple[int, str]]:
    """(line number, stripped line) of the non-empty lines; `;;` comment lines skipped when
    `comments` (stm, ctm)."""
    for line_no, line in enumerate(read_text(path, "transcript file").splitlines(), 1):
        line = line.strip()
        if line and not (comments and line.startswith(";;")):
            yield line_no, line


def read_kaldi_text(path: str | os.PathLike) -> dict[str, str]:
    """Read a Kaldi `text` file: `UTT-ID WORDS...` per line (an id alone means an empty text).

    Raises DataError naming the file and line on a duplicate id, and naming the file when it is
    missing.
    """
    path = Path(path)
    texts: dict[str, str] = {}
    for line_no, line in _content_lines(path):
        parts = line.split(maxsplit=1)
        utt = parts[0]
        if utt in texts:
            raise DataError(f"{path}:{line_no}: utterance id {utt!r} appears twice")
        texts[utt] = parts[1] if len(parts) > 1 else ""
    return texts


def _check_plain_words(path: Path, line_no: int, text: str) -> None:
    """Refuse sclite's reference markup that plain scoring would count as words."""
    for word in text.split():
        if word in ("{", "}", "/") or word.startswith("{"):
            raise DataError(f"{path}:{line_no}: sclite alternations '{{ a / b }}' are not supported")
        if word.startswith("(") and word.endswith(")"):
            raise DataError(f"{path}:{line_no}: optionally deletable words like {word!r} are not supported")


def _trn_line(line: str) -> tuple[str, str] | None:
    """(text, utterance id) of a trn line `WORDS (UTT-ID)`, or None when it has no id."""
    if not line.endswith(")") or "(" not in line:
        return None
    start = line.rfind("(")
    utt = line[start + 1 : -1].strip()
    if not utt or (start > 0 and not line[start - 1].isspace()):
        return None
    return line[:start].strip(), utt


def read_trn(path: str | os.PathLike) -> dict[str, str]:
    """Read an sclite `trn` file: `WORDS (UTT-ID)` per line (no words: an empty text).

    Raises DataError naming the file and line on a line without `(UTT-ID)`, a duplicate id, or
    sclite markup this scorer does not implement (alternations, optionally deletable words).
    """
    path = Path(path)
    texts: dict[str, str] = {}
    for line_no, line in _content_lines(path):
        parsed = _trn_line(line)
        if parsed is None:
            raise DataError(f"{path}:{line_no}: not a trn line 'WORDS (UTT-ID)': {line[:80]!r}")
        text, utt = parsed
        if utt in texts:
            raise DataError(f"{path}:{line_no}: utterance id {utt!r} appears twice")
        _check_plain_words(path, line_no, text)
        texts[utt] = text
    return texts


def _floats(path: Path, line_no: int, fields: Sequence[str], what: str) -> list[float]:
    try:
        values = [float(f) for f in fields]
    except ValueError:
        raise DataError(f"{path}:{line_no}: {what} must be numbers, got {' '.join(fields)!r}") from None
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise DataError(f"{path}:{line_no}: {what} must be finite and not negative, got {' '.join(fields)!r}")
    return values


def read_stm(path: str | os.PathLike) -> list[StmSegment]:
    """Read an stm reference: `FILE CHANNEL SPEAKER BEGIN END [<LABELS>] WORDS...` per line,
    `;;` comments skipped. DataError naming the file and line on a malformed line."""
    path = Path(path)
    segments = []
    for line_no, line in _content_lines(path, comments=True):
        fields = line.split()
        if len(fields) < 5:
            raise DataError(f"{path}:{line_no}: not an stm line 'FILE CHANNEL SPEAKER BEGIN END WORDS': {line[:80]!r}")
        begin, end = _floats(path, line_no, fields[3:5], "BEGIN and END")
        if end < begin:
            raise DataError(f"{path}:{line_no}: segment ends ({end}) before it begins ({begin})")
        words = fields[5:]
        if words and words[0].startswith("<") and words[0].endswith(">"):
            words = words[1:]  # the optional <labels> field
        text = " ".join(words)
        if text != IGNORE_SEGMENT:
            _check_plain_words(path, line_no, text)
        segments.append(StmSegment(fields[0], fields[1], fields[2], begin, end, text, line_no))
    return segments


CTM_CHANNEL = "1"  # the channel field of the CTM files we write (one channel per recording)


def format_ctm(words: Iterable[tuple[str, float, float, str, float]]) -> str:
    """sclite CTM lines `<file> <channel> <start> <duration> <word> <confidence>` of (file,
    start s, end s, word, confidence) tuples, in the order given; times to the millisecond."""
    return "".join(f"{file} {CTM_CHANNEL} {start:.3f} {end - start:.3f} {word} {confidence:.4f}\n"
                   for file, start, end, word, confidence in words)


def read_ctm(path: str | os.PathLike) -> list[CtmWord]:
    """Read a ctm hypothesis: `FILE CHANNEL BEGIN DURATION WORD [CONFIDENCE]` per line, `;;`
    comments skipped. DataError naming the file and line on a malformed line."""
    path = Path(path)
    words = []
    for line_no, line in _content_lines(path, comments=True):
        fields = line.split()
        if len(fields) not in (5, 6):
            raise DataError(f"{path}:{line_no}: not a ctm line 'FILE CHANNEL BEGIN DURATION WORD [CONF]': "
                            f"{line[:80]!r}")
        begin, duration = _floats(path, line_no, fields[2:4], "BEGIN and DURATION")
        if len(fields) == 6 and fields[5] != "NA":
            _floats(path, line_no, fields[5:], "CONFIDENCE")
        words.append(CtmWord(fields[0], fields[1], begin, duration, fields[4]))
    return words


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def detect_format(path: str | os.PathLike) -> str:
    """The format of a transcript file: "trn", "stm" or "ctm" by its extension, else from its
    lines: trn when every line ends with `(UTT-ID)`, ctm when every line reads `FILE CHANNEL
    BEGIN DURATION WORD [CONF]`, else Kaldi text. A file whose lines disagree (some with a trn
    id, some without) is a DataError naming the first line that does not fit."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".trn", ".stm", ".ctm"):
        return suffix[1:]
    lines = list(_content_lines(path))
    trn = [_trn_line(line) is not None for _, line in lines]
    if any(trn) and not all(trn):
        first = trn.index(True)
        odd = next(no for (no, _), is_trn in zip(lines, trn) if not is_trn)
        raise DataError(f"{path}:{odd}: cannot tell the format: line {lines[first][0]} ends with '(UTT-ID)' as in "
                        "sclite trn but this line does not; fix the file or give the format "
                        "(--ref-format/--hyp-format)")
    if lines and all(trn):
        return "trn"
    fields = [line.split() for _, line in lines]
    if fields and all(len(f) in (5, 6) and _is_number(f[2]) and _is_number(f[3]) for f in fields):
        return "ctm"
    return "kaldi"


def _id_list(ids: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(ids[:limit])
    more = f", ... ({len(ids)} in all)" if len(ids) > limit else f" ({len(ids)})"
    return shown + more


def pair_texts(
    refs: dict[str, str],
    hyps: dict[str, str],
    allow_missing: bool = False,
    ref_name: str = "reference",
    hyp_name: str = "hypothesis",
) -> tuple[list[str], list[str], list[str], list[str]]:
    """Match references and hypotheses by utterance id, in reference order.

    Returns (ids, ref_texts, hyp_texts, ignored_hyp_ids). An id with a reference but no
    hypothesis is a DataError unless `allow_missing`; then its hypothesis is empty (all its
    words count as deletions). Hypotheses without a reference are a DataError unless
    `allow_missing`; then they are ignored (listed in `ignored_hyp_ids`).
    """
    missing_hyp = [u for u in refs if u not in hyps]
    missing_ref = [u for u in hyps if u not in refs]
    if not allow_missing and (missing_hyp or missing_ref):
        problems = []
        if missing_hyp:
            problems.append(f"{len(missing_hyp)} utterances of {ref_name} have no hypothesis in {hyp_name}: "
                            f"{_id_list(missing_hyp)}")
        if missing_ref:
            problems.append(f"{len(missing_ref)} utterances of {hyp_name} have no reference in {ref_name}: "
                            f"{_id_list(missing_ref)}")
        raise DataError("; ".join(problems) + " (use --allow-missing to score anyway)")
    ids = list(refs)
    return ids, [refs[u] for u in ids], [hyps.get(u, "") for u in ids], missing_ref


@dataclass
class Transcripts:
    """A transcript file read into scoring units: utterances (Kaldi text, trn) or one unit per
    file and channel (stm, ctm), keyed `FILE-CHANNEL`."""

    path: Path
    format: str  # "kaldi", "trn", "stm" or "ctm"
    texts: dict[str, str]  # unit id -> words (time order for stm/ctm)
    speakers: dict[str, str] = field(default_factory=dict)  # unit id -> speaker (stm only)
    ignored: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # stm: unscored stretches
    words: dict[str, list[CtmWord]] = field(default_factory=dict)  # ctm: unit id -> words in time order


def _stm_units(path: Path) -> Transcripts:
    out = Transcripts(path, "stm", {})
    spk: dict[str, list[str]] = {}
    for seg in sorted(read_stm(path), key=lambda s: (s.file, s.channel, s.begin, s.line)):
        unit = f"{seg.file}-{seg.channel}"
        out.texts.setdefault(unit, "")
        if seg.text == IGNORE_SEGMENT:
            out.ignored.setdefault(unit, []).append((seg.begin, seg.end))
            continue
        out.texts[unit] = f"{out.texts[unit]} {seg.text}".strip()
        if seg.speaker not in spk.setdefault(unit, []):
            spk[unit].append(seg.speaker)
    # A unit holds every segment of a file and channel; with several speakers it is "A+B".
    out.speakers = {unit: "+".join(names) for unit, names in spk.items()}
    return out


def _ctm_units(path: Path) -> Transcripts:
    out = Transcripts(path, "ctm", {})
    # time order within a file and channel; words at the same time keep their order in the file
    for word in sorted(read_ctm(path), key=lambda w: (w.file, w.channel, w.begin)):
        out.words.setdefault(f"{word.file}-{word.channel}", []).append(word)
    out.texts = {unit: " ".join(w.word for w in words) for unit, words in out.words.items()}
    return out


def read_transcripts(path: str | os.PathLike, fmt: str = "auto") -> Transcripts:
    """Read a transcript file in `fmt` (one of `FORMATS`; "auto": `detect_format`)."""
    path = Path(path)
    if fmt not in FORMATS:
        raise ConfigError(f"unknown transcript format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "stm":
        return _stm_units(path)
    if fmt == "ctm":
        return _ctm_units(path)
    return Transcripts(path, fmt, read_trn(path) if fmt == "trn" else read_kaldi_text(path))


def _ctm_against_stm(ref: Transcripts, hyp: Transcripts) -> dict[str, str]:
    """Hypothesis text of each stm unit: its file and channel's ctm words in time order, less
    those whose midpoint falls in an IGNORE_TIME_SEGMENT_IN_SCORING stretch. An stm unit with no
    ctm words has an empty hypothesis (nothing recognised)."""
    texts = {}
    for unit in ref.texts:
        stretches = ref.ignored.get(unit, [])
        kept = [w.word for w in hyp.words.get(unit, [])
                if not any(b <= w.begin + w.duration / 2 <= e for b, e in stretches)]
        texts[unit] = " ".join(kept)
    extra = [u for u in hyp.texts if u not in ref.texts]
    return texts | {u: hyp.texts[u] for u in extra}


def hypotheses_for(ref: Transcripts, hyp: Transcripts) -> dict[str, str]:
    """The hypothesis texts of `hyp`, keyed like `ref`'s units. An stm reference takes a ctm
    hypothesis (matched by file and channel) and nothing else; a ctm needs an stm."""
    if (ref.format == "stm") != (hyp.format == "ctm"):
        raise ConfigError(f"{ref.path} ({ref.format}) and {hyp.path} ({hyp.format}): an stm reference is scored "
                          "against a ctm hypothesis (matched by file and channel), Kaldi text and trn against either")
    return _ctm_against_stm(ref, hyp) if ref.format == "stm" else hyp.texts


def read_utt2spk(path: str | os.PathLike) -> dict[str, str]:
    """Read a Kaldi `utt2spk` file (`UTT-ID SPEAKER` per line); DataError naming file and line."""
    path = Path(path)
    speakers: dict[str, str] = {}
    for line_no, line in _content_lines(path):
        parts = line.split()
        if len(parts) != 2:
            raise DataError(f"{path}:{line_no}: expected 'UTT-ID SPEAKER', got {line[:80]!r}")
        speakers[parts[0]] = parts[1]
    return speakers


def speakers_from_manifest(path: str | os.PathLike) -> dict[str, str]:
    """Utterance id -> the manifest's `speaker` field."""
    from asr.data.manifest import read_manifest

    return {r["id"]: str(r["speaker"]) for r in read_manifest(path)}


def resolve_speakers(ids: Sequence[str], ref: Transcripts, manifest: str | os.PathLike | None = None,
                     utt2spk: str | os.PathLike | None = None) -> tuple[list[str], str]:
    """(speaker per utterance, where they came from): a manifest's `speaker` field, a utt2spk
    file, an stm's speaker field, else the utterance id's prefix (`speaker_of`). An utterance
    that the given manifest or utt2spk does not list is a DataError."""
    if manifest is not None and utt2spk is not None:
        raise ConfigError("give speakers by --manifest or by --utt2spk, not both")
    if manifest is not None or utt2spk is not None:
        source = Path(manifest if manifest is not None else utt2spk)
        table = speakers_from_manifest(source) if manifest is not None else read_utt2spk(source)
        missing = [u for u in ids if u not in table]
        if missing:
            raise DataError(f"{source}: no speaker for {len(missing)} scored utterances: {_id_list(missing)}")
        kind = "manifest" if manifest is not None else "utt2spk"
        return [table[u] for u in ids], f"{kind} {source}"
    if ref.speakers:
        return [ref.speakers.get(u, speaker_of(u)) for u in ids], f"stm {ref.path}"
    return [speaker_of(u) for u in ids], SPEAKERS_FROM_ID


# --- bootstrap -----------------------------------------------------------------------------------


def _resample_counts(n_items: int, n_samples: int, seed: int, chunk: int) -> Iterator[np.ndarray]:
    """Yield (samples, n_items) arrays: how often each item is drawn in each bootstrap resample."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_samples:
        size = min(chunk, n_samples - done)
        yield rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=size).astype(np.float64)
        done += size


def _chunk_for(n_items: int) -> int:
    return max(1, min(1000, 5_000_000 // max(n_items, 1)))  # keep each chunk under ~40 MB


def bootstrap_wer_ci(
    word_errors: np.ndarray,
    ref_words: np.ndarray,
    n_samples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Bootstrap confidence interval of the corpus WER, resampling utterances with replacement.

    Args:
        word_errors: (utterances,) S + D + I per utterance.
        ref_words: (utterances,) reference words per utterance.
        n_samples: bootstrap resamples.
        level: coverage of the interval (0.95 for a 95% interval).
        seed: the resampling is reproducible from it.

    Returns:
        (low, high) WER fractions (percentile interval).
    """
    errors = np.asarray(word_errors, dtype=np.float64)
    words = np.asarray(ref_words, dtype=np.float64)
    if errors.size == 0:
        return 0.0, 0.0
    wers = []
    for counts in _resample_counts(errors.size, n_samples, seed, _chunk_for(errors.size)):
        e = counts @ errors
        w = counts @ words
        wers.append(np.divide(e, w, out=np.where(e > 0, np.inf, 0.0), where=w > 0))
    wers = np.concatenate(wers)
    alpha = (1 - level) / 2
    # "lower"/"higher" rather than interpolation: stays finite-or-inf (no nan) when a resample
    # has errors but no reference words, and never narrows the interval.
    low = np.quantile(wers, alpha, method="lower")
    high = np.quantile(wers, 1 - alpha, method="higher")
    return float(low), float(high)


@dataclass(frozen=True)
class PairedBootstrap:
    """Paired bootstrap of two systems on the same utterances: in what fraction of resamples
    each makes fewer word errors, or both the same number."""

    samples: int  # resamples drawn
    p_a_better: float  # fraction of resamples where A makes fewer errors than B
    p_b_better: float  # ... where B makes fewer errors than A
    p_equal: float  # ... where both make the same number
    identical: bool  # A and B make the same number of errors on every utterance

    def verdict(self, name_a: str = "A", name_b: str = "B", level: float = 0.95) -> str:
        """The comparison in words, e.g. "B better (P = 0.998)" or "no difference"."""
        if self.identical:
            return "no difference: the same number of errors on every utterance"
        if self.p_b_better >= level:
            return f"{name_b} better (P = {self.p_b_better:.3f})"
        if self.p_a_better >= level:
            return f"{name_a} better (P = {self.p_a_better:.3f})"
        return f"no significant difference at {level:.0%}"


def paired_bootstrap(
    errors_a: np.ndarray,
    errors_b: np.ndarray,
    ref_words: np.ndarray | None = None,
    n_samples: int = 1000,
    seed: int = 0,
) -> PairedBootstrap:
    """Paired bootstrap test (Koehn 2004; Bisani & Ney 2004): resample utterances with
    replacement and count in how many resamples B makes fewer word errors than A, A fewer than
    B, or both the same (both corpus WERs share the resample's reference words, so comparing
    errors is comparing WERs).

    Args:
        errors_a, errors_b: (utterances,) word errors of A and B on the same utterances.
        ref_words: unused (kept for callers that pass it).
    """
    a = np.asarray(errors_a, dtype=np.float64)
    b = np.asarray(errors_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError("the two systems must be scored on the same utterances")
    delta = a - b  # > 0 where B is better
    if a.size == 0 or not delta.any():
        return PairedBootstrap(n_samples, 0.0, 0.0, 1.0, True)
    b_better = a_better = 0
    for counts in _resample_counts(a.size, n_samples, seed, _chunk_for(a.size)):
        difference = counts @ delta
        b_better += int((difference > 0).sum())
        a_better += int((difference < 0).sum())
    equal = n_samples - a_better - b_better
    return PairedBootstrap(n_samples, a_better / n_samples, b_better / n_samples, equal / n_samples, False)


# --- matched pairs (MAPSSWE) ---------------------------------------------------------------------


def _error_marks(columns: Sequence[tuple], n_ref: int) -> tuple[list[int], list[int]]:
    """(error at each reference word, insertions in each gap 0..n_ref before/between/after them)."""
    word_errors, gap_insertions = [0] * n_ref, [0] * (n_ref + 1)
    k = 0
    for op, _, _ in columns:
        if op == "I":
            gap_insertions[k] += 1
        else:
            word_errors[k] = int(op != "C")
            k += 1
    return word_errors, gap_insertions


def _boundary_words(word_errors: Sequence[Sequence[int]], gaps: Sequence[Sequence[int]], n_ref: int,
                    boundary: int) -> list[bool]:
    """Reference words in runs of >= `boundary` words that both systems got right with nothing
    inserted inside the run: these separate the segments."""
    good = [not word_errors[0][k] and not word_errors[1][k] for k in range(n_ref)]
    inside = [False] * n_ref
    k = 0
    while k < n_ref:
        end = k
        if good[k]:
            while end + 1 < n_ref and good[end + 1] and not gaps[0][end + 1] and not gaps[1][end + 1]:
                end += 1
            if end - k + 1 >= boundary:
                inside[k : end + 1] = [True] * (end - k + 1)
        k = end + 1
    return inside


def mapsswe_segments(columns_a: Sequence[tuple], columns_b: Sequence[tuple],
                     boundary: int = MAPSSWE_BOUNDARY_WORDS) -> list[tuple[int, int]]:
    """(errors of A, errors of B) in each segment of one utterance with an error by either system.

    Segments are the stretches between runs of `boundary` or more reference words that both
    systems recognised correctly (and the utterance's ends), as sc_stats cuts them; an
    insertion belongs to the stretch around its gap.
    """
    n_ref = sum(op != "I" for op, _, _ in columns_a)
    (errors_a, gaps_a), (errors_b, gaps_b) = _error_marks(columns_a, n_ref), _error_marks(columns_b, n_ref)
    inside = _boundary_words((errors_a, errors_b), (gaps_a, gaps_b), n_ref, boundary)
    segments, current = [], [0, 0]
    for k in range(n_ref + 1):
        current[0] += gaps_a[k]
        current[1] += gaps_b[k]
        if k == n_ref:
            break
        if inside[k]:
            if current != [0, 0]:
                segments.append(tuple(current))
            current = [0, 0]
        else:
            current[0] += errors_a[k]
            current[1] += errors_b[k]
    if current != [0, 0]:
        segments.append(tuple(current))
    return segments


@dataclass(frozen=True)
class Mapsswe:
    """sclite's matched-pairs sentence-segment word error test of systems A and B."""

    segments: int  # segments with an error by either system
    mean: float  # mean over segments of (errors of A - errors of B)
    std: float  # their standard deviation (n - 1 in the denominator)
    z: float  # mean / (std / sqrt(segments)); 0 when every difference is 0
    p: float  # two-sided p-value of z under the standard normal

    def verdict(self, name_a: str = "A", name_b: str = "B", level: float = 0.95) -> str:
        """The test in words, e.g. "B better (p = 0.003)"."""
        if self.segments == 0 or (self.mean == 0 and self.std == 0):
            return "no difference: the same errors in every segment"
        if self.p <= 1 - level:
            return f"{name_b if self.mean > 0 else name_a} better (p = {self.p:.3f})"
        return f"no significant difference (p = {self.p:.3f})"


def mapsswe(a: ScoreResult, b: ScoreResult, boundary: int = MAPSSWE_BOUNDARY_WORDS) -> Mapsswe:
    """Matched-pairs sentence-segment word error test (Gillick & Cox 1989) as sc_stats runs it:
    Z = mean / (s / sqrt(n)) over the n segments' error differences, p two-sided normal.
    sc_stats prints p for |Z| cut to two decimals; `p` here is exact."""
    if a.refs != b.refs:
        raise ValueError("the two systems must be scored against the same references")
    differences = [ea - eb for cols_a, cols_b in zip(a.alignments, b.alignments)
                   for ea, eb in mapsswe_segments(cols_a, cols_b, boundary)]
    n = len(differences)
    mean = sum(differences) / n if n else 0.0
    std = statistics.stdev(differences) if n > 1 else 0.0
    if std == 0:
        z = 0.0 if mean == 0 else math.copysign(math.inf, mean)
    else:
        z = mean / (std / math.sqrt(n))
    return Mapsswe(n, mean, std, z, math.erfc(abs(z) / math.sqrt(2)))


# --- reports -------------------------------------------------------------------------------------


def per_speaker(result: ScoreResult) -> list[dict]:
    """Per-speaker totals (speakers from `result.speakers`), sorted by WER, worst first."""
    speakers: dict[str, list[int]] = {}
    for i, spk in enumerate(result.speakers):
        speakers.setdefault(spk, []).append(i)
    rows = []
    errors = result.word_errors
    for spk, idx in speakers.items():
        idx = np.asarray(idx)
        e, w = int(errors[idx].sum()), int(result.ref_words[idx].sum())
        ce, cw = int(result.char_errors[idx].sum()), int(result.ref_chars[idx].sum())
        rows.append({"speaker": spk, "utterances": len(idx), "ref_words": w, "word_errors": e,
                     "correct": int(result.correct[idx].sum()), "substitutions": int(result.substitutions[idx].sum()),
                     "deletions": int(result.deletions[idx].sum()), "insertions": int(result.insertions[idx].sum()),
                     "sentence_errors": int((errors[idx] > 0).sum()),
                     "wer": 100 * _ratio(e, w), "cer": 100 * _ratio(ce, cw)})
    rows.sort(key=lambda r: (-r["wer"], r["speaker"]))
    return rows


def _totals_lines(result: ScoreResult, summary: dict) -> list[str]:
    low, high = summary["wer_ci95"]
    return [
        f"%WER {summary['wer']:.2f} [ {summary['word_errors']} / {summary['ref_words']}, "
        f"{summary['insertions']} ins, {summary['deletions']} del, {summary['substitutions']} sub ]"
        f"  95% CI [{low:.2f}, {high:.2f}]",
        f"%CER {summary['cer']:.2f} [ {summary['char_errors']} / {summary['ref_chars']} ]",
        f"%SER {summary['ser']:.2f} [ {int((result.word_errors > 0).sum())} / {summary['utterances']} ]",
        f"normaliser: {result.normalizer}; alignment: sclite (costs sub {COST_SUB}, ins {COST_INS}, del {COST_DEL}); "
        f"speakers: {result.speaker_source}",
    ]


def format_report(result: ScoreResult, name: str = "", top: int = 20, bootstrap_samples: int = 1000) -> str:
    """A report a person reads (Kaldi / icefall style): totals, the normaliser, per-speaker WER,
    the most frequent substitutions, deletions and insertions, then every utterance aligned as
    `(REF->HYP)`."""
    summary = result.summary(bootstrap_samples)
    lines = [f"# {name}"] if name else []
    lines += _totals_lines(result, summary)
    if result.missing_hyp_ids:
        lines.append(f"{len(result.missing_hyp_ids)} utterances had no hypothesis (scored as deletions): "
                     f"{_id_list(result.missing_hyp_ids)}")
    if result.ignored_hyp_ids:
        lines.append(f"{len(result.ignored_hyp_ids)} hypotheses had no reference (ignored): "
                     f"{_id_list(result.ignored_hyp_ids)}")
    lines += ["", "PER-SPEAKER (worst first): speaker utterances words %WER %CER"]
    for row in per_speaker(result):
        lines.append(f"{row['speaker']:>12} {row['utterances']:6d} {row['ref_words']:7d} {row['wer']:7.2f} "
                     f"{row['cer']:7.2f}")
    lines += ["", f"SUBSTITUTIONS (top {top}): count ref -> hyp"]
    lines += [f"{n:6d}  {a} -> {b}" for (a, b), n in result.sub_pairs.most_common(top)]
    lines += ["", f"DELETIONS (top {top}): count ref"]
    lines += [f"{n:6d}  {a}" for a, n in result.deleted.most_common(top)]
    lines += ["", f"INSERTIONS (top {top}): count hyp"]
    lines += [f"{n:6d}  {b}" for b, n in result.inserted.most_common(top)]
    lines += ["", "PER-UTTERANCE: id errors/words: words, (ref->hyp) for errors, * for nothing"]
    errors = result.word_errors
    for i, utt in enumerate(result.ids):
        lines.append(f"{utt} {int(errors[i])}/{int(result.ref_words[i])}:\t{result.aligned[i]}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Comparison:
    """Two systems compared on the same utterances."""

    a: str  # name of system A
    b: str  # name of system B
    bootstrap: PairedBootstrap
    mapsswe: Mapsswe

    def as_dict(self) -> dict:
        """For results.json: the probabilities, the MAPSSWE figures and both verdicts."""
        boot, mp = self.bootstrap, self.mapsswe
        return {"a": self.a, "b": self.b, "p_a_better": boot.p_a_better, "p_b_better": boot.p_b_better,
                "p_equal": boot.p_equal, "bootstrap_samples": boot.samples, "bootstrap": boot.verdict(self.a, self.b),
                "mapsswe_segments": mp.segments, "mapsswe_z": mp.z, "mapsswe_p": mp.p,
                "mapsswe": mp.verdict(self.a, self.b)}


def compare_systems(a: ScoreResult, b: ScoreResult, name_a: str, name_b: str, n_samples: int = 1000,
                    seed: int = 0) -> Comparison:
    """Paired bootstrap and MAPSSWE of B against A."""
    return Comparison(name_a, name_b, paired_bootstrap(a.word_errors, b.word_errors, a.ref_words, n_samples, seed),
                      mapsswe(a, b))


def compare_report(a: ScoreResult, b: ScoreResult, name_a: str, name_b: str, n_samples: int = 1000,
                   seed: int = 0) -> tuple[str, Comparison]:
    """One paragraph comparing two systems on the same utterances, and the comparison."""
    comparison = compare_systems(a, b, name_a, name_b, n_samples, seed)
    boot, mp = comparison.bootstrap, comparison.mapsswe
    text = (
        f"PAIRED BOOTSTRAP ({n_samples} resamples of {len(a.ids)} utterances) and MAPSSWE ({mp.segments} segments)\n"
        f"A = {name_a}: %WER {100 * a.wer:.2f}\n"
        f"B = {name_b}: %WER {100 * b.wer:.2f}\n"
        f"P(A better) = {boot.p_a_better:.3f}  P(B better) = {boot.p_b_better:.3f}  P(equal) = {boot.p_equal:.3f}\n"
        f"bootstrap: {boot.verdict('A', 'B')}\n"
        f"MAPSSWE: Z = {mp.z:.3f}, p = {mp.p:.3f}: {mp.verdict('A', 'B')}\n"
    )
    return text, comparison


def compare_table(results: Sequence[ScoreResult], names: Sequence[str], n_samples: int = 1000,
                  seed: int = 0) -> tuple[str, list[Comparison]]:
    """A table of N systems on the same utterances (WER, 95% CI, S/D/I) and every pair's
    bootstrap and MAPSSWE verdicts."""
    first = results[0]
    lines = [f"{len(results)} systems on {len(first.ids)} utterances, {int(first.ref_words.sum())} reference words; "
             f"normaliser: {first.normalizer}", "",
             f"{'#':>2}  {'system':<30} {'%WER':>7}  {'95% CI':<16} {'sub':>6} {'del':>6} {'ins':>6}"]
    for k, (result, name) in enumerate(zip(results, names), 1):
        low, high = bootstrap_wer_ci(result.word_errors, result.ref_words, n_samples, seed=seed)
        lines.append(f"{k:>2}  {name:<30} {100 * result.wer:7.2f}  [{100 * low:6.2f}, {100 * high:6.2f}] "
                     f"{int(result.substitutions.sum()):6d} {int(result.deletions.sum()):6d} "
                     f"{int(result.insertions.sum()):6d}")
    lines += ["", f"PAIRWISE ({n_samples} paired bootstrap resamples; MAPSSWE as sc_stats):"]
    comparisons = []
    for i in range(len(results)):
        for j in range(i + 1, len(results)):
            c = compare_systems(results[i], results[j], str(i + 1), str(j + 1), n_samples, seed)
            comparisons.append(Comparison(names[i], names[j], c.bootstrap, c.mapsswe))
            lines.append(f"{i + 1} vs {j + 1}: P({i + 1} better) = {c.bootstrap.p_a_better:.3f}, "
                         f"P({j + 1} better) = {c.bootstrap.p_b_better:.3f}, P(equal) = {c.bootstrap.p_equal:.3f}: "
                         f"{c.bootstrap.verdict(str(i + 1), str(j + 1))}; MAPSSWE p = {c.mapsswe.p:.3f}: "
                         f"{c.mapsswe.verdict(str(i + 1), str(j + 1))}")
    return "\n".join(lines) + "\n", comparisons


# --- output files --------------------------------------------------------------------------------


def write_kaldi_text(path: str | os.PathLike, texts: dict[str, str] | Sequence[tuple[str, str]]) -> None:
    """Write `UTT-ID TEXT` lines atomically, in the given order."""
    items = texts.items() if isinstance(texts, dict) else texts
    with atomic_open(path, "w") as f:
        for utt, text in items:
            f.write(f"{utt} {text}\n" if text else f"{utt}\n")


PER_UTTERANCE_FIELDS = ("system", "id", "speaker", "ref_words", "correct", "substitutions", "deletions",
                        "insertions", "errors", "wer", "ref", "hyp", "aligned")


def per_utterance_rows(result: ScoreResult, system: str = "") -> list[dict]:
    """One dict per utterance: counts, WER in percent, texts and the alignment."""
    rows = []
    errors = result.word_errors
    for i, utt in enumerate(result.ids):
        words = int(result.ref_words[i])
        rows.append({"system": system, "id": utt, "speaker": result.speakers[i], "ref_words": words,
                     "correct": int(result.correct[i]), "substitutions": int(result.substitutions[i]),
                     "deletions": int(result.deletions[i]), "insertions": int(result.insertions[i]),
                     "errors": int(errors[i]), "wer": 100 * _ratio(int(errors[i]), words),
                     "ref": result.refs[i], "hyp": result.hyps[i], "aligned": result.aligned[i]})
    return rows


def write_per_utterance(path: str | os.PathLike, results: Sequence[ScoreResult], names: Sequence[str]) -> None:
    """Per-utterance figures of every system, as CSV (`.csv`) or JSON (`.json`), atomically."""
    path = Path(path)
    rows = [row for result, name in zip(results, names) for row in per_utterance_rows(result, name)]
    if path.suffix == ".json":
        payload = {"normalizer": results[0].normalizer if results else None, "utterances": rows}
        atomic_write_text(path, json.dumps(payload, indent=1, ensure_ascii=False) + "\n")
    elif path.suffix == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=PER_UTTERANCE_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(path, buffer.getvalue())
    else:
        raise ConfigError(f"{path}: per-utterance output must end in .csv or .json")


def _pra_lines(columns: Sequence[tuple]) -> tuple[str, str, str]:
    """sclite's REF/HYP/Eval lines: correct words in lower case, errors in upper case, `*`s for
    a missing word, one column per alignment step."""
    ref, hyp, ev = ["REF: "], ["HYP: "], ["Eval:"]
    for op, r, h in columns:
        width = max(len(r or ""), len(h or ""))
        case = str.lower if op == "C" else str.upper
        ref.append(case(r).ljust(width) if r is not None else "*" * width)
        hyp.append(case(h).ljust(width) if h is not None else "*" * width)
        ev.append(("" if op == "C" else op).ljust(width))
    return tuple(" ".join(cells) + " " for cells in (ref, hyp, ev))


def format_pra(result: ScoreResult, name: str) -> str:
    """sclite's `pra` report: every utterance's counts and aligned REF/HYP/Eval lines."""
    lines = ["", "", "\t\tDUMP OF SYSTEM ALIGNMENT STRUCTURE", "", f"System name:   {name}",
             f"Normaliser:    {result.normalizer}", ""]
    for i, utt in enumerate(result.ids):
        lines += [f"id: ({utt})", f"Scores: (#C #S #D #I) {int(result.correct[i])} {int(result.substitutions[i])} "
                  f"{int(result.deletions[i])} {int(result.insertions[i])}"]
        lines += list(_pra_lines(result.alignments[i])) if result.alignments[i] else []  # sclite: none when empty
        lines.append("")
    return "\n".join(lines) + "\n"


def _sys_cells(snt: str, wrd: str, values: Sequence[float]) -> str:
    return f"{snt:>5}{wrd:>7} |{values[0]:5.1f}" + "".join(f"{v:7.1f}" for v in values[1:]) + " |"


def _sys_values(row: dict) -> list[float]:
    words, sentences = row["ref_words"], row["utterances"]
    pct = [100 * _ratio(row[k], words) for k in ("correct", "substitutions", "deletions", "insertions", "word_errors")]
    return pct + [100 * _ratio(row["sentence_errors"], sentences)]


def format_sys(result: ScoreResult, name: str) -> str:
    """sclite's `sys` report, laid out as sclite lays it: per speaker # sentences, # words and
    Corr/Sub/Del/Ins/Err/S.Err in percent, the totals, then the mean, sample standard deviation
    and median over speakers."""
    rows = sorted(per_speaker(result), key=lambda r: r["speaker"])
    total = {"utterances": len(result.ids), "ref_words": int(result.ref_words.sum()),
             "correct": int(result.correct.sum()), "substitutions": int(result.substitutions.sum()),
             "deletions": int(result.deletions.sum()), "insertions": int(result.insertions.sum()),
             "word_errors": int(result.word_errors.sum()), "sentence_errors": int((result.word_errors > 0).sum())}
    label = max([8] + [len(r["speaker"]) + 2 for r in rows])
    width = label + 56
    between = f"|{'-' * label}+{'-' * 13}+{'-' * 41}|"
    lines = [f"normaliser: {result.normalizer}", "", "SYSTEM SUMMARY PERCENTAGES by SPEAKER".center(width + 2), "",
             f",{'-' * width}.", f"|{name.center(width)}|", f"|{'-' * width}|",
             f"|{' SPKR'.ljust(label)}| # Snt # Wrd | Corr    Sub    Del    Ins    Err  S.Err |", between]
    for k, r in enumerate(rows):
        lines += ([between] if k else []) + [
            f"|{(' ' + r['speaker']).ljust(label)}|" + _sys_cells(str(r["utterances"]), str(r["ref_words"]),
                                                                   _sys_values(r))]
    lines += [f"|{'=' * width}|", f"|{' Sum/Avg'.ljust(label)}|" + _sys_cells(
        str(total["utterances"]), str(total["ref_words"]), _sys_values(total)), f"|{'=' * width}|"]
    columns = list(zip(*[[r["utterances"], r["ref_words"], *_sys_values(r)] for r in rows])) or [[0.0]] * 8
    for stat_name, stat in (("Mean", statistics.fmean), ("S.D.", _stdev), ("Median", statistics.median)):
        values = [stat(c) for c in columns]
        lines.append(f"|{stat_name.center(label)}|" + _sys_cells(f"{values[0]:.1f}", f"{values[1]:.1f}", values[2:]))
    lines.append(f"`{'-' * width}'")
    return "\n".join(lines) + "\n"


def _stdev(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def write_sclite_reports(directory: str | os.PathLike, result: ScoreResult, name: str) -> tuple[Path, Path]:
    """Write `<name>.sys` and `<name>.pra` (sclite-style) into `directory`, atomically."""
    stem = Path(directory) / Path(name).name
    sys_path, pra_path = stem.with_name(stem.name + ".sys"), stem.with_name(stem.name + ".pra")
    atomic_write_text(sys_path, format_sys(result, name))
    atomic_write_text(pra_path, format_pra(result, name))
    return sys_path, pra_path


# --- scoring files -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreOptions:
    """How `asr score` and `asr compare` read and normalise files; shared by both verbs."""

    ref_format: str = "auto"  # one of FORMATS
    hyp_format: str = "auto"  # one of FORMATS, for every hypothesis file
    normalize: str = "librispeech"  # one of asr.text.NORMALIZERS, applied to both sides
    allow_missing: bool = False  # score references without a hypothesis as deletions
    manifest: str | None = None  # speakers from this manifest's `speaker` field
    utt2spk: str | None = None  # ... or from this Kaldi utt2spk file
    bootstrap_samples: int = 1000  # resamples for the CI and the paired test
    seed: int = 0  # the resampling is reproducible from it


def score_systems(ref_path: str | os.PathLike, hyp_paths: Sequence[str | os.PathLike],
                  options: ScoreOptions = ScoreOptions()) -> list[ScoreResult]:
    """Score each hypothesis file against the reference file, all the same way."""
    if options.normalize not in NORMALIZERS:
        raise ConfigError(f"unknown normaliser {options.normalize!r}; choose one of {', '.join(NORMALIZERS)}")
    ref = read_transcripts(ref_path, options.ref_format)
    results = []
    for hyp_path in hyp_paths:
        hyps = hypotheses_for(ref, read_transcripts(hyp_path, options.hyp_format))
        ids, ref_texts, hyp_texts, ignored = pair_texts(ref.texts, hyps, options.allow_missing, str(ref_path),
                                                        str(hyp_path))
        speakers, source = resolve_speakers(ids, ref, options.manifest, options.utt2spk)
        result = score_texts(ids, ref_texts, hyp_texts, normalize=options.normalize, speakers=speakers,
                             speaker_source=source)
        result.ignored_hyp_ids = ignored
        result.missing_hyp_ids = [u for u in ids if u not in hyps]
        results.append(result)
    return results


def _system_names(hyp_paths: Sequence[str | os.PathLike]) -> list[str]:
    """Short names for reports: the file names, or the paths where file names repeat."""
    names = [Path(p).name for p in hyp_paths]
    return names if len(set(names)) == len(names) else [str(p) for p in hyp_paths]


def score_files(
    ref_path: str | os.PathLike,
    hyp_paths: str | os.PathLike | Sequence[str | os.PathLike],
    allow_missing: bool = False,
    report_path: str | os.PathLike | None = None,
    bootstrap_samples: int = 1000,
    seed: int = 0,
    options: ScoreOptions | None = None,
    out_dir: str | os.PathLike | None = None,
    per_utt_path: str | os.PathLike | None = None,
) -> dict:
    """Score one or more hypothesis files against a reference file (formats: `FORMATS`).

    With two or more hypothesis files, each is compared with the first (paired bootstrap and
    MAPSSWE). Writes the report atomically to `report_path` when given; with `out_dir`, writes
    there `report.txt`, `results.json`, `per_utt.csv` and sclite-style `<hyp>.sys`/`<hyp>.pra`;
    with `per_utt_path`, the per-utterance figures there (`.csv` or `.json`).
    `options` (when given) replaces `allow_missing`, `bootstrap_samples` and `seed`.

    Returns:
        {"normalizer": name, "systems": [{"hyp": path, **ScoreResult.summary()}...],
         "comparisons": [Comparison.as_dict()...], "report": text}
    """
    if isinstance(hyp_paths, (str, os.PathLike)):
        hyp_paths = [hyp_paths]
    if per_utt_path is not None and Path(per_utt_path).suffix not in (".csv", ".json"):
        raise ConfigError(f"{per_utt_path}: per-utterance output must end in .csv or .json")
    options = options or ScoreOptions(allow_missing=allow_missing, bootstrap_samples=bootstrap_samples, seed=seed)
    results = score_systems(ref_path, hyp_paths, options)
    samples = options.bootstrap_samples
    parts = [format_report(r, str(p), bootstrap_samples=samples) for r, p in zip(results, hyp_paths)]
    out = {"normalizer": options.normalize, "ref": str(ref_path), "systems": [], "comparisons": []}
    for result, hyp_path in zip(results, hyp_paths):
        out["systems"].append({"hyp": str(hyp_path), **result.summary(samples, options.seed)})
    for result, hyp_path in zip(results[1:], hyp_paths[1:]):
        text, comparison = compare_report(results[0], result, str(hyp_paths[0]), str(hyp_path), samples, options.seed)
        parts.insert(len(out["comparisons"]), text)
        out["comparisons"].append(comparison.as_dict())
    out["report"] = "\n".join(parts)
    if report_path is not None:
        atomic_write_text(report_path, out["report"])
    if out_dir is not None:
        _write_out_dir(Path(out_dir), out, results, _system_names(hyp_paths))
    if per_utt_path is not None:
        write_per_utterance(per_utt_path, results, _system_names(hyp_paths))
    return out


def _write_out_dir(out_dir: Path, out: dict, results: Sequence[ScoreResult], names: Sequence[str]) -> None:
    atomic_write_text(out_dir / "report.txt", out["report"])
    atomic_write_text(out_dir / "results.json", json.dumps({k: v for k, v in out.items() if k != "report"},
                                                           indent=2) + "\n")
    write_per_utterance(out_dir / "per_utt.csv", results, names)
    for result, name in zip(results, names):
        write_sclite_reports(out_dir, result, name)


def compare_files(ref_path: str | os.PathLike, hyp_paths: Sequence[str | os.PathLike],
                  options: ScoreOptions = ScoreOptions()) -> dict:
    """`asr compare`: N systems scored alike, a table and every pair's tests.

    Returns:
        {"normalizer", "systems": [{"hyp", **summary}...], "comparisons": [...], "table": text}
    """
    if len(hyp_paths) < 2:
        raise ConfigError("compare needs at least two hypothesis files")
    results = score_systems(ref_path, hyp_paths, options)
    names = _system_names(hyp_paths)
    table, comparisons = compare_table(results, names, options.bootstrap_samples, options.seed)
    return {"normalizer": options.normalize, "ref": str(ref_path),
            "systems": [{"hyp": str(p), **r.summary(options.bootstrap_samples, options.seed)}
                        for r, p in zip(results, hyp_paths)],
            "comparisons": [c.as_dict() for c in comparisons], "table": table}


def collect_results(exp_dirs: Sequence[str | os.PathLike], title: str = "Results") -> str:
    """A Markdown table of every `decode/<set>/<decoder>/results.json` under the experiment folders.

    One row per (experiment, set, decoder): WER with its 95% bootstrap interval, CER, SER,
    utterances, the normaliser, the decoder's LM weight and word score where it has them, and the
    checkpoint that produced it. The config is named by the experiment's `config.yaml`.
    """
    rows = []
    for exp in exp_dirs:
        exp = Path(exp)
        files = sorted(exp.glob("decode/*/*/results.json"), key=_table_order)
        rows += [_results_row(exp, path) for path in files]
    if not rows:
        raise DataError("no decode/<set>/<decoder>/results.json under " + ", ".join(map(str, exp_dirs)))
    header = ("| exp | set | decoder | WER % | WER 95% CI | CER % | SER % | utts | normaliser "
              "| LM weight / word score | checkpoint | config |")
    lines = [f"# {title}", "", header, "|" + "---|" * 12]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", "WER 95% CI: bootstrap over utterances (1000 resamples). Written by `asr results`."]
    return "\n".join(lines) + "\n"


def _table_order(path: Path) -> tuple:
    """Sort key of a decode/<set>/<label>/results.json: per set, greedy, then beam, then beam + LM,
    as the table reads best; the same again with test-time VTLN ("-vtln" folders, `asr decode --vtln`)."""
    label = path.parent.name
    base = label.removesuffix("-vtln")
    return path.parent.parent.name, base != label, {"greedy": 0, "beam": 1}.get(base, 2), label


def _results_row(exp: Path, path: Path) -> tuple[str, ...]:
    try:
        res = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: cannot read results ({err})") from err
    settings = res.get("decoder_settings", {})
    weights = f"{settings.get('lm_weight', '')} / {settings.get('word_score', '')}" if settings.get("lm") else ""
    low, high = res.get("wer_ci95", [float("nan"), float("nan")])
    return (exp.name, res.get("set", path.parent.parent.name), path.parent.name, f"{res['wer']:.2f}",
            f"[{low:.2f}, {high:.2f}]", f"{res['cer']:.2f}", f"{res.get('ser', float('nan')):.1f}",
            str(res.get("utterances", "")), res.get("normalizer", "librispeech"), weights,
            f"`{Path(res.get('checkpoint', '')).name}`", f"`{exp / 'config.yaml'}`")
