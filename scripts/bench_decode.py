#!/usr/bin/env python
"""Real-time factor of transcription with greedy and beam search (+ word LM) on one CPU thread.

The utterances of the manifest go through the `Transcriber` as `asr transcribe` runs files:
in groups of about `--batch-s` seconds of audio whose chunks share model batches (or one at a
time with `--one-by-one`): silence split, features, CMVN, model, decoder, word times. Reading the
audio from disk is not timed (the waveforms are loaded first); everything after it is. One
warm-up group per decoder is run and not counted.

    python scripts/bench_decode.py --model exp/demo --manifest data/manifests/test.jsonl \\
        --lm data/lm/4gram.arpa --max-utts 200

prints, per decoder: seconds of audio, wall seconds, x real time (audio s / wall s), the part of
the wall time spent in the model (features + network) and in the search, and the WER against the
manifest's text -- of the median of `--repeat` timed runs, with the range of x real time over them
(a shared machine's figures vary by tens of percent from run to run).

`--backends torch,onnx,onnx-int8` runs every decoder row with the PyTorch model and with its
`asr export` ONNX model, fp32 and dynamic int8, on onnxruntime with the same thread count (the
features are computed by the same torch front-end in every row); the WER column then shows what
int8 costs.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402


class _Timed:
    """Wraps a callable (the model, or a decoder's `decode`) and adds up its wall time."""

    def __init__(self, function):
        self.function = function
        self.seconds = 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.function(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def bench(inference, decoder, waveforms, refs, label: str, batch_s: float, repeat: int = 1,
          vtln_warps=None) -> dict:
    """Transcribe every waveform with `decoder`, `repeat` times; returns the row of the table for
    the run with the median wall time, and the range of x real time over the runs. vtln_warps:
    test-time VTLN per waveform (`Transcriber`), its extra model passes counted as model time."""
    from types import SimpleNamespace

    from asr.score import wer_cer
    from asr.transcribe import ChunkingConfig, Transcriber, group_by_duration

    search_time = _Timed(decoder.decode)
    decoder.decode = search_time
    transcriber = Transcriber(inference, decoder, ChunkingConfig(batch_s=max(batch_s, ChunkingConfig.max_chunk_s)),
                              vtln_warps)
    if vtln_warps is None:
        model_time = transcriber.inference = _Timed(inference.forward)
    else:  # the warp needs the model's features and network apart: one clock for both
        model_time = _Timed(lambda run, *args: run(*args))
        transcriber.inference = SimpleNamespace(features=lambda *a: model_time(inference.features, *a),
                                                run_features=lambda *a: model_time(inference.run_features, *a))
    rate = transcriber.sample_rate
    # Groups of about batch_s seconds, as asr transcribe groups files (batch_s <= 0: one at a time).
    plan = list(group_by_duration(((w, len(w) / rate) for w in waveforms), batch_s))
    transcriber.transcribe_waveforms(plan[0])  # warm-up, not counted
    audio = sum(len(w) for w in waveforms) / transcriber.sample_rate
    runs = []
    for _ in range(repeat):
        model_time.seconds = search_time.seconds = 0.0
        hyps = []
        start = time.perf_counter()
        for group in plan:
            hyps.extend(t.text for t in transcriber.transcribe_waveforms(group))
        wall = time.perf_counter() - start
        runs.append((wall, model_time.seconds, search_time.seconds))
    wall, model_s, search_s = sorted(runs)[len(runs) // 2]
    wer, _ = wer_cer(refs, hyps) if any(refs) else (float("nan"), None)
    return {"decoder": label, "audio_s": audio, "wall_s": wall, "rtfx": audio / wall,
            "rtfx_range": (audio / max(r[0] for r in runs), audio / min(r[0] for r in runs)),
            "model_s": model_s, "search_s": search_s, "wer": wer}


BACKENDS = ("torch", "onnx", "onnx-int8")  # PyTorch fp32; the `asr export` ONNX model, fp32 and int8, on onnxruntime


def load_backends(names: list[str], inference, model: str, export_dir: str | None, workdir: str) -> list[tuple]:
    """(name, inference model) per backend row. The ONNX rows run `export_dir`'s model.onnx /
    model.int8.onnx (an `asr export` folder); without one, `model` is exported into `workdir` first
    (untimed)."""
    from asr.errors import AsrError
    from asr.export import export_model
    from asr.onnx_backend import INT8_NAME, ONNX_NAME, OnnxInferenceModel

    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise AsrError(f"unknown backend {unknown[0]!r}: use {', '.join(BACKENDS)}")
    if export_dir is None and any(n != "torch" for n in names):
        export_dir = str(export_model(model, workdir, ("onnx",), int8="onnx-int8" in names).out_dir)
    files = {"onnx": ONNX_NAME, "onnx-int8": INT8_NAME}
    return [(n, inference if n == "torch" else OnnxInferenceModel(Path(export_dir) / files[n])) for n in names]


def main(argv: list[str] | None = None) -> int:
    from asr.decode import DecodingOptions

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint .pt or experiment folder")
    parser.add_argument("--manifest", required=True, help="JSONL manifest (id, audio, duration, text)")
    parser.add_argument("--lm", help="word n-gram LM (ARPA or KenLM binary) for the beam + LM row")
    parser.add_argument("--lexicon", help="word list for the beam + LM row (default: the ARPA's words)")
    parser.add_argument("--max-utts", type=int, default=200, help="utterances from the start of the manifest")
    parser.add_argument("--beam-size", type=int, default=DecodingOptions.beam_size)
    parser.add_argument("--lm-weight", type=float, default=DecodingOptions.lm_weight)
    parser.add_argument("--word-score", type=float, default=DecodingOptions.word_score)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the targets are for 1)")
    parser.add_argument("--batch-s", type=float, default=160.0,
                        help="seconds of audio transcribed together (asr transcribe's grouping; default 160)")
    parser.add_argument("--one-by-one", action="store_true", help="transcribe one utterance at a time")
    parser.add_argument("--repeat", type=int, default=5,
                        help="timed runs per decoder; the median is reported, with the range (default 5)")
    parser.add_argument("--input-rate", type=int, default=None,
                        help="first bring each utterance to this sample rate (e.g. 8000: as if recorded at "
                             "8 kHz), then back to the model's, as reading such a file does (untimed)")
    parser.add_argument("--decoders", default="greedy,beam,beam+lm",
                        help="rows to run, from greedy, beam, beam+lm (beam+lm needs --lm)")
    parser.add_argument("--backends", default="torch",
                        help="models to run each decoder row with, from torch (PyTorch fp32), onnx, onnx-int8 "
                             "(onnxruntime, same thread count), e.g. torch,onnx,onnx-int8 (default torch)")
    parser.add_argument("--export", help="an `asr export` folder for the onnx rows (default: --model is "
                        "exported to a temporary folder first, untimed)")
    parser.add_argument("--vtln", action="store_true", help="test-time VTLN per utterance, as asr transcribe --vtln")
    args = parser.parse_args(argv)

    from asr.audio import load_audio, resample
    from asr.checkpoint import resolve_checkpoint
    from asr.data.manifest import read_manifest
    from asr.decode import build_decoder
    from asr.errors import AsrError
    from asr.inference import VTLN_WARPS, InferenceModel
    from asr.model import count_parameters

    torch.set_num_threads(args.threads)
    try:
        inference = InferenceModel.from_checkpoint(args.model, device="cpu")
        records = read_manifest(args.manifest)[: args.max_utts]
        if not records:
            raise AsrError(f"{args.manifest}: no utterances")
        rate = args.input_rate or inference.sample_rate
        waveforms = [resample(load_audio(r["audio"], rate), rate, inference.sample_rate) for r in records]
        refs = [r.get("text", "") for r in records]
        rows = []
        workdir = tempfile.TemporaryDirectory(prefix="bench-export-")
        backends = load_backends(args.backends.split(","), inference, args.model, args.export, workdir.name)
        for (backend, model), label in itertools.product(backends, args.decoders.split(",")):
            if label == "greedy":
                options = DecodingOptions()  # what asr decode and asr transcribe do by default
            elif label == "beam":
                options = DecodingOptions(decoder="beam", beam_size=args.beam_size)
            elif label == "beam+lm":
                if not args.lm:
                    print("skipping beam+lm: no --lm given", file=sys.stderr)
                    continue
                options = DecodingOptions(decoder="beam", beam_size=args.beam_size, lm=args.lm, lexicon=args.lexicon,
                                          lm_weight=args.lm_weight, word_score=args.word_score)
            else:
                raise AsrError(f"unknown decoder row {label!r}: use greedy, beam, beam+lm")
            decoder = build_decoder(options, inference.tokenizer, inference.seconds_per_frame)
            rows.append(bench(model, decoder, waveforms, refs, label, 0.0 if args.one_by_one else args.batch_s,
                              max(1, args.repeat), VTLN_WARPS if args.vtln else None) | {"backend": backend})
    except AsrError as err:
        print(f"bench_decode: error: {err}", file=sys.stderr)
        return 1

    config = inference.model_config
    print(f"model {resolve_checkpoint(args.model)}: {config.rnn_type} {config.layers}x{config.hidden} "
          f"{'bi' if config.bidirectional else 'uni'}directional, subsample {config.subsample}, "
          f"{count_parameters(inference.model) / 1e6:.2f}M parameters; {len(records)} utterances; "
          f"torch threads {torch.get_num_threads()}; "
          f"{'one at a time' if args.one_by_one else f'groups of {args.batch_s:g} s'}; beam size {args.beam_size}; "
          f"median of {args.repeat} runs"
          + (f"; audio through {args.input_rate} Hz" if args.input_rate else "")
          + ("; test-time VTLN per utterance" if args.vtln else "")
          + (f"; LM {args.lm} (weight {args.lm_weight}, word score {args.word_score})" if args.lm else ""))
    header = (f"{'backend':<10} {'decoder':<10} {'audio s':>9} "
              f"{'wall s':>8} {'x real time':>12} {'(range)':>11} {'model s':>8} "
              f"{'search s':>9} {'WER %':>7}")
    print(header)
    print("-" * len(header))
    for row in rows:
        low, high = row["rtfx_range"]
        print(f"{row['backend']:<10} {row['decoder']:<10} {row['audio_s']:>9.1f} "
              f"{row['wall_s']:>8.2f} {row['rtfx']:>12.0f} "
              f"{f'{low:.0f}-{high:.0f}':>11} "
              f"{row['model_s']:>8.2f} {row['search_s']:>9.2f} {100 * row['wer']:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
