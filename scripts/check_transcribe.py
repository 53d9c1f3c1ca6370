"""Transcribe awkward inputs end to end and check the word times: an 8 kHz mono WAV and a 44.1 kHz
stereo 24-bit WAV (with the same speech at 16 kHz beside them, for comparison) and a long FLAC, all
built from a corpus's test utterances (whose transcripts are known), through `asr.transcribe` as a
user would run it.

    python scripts/check_transcribe.py --model recipes/synthetic/exp/demo \
        --corpus recipes/synthetic/data/corpus/test --minutes 30 [--lm LM --tuned-from tuned.json]

Prints, per file: duration, words, whether every word's start/end lies inside the file and in
order, and WER against the references.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import jiwer
import numpy as np
import soundfile
import torch

from asr.audio import resample
from asr.decode import DecodingOptions
from asr.evaluate import load_tuned
from asr.transcribe import Transcriber

RATE = 16000


def read_test_utterances(corpus: Path) -> list[tuple[np.ndarray, str]]:
    """(waveform at 16 kHz, transcript) for each utterance of a LibriSpeech-layout subset."""
    texts = {}
    for trans in sorted(corpus.glob("*/*/*.trans.txt")):
        for line in trans.read_text().splitlines():
            uid, text = line.split(" ", 1)
            texts[uid] = text
    out = []
    for flac in sorted(corpus.glob("*/*/*.flac")):
        audio, rate = soundfile.read(flac, dtype="float32")
        assert rate == RATE, f"{flac}: expected {RATE} Hz"
        out.append((audio, texts[flac.stem]))
    if not out:
        sys.exit(f"no utterances under {corpus}")
    return out


def concatenate(utterances, seconds: float, seed: int = 0) -> tuple[np.ndarray, str]:
    """Utterances in order (cycling) with 0.6 s of quiet room noise after each, until `seconds`
    of audio: (16 kHz waveform, reference text)."""
    rng = np.random.default_rng(seed)
    pieces, refs, total, i = [], [], 0.0, 0
    while total < seconds:
        utt_audio, utt_text = utterances[i % len(utterances)]
        gap = (1e-4 * rng.standard_normal(int(0.6 * RATE))).astype(np.float32)
        pieces += [utt_audio, gap]
        refs.append(utt_text)
        total += (len(utt_audio) + len(gap)) / RATE
        i += 1
    return np.concatenate(pieces), " ".join(refs)


def build_inputs(utterances, folder: Path, minutes: float, short_minutes: float) -> dict[Path, str]:
    """Write the four files; return {path: reference text}. The 16, 8 and 44.1 kHz files hold the
    same `short_minutes` of speech, so their WERs compare."""
    audio, text = concatenate(utterances, short_minutes * 60)
    soundfile.write(folder / "same_16k.flac", audio, RATE, subtype="PCM_16")
    narrow = resample(torch.from_numpy(audio), RATE, 8000).numpy()
    soundfile.write(folder / "narrowband_8k.wav", narrow, 8000, subtype="PCM_16")
    wide = resample(torch.from_numpy(audio), RATE, 44100).numpy()
    soundfile.write(folder / "stereo_44k.wav", np.stack([wide, 0.8 * wide], axis=1), 44100, subtype="PCM_24")
    long_audio, long_text = concatenate(utterances, minutes * 60)
    soundfile.write(folder / "long.flac", long_audio, RATE, subtype="PCM_16")
    return {folder / "same_16k.flac": text, folder / "narrowband_8k.wav": text, folder / "stereo_44k.wav": text,
            folder / "long.flac": long_text}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint or experiment folder")
    parser.add_argument("--corpus", required=True, help="a LibriSpeech-layout subset folder (e.g. .../corpus/test)")
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the long file (default 30)")
    parser.add_argument("--short-minutes", type=float, default=3.0,
                        help="length of the 16 kHz, 8 kHz and 44.1 kHz stereo files (default 3)")
    parser.add_argument("--lm", help="beam search with this word LM (else greedy)")
    parser.add_argument("--tuned-from", help="LM weight and word score from asr decode --tune")
    args = parser.parse_args()

    options = DecodingOptions()
    if args.lm:
        tuned = {**load_tuned(args.tuned_from), "tuned_from": args.tuned_from} if args.tuned_from else {}
        options = DecodingOptions(decoder="beam", lm=args.lm, **tuned)
    transcriber = Transcriber.from_checkpoint(args.model, options=options)
    with tempfile.TemporaryDirectory() as tmp:
        inputs = build_inputs(read_test_utterances(Path(args.corpus)), Path(tmp), args.minutes,
                              args.short_minutes)
        all_ok = True
        for path, ref in inputs.items():
            info = soundfile.info(path)
            start = time.perf_counter()
            result = transcriber.transcribe(str(path))
            wall = time.perf_counter() - start
            words = result.words
            inside = all(0.0 <= w.start <= w.end <= result.duration + 1e-6 for w in words)
            ordered = all(a.start <= b.start for a, b in zip(words, words[1:]))
            all_ok &= inside and ordered and bool(words)
            print(f"{path.name}: {info.samplerate} Hz x {info.channels} ch, {result.duration:.1f} s in {wall:.1f} s, "
                  f"{len(words)} words, times inside the file: {inside}, in order: {ordered}, "
                  f"WER {100 * jiwer.wer(ref, result.text or '<empty>'):.1f}%")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
