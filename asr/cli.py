"""The `asr` command: a thin layer over the package's modules.

Each verb has one `_add_<verb>` function that declares its arguments and one `_run_<verb>` function
that calls into the package. A user error (`AsrError`) becomes one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import os
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
    combine = kinds.add_parser(
        "combine", help="several manifests -> one (e.g. train-clean-100 + train-clean-360)",
        description="Concatenate manifests into one, audio paths made relative to the new manifest; "
        "an utterance id found in two inputs is an error.")
    combine.add_argument("inputs", nargs="+", metavar="MANIFEST", help="manifests to combine, in order")
    combine.add_argument("--out", required=True, help="manifest to write (.jsonl)")


def _run_prepare(args) -> int:
    from asr.data import librispeech

    if args.corpus == "combine":
        summaries = [librispeech.combine_manifests(args.inputs, args.out)]
    elif args.corpus == "librispeech":
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
    p = sub.add_parser(
        "synth", help="generate the synthetic espeak-ng corpus in LibriSpeech layout",
        description="espeak-ng voices (English variant x voice variant, own rate and pitch; one voice = "
        "one speaker id) read sentences from the built-in grammar (or --text) into OUT/{train,dev,test}/"
        "<speaker>/<chapter>/*.flac (16 kHz) + *.trans.txt. Test and dev voices never occur in train. "
        "Seeded: the same options give identical files. Resumable: complete chapters and splits are kept.")
    p.add_argument("--out", help="corpus root to write (required unless --voices)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--train-utts", type=int, default=None, help="train utterances (default 2000)")
    size.add_argument("--hours-train", type=float, default=None,
                      help="about this many hours of train audio (estimated from the texts)")
    p.add_argument("--dev-utts", type=int, default=100, help="dev utterances (default 100)")
    p.add_argument("--test-utts", type=int, default=100, help="test utterances, unseen voices (default 100)")
    p.add_argument("--dev-voices", type=int, default=12, help="voices reserved for dev (default 12)")
    p.add_argument("--test-voices", type=int, default=16, help="voices reserved for test (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seeds texts, voices and noise (default 0)")
    p.add_argument("--text", default=None, help="text file, one sentence a line, instead of the grammar")
    p.add_argument("--no-augment", action="store_true",
                   help="no random level and no background noise (on by default, at a low level)")
    p.add_argument("--num-workers", type=int, default=None, help="processes (default: CPU count)")
    p.add_argument("--voices", action="store_true", help="list the voices of each split and exit")
    p.set_defaults(func=_run_synth)


def _run_synth(args) -> int:
    from asr.data import synthetic

    config = synthetic.SynthConfig(
        seed=args.seed, dev_utts=args.dev_utts, test_utts=args.test_utts,
        train_utts=2000 if args.train_utts is None else args.train_utts, hours_train=args.hours_train,
        text_file=args.text, dev_voices=args.dev_voices, test_voices=args.test_voices,
        augment=not args.no_augment)
    if args.voices:
        print(synthetic.describe_voices(config))
        return 0
    if not args.out:
        raise AsrError("--out is required (the corpus root to write)")
    print(synthetic.generate_corpus(args.out, config, num_workers=args.num_workers).format())
    return 0


# --- train / stats / average -----------------------------------------------------------------
def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="train a BiRNN-CTC model",
        description="Train (or resume, when EXP/checkpoints/last.pt exists) a BiRNN-CTC model. "
                    "Multi-GPU/multi-node: torchrun --nproc_per_node N -m asr.cli train ...")
    p.add_argument("--config", help="experiment config YAML (conf/*.yaml); default: built-in defaults")
    p.add_argument("--train", required=True, help="training manifest (JSONL)")
    p.add_argument("--valid", required=True, help="validation manifest (JSONL)")
    p.add_argument("--exp", required=True, help="experiment folder (checkpoints, logs, tokens, CMVN)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. model.hidden=512")
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from asr.config import dump_config
    from asr.train import load_experiment_config, train

    config = load_experiment_config(args.config, args.overrides)
    if args.print_config:
        print(dump_config(config), end="")
        return 0
    result = train(config, args.train, args.valid, args.exp)
    valid = result.valid or {}
    print(f"{result.exp_dir}: step {result.step}, epoch {result.epoch}, "
          + (f"valid loss {valid['loss']:.3f} CER {100 * valid['cer']:.2f}% WER {100 * valid['wer']:.2f}%, "
             if valid else "")
          + f"best WER {100 * result.best['wer']:.2f}% (step {result.best['step']}), {result.seconds:.0f} s")
    return 0


# --- decode / lm / score ---------------------------------------------------------------------
def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _add_decode(sub) -> None:
    p = sub.add_parser(
        "decode", help="decode a manifest with a trained model",
        description="Decode a manifest and score it; writes hyp.txt, ref.txt, report.txt, results.json "
                    "under EXP/decode/SET/DECODER/.")
    p.add_argument("--exp", required=True, help="experiment folder (outputs; checkpoint unless --checkpoint)")
    p.add_argument("--manifest", required=True, help="JSONL manifest to decode")
    p.add_argument("--decoder", choices=("greedy", "beam"), default="greedy")
    p.add_argument("--checkpoint", help="checkpoint .pt (default: EXP's avg-*.pt, else best.pt, else last.pt)")
    p.add_argument("--set", dest="set_name", help="set name in the output path (default: manifest file stem)")
    p.add_argument("--lm", help="word n-gram LM for beam search: ARPA (.arpa, .arpa.gz) or KenLM binary")
    p.add_argument("--lexicon", help="word list/lexicon (needed with a KenLM binary; default: the ARPA's words)")
    p.add_argument("--lm-weight", type=float, help="LM weight (default 0.5)")
    p.add_argument("--word-score", type=float, help="score added per word (default 0)")
    p.add_argument("--beam-size", type=int, help="beam size (default 50)")
    p.add_argument("--beam-threshold", type=float, help="beam score threshold (default 25)")
    p.add_argument("--tune", action="store_true", help="grid-search LM weight and word score on this manifest")
    p.add_argument("--tune-lm-weights", type=_floats, help="grid for --tune, e.g. 0.25,0.5,1 (default 0.25..2)")
    p.add_argument("--tune-word-scores", type=_floats, help="grid for --tune, e.g. -1,0,1 (default -1,0,1,2)")
    p.add_argument("--tuned-from", help="tuned.json or results.json of a --tune run: use its LM weight and word score")
    p.add_argument("--max-duration", type=float, default=200.0, help="padded seconds of audio per batch (default 200)")
    p.add_argument("--num-workers", type=int, default=0, help="audio loading processes (default 0)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.set_defaults(func=_run_decode)


def _run_decode(args) -> int:
    from asr.decode import DEFAULT_TUNE_LM_WEIGHTS, DEFAULT_TUNE_WORD_SCORES, decode_manifest

    results = decode_manifest(
        args.exp, args.manifest, decoder=args.decoder, checkpoint=args.checkpoint, set_name=args.set_name,
        lm=args.lm, lm_weight=args.lm_weight, word_score=args.word_score, beam_size=args.beam_size,
        beam_threshold=args.beam_threshold, lexicon=args.lexicon, tune=args.tune, tuned_from=args.tuned_from,
        tune_lm_weights=args.tune_lm_weights or DEFAULT_TUNE_LM_WEIGHTS,
        tune_word_scores=args.tune_word_scores or DEFAULT_TUNE_WORD_SCORES,
        max_duration=args.max_duration, num_workers=args.num_workers, device=args.device)
    low, high = results["wer_ci95"]
    print(f"{results['set']} {results['decoder_settings']['decoder']}: %WER {results['wer']:.2f} "
          f"(95% CI {low:.2f}-{high:.2f}) %CER {results['cer']:.2f} on {results['utterances']} utterances, "
          f"RTF {results['rtf']:.4f} -> {results['out_dir']}")
    if "tuned" in results:
        t = results["tuned"]
        print(f"tuned: lm_weight {t['lm_weight']} word_score {t['word_score']} (dev %WER {t['wer']:.2f})")
    return 0


def _add_score(sub) -> None:
    p = sub.add_parser(
        "score", help="WER/CER of hypotheses against references",
        description="Score Kaldi-format text files (UTT-ID WORDS per line). With two --hyp, a paired "
                    "bootstrap test gives the probability that the second is better than the first.")
    p.add_argument("--ref", required=True, help="reference text file")
    p.add_argument("--hyp", required=True, action="append", help="hypothesis text file (repeat to compare)")
    p.add_argument("--allow-missing", action="store_true",
                   help="score utterances without a hypothesis as deletions; ignore hypotheses without reference")
    p.add_argument("--report", help="write the full report (alignments, frequent errors) here")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.set_defaults(func=_run_score)


def _run_score(args) -> int:
    from asr.score import score_files

    out = score_files(args.ref, args.hyp, allow_missing=args.allow_missing, report_path=args.report,
                      bootstrap_samples=args.bootstrap)
    for system in out["systems"]:
        low, high = system["wer_ci95"]
        print(f"{system['hyp']}: %WER {system['wer']:.2f} [ {system['word_errors']} / {system['ref_words']}, "
              f"{system['insertions']} ins, {system['deletions']} del, {system['substitutions']} sub ] "
              f"95% CI [{low:.2f}, {high:.2f}]  %CER {system['cer']:.2f}  %SER {system['ser']:.2f}")
    for comparison in out["comparisons"]:
        print(f"P({comparison['b']} better than {comparison['a']}) = {comparison['p_b_better']:.3f}")
    return 0


def _add_results(sub) -> None:
    p = sub.add_parser(
        "results", help="collect decode results into a Markdown table (RESULTS.md)",
        description="One row per set and decoder from EXP/decode/<set>/<decoder>/results.json: WER with "
                    "its 95%% bootstrap interval, CER, SER, LM weights, checkpoint and config.")
    p.add_argument("--exp", action="append", required=True, help="experiment folder (repeatable)")
    p.add_argument("--out", required=True, help="Markdown file to write, e.g. RESULTS.md")
    p.add_argument("--title", default="Results", help="heading of the file")
    p.set_defaults(func=_run_results)


def _run_results(args) -> int:
    from asr.fileio import atomic_write_text
    from asr.score import collect_results

    table = collect_results(args.exp, title=args.title)
    atomic_write_text(args.out, table)
    print(table, end="")
    return 0


# --- transcribe ------------------------------------------------------------------------------
def _add_transcribe(sub) -> None:
    p = sub.add_parser(
        "transcribe", help="transcribe audio files with a trained model",
        description="Transcribe audio files of any length, rate and channel count. A missing input "
        "stops before anything is transcribed (exit 1); a file that cannot be decoded is reported, "
        "skipped, and makes the exit status 1 once the others are done.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files, folders (searched recursively) or glob patterns")
    p.add_argument("--model", required=True, help="checkpoint .pt or experiment folder (avg-*.pt, else best.pt, else last.pt)")
    p.add_argument("--output-format", choices=("text", "json", "srt"), default="text",
                   help="text (default), json (words with start/end/confidence) or srt subtitles")
    p.add_argument("--output-dir", help="write one file per input here (NAME.txt/.json/.srt) instead of stdout")
    p.add_argument("--decoder", choices=("greedy", "beam"), default="greedy")
    p.add_argument("--beam-size", type=int, help="beam: hypotheses kept per frame")
    p.add_argument("--lm", help="beam: word n-gram LM (ARPA, .arpa.gz or KenLM binary)")
    p.add_argument("--lm-weight", type=float, help="beam: weight of the LM log-probability")
    p.add_argument("--word-score", type=float, help="beam: score added per word")
    p.add_argument("--tuned-from", help="beam: LM weight and word score from `asr decode --tune` (tuned.json)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--max-chunk", type=float, default=20.0, help="longest chunk fed to the model, seconds (default 20)")
    p.add_argument("--top-db", type=float, default=40.0, help="silence threshold below the loudest frame, dB (default 40)")
    p.set_defaults(func=_run_transcribe)


def _run_transcribe(args) -> int:
    from asr.transcribe import ChunkingConfig, Transcriber, expand_inputs, transcribe_files

    inputs = expand_inputs(args.inputs)  # a missing input stops here, before the model loads
    options = dict(beam_size=args.beam_size, lm=args.lm, lm_weight=args.lm_weight, word_score=args.word_score)
    if args.decoder == "greedy" and (args.tuned_from or any(v is not None for v in options.values())):
        raise AsrError("--beam-size, --lm, --lm-weight, --word-score and --tuned-from need --decoder beam")
    if args.tuned_from:
        from asr.decode import lm_weights

        options["lm_weight"], options["word_score"] = lm_weights(args.tuned_from, args.lm_weight, args.word_score)
    chunking = ChunkingConfig(max_chunk_s=args.max_chunk, top_db=args.top_db,
                              batch_s=max(ChunkingConfig.batch_s, args.max_chunk))
    transcriber = Transcriber.from_checkpoint(args.model, device=args.device, decoder=args.decoder,
                                              chunking=chunking, **options)
    summary = transcribe_files(transcriber, inputs, args.output_format, args.output_dir)
    where = f" -> {args.output_dir}" if args.output_dir else ""
    print(f"transcribed {summary.done} file(s), {summary.audio_s:.1f} s of audio{where}"
          + (f"; {len(summary.failed)} failed" if summary.failed else ""), file=sys.stderr)
    return 1 if summary.failed else 0


# --- lm (helper F) ----------------------------------------------------------------------------
def _add_lm(sub) -> None:
    p = sub.add_parser("lm", help="word n-gram language models")
    lm_sub = p.add_subparsers(dest="lm_command", required=True, metavar="LM_COMMAND")
    b = lm_sub.add_parser("build", help="train a Kneser-Ney n-gram LM (ARPA) on text",
                          description="Train a Kneser-Ney n-gram LM with kaldingram on normalised text "
                                      "(one sentence per line, .gz or a .jsonl manifest also accepted).")
    b.add_argument("--text", required=True, action="append", help="training text (repeat for several files)")
    b.add_argument("--order", type=int, default=3, help="n-gram order, 1-5 (default 3)")
    b.add_argument("--out", required=True, help="output ARPA file (.arpa or .arpa.gz)")
    b.add_argument("--prune", type=float, help="entropy pruning threshold, e.g. 1e-7 (default: no pruning)")
    p.set_defaults(func=_run_lm)


def _run_lm(args) -> int:
    from asr.lm import build_lm

    summary = build_lm(args.text, args.order, args.out, prune_threshold=args.prune)
    counts = ", ".join(f"{n}-grams {c}" for n, c in sorted(summary.ngrams.items()))
    print(f"{summary.path}: order {summary.order}{' (pruned)' if summary.pruned else ''}, "
          f"{summary.sentences} sentences, {summary.words} words, vocabulary {summary.vocabulary}; {counts}")
    return 0


def _add_stats(sub) -> None:
    p = sub.add_parser("stats", help="write an experiment's tokens.txt and cmvn.pt from the training manifest",
                       description="Compute EXP/tokens.txt and EXP/cmvn.pt (global CMVN) as `asr train` does "
                                   "first; existing files are reused.")
    p.add_argument("--config", help="experiment config YAML (features, data sections are used)")
    p.add_argument("--train", required=True, help="training manifest (JSONL)")
    p.add_argument("--exp", required=True, help="experiment folder")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=_run_stats)


def _run_stats(args) -> int:
    from asr.train import load_experiment_config, stats

    summary = stats(load_experiment_config(args.config, args.overrides), args.train, args.exp)
    print(f"{summary['kept']} of {summary['utterances']} utterances ({summary['hours']:.2f} h) within the length "
          f"limits; {summary['vocab_size']} tokens -> {summary['tokens']}; "
          f"CMVN of {summary['feature_dim']}-dim features -> {summary['cmvn']}")
    return 0


def _add_average(sub) -> None:
    p = sub.add_parser("average", help="average the last K step checkpoints into checkpoints/avg-K.pt")
    p.add_argument("--exp", required=True, help="experiment folder")
    p.add_argument("--last", type=int, default=5, help="number of step-N.pt checkpoints to average (default 5)")
    p.set_defaults(func=_run_average)


def _run_average(args) -> int:
    from asr.checkpoint import average_experiment

    out, used = average_experiment(args.exp, args.last)
    print(f"{out}: mean of {', '.join(p.name for p in used)}")
    return 0


# --- download (helper I) ---------------------------------------------------------------------
def _add_download(sub) -> None:
    p = sub.add_parser("download", help="download LibriSpeech subsets or its official LMs, without preparing")
    what = p.add_subparsers(dest="resource", required=True, metavar="RESOURCE")
    mirror = ("base URL replacing https://www.openslr.org/resources, same <base>/<resource>/<file> layout "
              "(env ASR_LIBRISPEECH_MIRROR)")
    md5 = "NAME=MD5[,NAME=MD5...]: expected MD5 of a file on the mirror, replacing openslr's (repacked mirrors)"
    corpus = what.add_parser(
        "librispeech", help="subsets (openslr 12, 31): download, check, extract",
        description="Download LibriSpeech subsets (resumable, MD5-checked) to DATA_DIR/downloads and extract "
        "them to DATA_DIR/LibriSpeech/<subset>; finished steps are skipped. No manifests: see asr prepare.")
    corpus.add_argument("--data-dir", required=True, help="folder for downloads and audio")
    corpus.add_argument("--subsets", required=True, help="comma-separated, e.g. train-clean-5,dev-clean-2")
    corpus.add_argument("--mirror", default=None, help=mirror)
    corpus.add_argument("--md5", action="append", default=[], help=md5)
    corpus.set_defaults(func=_run_download)
    lm = what.add_parser(
        "librispeech-lm", help="official n-gram LMs and lexicon (openslr 11)",
        description="Download files of openslr resource 11 to DATA_DIR/lm/<file> (resumable, MD5-checked). "
        "Files: " + ", ".join(_LM_FILE_NAMES) + ".")
    lm.add_argument("--data-dir", required=True, help="files go to DATA_DIR/lm/")
    lm.add_argument("--files", default=None,
                    help="comma-separated file names (default 3-gram.pruned.1e-7.arpa.gz,librispeech-lexicon.txt)")
    lm.add_argument("--mirror", default=None, help=mirror)
    lm.add_argument("--md5", action="append", default=[], help=md5)
    lm.set_defaults(func=_run_download)


# The names of asr.data.librispeech.LM_FILES, repeated to keep `asr --help` free of heavy imports.
_LM_FILE_NAMES = ("3-gram.pruned.1e-7.arpa.gz", "3-gram.pruned.3e-7.arpa.gz", "3-gram.arpa.gz", "4-gram.arpa.gz",
                  "librispeech-lexicon.txt", "librispeech-vocab.txt", "librispeech-lm-norm.txt.gz")


def _run_download(args) -> int:
    from asr.data import librispeech

    md5 = librispeech.parse_md5_overrides(args.md5)
    if args.resource == "librispeech":
        subsets = [s.strip() for s in args.subsets.split(",") if s.strip()]
        for subset, folder in zip(subsets, librispeech.download_librispeech(args.data_dir, subsets, args.mirror, md5)):
            print(f"{subset}: {folder}")
    else:
        names = ([s.strip() for s in args.files.split(",") if s.strip()] if args.files
                 else list(librispeech.DEFAULT_LM_FILES))
        for path in librispeech.download_lm_files(args.data_dir, names, args.mirror, md5):
            print(path)
    return 0


# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr", description="RNN-CTC speech recognition toolkit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_prepare, _add_synth, _add_train, _add_decode, _add_score, _add_results, _add_transcribe, _add_lm, _add_stats, _add_average, _add_download):
        add(sub)
    return parser


def _user_message(err: AsrError) -> str:
    """The one line a user reads. An error raised in a DataLoader worker arrives re-raised in
    this process with the worker's traceback in its message; its last line is the original one."""
    message = str(err).strip()
    if "Original Traceback" in message:
        message = message.splitlines()[-1]
        message = message.split(": ", 1)[1] if message.startswith("asr.errors.") else message
    return message


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except AsrError as err:
        print(f"asr {args.command}: error: {_user_message(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"asr {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
