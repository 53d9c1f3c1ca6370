#!/usr/bin/env python
"""Does changing the input at test time help a trained model on voices it never heard?

Greedy WER/CER of each manifest as it is and through each test-time change:

    as-is        the audio as `asr decode` reads it
    8k           band-limited through 8 kHz (resampled down and back up)
    speed F      resampled so that it plays F times faster (pitch and tempo together)
    tempo F      the features stretched in time to F times as many frames (linear interpolation):
                 slower speech at the same pitch
    warp W       features through Kaldi's VTLN warp W (`compute_features(warp=)`; the demo model is
                 trained with vocal tract length perturbation, so it has seen such warps)
    pick/utt     per utterance, the warp whose best path has the highest mean log-probability
                 (VTLN's maximum-likelihood choice, with the model's own posteriors)
    pick/speaker the same choice made once per speaker, over all of its utterances
    oracle       per utterance, the warp with the fewest character errors: a bound, not a method

    python scripts/probe_test_time.py --model recipes/synthetic/exp/demo real_dev.jsonl \\
        recipes/synthetic/data/manifests/test.jsonl

One thread, CPU. A manifest of real_dev: see README "What it measures here".
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asr.audio import load_audio, resample  # noqa: E402
from asr.data.manifest import read_manifest  # noqa: E402
from asr.decode import GreedyDecoder, best_path_scores  # noqa: E402
from asr.frontend import utterance_mean_removed  # noqa: E402
from asr.inference import InferenceModel  # noqa: E402
from asr.score import score_texts, speaker_of  # noqa: E402


def greedy(inference: InferenceModel, decoder: GreedyDecoder, wave: torch.Tensor,
           warp: float | None = None, stretch: float = 1.0) -> tuple[str, float]:
    """One utterance -> (greedy text, mean over output frames of the best token's log-probability)."""
    feats, frames = inference.features(wave[None], torch.tensor([wave.numel()]),
                                       None if warp is None else torch.tensor([warp]))
    if stretch != 1.0:  # CMVN is affine per dimension, so stretching after it is stretching before it
        frames = torch.tensor([round(int(frames[0]) * stretch)])
        feats = torch.nn.functional.interpolate(feats.transpose(1, 2), size=int(frames[0]), mode="linear",
                                                align_corners=True).transpose(1, 2)
        if inference.feature_config.utterance_cmn:  # the stretched utterance's own mean
            feats = utterance_mean_removed(feats, frames)
    log_probs, out_lengths = inference.run_features(feats, frames)
    score = float(best_path_scores(log_probs, out_lengths)[0]) / int(out_lengths[0]) if out_lengths[0] else -math.inf
    return decoder.decode(log_probs, out_lengths)[0].text, score


def probe(inference: InferenceModel, records: list[dict], warps: list[float], speeds: list[float],
          tempos: list[float] = ()) -> dict:
    """{variant: hypotheses in the order of `records`}."""
    decoder = GreedyDecoder(inference.tokenizer)
    rate = inference.sample_rate
    hyps: dict[str, list[str]] = defaultdict(list)
    warped = []  # per utterance {warp: (text, mean log-prob)}
    for record in records:
        wave = load_audio(record["audio"], rate)
        hyps["as-is"].append(greedy(inference, decoder, wave)[0])
        hyps["8k"].append(greedy(inference, decoder, resample(resample(wave, rate, 8000), 8000, rate))[0])
        for factor in speeds:
            hyps[f"speed {factor:g}"].append(greedy(inference, decoder, resample(wave, round(rate * factor), rate))[0])
        for factor in tempos:
            hyps[f"tempo {factor:g}"].append(greedy(inference, decoder, wave, stretch=factor)[0])
        warped.append({w: greedy(inference, decoder, wave, warp=w) for w in warps})
    for w in warps:
        hyps[f"warp {w:g}"] = [by_warp[w][0] for by_warp in warped]
    hyps["pick/utt"] = [max(by_warp.values(), key=lambda v: v[1])[0] for by_warp in warped]
    totals: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    speakers = [record.get("speaker") or speaker_of(record["id"]) for record in records]
    for speaker, by_warp in zip(speakers, warped):
        for w, (_, score) in by_warp.items():
            totals[speaker][w] += score
    chosen = {speaker: max(scores, key=scores.get) for speaker, scores in totals.items()}
    hyps["pick/speaker"] = [by_warp[chosen[s]][0] for s, by_warp in zip(speakers, warped)]
    oracle = []
    for record, by_warp in zip(records, warped):
        oracle.append(min(by_warp.values(), key=lambda v: score_texts(["u"], [record["text"]], [v[0]]).cer)[0])
    hyps["oracle"] = oracle
    hyps["_chosen"] = chosen
    return hyps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("manifests", nargs="+", help="manifests to decode")
    p.add_argument("--model", required=True, help="checkpoint or experiment folder")
    p.add_argument("--warps", default="0.85,0.9,0.95,1.0,1.05,1.1,1.15", help="VTLN warps (comma-separated)")
    p.add_argument("--speeds", default="0.9,1.1", help="speed factors (comma-separated)")
    p.add_argument("--tempos", default="1.11", help="feature stretch factors (comma-separated)")
    p.add_argument("--max-utts", type=int, default=None, help="first N utterances of each manifest")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    inference = InferenceModel.from_checkpoint(args.model, device="cpu")
    warps = [float(w) for w in args.warps.split(",")]
    speeds = [float(s) for s in args.speeds.split(",") if s]
    for manifest in args.manifests:
        records = read_manifest(manifest)[: args.max_utts]
        hyps = probe(inference, records, warps, speeds, [float(t) for t in args.tempos.split(",") if t])
        chosen = hyps.pop("_chosen")
        ids, refs = [r["id"] for r in records], [r["text"] for r in records]
        print(f"{manifest}: {len(records)} utterances; warp picked per speaker: "
              + ", ".join(f"{s} {w:g}" for s, w in sorted(chosen.items())[:10])
              + (" ..." if len(chosen) > 10 else ""))
        print(f"  {'variant':<14}{'WER %':>8}{'CER %':>8}")
        for name, texts in hyps.items():
            result = score_texts(ids, refs, texts)
            print(f"  {name:<14}{100 * result.wer:8.2f}{100 * result.cer:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
