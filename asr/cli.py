"""The `asr` command: a thin layer over the package's modules.

Each verb has one `_add_<verb>` function that declares its arguments and one `_run_<verb>` function
that calls into the package. A user error (`AsrError`) becomes one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import sys

from asr.errors import AsrError


# --- prepare ---------------------------------------------------------------------------------
def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="write manifests for LibriSpeech or any corpus in its layout")
    p.set_defaults(func=_run_prepare)
    kinds = p.add_subparsers(dest="corpus", required=True, metavar="CORPUS")
    libri = kinds.add_parser(
        "librispeech", help="LibriSpeech subsets: optional download + extraction, one manifest per subset",
        description="Manifests for LibriSpeech subsets (openslr 12, and 31 for dev-clean-2/train-clean-5). "
        "Archives go to DATA_DIR/downloads, audio to DATA_DIR/LibriSpeech/<subset>, manifests to "
        "DATA_DIR/manifests/<subset>.jsonl; audio paths in a manifest are relative to the manifest.")
    libri.add_argument("--data-dir", required=True, help="folder for downloads, audio and manifests")
    libri.add_argument("--subsets", required=True, help="comma-separated, e.g. dev-clean,train-clean-100")
    libri.add_argument("--download", action="store_true", help="download (resumable, MD5-checked) and extract first")
    libri.add_argument("--mirror", default=None,
                       help="base URL replacing https://www.openslr.org/resources (env ASR_LIBRISPEECH_MIRROR)")
    libri.add_argument("--manifest-dir", default=None, help="where manifests go (default DATA_DIR/manifests)")
    libri.add_argument("--num-workers", type=int, default=None, help="processes reading headers (default: CPUs, max 8)")
    folder = kinds.add_parser(
        "dir", help="one folder in LibriSpeech layout -> one manifest",
        description="Manifest for one folder laid out as <speaker>/<chapter>/*.flac (or any audio format "
        "libsndfile reads) + <speaker>-<chapter>.trans.txt. Audio paths are relative to the manifest.")
    folder.add_argument("corpus_root", metavar="CORPUS_ROOT", help="the subset folder (holds <speaker>/ folders)")
    folder.add_argument("--out", required=True, help="manifest to write (.jsonl)")
    folder.add_argument("--num-workers", type=int, default=None, help="processes reading headers (default: CPUs, max 8)")


def _run_prepare(args) -> int:
    from asr.data import librispeech

    if args.corpus == "librispeech":
        subsets = [s.strip() for s in args.subsets.split(",") if s.strip()]
        summaries = librispeech.prepare_librispeech(
            args.data_dir, subsets, download=args.download, mirror=args.mirror,
            manifest_dir=args.manifest_dir, num_workers=args.num_workers)
    else:
        summaries = [librispeech.prepare_corpus(args.corpus_root, args.out, args.num_workers)]
    for summary in summaries:
        print(summary.format())
    return 0


# --- synth -----------------------------------------------------------------------------------
def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="generate the synthetic espeak-ng corpus in LibriSpeech layout")
    p.set_defaults(func=_run_synth)


def _run_synth(args) -> int:
    raise AsrError("asr synth: not implemented yet")


# --- train / stats / average -----------------------------------------------------------------
def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a BiRNN-CTC model")
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    raise AsrError("asr train: not implemented yet")


# --- decode / lm / score ---------------------------------------------------------------------
def _add_decode(sub) -> None:
    p = sub.add_parser("decode", help="decode a manifest with a trained model")
    p.set_defaults(func=_run_decode)


def _run_decode(args) -> int:
    raise AsrError("asr decode: not implemented yet")


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="WER/CER of hypotheses against references")
    p.set_defaults(func=_run_score)


def _run_score(args) -> int:
    raise AsrError("asr score: not implemented yet")


# --- transcribe ------------------------------------------------------------------------------
def _add_transcribe(sub) -> None:
    p = sub.add_parser("transcribe", help="transcribe audio files with a trained model")
    p.set_defaults(func=_run_transcribe)


def _run_transcribe(args) -> int:
    raise AsrError("asr transcribe: not implemented yet")


# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr", description="RNN-CTC speech recognition toolkit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_prepare, _add_synth, _add_train, _add_decode, _add_score, _add_transcribe):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except AsrError as err:
        print(f"asr {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"asr {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
