#!/usr/bin/env python
"""How often the out-of-domain flag fires: a model, manifests, the fraction of each flagged.

Each manifest's utterances go through `asr.transcribe.Transcriber` (the chunking and pooling
`asr transcribe` uses) and are judged against the checkpoint's calibration (`asr calibrate`), or,
with --calibrate-on DEV, against one computed here on DEV and not written anywhere. Then, per
manifest: utterances, the fraction flagged, and per statistic its median, 1st and 99th percentile
and the fraction each rule alone flags, so the statistics can be compared on the same audio.

    python scripts/check_flag.py --model recipes/synthetic/exp/demo \\
        recipes/synthetic/data/manifests/test.jsonl real_dev.jsonl

A manifest of real_dev: `asr prepare dir ../shared/data/real_dev/ljspeech --out real_dev.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asr import calibrate  # noqa: E402


def flag_rates(values: list[dict], calibration: dict) -> dict[str, float]:
    """The fraction of `values` (per-utterance statistics) flagged by the whole calibration ("all")
    and by each of its rules alone ("word_confidence<", "blank_ratio>", ...)."""
    rates = {}
    for rule in calibration["rules"]:
        threshold, below = rule["threshold"], rule["direction"] == "below"
        flags = [v[rule["statistic"]] is not None and (v[rule["statistic"]] < threshold if below
                                                       else v[rule["statistic"]] > threshold) for v in values]
        rates[rule["statistic"] + ("<" if below else ">")] = np.array(flags, dtype=bool)
    rates["all"] = np.any(list(rates.values()), axis=0)
    return {name: float(flags.mean()) if flags.size else 0.0 for name, flags in rates.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("manifests", nargs="+", help="JSONL manifests to judge (e.g. an in-domain test set, real_dev)")
    p.add_argument("--model", required=True, help="checkpoint .pt or experiment folder")
    p.add_argument("--calibrate-on", help="dev manifest to calibrate on here (default: the checkpoint's calibration)")
    p.add_argument("--statistics", default=",".join(calibrate.DEFAULT_STATISTICS), help="with --calibrate-on")
    p.add_argument("--percentile", type=float, default=calibrate.DEFAULT_PERCENTILE, help="with --calibrate-on")
    p.add_argument("--margin", type=float, default=calibrate.DEFAULT_MARGIN, help="with --calibrate-on")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--vtln", action="store_true",
                   help="judge the manifests transcribed with test-time VTLN (asr transcribe --vtln), against the "
                        "calibration made without it (as asr calibrate makes it)")
    args = p.parse_args(argv)

    from asr.transcribe import Transcriber

    transcriber = Transcriber.from_checkpoint(args.model, device=args.device)
    if args.calibrate_on:
        dev = calibrate.manifest_values(transcriber, args.calibrate_on)
        transcriber.calibration = calibrate.calibration_from_values(dev, args.statistics.split(","), args.percentile,
                                                                    args.margin)
    elif transcriber.calibration is None:
        print(f"{args.model}: checkpoint is not calibrated (asr calibrate, or --calibrate-on DEV)", file=sys.stderr)
        return 1
    print(calibrate.describe(transcriber.calibration))
    if args.vtln:
        from asr.inference import VTLN_WARPS

        calibration = transcriber.calibration
        transcriber = Transcriber(transcriber.inference, transcriber.decoder, transcriber.chunking, VTLN_WARPS)
        transcriber.calibration = calibration
        print("manifests transcribed with test-time VTLN")
    report = {}
    for manifest in args.manifests:
        values = calibrate.manifest_values(transcriber, manifest)
        rates = flag_rates(values, transcriber.calibration)
        report[manifest] = {"utterances": len(values), "flagged": rates, "statistics": {}}
        by_rule = "  ".join(f"{name} {100 * rate:.1f}%" for name, rate in rates.items() if name != "all")
        print(f"{manifest}: {len(values)} utterances, {100 * rates['all']:.1f}% flagged (alone: {by_rule})")
        for name in calibrate.STATISTICS:
            column = np.array([v[name] for v in values if v[name] is not None], dtype=np.float64)
            row = {"defined": int(column.size)}
            if column.size:
                row.update(p1=float(np.percentile(column, 1)), median=float(np.median(column)),
                           p99=float(np.percentile(column, 99)))
            report[manifest]["statistics"][name] = row
            print(f"  {name:17s} " + "  ".join(f"{k} {v:.3f}" if k != "defined" else f"{k} {v:4d}"
                                               for k, v in row.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
