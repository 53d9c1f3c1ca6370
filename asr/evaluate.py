"""Decoding a manifest with a trained model, scoring it, tuning LM weights, writing the decode folder.

The path of one evaluation (`decode_manifest`)::

    manifest --loader--> batches --model--> log-probs --decoder (asr.decode)--> hypotheses
        --score (asr.score, the report's normalisation)--> exp/decode/<set>/<label>/
           hyp.txt, ref.txt (Kaldi `UTT-ID WORDS`), report.txt, results.json [, tuned.json]

With `tune`, the log-probs of the whole manifest are kept and decoded once per point of a grid of
LM weights and word scores; each point is scored exactly as the report is (`score_hypotheses`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from tqdm import tqdm

from asr.decode import BeamSearchDecoder, DecodingOptions, Hypothesis, build_decoder
from asr.errors import ConfigError, DataError
from asr.fileio import atomic_write_text
from asr.inference import VTLN_WARPS, check_warps, warp_scores


@dataclass(frozen=True)
class TuneGrid:
    """The LM weights and word scores `--tune` tries (every pair of the two)."""

    lm_weights: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)  # values of DecodingOptions.lm_weight
    word_scores: tuple[float, ...] = (-1.0, 0.0, 1.0, 2.0)  # values of DecodingOptions.word_score

    def __post_init__(self) -> None:
        if not self.lm_weights or not self.word_scores:
            raise ConfigError("--tune needs at least one LM weight and one word score")

    def points(self) -> list[tuple[float, float]]:
        """(lm_weight, word_score) pairs in search order: LM weight outer, word score inner."""
        return [(w, s) for w in self.lm_weights for s in self.word_scores]


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


def _stem(path: str | os.PathLike, suffixes: Sequence[str]) -> str:
    stem = Path(path).name
    for suffix in suffixes:
        stem = stem.removesuffix(suffix)
    return stem


def decoder_label(options: DecodingOptions) -> str:
    """Folder name of a decoder's results, distinct for every decoder, LM and lexicon:
    "greedy", "beam", "beam-<LM stem>", "beam-<LM stem>-lex-<lexicon stem>", "beam-lex-<lexicon stem>";
    a greedy word pause other than the default adds "-pause<seconds>" ("greedy-pause0.3")."""
    if options.decoder == "greedy":
        default = DecodingOptions.word_pause
        return "greedy" if options.word_pause == default else f"greedy-pause{options.word_pause:g}"
    label = "beam"
    if options.lm is not None:
        label += "-" + _stem(options.lm, (".gz", ".arpa", ".bin", ".binary", ".klm"))
    if options.lexicon is not None:
        label += "-lex-" + _stem(options.lexicon, (".gz", ".txt", ".lex", ".lexicon", ".words", ".vocab"))
    return label


def score_hypotheses(ids: Sequence[str], refs: Sequence[str], hyps: Sequence[str]):
    """The one scoring of a decode (`asr.score.score_texts`, its normalisation): the report's
    WER and every `--tune` point's are this function's, so they compare."""
    from asr.score import score_texts

    return score_texts(ids, refs, hyps)


def _decode_all(decoder, emissions: list[tuple[torch.Tensor, torch.Tensor]]) -> list[Hypothesis]:
    hyps: list[Hypothesis] = []
    for log_probs, lengths in emissions:
        hyps.extend(decoder.decode(log_probs, lengths))
    return hyps


def tune_weights(
    decoder: BeamSearchDecoder,
    emissions: list[tuple[torch.Tensor, torch.Tensor]],
    refs: Sequence[str],
    grid: TuneGrid = TuneGrid(),
) -> tuple[dict, list[dict], list[Hypothesis]]:
    """Grid search of LM weight and word score on log-probs computed once.

    Args:
        decoder: a beam decoder with an LM (its LM is loaded once and shared).
        emissions: batches of (log_probs (B, T, V), lengths (B,)), in the order of `refs`.
        refs: reference texts (normalised by `score_hypotheses`, as for the report).
        grid: the points to try.

    Returns:
        (best {"lm_weight", "word_score", "wer"}, the grid [{"lm_weight", "word_score", "wer"}],
        the hypotheses of the best point). WER in percent. Ties go to the first point in grid order.
    """
    if getattr(decoder, "lm_path", None) is None:
        raise ConfigError("--tune needs a beam decoder with an LM (--decoder beam --lm LM)")
    ids = [str(i) for i in range(len(refs))]
    points: list[dict] = []
    best: dict | None = None
    best_hyps: list[Hypothesis] = []
    for lm_weight, word_score in tqdm(grid.points(), desc="tune", unit="point", disable=None):
        hyps = _decode_all(decoder.with_weights(lm_weight, word_score), emissions)
        wer = 100 * score_hypotheses(ids, refs, [h.text for h in hyps]).wer
        points.append({"lm_weight": lm_weight, "word_score": word_score, "wer": wer})
        if best is None or wer < best["wer"]:
            best, best_hyps = points[-1], hyps
    return dict(best), points, best_hyps


# --- decoding a manifest -------------------------------------------------------------------------


@dataclass
class _Timing:
    """Seconds spent, for the real-time factors of results.json."""

    audio: float = 0.0  # seconds of audio decoded
    model: float = 0.0  # wall seconds in the model
    decoder: float = 0.0  # wall seconds in the decoder (with tuning: one pass over the grid's points)


@dataclass
class _Decoded:
    """Hypotheses of a manifest, in the loader's order, and what tuning found."""

    ids: list[str]
    hyps: list[Hypothesis]
    decoder: object  # the decoder whose hypotheses these are (tuned weights with --tune)
    tuning: dict = field(default_factory=dict)  # with --tune: {"tuned": best point, "tune_grid": points}


def _batches(model, records: list[dict], max_duration: float, num_workers: int, desc: str):
    """The manifest's batches (`asr.data.dataset.Batch`) in decoding order, with a progress bar."""
    from asr.data.dataset import make_loader

    loader = make_loader(records, model.tokenizer, max_duration, shuffle=False, seed=0,
                         num_workers=num_workers, sample_rate=model.sample_rate)
    return tqdm(loader, desc=desc, unit="batch", disable=None)


def _model_outputs(model, records: list[dict], max_duration: float, num_workers: int, desc: str,
                   timing: _Timing, warp_of: dict[str, float] | None = None,
                   ) -> Iterator[tuple[list[str], torch.Tensor, torch.Tensor]]:
    """Run the model over the manifest: per batch (utterance ids, log_probs (B, T, V), lengths (B,)).
    warp_of: utterance id -> the VTLN warp of its features (`speaker_warps`), or None."""
    for batch in _batches(model, records, max_duration, num_workers, desc):
        warp = None if warp_of is None else torch.tensor([warp_of[u] for u in batch.ids])
        start = time.perf_counter()
        log_probs, out_lengths = model(batch.waveforms, batch.wave_lengths, warp)
        timing.model += time.perf_counter() - start
        timing.audio += float(batch.wave_lengths.sum()) / model.sample_rate
        yield list(batch.ids), log_probs, out_lengths


def speaker_warps(model, records: list[dict], warps: Sequence[float] = VTLN_WARPS, max_duration: float = 200.0,
                  num_workers: int = 0, timing: _Timing | None = None, desc: str = "VTLN") -> dict[str, float]:
    """Test-time VTLN: per speaker (the records' `speaker`), the warp of `warps` under which the
    model is surest of what it hears: the highest mean over the speaker's output frames of the
    best token's log-probability (the best path's score: Kaldi chooses a speaker's VTLN warp by
    likelihood, this is the CTC model's own). One model pass per warp; the model time goes to `timing`."""
    speaker = {r["id"]: str(r["speaker"]) for r in records}
    totals: dict[str, torch.Tensor] = {}
    for batch in _batches(model, records, max_duration, num_workers, desc):
        start = time.perf_counter()
        scores = warp_scores(model, batch.waveforms, batch.wave_lengths, warps)  # (B, warps)
        if timing is not None:
            timing.model += time.perf_counter() - start
        for utt, row in zip(batch.ids, scores):
            spk = speaker[utt]
            totals[spk] = totals[spk] + row if spk in totals else row
    return {spk: float(warps[int(total.argmax())]) for spk, total in sorted(totals.items())}


def _decode_batches(decoder, outputs, timing: _Timing) -> _Decoded:
    """Decode each batch as the model gives it (nothing but the hypotheses is kept)."""
    ids: list[str] = []
    hyps: list[Hypothesis] = []
    for batch_ids, log_probs, lengths in outputs:
        start = time.perf_counter()
        hyps.extend(decoder.decode(log_probs, lengths))
        timing.decoder += time.perf_counter() - start
        ids.extend(batch_ids)
    return _Decoded(ids, hyps, decoder)


def _tune_batches(decoder, outputs, texts: dict[str, str], grid: TuneGrid, timing: _Timing) -> _Decoded:
    """Keep the log-probs of every batch, then search the grid on them (`tune_weights`)."""
    ids: list[str] = []
    emissions: list[tuple[torch.Tensor, torch.Tensor]] = []
    for batch_ids, log_probs, lengths in outputs:
        ids.extend(batch_ids)
        emissions.append((log_probs, lengths))
    start = time.perf_counter()
    best, points, hyps = tune_weights(decoder, emissions, [texts[u] for u in ids], grid)
    timing.decoder = (time.perf_counter() - start) / len(points)  # one decoding pass
    return _Decoded(ids, hyps, decoder.with_weights(best["lm_weight"], best["word_score"]),
                    {"tuned": best, "tune_grid": points})


def _check_tune(options: DecodingOptions, tune: TuneGrid | None) -> None:
    if tune is None:
        return
    if options.decoder != "beam" or options.lm is None:
        raise ConfigError("--tune and --tuned-from need --decoder beam with --lm")
    if options.tuned_from is not None:
        raise ConfigError("give either --tune or --tuned-from, not both")


def decode_manifest(
    exp: str | os.PathLike,
    manifest: str | os.PathLike,
    options: DecodingOptions = DecodingOptions(),
    *,
    checkpoint: str | os.PathLike | None = None,
    set_name: str | None = None,
    tune: TuneGrid | None = None,
    max_duration: float = 200.0,
    num_workers: int = 0,
    device: str | None = None,
    vtln_warps: Sequence[float] | None = None,
) -> dict:
    """Decode every utterance of a manifest with a trained model and score it.

    Writes under `exp/decode/<set>/<decoder_label(options)>/` (see `write_decode_dir`).

    Args:
        exp: experiment folder (outputs go there; the checkpoint too unless `checkpoint`).
        manifest: JSONL manifest to decode.
        options: the decoder and its settings.
        checkpoint: a `.pt` file; default: `asr.checkpoint.resolve_checkpoint(exp)`.
        set_name: name of the set in the output path; default: the manifest's file stem.
        tune: grid-search LM weight and word score on this manifest (log-probs computed once);
            the best point's hypotheses are the ones written, its weights go to tuned.json.
        max_duration: padded seconds of audio per model batch.
        num_workers: audio loading worker processes.
        device: "cpu", "cuda", ...; default CUDA when available.
        vtln_warps: test-time VTLN: each speaker's features are warped by the one of these warps
            that `speaker_warps` chooses (one more model pass per warp), e.g. VTLN_WARPS; the
            results go to `<label>-vtln/` and results.json's "vtln" names each speaker's warp.
            None: no warp.

    Returns:
        the dict written to results.json, plus "out_dir".
    """
    from asr.data.manifest import read_manifest
    from asr.inference import InferenceModel

    _check_tune(options, tune)
    records = read_manifest(manifest)
    if not records:
        raise DataError(f"{manifest}: manifest has no utterances")
    set_name = set_name or Path(manifest).name.removesuffix(".gz").removesuffix(".jsonl")
    model = InferenceModel.from_checkpoint(checkpoint if checkpoint is not None else exp, device=device)
    decoder = build_decoder(options, model.tokenizer, model.seconds_per_frame)
    timing = _Timing()
    warp_of = None
    if vtln_warps is not None:
        vtln_warps = check_warps(vtln_warps)
        chosen = speaker_warps(model, records, vtln_warps, max_duration, num_workers, timing, f"VTLN {set_name}")
        warp_of = {r["id"]: chosen[str(r["speaker"])] for r in records}
    outputs = _model_outputs(model, records, max_duration, num_workers, f"decode {set_name}", timing, warp_of)
    texts = {r["id"]: r["text"] for r in records}
    if tune is None:
        decoded = _decode_batches(decoder, outputs, timing)
    else:
        decoded = _tune_batches(decoder, outputs, texts, tune, timing)
    ids = sorted(decoded.ids)
    hyp_of = {u: h.text for u, h in zip(decoded.ids, decoded.hyps)}
    refs, hyp_texts = [texts[u] for u in ids], [hyp_of[u] for u in ids]
    result = score_hypotheses(ids, refs, hyp_texts)
    results = _results(set_name, manifest, model, decoded, result.summary(), timing, options)
    label = decoder_label(options)
    if vtln_warps is not None:
        results["vtln"] = {"warps": list(vtln_warps), "speakers": chosen}
        label += "-vtln"
    out_dir = Path(exp) / "decode" / set_name / label
    write_decode_dir(out_dir, ids, refs, hyp_texts, result, results, decoded.decoder)
    return {**results, "out_dir": str(out_dir)}


def _results(set_name: str, manifest, model, decoded: _Decoded, summary: dict, timing: _Timing,
             options: DecodingOptions) -> dict:
    """The contents of results.json."""
    rtf = (lambda seconds: seconds / timing.audio if timing.audio else None)  # noqa: E731
    results = {
        "set": set_name,
        "manifest": str(manifest),
        "checkpoint": str(model.path),
        "decoder_settings": decoded.decoder.settings(),
        **summary,
        "audio_seconds": timing.audio,
        "rtf": rtf(timing.model + timing.decoder),
        "rtf_model": rtf(timing.model),
        "rtf_decoder": rtf(timing.decoder),
        "device": str(model.device),
    }
    if options.tuned_from is not None:
        results["tuned_from"] = options.tuned_from
    if decoded.tuning:
        best = decoded.tuning["tuned"]
        results["tuned"] = {"lm_weight": best["lm_weight"], "word_score": best["word_score"], "wer": best["wer"]}
        results["tune_grid"] = decoded.tuning["tune_grid"]
    return results


def write_decode_dir(out_dir: Path, ids: Sequence[str], refs: Sequence[str], hyps: Sequence[str], result,
                     results: dict, decoder) -> None:
    """Write a decode folder, each file atomically: `hyp.txt`, `ref.txt` (Kaldi `UTT-ID WORDS`),
    `report.txt` (`asr.score.format_report` under a header naming set, checkpoint and decoder),
    `results.json` and, after tuning, `tuned.json` (the best LM weight and word score, reusable
    with `--tuned-from`)."""
    from asr.score import format_report, write_kaldi_text

    settings = decoder.settings()
    header = (f"set {results['set']}  manifest {results['manifest']}\ncheckpoint {results['checkpoint']}\n"
              f"decoder {json.dumps(settings)}\n")
    if getattr(decoder, "lexicon", None) is not None and decoder.lexicon.skipped_words:
        header += decoder.lexicon.report() + "\n"
    write_kaldi_text(out_dir / "hyp.txt", list(zip(ids, hyps)))
    write_kaldi_text(out_dir / "ref.txt", list(zip(ids, refs)))
    atomic_write_text(out_dir / "report.txt", header + format_report(result))
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    if "tuned" in results:
        tuned = {"lm": settings["lm"], **results["tuned"], "set": results["set"], "checkpoint": results["checkpoint"]}
        atomic_write_text(out_dir / "tuned.json", json.dumps(tuned, indent=2) + "\n")
