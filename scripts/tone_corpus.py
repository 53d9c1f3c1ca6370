#!/usr/bin/env python
"""A tiny corpus of tones, for checks that must run without espeak-ng or a network.

Each utterance is a sine tone plus a little noise (its pitch follows the utterance number, as in
tests/test_train.py's corpus), with a transcript of words from a three-letter alphabet; FLAC
files and a JSONL manifest per split:

    OUT/train/*.flac  OUT/train.jsonl      (--train utterances)
    OUT/valid/*.flac  OUT/valid.jsonl      (--valid utterances)

Durations run evenly from --min-seconds to --max-seconds. A model learns little from it; it
exercises the whole data path (reading, features, batching, CTC) in seconds.

    python scripts/tone_corpus.py --out /tmp/tones --train 200 --valid 20
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import soundfile

SAMPLE_RATE = 16000
WORDS = ["AB", "BA", "CAB", "A", "ABBA", "BAC"]


def write_split(out: Path, name: str, count: int, min_seconds: float, max_seconds: float, seed: int) -> Path:
    """`count` tone utterances under out/name/ and their manifest out/name.jsonl; returns its path."""
    rng = np.random.default_rng(seed)
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        seconds = min_seconds + (max_seconds - min_seconds) * (i % 13) / 12
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        wave = 0.1 * np.sin(2 * np.pi * (200 + 50 * (i % 6)) * t) + 0.01 * rng.standard_normal(len(t))
        path = folder / f"{name}-{i}.flac"
        soundfile.write(path, wave.astype(np.float32), SAMPLE_RATE)
        words = max(1, int(seconds * 1.5))  # a few characters a second: always alignable by CTC
        text = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(words))
        lines.append(json.dumps({"id": f"{name}-{i}", "audio": f"{name}/{path.name}", "duration": len(t) / SAMPLE_RATE,
                                 "text": text, "speaker": f"tone{i % 4}"}))
    manifest = out / f"{name}.jsonl"
    manifest.write_text("".join(line + "\n" for line in lines))
    return manifest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the audio and the manifests")
    p.add_argument("--train", type=int, default=200, help="training utterances [200]")
    p.add_argument("--valid", type=int, default=20, help="validation utterances [20]")
    p.add_argument("--min-seconds", type=float, default=1.0, help="shortest utterance [1.0]")
    p.add_argument("--max-seconds", type=float, default=12.0, help="longest utterance [12.0]")
    p.add_argument("--seed", type=int, default=0, help="noise seed [0]")
    args = p.parse_args(argv)
    if not 0 < args.min_seconds <= args.max_seconds:
        p.error("need 0 < --min-seconds <= --max-seconds")
    out = Path(args.out)
    for name, count, seed in (("train", args.train, args.seed), ("valid", args.valid, args.seed + 1)):
        manifest = write_split(out, name, count, args.min_seconds, args.max_seconds, seed)
        print(f"{manifest}: {count} utterances")
    return 0


if __name__ == "__main__":
    sys.exit(main())
