"""An honest word: flag audio unlike the model's training data, from what the model itself says.

The model's CTC posteriors on a file give a few statistics (`PosteriorStats.values`), pooled over
the file's chunks exactly as `asr.transcribe.Transcriber` cuts them:

    frame_confidence  mean over output frames of the top posterior (blank frames included)
    token_confidence  mean top posterior over the frames whose best token is not blank
    word_confidence   mean of the best path's words' confidences (`asr.decode.word_spans`); 0
                      when the file has frames but the best path has no word
    entropy           mean posterior entropy per frame (nats; high is unsure)
    blank_ratio       share of frames whose best token is blank
    feature_spread    what the model hears rather than says: the file's input features after the
                      checkpoint's CMVN, cut into FEATURE_BANDS contiguous bands of dimensions;
                      the largest band mean of the per-dimension standard deviation over the
                      file. The synthetic corpus barely varies above 5 kHz (spread 0.6 there);
                      real speech's fricatives and quiet pauses do (1.7). Undefined for a model
                      that gives no features (`Transcriber` with a stand-in model).

`asr calibrate` runs the model over its own dev manifest through the same `Transcriber` (same
chunking, same pooling) and stores in the checkpoint a "calibration" dict (plain values):

    {"version": 1, "percentile": P, "margin": M, "manifest": path, "utterances": N,
     "rules": [{"statistic", "direction": "below" | "above", "tail": P or 100-P,
                "reference": the statistic's tail-th percentile on dev, "median": its dev median,
                "threshold": reference - M * (median - reference)}, ...],
     "dev": {name: {"p1", "p2", ..., "p50", ..., "p99", "mean"}}}

A file is out of domain when any rule's statistic lies beyond its threshold (below it, or above
it). A confident model can be confidently wrong on audio it never heard (a small tone model calls
white noise one long, sure "C"), so the default rules look both at how sure the model is and at
how it spends its frames: word confidence too low, entropy too high, blank ratio too low or too
high (`DEFAULT_RULES`, chosen by measurement: README "Audio unlike the training data"). Each
threshold sits `margin` of the dev spread (median to reference percentile) past that percentile,
so that in-domain files at the dev set's own tail mostly stay quiet.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from asr.errors import DataError

if TYPE_CHECKING:  # numpy and torch load when used: `asr --help` reads this module's defaults
    import torch

CALIBRATION_VERSION = 1
STATISTICS = ("frame_confidence", "token_confidence", "word_confidence", "entropy", "blank_ratio",
              "feature_spread")
# The sides on which a statistic can be unlike the dev set: "below" flags a file whose value is
# below the threshold, "above" one above it.
DIRECTIONS = {"frame_confidence": ("below",), "token_confidence": ("below",), "word_confidence": ("below",),
              "entropy": ("above",), "blank_ratio": ("below", "above"), "feature_spread": ("above",)}
FEATURE_BANDS = 4  # feature_spread: bands of feature dimensions (80 mel bins: 20 each)
# by measurement (module docstring; README "Audio unlike the training data")
DEFAULT_STATISTICS = ("word_confidence", "entropy", "blank_ratio", "feature_spread")
DEFAULT_PERCENTILE = 1.0  # the dev tail each threshold starts from (percent)
DEFAULT_MARGIN = 0.25  # how far past it, in units of |median - reference|
PERCENTILES = (1, 2, 5, 10, 25)  # and their 100 - p, and the median
BLANK_ID = 0


@dataclass(frozen=True)
class PosteriorStats:
    """Sums over the output frames (and words) of one chunk or file; `+` pools them."""

    frames: int = 0  # output frames
    blank_frames: int = 0  # frames whose best token is blank
    top_sum: float = 0.0  # sum of the top posterior over all frames
    token_top_sum: float = 0.0  # sum of the top posterior over the non-blank frames
    entropy_sum: float = 0.0  # sum of the posterior entropy (nats)
    words: int = 0  # recognised words
    word_confidence_sum: float = 0.0  # sum of their confidences
    feature_frames: int = 0  # input feature frames (after CMVN) summed below
    feature_sum: tuple[float, ...] = ()  # per feature dimension: sum over the frames
    feature_sq_sum: tuple[float, ...] = ()  # and sum of squares

    def __add__(self, other: "PosteriorStats") -> "PosteriorStats":
        scalars = (a + b for a, b in zip(_fields(self), _fields(other)))
        vectors = (tuple(a + b for a, b in zip(x, y)) if x and y else x or y
                   for x, y in ((self.feature_sum, other.feature_sum), (self.feature_sq_sum, other.feature_sq_sum)))
        return PosteriorStats(*scalars, self.feature_frames + other.feature_frames, *vectors)

    def values(self) -> dict[str, float | None]:
        """Each statistic of `STATISTICS`; None where it is undefined (no frames; no non-blank
        frames for token_confidence)."""
        tokens = self.frames - self.blank_frames
        per_frame = (lambda total: total / self.frames if self.frames else None)  # noqa: E731
        return {
            "frame_confidence": per_frame(self.top_sum),
            "token_confidence": self.token_top_sum / tokens if tokens else None,
            # Sound in which the model finds no word at all is as unsure as it gets.
            "word_confidence": self.word_confidence_sum / self.words if self.words else per_frame(0.0),
            "entropy": per_frame(self.entropy_sum),
            "blank_ratio": per_frame(self.blank_frames),
            "feature_spread": self._feature_spread(),
        }

    def _feature_spread(self) -> float | None:
        n = self.feature_frames
        if n < 2 or not self.feature_sum:
            return None
        stds = [math.sqrt(max(sq / n - (total / n) ** 2, 0.0))
                for total, sq in zip(self.feature_sum, self.feature_sq_sum)]
        dims = len(stds)
        bands = [stds[dims * k // FEATURE_BANDS: dims * (k + 1) // FEATURE_BANDS] for k in range(FEATURE_BANDS)]
        return max(sum(band) / len(band) for band in bands if band)


def _fields(stats: PosteriorStats) -> tuple:
    return (stats.frames, stats.blank_frames, stats.top_sum, stats.token_top_sum, stats.entropy_sum,
            stats.words, stats.word_confidence_sum)


def pool(stats: Iterable[PosteriorStats]) -> PosteriorStats:
    """The sums of several chunks as one (a file's statistics)."""
    total = PosteriorStats()
    for item in stats:
        total = total + item
    return total


def posterior_stats(log_probs: torch.Tensor, lengths: torch.Tensor, token_strings: Sequence[str],
                    features: torch.Tensor | None = None, feature_lengths: torch.Tensor | None = None
                    ) -> list[PosteriorStats]:
    """log_probs (B, T, V) CTC log-probabilities, lengths (B,) valid frames, the tokenizer's
    tokens -> one `PosteriorStats` per row. The words are the best path's (`greedy_decode`, split
    at "|" only), whatever decoder makes the transcript, so that the statistics are the model's
    alone and compare with the calibration's. With the model's input `features` (B, F, D) after
    CMVN and their `feature_lengths` (B,), each row also holds their per-dimension sums."""
    from asr.decode import greedy_decode, word_spans
    from asr.lengths import valid_mask

    log_probs = log_probs.detach().float().cpu()
    batch, frames, _ = log_probs.shape
    valid = valid_mask(lengths.cpu(), frames).float()  # (B, T)
    top, best = log_probs.max(dim=-1)  # (B, T)
    top = top.exp() * valid
    blank = (best == BLANK_ID).float() * valid
    probs = log_probs.exp()
    entropy = -(probs * log_probs.clamp_min(-1e4)).sum(dim=-1) * valid  # 0 * log 0 counts as 0
    columns = zip(lengths.tolist(), blank.sum(1).tolist(), top.sum(1).tolist(), (top * (1 - blank)).sum(1).tolist(),
                  entropy.sum(1).tolist())
    feature_sums = _feature_sums(features, feature_lengths, batch)
    stats = []
    for row, (path, (n, b, t, tt, e)) in enumerate(zip(greedy_decode(log_probs, lengths), columns)):
        spans = word_spans([tok for tok, _ in path], [f for _, f in path], token_strings, log_probs[row])
        stats.append(PosteriorStats(int(n), int(b), t, tt, e, len(spans), float(sum(s.confidence for s in spans)),
                                    *feature_sums[row]))
    return stats


def _feature_sums(features: torch.Tensor | None, lengths: torch.Tensor | None, batch: int) -> list[tuple]:
    """Per row: (valid frames, per-dimension sums, per-dimension sums of squares), in float64;
    (0, (), ()) rows without features."""
    import torch

    if features is None or lengths is None:
        return [(0, (), ())] * batch
    from asr.lengths import valid_mask

    # on the features' device: only the (B, D) sums travel
    feats = features.detach().to(torch.float64)
    mask = valid_mask(lengths.to(feats.device), feats.shape[1]).to(torch.float64)[..., None]
    sums, squares = (feats * mask).sum(1).cpu(), (feats.square() * mask).sum(1).cpu()
    return [(int(n), tuple(sums[row].tolist()), tuple(squares[row].tolist()))
            for row, n in enumerate(lengths.tolist())]


@dataclass(frozen=True)
class DomainCheck:
    """The verdict on one file: the rule it breaks most (or comes closest to breaking)."""

    statistic: str  # a name of `STATISTICS`
    score: float | None  # the file's value (None: undefined for this file, e.g. no frames)
    threshold: float  # flagged beyond this, on the side `direction` names
    reference: float  # the dev set's `tail`-th percentile, where the threshold starts from
    tail: float  # which percentile (1: the 1st, for "below"; 99: the 99th, for "above")
    direction: str  # "below" or "above"
    out_of_domain: bool  # the flag (any rule broken)

    def to_dict(self) -> dict:
        """Plain values for JSON (rounded to 4 decimals)."""
        rounded = (lambda v: None if v is None else round(v, 4))  # noqa: E731
        return {"statistic": self.statistic, "score": rounded(self.score), "direction": self.direction,
                "threshold": rounded(self.threshold), "reference": rounded(self.reference), "tail": self.tail}

    @classmethod
    def from_dict(cls, payload: dict, out_of_domain: bool) -> "DomainCheck":
        """The inverse of `to_dict` (values as rounded there)."""
        return cls(payload["statistic"], payload["score"], payload["threshold"], payload["reference"],
                   payload["tail"], payload["direction"], bool(out_of_domain))

    def warning(self, name: str) -> str:
        """The line `asr transcribe` prints on stderr for a flagged file."""
        return (f"warning: {name}: audio unlike the model's training data ({self.statistic.replace('_', ' ')} "
                f"{self.score:.2f}, dev {_ordinal(self.tail)} percentile {self.reference:.2f}); "
                "the transcript is likely wrong")


def _ordinal(percent: float) -> str:
    number = f"{percent:g}"
    if not number.isdigit():
        return number + "th"
    last_two = int(number) % 100
    suffix = "th" if 10 <= last_two <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(last_two % 10, "th")
    return number + suffix


def check_domain(stats: PosteriorStats, calibration: dict | None) -> DomainCheck | None:
    """The verdict on a file's pooled statistics; None without a calibration.

    Each rule's headroom is the distance from the threshold to the file's value, on the safe
    side positive, in units of the rule's dev spread |median - reference|; the file is flagged
    when any headroom is negative, and the verdict names the rule with the least. A rule whose
    statistic is undefined for the file is skipped; a file with no frames (silence) is never flagged.
    """
    if not calibration:
        return None
    values = stats.values()
    verdicts = []
    for rule in calibration["rules"]:
        score = values[rule["statistic"]]
        spread = max(abs(rule["median"] - rule["reference"]), 1e-9)
        headroom = None if score is None else (score - rule["threshold"]) / spread
        if headroom is not None and rule["direction"] == "above":
            headroom = -headroom
        verdicts.append((math.inf if headroom is None else headroom, score, rule))
    headroom, score, rule = min(verdicts, key=lambda verdict: verdict[0])
    return DomainCheck(rule["statistic"], score, float(rule["threshold"]), float(rule["reference"]),
                       float(rule["tail"]), rule["direction"], headroom < 0)


def calibration_from_values(values: Sequence[dict[str, float | None]],
                            statistics: Sequence[str] = DEFAULT_STATISTICS, percentile: float = DEFAULT_PERCENTILE,
                            margin: float = DEFAULT_MARGIN) -> dict:
    """The calibration dict (module docstring) from the dev set's per-utterance
    `PosteriorStats.values()`: one rule per statistic and direction (`DIRECTIONS`).

    DataError naming the problem for an unknown statistic, one undefined on every utterance, a
    percentile outside (0, 50) or a negative margin."""
    import numpy as np

    unknown = [name for name in statistics if name not in DIRECTIONS]
    if unknown or not statistics:
        raise DataError(f"unknown statistic {', '.join(unknown) or '(none)'}; choose from {', '.join(STATISTICS)}")
    if not 0 < percentile < 50 or margin < 0:
        raise DataError(f"need 0 < percentile < 50 and margin >= 0, got {percentile:g} and {margin:g}")
    columns = {name: np.array([v[name] for v in values if v.get(name) is not None], dtype=np.float64)
               for name in STATISTICS}
    points = (*PERCENTILES, 50, *(100 - q for q in reversed(PERCENTILES)))
    dev = {name: {**{f"p{p}": float(np.percentile(column, p)) for p in points}, "mean": float(column.mean())}
           for name, column in columns.items() if column.size}
    rules = []
    for name in statistics:
        if name not in dev:
            raise DataError(f"statistic {name} is undefined on every dev utterance (no frames)")
        median = float(np.median(columns[name]))
        for direction in DIRECTIONS[name]:
            tail = percentile if direction == "below" else 100 - percentile
            reference = float(np.percentile(columns[name], tail))
            rules.append({"statistic": name, "direction": direction, "tail": float(tail), "reference": reference,
                          "median": median, "threshold": reference - margin * (median - reference)})
    return {"version": CALIBRATION_VERSION, "percentile": float(percentile), "margin": float(margin),
            "utterances": len(values), "rules": rules, "dev": dev}


def manifest_values(transcriber, manifest: str | os.PathLike) -> list[dict[str, float | None]]:
    """Every utterance of `manifest` through `transcriber` (its chunking and pooling): the
    per-utterance `PosteriorStats.values()`, in manifest order."""
    from tqdm import tqdm

    from asr.data.manifest import read_manifest
    from asr.transcribe import group_by_duration

    records = read_manifest(manifest)
    if not records:
        raise DataError(f"{manifest}: manifest has no utterances")
    values: list[dict[str, float | None]] = []
    waves = ((transcriber.read(r["audio"]), float(r["duration"])) for r in records)
    with tqdm(total=len(records), desc="calibrate", unit="utt", disable=None) as bar:
        for group in group_by_duration(waves, transcriber.chunking.batch_s):
            values.extend(t.posteriors.values() for t in transcriber.transcribe_waveforms(group))
            bar.update(len(group))
    return values


def calibrate_checkpoint(model: str | os.PathLike, manifest: str | os.PathLike, out: str | os.PathLike | None = None,
                         statistics: Sequence[str] = DEFAULT_STATISTICS, percentile: float = DEFAULT_PERCENTILE,
                         margin: float = DEFAULT_MARGIN, device: str | None = None) -> tuple[Path, dict]:
    """Calibrate a checkpoint (a `.pt` file or an experiment folder, `resolve_checkpoint`) on a
    dev manifest and write it, with every other key kept, to `out` (default: in place), atomically.

    Returns (the written path, the calibration dict)."""
    from asr.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
    from asr.inference import InferenceModel
    from asr.transcribe import Transcriber

    path = resolve_checkpoint(model)
    payload = load_checkpoint(path)
    inference = InferenceModel(payload, device=device, path=path)
    transcriber = Transcriber(inference, _greedy(inference))
    calibration = calibration_from_values(manifest_values(transcriber, manifest), statistics, percentile, margin)
    calibration["manifest"] = str(manifest)
    out = Path(out) if out is not None else path
    save_checkpoint(out, {**payload, "calibration": calibration})
    return out, calibration


def _greedy(inference):
    from asr.decode import DecodingOptions, build_decoder

    return build_decoder(DecodingOptions(), inference.tokenizer, inference.seconds_per_frame)


def describe(calibration: dict) -> str:
    """One line: the rules and the dev figures they came from."""
    rules = " or ".join(f"{rule['statistic']} {'<' if rule['direction'] == 'below' else '>'} {rule['threshold']:.4f}"
                        for rule in calibration["rules"])
    low, high = _ordinal(calibration["percentile"]), _ordinal(100 - calibration["percentile"])
    return (f"flag when {rules} (dev: {calibration['utterances']} utterances; each threshold "
            f"{calibration['margin']:g} x |median - percentile| past the {low} or {high} percentile)")
