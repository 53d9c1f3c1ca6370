"""Word and character error rates, and the report a person reads.

WER = (substitutions + deletions + insertions) / reference words, summed over the corpus (not
averaged over utterances). Files are scored after `asr.text.normalize_text` on both sides. An empty reference adds no reference words, and every word
hypothesised for it counts as an insertion. CER is the same over characters, spaces between
words included (jiwer's convention).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import jiwer
import numpy as np

from asr.errors import DataError
from asr.fileio import atomic_open, atomic_write_text, read_text
from asr.text import normalize_text


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


# --- scoring files -------------------------------------------------------------------------------


def speaker_of(utterance_id: str) -> str:
    """Speaker of a LibriSpeech-style utterance id: the part before the first '-'."""
    return utterance_id.split("-", 1)[0]


def read_kaldi_text(path: str | os.PathLike) -> dict[str, str]:
    """Read a Kaldi `text` file: `UTT-ID WORDS...` per line (an id alone means an empty text).

    Raises DataError naming the file and line on a duplicate id, and naming the file when it is
    missing.
    """
    path = Path(path)
    lines = read_text(path).splitlines()
    texts: dict[str, str] = {}
    for line_no, line in enumerate(lines, 1):
        parts = line.strip().split(maxsplit=1)
        if not parts:
            continue
        utt = parts[0]
        if utt in texts:
            raise DataError(f"{path}:{line_no}: utterance id {utt!r} appears twice")
        texts[utt] = parts[1] if len(parts) > 1 else ""
    return texts


def write_kaldi_text(path: str | os.PathLike, texts: dict[str, str] | Sequence[tuple[str, str]]) -> None:
    """Write `UTT-ID TEXT` lines atomically, in the given order."""
    items = texts.items() if isinstance(texts, dict) else texts
    with atomic_open(path, "w") as f:
        for utt, text in items:
            f.write(f"{utt} {text}\n" if text else f"{utt}\n")


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
            problems.append(f"{len(missing_hyp)} utterances of {ref_name} have no hypothesis in {hyp_name}: {_id_list(missing_hyp)}")
        if missing_ref:
            problems.append(f"{len(missing_ref)} utterances of {hyp_name} have no reference in {ref_name}: {_id_list(missing_ref)}")
        raise DataError("; ".join(problems) + " (use --allow-missing to score anyway)")
    ids = list(refs)
    return ids, [refs[u] for u in ids], [hyps.get(u, "") for u in ids], missing_ref


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

    @property
    def word_errors(self) -> np.ndarray:
        """(utterances,) S + D + I per utterance."""
        return self.substitutions + self.deletions + self.insertions

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
        """Totals as a plain dict (for results.json): rates in percent, counts, 95% CI of WER."""
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
        }


def _aligned_line(ref: list[str], hyp: list[str], chunks) -> tuple[str, list, list, list]:
    pieces: list[str] = []
    subs, dels, ins = [], [], []
    for c in chunks:
        r = ref[c.ref_start_idx : c.ref_end_idx]
        h = hyp[c.hyp_start_idx : c.hyp_end_idx]
        if c.type == "equal":
            pieces.extend(r)
        elif c.type == "substitute":
            for a, b in zip(r, h):
                pieces.append(f"({a}->{b})")
                subs.append((a, b))
        elif c.type == "delete":
            for a in r:
                pieces.append(f"({a}->*)")
                dels.append(a)
        elif c.type == "insert":
            for b in h:
                pieces.append(f"(*->{b})")
                ins.append(b)
    return " ".join(pieces), subs, dels, ins


def score_texts(
    ids: Sequence[str],
    refs: Sequence[str],
    hyps: Sequence[str],
    normalize: bool = True,
) -> ScoreResult:
    """Align hypotheses with references word by word and character by character.

    Args:
        ids: utterance ids.
        refs: reference texts.
        hyps: hypothesis texts, aligned with `refs`.
        normalize: apply `asr.text.normalize_text` to both sides (else only squeeze spaces).
    """
    if not (len(ids) == len(refs) == len(hyps)):
        raise ValueError("ids, refs and hyps must have the same length")
    norm = normalize_text if normalize else _squeeze
    refs = [norm(r) for r in refs]
    hyps = [norm(h) for h in hyps]
    n = len(ids)
    zeros = lambda: np.zeros(n, dtype=np.int64)  # noqa: E731
    result = ScoreResult(
        ids=list(ids), refs=refs, hyps=hyps, ref_words=zeros(), substitutions=zeros(), deletions=zeros(),
        insertions=zeros(), ref_chars=zeros(), char_errors=zeros(), aligned=[],
    )
    if n == 0:
        return result
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    for i in range(n):
        line, subs, dels, ins = _aligned_line(words.references[i], words.hypotheses[i], words.alignments[i])
        result.aligned.append(line)
        result.ref_words[i] = len(words.references[i])
        result.substitutions[i] = len(subs)
        result.deletions[i] = len(dels)
        result.insertions[i] = len(ins)
        result.sub_pairs.update(subs)
        result.deleted.update(dels)
        result.inserted.update(ins)
        result.ref_chars[i] = len(chars.references[i])
        result.char_errors[i] = sum(
            max(c.ref_end_idx - c.ref_start_idx, c.hyp_end_idx - c.hyp_start_idx)
            for c in chars.alignments[i]
            if c.type != "equal"
        )
    return result


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


def paired_bootstrap(
    errors_a: np.ndarray,
    errors_b: np.ndarray,
    ref_words: np.ndarray,
    n_samples: int = 1000,
    seed: int = 0,
) -> float:
    """Paired bootstrap test (Koehn 2004; Bisani & Ney 2004): the probability that system B has
    a lower corpus WER than system A, i.e. the fraction of utterance resamples in which B makes
    fewer word errors than A (ties count for neither).

    Args:
        errors_a, errors_b: (utterances,) word errors of A and B on the same utterances.
        ref_words: (utterances,) reference words (the WER denominator, shared by A and B).
    """
    a = np.asarray(errors_a, dtype=np.float64)
    b = np.asarray(errors_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError("the two systems must be scored on the same utterances")
    if a.size == 0:
        return 0.5
    delta = a - b  # > 0 where B is better
    better = 0
    for counts in _resample_counts(a.size, n_samples, seed, _chunk_for(a.size)):
        better += int(((counts @ delta) > 0).sum())
    return better / n_samples


# --- the report ----------------------------------------------------------------------------------


def per_speaker(result: ScoreResult) -> list[dict]:
    """Per-speaker totals (speaker = utterance id before the first '-'), sorted by WER, worst first."""
    speakers: dict[str, list[int]] = {}
    for i, utt in enumerate(result.ids):
        speakers.setdefault(speaker_of(utt), []).append(i)
    rows = []
    errors = result.word_errors
    for spk, idx in speakers.items():
        idx = np.asarray(idx)
        e, w = int(errors[idx].sum()), int(result.ref_words[idx].sum())
        ce, cw = int(result.char_errors[idx].sum()), int(result.ref_chars[idx].sum())
        rows.append({"speaker": spk, "utterances": len(idx), "ref_words": w, "word_errors": e,
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
    ]


def format_report(result: ScoreResult, name: str = "", top: int = 20, bootstrap_samples: int = 1000) -> str:
    """A report a person reads (Kaldi / icefall style): totals, per-speaker WER, the most frequent
    substitutions, deletions and insertions, then every utterance aligned as `(REF->HYP)`."""
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
        lines.append(f"{row['speaker']:>12} {row['utterances']:6d} {row['ref_words']:7d} {row['wer']:7.2f} {row['cer']:7.2f}")
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


def compare_report(a: ScoreResult, b: ScoreResult, name_a: str, name_b: str, n_samples: int = 1000, seed: int = 0) -> tuple[str, float]:
    """One paragraph comparing two systems on the same utterances, and P(B better than A)."""
    p_better = paired_bootstrap(a.word_errors, b.word_errors, a.ref_words, n_samples, seed)
    text = (
        f"PAIRED BOOTSTRAP ({n_samples} resamples of {len(a.ids)} utterances)\n"
        f"A = {name_a}: %WER {100 * a.wer:.2f}\n"
        f"B = {name_b}: %WER {100 * b.wer:.2f}\n"
        f"P(B better than A) = {p_better:.3f}\n"
    )
    return text, p_better


def score_files(
    ref_path: str | os.PathLike,
    hyp_paths: str | os.PathLike | Sequence[str | os.PathLike],
    allow_missing: bool = False,
    report_path: str | os.PathLike | None = None,
    bootstrap_samples: int = 1000,
    seed: int = 0,
) -> dict:
    """Score one or more Kaldi-format hypothesis files against a reference file.

    With two or more hypothesis files, each is compared with the first by a paired bootstrap.
    Writes the report atomically to `report_path` when given.

    Returns:
        {"systems": [{"hyp": path, **ScoreResult.summary()}...],
         "comparisons": [{"a": path, "b": path, "p_b_better": float}...], "report": text}
    """
    if isinstance(hyp_paths, (str, os.PathLike)):
        hyp_paths = [hyp_paths]
    refs = read_kaldi_text(ref_path)
    results: list[ScoreResult] = []
    for hyp_path in hyp_paths:
        hyps = read_kaldi_text(hyp_path)
        ids, ref_texts, hyp_texts, ignored = pair_texts(refs, hyps, allow_missing, str(ref_path), str(hyp_path))
        result = score_texts(ids, ref_texts, hyp_texts)
        result.ignored_hyp_ids = ignored
        result.missing_hyp_ids = [u for u in ids if u not in hyps]
        results.append(result)
    parts = [format_report(r, str(p), bootstrap_samples=bootstrap_samples) for r, p in zip(results, hyp_paths)]
    out = {"systems": [], "comparisons": []}
    for result, hyp_path in zip(results, hyp_paths):
        out["systems"].append({"hyp": str(hyp_path), **result.summary(bootstrap_samples, seed)})
    for result, hyp_path in zip(results[1:], hyp_paths[1:]):
        text, p_better = compare_report(results[0], result, str(hyp_paths[0]), str(hyp_path), bootstrap_samples, seed)
        parts.insert(len(out["comparisons"]), text)
        out["comparisons"].append({"a": str(hyp_paths[0]), "b": str(hyp_path), "p_b_better": p_better})
    out["report"] = "\n".join(parts)
    if report_path is not None:
        atomic_write_text(report_path, out["report"])
    return out


def collect_results(exp_dirs: Sequence[str | os.PathLike], title: str = "Results") -> str:
    """A Markdown table of every `decode/<set>/<decoder>/results.json` under the experiment folders.

    One row per (experiment, set, decoder): WER with its 95% bootstrap interval, CER, SER,
    utterances, the decoder's LM weight and word score where it has them, and the checkpoint that
    produced it. The config is named by the experiment's `config.yaml`.
    """
    rows = []
    for exp in exp_dirs:
        exp = Path(exp)
        # Per set: greedy, then beam, then beam + LM, as the table reads best.
        files = sorted(exp.glob("decode/*/*/results.json"),
                       key=lambda p: (p.parent.parent.name, {"greedy": 0, "beam": 1}.get(p.parent.name, 2), p.parent.name))
        for path in files:
            try:
                res = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as err:
                raise DataError(f"{path}: cannot read results ({err})") from err
            settings = res.get("decoder_settings", {})
            lm = settings.get("lm")
            weights = ""
            if lm:
                weights = f"{settings.get('lm_weight', '')} / {settings.get('word_score', '')}"
            low, high = res.get("wer_ci95", [float("nan"), float("nan")])
            rows.append((exp.name, res.get("set", path.parent.parent.name), path.parent.name,
                         f"{res['wer']:.2f}", f"[{low:.2f}, {high:.2f}]", f"{res['cer']:.2f}",
                         f"{res.get('ser', float('nan')):.1f}", str(res.get("utterances", "")), weights,
                         f"`{Path(res.get('checkpoint', '')).name}`", f"`{exp / 'config.yaml'}`"))
    if not rows:
        raise DataError("no decode/<set>/<decoder>/results.json under " + ", ".join(map(str, exp_dirs)))
    header = ("| exp | set | decoder | WER % | WER 95% CI | CER % | SER % | utts | LM weight / word score "
              "| checkpoint | config |")
    lines = [f"# {title}", "", header, "|" + "---|" * 11]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", "WER 95% CI: bootstrap over utterances (1000 resamples). Written by `asr results`."]
    return "\n".join(lines) + "\n"
