"""The `asr` command: a thin layer over the package's modules.

Each verb has one `_add_<verb>` function that declares its arguments and one `_run_<verb>` function
that calls into the package. A user error (`AsrError`) becomes one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from asr.errors import AsrError


# --- argument types: every number on the command line is range-checked here, so that a bad
# value is argparse's one-line usage error (exit 2), never a traceback from deep inside ---------
def _number(text: str, kind: type, test, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value) or not test(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _number(text, int, lambda v: v >= 1, "an integer >= 1")


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """A finite number > 0."""
    return _number(text, float, lambda v: v > 0, "a number > 0")


def finite_float(text: str) -> float:
    """Any finite number (negative allowed)."""
    return _number(text, float, lambda v: True, "a finite number")


def fraction(text: str) -> float:
    """A number from 0 to 1."""
    return _number(text, float, lambda v: 0.0 <= v <= 1.0, "a number from 0 to 1")


def int_range(low: int, high: int):
    """An argparse type: an integer from `low` to `high`."""
    def parse(text: str) -> int:
        return _number(text, int, lambda v: low <= v <= high, f"an integer from {low} to {high}")
    return parse


def _check_outputs(*folders, files=()) -> None:
    """Check that every output location (folders, then files; None skipped) can be written,
    before any expensive work; a DataError `PATH: reason` otherwise."""
    from asr.fileio import check_output

    for path in folders:
        if path is not None:
            check_output(path, folder=True)
    for path in files:
        if path is not None:
            check_output(path, folder=False)


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
    libri.add_argument("--md5", action="append", default=[],
                       help="NAME=MD5[,NAME=MD5...]: expected MD5 of a subset's archive on the mirror "
                       "(repacked mirrors)")
    libri.add_argument("--num-workers", type=non_negative_int, default=None,
                       help="processes reading headers (default: CPUs, max 8)")
    folder = kinds.add_parser(
        "dir", help="one folder in LibriSpeech layout -> one manifest",
        description="Manifest for one folder laid out as <speaker>/<chapter>/*.flac (or any audio format "
        "libsndfile reads) + <speaker>-<chapter>.trans.txt. Audio paths are relative to the manifest.")
    folder.add_argument("corpus_root", metavar="CORPUS_ROOT", help="the subset folder (holds <speaker>/ folders)")
    folder.add_argument("--out", required=True, help="manifest to write (.jsonl)")
    folder.add_argument("--num-workers", type=non_negative_int, default=None,
                        help="processes reading headers (default: CPUs, max 8)")
    combine = kinds.add_parser(
        "combine", help="several manifests -> one (e.g. train-clean-100 + train-clean-360)",
        description="Concatenate manifests into one, audio paths made relative to the new manifest; "
        "an utterance id found in two inputs is an error.")
    combine.add_argument("inputs", nargs="+", metavar="MANIFEST", help="manifests to combine, in order")
    combine.add_argument("--out", required=True, help="manifest to write (.jsonl)")


def _run_prepare(args) -> int:
    from asr.data import librispeech

    if args.corpus == "combine":
        _check_outputs(files=(args.out,))
        summaries = [librispeech.combine_manifests(args.inputs, args.out)]
    elif args.corpus == "librispeech":
        _check_outputs(args.data_dir, args.manifest_dir)
        md5 = librispeech.parse_md5_overrides(args.md5)
        subsets = [s.strip() for s in args.subsets.split(",") if s.strip()]
        summaries = librispeech.prepare_librispeech(
            args.data_dir, subsets, download=args.download, mirror=args.mirror,
            manifest_dir=args.manifest_dir, num_workers=args.num_workers, md5_overrides=md5)
    else:
        _check_outputs(files=(args.out,))
        summaries = [librispeech.prepare_corpus(args.corpus_root, args.out, args.num_workers)]
    for summary in summaries:
        print(summary.format())
    return 0


# --- synth -----------------------------------------------------------------------------------
def _add_synth(sub) -> None:
    p = sub.add_parser(
        "synth", help="generate the synthetic corpus (espeak-ng, flite, festival) in LibriSpeech layout",
        description="Voices of espeak-ng (English variant x voice variant), flite and festival (voices "
        "built from recorded speakers), each with its own rate, pitch and warp (one voice = one speaker "
        "id), read sentences from the built-in grammar (or --text) into OUT/{train,dev,test}/"
        "<speaker>/<chapter>/*.flac (16 kHz) + *.trans.txt. Test voices come from speakers train and "
        "dev never use (slt: festival's HTS voice and flite's; ked: a festival diphone voice); dev "
        "voices are other voices of the train speakers. --voices lists them. Seeded: the same options "
        "give identical files. Resumable: complete chapters and splits are kept.")
    p.add_argument("--out", help="corpus root to write (required unless --voices)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--train-utts", type=non_negative_int, default=None, help="train utterances (default 2000)")
    size.add_argument("--hours-train", type=positive_float, default=None,
                      help="about this many hours of train audio (estimated from the texts)")
    p.add_argument("--dev-utts", type=non_negative_int, default=100, help="dev utterances (default 100)")
    p.add_argument("--test-utts", type=non_negative_int, default=100,
                   help="test utterances, unseen voices (default 100)")
    p.add_argument("--dev-voices", type=positive_int, default=12, help="voices reserved for dev (default 12)")
    p.add_argument("--test-voices", type=positive_int, default=16, help="voices reserved for test (default 16)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seeds texts, voices and noise (default 0)")
    p.add_argument("--text", default=None,
                   help="text file (see --text-format; with wordnet: WordNet's folder) instead of the grammar")
    p.add_argument("--text-format", choices=("lines", "prose", "wordnet"), default="lines",
                   help="--text holds one sentence a line (default), or prose: paragraphs or fortune "
                        "files (entries between %% lines), cut into sentences, or is WordNet's folder "
                        "(/usr/share/wordnet): its example sentences")
    p.add_argument("--grammar-share", type=fraction, default=0.0,
                   help="with --text: this share of the utterances reads the grammar instead (default 0)")
    p.add_argument("--engines", default="espeak-ng,flite,festival",
                   help="comma-separated synthesisers to use (default espeak-ng,flite,festival); without "
                        "flite and festival the test voices are unseen espeak-ng voices")
    p.add_argument("--no-augment", action="store_true",
                   help="no random level and no background noise (on by default, at a low level)")
    p.add_argument("--num-workers", type=non_negative_int, default=None, help="processes (default: CPU count)")
    p.add_argument("--voices", action="store_true", help="list the voices of each split and exit")
    p.set_defaults(func=_run_synth)


def _run_synth(args) -> int:
    from asr.data import synthetic

    if args.grammar_share and args.text is None:
        raise AsrError("--grammar-share needs --text (without a text file every sentence is the grammar's)")
    config = synthetic.SynthConfig(
        seed=args.seed, dev_utts=args.dev_utts, test_utts=args.test_utts,
        train_utts=2000 if args.train_utts is None else args.train_utts, hours_train=args.hours_train,
        text_file=args.text, text_format=args.text_format, grammar_share=args.grammar_share,
        dev_voices=args.dev_voices,
        test_voices=args.test_voices, augment=not args.no_augment,
        engines=tuple(e.strip() for e in args.engines.split(",") if e.strip()))
    if args.voices:
        print(synthetic.describe_voices(config))
        return 0
    if not args.out:
        raise AsrError("--out is required (the corpus root to write)")
    _check_outputs(args.out)
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
    p.add_argument("--init-from", metavar="CKPT",
                   help="fine-tune: start from this checkpoint's (or experiment's) weights, tokens and CMVN, "
                        "with a new optimizer and schedule")
    p.add_argument("--reinit-head", action="store_true",
                   help="with --init-from: a new output layer for this data's tokens (a different vocabulary)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. model.hidden=512")
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from asr.config import dump_config
    from asr.experiment import load_experiment_config
    from asr.train import train

    config = load_experiment_config(args.config, args.overrides)
    if args.print_config:
        print(dump_config(config), end="")
        return 0
    if args.reinit_head and not args.init_from:
        raise AsrError("--reinit-head needs --init-from")
    _check_outputs(args.exp)
    result = train(config, args.train, args.valid, args.exp, init_from=args.init_from, reinit_head=args.reinit_head)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun: one summary, rank 0's
        return 0
    valid = result.valid or {}
    print(f"{result.exp_dir}: step {result.step}, epoch {result.epoch}, "
          + (f"valid loss {valid['loss']:.3f} CER {100 * valid['cer']:.2f}% WER {100 * valid['wer']:.2f}%, "
             if valid else "")
          + f"best WER {100 * result.best['wer']:.2f}% (step {result.best['step']}), {result.seconds:.0f} s")
    return 0


# --- decode / lm / score ---------------------------------------------------------------------
class _Default:
    """The argparse default of a decoding option. `_decoding_options` reads it as "not given";
    `--help` prints the `asr.decode.DecodingOptions` field's default, imported only then (the
    module imports torch), so the defaults are written once, in that dataclass."""

    def __init__(self, field_name: str) -> None:
        self.field_name = field_name

    def __str__(self) -> str:
        from asr.decode import DecodingOptions

        return str(getattr(DecodingOptions, self.field_name))


def _non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    return _number(text, float, lambda v: v >= 0, "a number >= 0")


def _add_decoding_options(parser) -> None:
    """The options of `asr.decode.DecodingOptions`, one per field, the same for every verb that decodes."""
    g = parser.add_argument_group("decoding", "how the model's output becomes text (greedy, or beam search "
                                  "with an optional word n-gram LM)")
    g.add_argument("--decoder", choices=("greedy", "beam"), default=_Default("decoder"),
                   help="greedy (best path) or beam (CTC prefix beam search) (default %(default)s)")
    g.add_argument("--word-pause", type=_non_negative_float, default=_Default("word_pause"), metavar="SECONDS",
                   help="greedy: a pause this long between two characters ends a word; 0: off (default %(default)s)")
    g.add_argument("--beam-size", type=positive_int, default=_Default("beam_size"),
                   help="beam: hypotheses kept after each frame (default %(default)s)")
    g.add_argument("--beam-threshold", type=positive_float, default=_Default("beam_threshold"),
                   help="beam: hypotheses scoring more than this below the best are pruned (default %(default)s)")
    g.add_argument("--lm", help="beam: word n-gram LM, ARPA (.arpa, .arpa.gz) or KenLM binary (default: none)")
    g.add_argument("--lexicon", help="beam: word list or lexicon, a word first on each line (needed with a KenLM "
                   "binary; default: the ARPA's words)")
    g.add_argument("--lm-weight", type=finite_float, default=_Default("lm_weight"),
                   help="beam + LM: weight of the LM log-probability (default %(default)s)")
    g.add_argument("--word-score", type=finite_float, default=_Default("word_score"),
                   help="beam + LM or lexicon: score added per word (default %(default)s)")
    g.add_argument("--tuned-from", help="beam + LM: the LM weight and word score of an `asr decode --tune` run "
                   "(its tuned.json or results.json)")


def _decoding_options(args):
    """The `DecodingOptions` of the options `_add_decoding_options` declared; ConfigError for a
    combination that means nothing, and for --tuned-from with explicit weights."""
    import dataclasses

    from asr.decode import DecodingOptions
    from asr.evaluate import lm_weights

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(DecodingOptions)}
    given = {name: value for name, value in given.items() if value is not None and not isinstance(value, _Default)}
    options = DecodingOptions(**given)  # the combination is checked before a tuned file is read
    if options.tuned_from is not None:
        weight, score = lm_weights(options.tuned_from, given.get("lm_weight"), given.get("word_score"))
        options = dataclasses.replace(options, lm_weight=weight, word_score=score)
    return options


def _floats(text: str) -> list[float]:
    try:
        return [finite_float(x) for x in text.split(",") if x.strip()]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _add_decode(sub) -> None:
    p = sub.add_parser(
        "decode", help="decode a manifest with a trained model",
        description="Decode a manifest and score it; writes hyp.txt, ref.txt, report.txt, results.json "
                    "under EXP/decode/SET/DECODER/.")
    p.add_argument("--exp", required=True, help="experiment folder (outputs; checkpoint unless --checkpoint)")
    p.add_argument("--manifest", required=True, help="JSONL manifest to decode")
    p.add_argument("--checkpoint", help="checkpoint .pt (default: EXP's avg-*.pt, else best.pt, else last.pt)")
    p.add_argument("--set", dest="set_name", help="set name in the output path (default: manifest file stem)")
    _add_decoding_options(p)
    p.add_argument("--tune", action="store_true", help="grid-search LM weight and word score on this manifest")
    p.add_argument("--tune-lm-weights", type=_floats, help="grid for --tune, e.g. 0.25,0.5,1 (default 0.25..2)")
    p.add_argument("--tune-word-scores", type=_floats, help="grid for --tune, e.g. -1,0,1 (default -1,0,1,2)")
    p.add_argument("--max-duration", type=positive_float, default=200.0,
                   help="padded seconds of audio per batch (default 200)")
    p.add_argument("--num-workers", type=non_negative_int, default=0, help="audio loading processes (default 0)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--vtln", action="store_true",
                   help="test-time VTLN: warp each speaker's filterbank by the factor in 0.85..1.15 the model "
                        "is surest under (the manifest's `speaker`); results in DECODER-vtln/")
    p.set_defaults(func=_run_decode)


def _run_decode(args) -> int:
    from asr.device import resolve_device
    from asr.evaluate import TuneGrid, decode_manifest
    from asr.inference import VTLN_WARPS

    options = _decoding_options(args)
    tune = None
    if args.tune:
        grid = {"lm_weights": args.tune_lm_weights, "word_scores": args.tune_word_scores}
        tune = TuneGrid(**{name: tuple(values) for name, values in grid.items() if values})
    _check_outputs(os.path.join(args.exp, "decode"))
    device = resolve_device(args.device)
    results = decode_manifest(args.exp, args.manifest, options, checkpoint=args.checkpoint, set_name=args.set_name,
                              tune=tune, max_duration=args.max_duration, num_workers=args.num_workers, device=device,
                              vtln_warps=VTLN_WARPS if args.vtln else None)
    low, high = results["wer_ci95"]
    vtln = " + VTLN" if "vtln" in results else ""
    print(f"{results['set']} {results['decoder_settings']['decoder']}{vtln}: %WER {results['wer']:.2f} "
          f"(95% CI {low:.2f}-{high:.2f}) %CER {results['cer']:.2f} on {results['utterances']} utterances, "
          f"RTF {results['rtf']:.4f} -> {results['out_dir']}")
    if "tuned" in results:
        t = results["tuned"]
        print(f"tuned: lm_weight {t['lm_weight']} word_score {t['word_score']} (dev %WER {t['wer']:.2f})")
    return 0


def _add_scoring_arguments(p) -> None:
    """The arguments `asr score` and `asr compare` share (asr.score.ScoreOptions)."""
    p.add_argument("--ref-format", choices=("auto", "kaldi", "trn", "stm"), default="auto",
                   help="reference format (default auto: by extension .trn/.stm, else from the lines)")
    p.add_argument("--hyp-format", choices=("auto", "kaldi", "trn", "ctm"), default="auto",
                   help="hypothesis format, for every hypothesis (default auto)")
    p.add_argument("--normalize", choices=("librispeech", "english", "none"), default="librispeech",
                   help="normaliser for both sides: librispeech (upper case, letters and apostrophes; default), "
                        "english (Whisper's: numbers, spelling variants, punctuation, case) or none")
    p.add_argument("--manifest", help="speakers from this manifest's speaker field (else the id prefix)")
    p.add_argument("--utt2spk", help="speakers from this Kaldi utt2spk file (else the id prefix)")
    p.add_argument("--allow-missing", action="store_true",
                   help="score utterances without a hypothesis as deletions; ignore hypotheses without reference")
    p.add_argument("--bootstrap", type=positive_int, default=1000, help="bootstrap resamples (default 1000)")


def _scoring_options(args):
    from asr.score import ScoreOptions

    return ScoreOptions(ref_format=args.ref_format, hyp_format=args.hyp_format, normalize=args.normalize,
                        allow_missing=args.allow_missing, manifest=args.manifest, utt2spk=args.utt2spk,
                        bootstrap_samples=args.bootstrap)


def _add_score(sub) -> None:
    p = sub.add_parser(
        "score", help="WER/CER of hypotheses against references (sclite's alignment)",
        description="Score hypotheses against references with sclite's alignment and S/D/I counts. Formats: "
                    "Kaldi text (UTT-ID WORDS), sclite trn (WORDS (UTT-ID)), stm reference + ctm hypothesis "
                    "(matched by file and channel). With two or more --hyp, each is compared with the first: "
                    "paired bootstrap (P(A better), P(B better), P(equal)) and sclite's MAPSSWE test.")
    p.add_argument("--ref", required=True, help="reference file")
    p.add_argument("--hyp", required=True, action="append", help="hypothesis file (repeat to compare)")
    _add_scoring_arguments(p)
    p.add_argument("--report", help="write the full report (alignments, frequent errors) here")
    p.add_argument("--out-dir", help="write report.txt, results.json, per_utt.csv and sclite-style "
                                     "<hyp>.sys / <hyp>.pra here")
    p.add_argument("--per-utt", help="write per-utterance counts here (.csv or .json)")
    p.set_defaults(func=_run_score)


def _run_score(args) -> int:
    from asr.score import score_files

    _check_outputs(args.out_dir, files=(args.report, args.per_utt))
    out = score_files(args.ref, args.hyp, report_path=args.report, options=_scoring_options(args),
                      out_dir=args.out_dir, per_utt_path=args.per_utt)
    for system in out["systems"]:
        low, high = system["wer_ci95"]
        print(f"{system['hyp']}: %WER {system['wer']:.2f} [ {system['word_errors']} / {system['ref_words']}, "
              f"{system['insertions']} ins, {system['deletions']} del, {system['substitutions']} sub ] "
              f"95% CI [{low:.2f}, {high:.2f}]  %CER {system['cer']:.2f}  %SER {system['ser']:.2f}  "
              f"(normaliser {system['normalizer']})")
    for c in out["comparisons"]:
        print(f"A = {c['a']}, B = {c['b']}: P(A better) = {c['p_a_better']:.3f}, P(B better) = {c['p_b_better']:.3f}, "
              f"P(equal) = {c['p_equal']:.3f}: {c['bootstrap']}; MAPSSWE Z = {c['mapsswe_z']:.3f}, "
              f"p = {c['mapsswe_p']:.3f}: {c['mapsswe']}")
    return 0


def _add_compare(sub) -> None:
    p = sub.add_parser(
        "compare", help="a table of N systems: WER, 95%% CI, pairwise significance",
        description="Score N hypothesis files against one reference, all the same way, and print a table "
                    "(WER, 95% bootstrap interval, S/D/I) and, for every pair, the paired bootstrap "
                    "(P(A better), P(B better), P(equal)) and sclite's MAPSSWE test, in words.")
    p.add_argument("--ref", required=True, help="reference file")
    p.add_argument("hyps", nargs="+", metavar="HYP", help="hypothesis files, two or more")
    _add_scoring_arguments(p)
    p.add_argument("--json", help="also write the table's figures as JSON here")
    p.set_defaults(func=_run_compare)


def _run_compare(args) -> int:
    from asr.fileio import atomic_write_text
    from asr.score import compare_files

    _check_outputs(files=(args.json,))
    out = compare_files(args.ref, args.hyps, _scoring_options(args))
    print(out["table"], end="")
    if args.json:
        import json

        atomic_write_text(args.json, json.dumps({k: v for k, v in out.items() if k != "table"}, indent=2) + "\n")
    return 0


def _add_results(sub) -> None:
    p = sub.add_parser(
        "results", help="collect decode results into a Markdown table (RESULTS.md)",
        description="One row per set and decoder from EXP/decode/<set>/<decoder>/results.json: WER with "
                    "its 95% bootstrap interval, CER, SER, normaliser, LM weights, checkpoint and config.")
    p.add_argument("--exp", action="append", required=True, help="experiment folder (repeatable)")
    p.add_argument("--out", required=True, help="Markdown file to write, e.g. RESULTS.md")
    p.add_argument("--title", default="Results", help="heading of the file")
    p.set_defaults(func=_run_results)


def _run_results(args) -> int:
    from asr.fileio import atomic_write_text
    from asr.score import collect_results

    _check_outputs(files=(args.out,))
    table = collect_results(args.exp, title=args.title)
    atomic_write_text(args.out, table)
    print(table, end="")
    return 0


# --- transcribe ------------------------------------------------------------------------------
def _add_transcribe(sub) -> None:
    p = sub.add_parser(
        "transcribe", help="transcribe audio files with a trained model",
        description="Transcribe audio and video files of any length, rate and channel count: what "
        "libsndfile reads (WAV, FLAC, OGG, MP3, ...) and, through FFmpeg, M4A/MP4/AAC, WebM/MKV, Opus, "
        "WMA and the audio track of a video. Memory is bounded by the chunk, not the file. A missing "
        "input stops before anything is transcribed (exit 1); a file that cannot be decoded is reported, "
        "skipped, and makes the exit status 1 once the others are done. With a calibrated checkpoint "
        "(asr calibrate --model CKPT --manifest dev.jsonl), a file whose audio is unlike the model's training "
        "data gets one warning line on stderr and \"out_of_domain\": true in the JSON output; an uncalibrated "
        "checkpoint checks nothing (\"out_of_domain\": null).")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="audio files, folders (searched recursively; files neither reader opens are listed "
                   "as skipped), glob patterns, or - for audio on standard input")
    p.add_argument("--model", required=True,
                   help="checkpoint .pt or experiment folder (avg-*.pt, else best.pt, else last.pt)")
    p.add_argument("--output-format", choices=("text", "json", "srt", "vtt", "tsv", "ctm"), default="text",
                   help="text (default); json (segments with start/end/text and their words with "
                   "start/end/confidence); srt or vtt (WebVTT) subtitles; tsv (start, end, text per segment); "
                   "ctm (sclite's word format: file channel start duration word confidence)")
    p.add_argument("--output-dir", help="write one file per input here (NAME.txt/.json/.srt/.vtt/.tsv/.ctm; "
                   "stdin.* for -) instead of stdout")
    p.add_argument("--skip-existing", action="store_true",
                   help="with --output-dir: leave out the files whose output is already there (rerun after "
                   "an interruption; outputs are written atomically, so an existing one is whole)")
    _add_decoding_options(p)
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="torch (default): --model is a checkpoint; onnx: --model is an `asr export` folder or "
                   ".onnx file (e.g. model.int8.onnx), run by onnxruntime on the CPU")
    p.add_argument("--max-chunk", type=positive_float, default=20.0,
                   help="longest chunk fed to the model, seconds (default 20)")
    p.add_argument("--top-db", type=positive_float, default=40.0,
                   help="silence threshold below the loudest frame, dB (default 40)")
    p.add_argument("--vtln", action="store_true",
                   help="test-time VTLN: warp each file's filterbank by the factor in 0.85..1.15 the model is "
                        "surest under (one more model pass per factor); the JSON output names it (vtln_warp)")
    p.set_defaults(func=_run_transcribe)


def _run_transcribe(args) -> int:
    from asr.device import resolve_device
    from asr.inference import VTLN_WARPS
    from asr.transcribe import ChunkingConfig, Transcriber, expand_inputs, transcribe_files

    if args.skip_existing and not args.output_dir:
        raise AsrError("--skip-existing needs --output-dir (the outputs it looks for are there)")
    inputs = expand_inputs(args.inputs)  # a missing input stops here, before the model loads
    _check_outputs(args.output_dir)  # and so does an output folder that cannot be written
    device = resolve_device(args.device)
    options = _decoding_options(args)
    chunking = ChunkingConfig(max_chunk_s=args.max_chunk, top_db=args.top_db,
                              batch_s=max(ChunkingConfig.batch_s, args.max_chunk))
    vtln_warps = VTLN_WARPS if args.vtln else None
    if args.backend == "onnx":
        transcriber = Transcriber.from_onnx(args.model, options=options, chunking=chunking, vtln_warps=vtln_warps)
    else:
        transcriber = Transcriber.from_checkpoint(args.model, device=device, options=options, chunking=chunking,
                                                  vtln_warps=vtln_warps)
    summary = transcribe_files(transcriber, inputs, args.output_format, args.output_dir,
                               skip_existing=args.skip_existing)
    where = f" -> {args.output_dir}" if args.output_dir else ""
    print(f"transcribed {summary.done} file(s), {summary.audio_s:.1f} s of audio{where}"
          + (f"; {len(summary.flagged)} unlike the training data" if summary.flagged else "")
          + (f"; {summary.skipped} skipped (output exists)" if summary.skipped else "")
          + (f"; {len(summary.failed)} failed" if summary.failed else ""), file=sys.stderr)
    return 1 if summary.failed else 0


# --- calibrate -------------------------------------------------------------------------------
def _add_calibrate(sub) -> None:
    from asr.calibrate import DEFAULT_MARGIN, DEFAULT_PERCENTILE, DEFAULT_STATISTICS, STATISTICS

    p = sub.add_parser(
        "calibrate", help="store in a checkpoint how its own dev set looks, so transcribe can flag unlike audio",
        description="Run the model over its dev manifest as asr transcribe would (same chunking), and store "
        "in the checkpoint the dev distribution of statistics of its posteriors and the thresholds beyond "
        "which asr transcribe warns that a file is unlike the training data: for each statistic, the dev "
        "set's PERCENTILE-th (or 100-PERCENTILE-th) percentile, moved MARGIN x |median - percentile| "
        "further out; any one broken flags the file. Every other key of the checkpoint is kept; it is "
        "written atomically (in place unless --out). Calibrating again replaces the calibration.")
    p.add_argument("--model", required=True,
                   help="checkpoint .pt or experiment folder (avg-*.pt, else best.pt, else last.pt)")
    p.add_argument("--manifest", required=True, help="the model's dev manifest (never its training data)")
    p.add_argument("--out", help="write the calibrated checkpoint here (default: in place)")
    p.add_argument("--statistics", type=_names, default=list(DEFAULT_STATISTICS),
                   help=f"comma-separated, from {', '.join(STATISTICS)} (default {','.join(DEFAULT_STATISTICS)}: "
                   "word confidence too low, entropy too high, blank ratio too low or too high)")
    p.add_argument("--percentile", type=positive_float, default=DEFAULT_PERCENTILE,
                   help=f"the dev tail each threshold starts from, percent (default {DEFAULT_PERCENTILE:g})")
    p.add_argument("--margin", type=_non_negative_float, default=DEFAULT_MARGIN,
                   help=f"how far past that percentile, in units of (median - percentile) (default {DEFAULT_MARGIN:g})")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.set_defaults(func=_run_calibrate)


def _non_negative_float(text: str) -> float:
    return _number(text, float, lambda v: v >= 0, "a number >= 0")


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _run_calibrate(args) -> int:
    from asr.calibrate import calibrate_checkpoint, describe
    from asr.checkpoint import resolve_checkpoint
    from asr.device import resolve_device

    _check_outputs(files=[args.out or resolve_checkpoint(args.model)])
    out, calibration = calibrate_checkpoint(args.model, args.manifest, args.out, args.statistics, args.percentile,
                                            args.margin, device=resolve_device(args.device))
    print(f"{out}: {describe(calibration)}")
    return 0


# --- export / align ---------------------------------------------------------------------------
def _add_export(sub) -> None:
    p = sub.add_parser(
        "export", help="export a checkpoint to ONNX (optionally int8) and TorchScript",
        description="Write OUT/model.onnx, OUT/model.torchscript.pt (and with --int8 OUT/model.int8.onnx, "
        "dynamic int8 quantisation by onnxruntime) and OUT/model.json. The graphs map normalised features "
        "(B, frames, dim) and their lengths (B,) to CTC log-probs (B, out_frames, tokens) and their lengths; "
        "computing the features is the caller's job: model.json (also embedded in each file) holds the "
        "feature config, the CMVN mean/std, the tokens and the seconds per output frame. Each file written "
        "is checked against PyTorch on a batch of varied lengths.")
    p.add_argument("--model", required=True, help="checkpoint .pt or experiment folder (avg-*.pt, else best.pt, "
                   "else last.pt)")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--format", default="onnx,torchscript", help="comma-separated, from onnx, torchscript "
                   "(default both)")
    p.add_argument("--int8", action="store_true", help="also write model.int8.onnx (needs onnx in --format)")
    p.set_defaults(func=_run_export)


def _run_export(args) -> int:
    from asr.export import export_model

    _check_outputs(args.out)
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    result = export_model(args.model, args.out, formats, int8=args.int8)
    for kind, path in result.files.items():
        check = ""
        if kind in result.max_abs_diff:
            check = (f": max |log-prob difference| from PyTorch {result.max_abs_diff[kind]:.1e}, greedy text "
                     + ("the same" if result.same_greedy[kind] else "DIFFERENT") + " on the check batch")
        print(f"{path}{check}")
    return 0


def _add_align(sub) -> None:
    p = sub.add_parser(
        "align", help="word and character times of known transcripts (CTC forced alignment)",
        description="Align each utterance's transcript to its audio with the model's CTC posteriors "
        "(torchaudio's forced_align). Writes OUT/alignments.jsonl (words and characters with start, end, "
        "confidence), OUT/alignments.ctm (sclite's word format) and OUT/failed.txt. An utterance that cannot "
        "be aligned (unreadable audio, characters outside the model's tokens, a transcript too long for its "
        "frames) is named on stderr and in failed.txt, and makes the exit status 1.")
    p.add_argument("--model", required=True, help="checkpoint .pt or experiment folder")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", help="JSONL manifest (id, audio, text)")
    source.add_argument("--audio", help="one audio file (with --text)")
    p.add_argument("--text", help="the transcript of --audio")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.set_defaults(func=_run_align)


def _run_align(args) -> int:
    from pathlib import Path

    from asr.align import align_records, write_alignments
    from asr.device import resolve_device
    from asr.inference import InferenceModel

    if (args.audio is None) != (args.text is None):
        raise AsrError("--audio and --text go together (or give --manifest)")
    if args.manifest:
        from asr.data.manifest import read_manifest

        records = read_manifest(args.manifest)
    else:
        from asr.audio import audio_info

        utt = "_".join(Path(args.audio).stem.split()) or "audio"  # the CTM's file field has no spaces
        records = [{"id": utt, "audio": args.audio, "text": args.text, "duration": audio_info(args.audio).duration}]
    _check_outputs(args.out)
    inference = InferenceModel.from_checkpoint(args.model, device=resolve_device(args.device))
    summary = align_records(inference, records)
    paths = write_alignments(summary, args.out)
    for utt, reason in summary.failed:
        print(f"asr align: {utt}: {reason}", file=sys.stderr)
    print(f"aligned {len(summary.alignments)} of {len(records)} utterance(s) -> {paths['json']}, {paths['ctm']}"
          + (f"; {len(summary.failed)} failed, listed in {paths['failed']}" if summary.failed else ""),
          file=sys.stderr)
    return 1 if summary.failed else 0


# --- lm (helper F) ----------------------------------------------------------------------------
def _add_lm(sub) -> None:
    p = sub.add_parser("lm", help="word n-gram language models")
    lm_sub = p.add_subparsers(dest="lm_command", required=True, metavar="LM_COMMAND")
    b = lm_sub.add_parser("build", help="train a Kneser-Ney n-gram LM (ARPA) on text",
                          description="Train a Kneser-Ney n-gram LM with kaldingram on normalised text "
                                      "(one sentence per line, .gz or a .jsonl manifest also accepted). The ARPA "
                                      "holds <unk> with the probability of an unseen word (types seen once / "
                                      "tokens); KenLM binary output is not available (no build_binary here).")
    b.add_argument("--text", required=True, action="append", help="training text (repeat for several files)")
    b.add_argument("--order", type=int_range(1, 5), default=3, help="n-gram order, 1-5 (default 3)")
    b.add_argument("--out", required=True, help="output ARPA file (.arpa or .arpa.gz)")
    b.add_argument("--prune", type=positive_float, help="entropy pruning threshold, e.g. 1e-7 (default: no pruning)")
    p.set_defaults(func=_run_lm)


def _run_lm(args) -> int:
    from asr.lm import build_lm

    _check_outputs(files=(args.out,))
    summary = build_lm(args.text, args.order, args.out, prune_threshold=args.prune)
    counts = ", ".join(f"{n}-grams {c}" for n, c in sorted(summary.ngrams.items()))
    print(f"{summary.path}: order {summary.order}{' (pruned)' if summary.pruned else ''}, "
          f"{summary.sentences} sentences, {summary.words} words, vocabulary {summary.vocabulary}; {counts}; "
          f"P(<unk>) {summary.unk_prob:.4f}")
    return 0


def _add_stats(sub) -> None:
    p = sub.add_parser("stats", help="write an experiment's tokens.txt and cmvn.pt from the training manifest",
                       description="Compute EXP/tokens.txt and EXP/cmvn.pt (global CMVN) as `asr train` does "
                                   "first; existing files are reused.")
    p.add_argument("--config", help="experiment config YAML (features, data sections are used)")
    p.add_argument("--train", required=True, help="training manifest (JSONL)")
    p.add_argument("--exp", required=True, help="experiment folder")
    p.add_argument("--nj", type=positive_int, default=1,
                   help="processes computing the CMVN statistics on the CPU (default 1; e.g. the number of cores)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=_run_stats)


def _run_stats(args) -> int:
    from asr.experiment import load_experiment_config, stats

    _check_outputs(args.exp)
    summary = stats(load_experiment_config(args.config, args.overrides), args.train, args.exp, jobs=args.nj)
    print(f"{summary['kept']} of {summary['utterances']} utterances ({summary['hours']:.2f} h) within the length "
          f"limits; {summary['vocab_size']} tokens -> {summary['tokens']}; "
          f"CMVN of {summary['feature_dim']}-dim features -> {summary['cmvn']}")
    return 0


def _add_average(sub) -> None:
    p = sub.add_parser("average", help="average the last K step checkpoints into checkpoints/avg-K.pt")
    p.add_argument("--exp", required=True, help="experiment folder")
    p.add_argument("--last", type=positive_int, default=5,
                   help="number of step-N.pt checkpoints to average (default 5)")
    p.set_defaults(func=_run_average)


def _run_average(args) -> int:
    from asr.checkpoint import average_experiment

    _check_outputs(os.path.join(args.exp, "checkpoints"))
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

    _check_outputs(args.data_dir)
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
    for add in (_add_prepare, _add_synth, _add_train, _add_decode, _add_score, _add_compare, _add_results,
                _add_transcribe, _add_calibrate, _add_export, _add_align, _add_lm, _add_stats, _add_average,
                _add_download):
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
        if args.command == "train":  # training routes its own logs (exp/log/train.log and stderr)
            return args.func(args) or 0
        from asr.logs import console_warnings

        with console_warnings():
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
    except OSError as err:
        # A file the verb could not read or write (permission, disk full, a file where a folder
        # should be): the system's reason and the path, as one line.
        where = f"{err.filename}: " if err.filename is not None else ""
        print(f"asr {args.command}: error: {where}{err.strerror or err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
