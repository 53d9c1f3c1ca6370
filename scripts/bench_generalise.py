#!/usr/bin/env python
"""Generalisation benchmark: train a config on the synthetic corpus, test on voices AND sentences
it never met, report greedy and beam + LM WER/CER with 95% confidence intervals.

    python scripts/bench_generalise.py --work /tmp/gen --config conf/demo.yaml [--epochs 12]

1. Training corpus: `asr synth` as `make demo` makes it: WordNet's example sentences with a
   share from the built-in grammar (`--train-text grammar`: the grammar only); train and dev, dev
   voices of the training voice families.
2. Unseen test set: `asr synth --text` with sentences from Debian's `fortunes` (quotations,
   verse, jokes: another text source, another vocabulary) spoken only by the test voice families
   that training never uses (asr.data.synthetic: slt and ked, through flite and festival).
3. `asr stats`, `asr train` (CPU seconds measured), `asr average`, an LM from the corpus's LM
   text (train's sentences and the rest of the text source, never dev's: what a user of the
   recipe would have, as LibriSpeech's LM corpus), LM weights tuned on dev, then `asr decode` of the
   unseen set greedy and with beam + LM, each also with test-time VTLN (`asr decode --vtln`), and
   of `--real-dev`, a manifest of real speech, if given. Every step is an `asr` call, resumable:
   a rerun skips what is done (.done markers, as the recipes).

The figures it prints are the ones to choose conf/demo.yaml by; nothing here is tuned on them.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asr.data.synthetic import FORTUNE_DIR, FORTUNE_FILES, LM_TEXT, WORDNET_DIR  # noqa: E402


def run(step: Path, *command: str) -> None:
    """Run one `asr` command unless its .done marker exists; stop the benchmark on failure."""
    if step.exists():
        return
    print("+ asr", " ".join(command), flush=True)
    if subprocess.run([sys.executable, "-m", "asr.cli", *command]).returncode != 0:
        sys.exit(f"bench_generalise: `asr {command[0]}` failed")
    step.parent.mkdir(parents=True, exist_ok=True)
    step.touch()


def fortune_text(out: Path) -> Path:
    """The fortunes files as one prose file (asr synth --text-format prose cuts the sentences)."""
    missing = [name for name in FORTUNE_FILES if not (FORTUNE_DIR / name).is_file()]
    if missing:
        sys.exit(f"bench_generalise: {FORTUNE_DIR} lacks {', '.join(missing)}: apt-get install fortunes")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join((FORTUNE_DIR / name).read_text(encoding="utf-8", errors="replace")
                             for name in FORTUNE_FILES), encoding="utf-8")
    return out


def prepare(work: Path, args) -> dict[str, Path]:
    """Both corpora and their manifests; returns the manifest of each set."""
    corpus, unseen, manifests = work / "corpus", work / "unseen", work / "manifests"
    train_text = [] if args.train_text == "grammar" else [
        "--text", str(WORDNET_DIR), "--text-format", "wordnet", "--grammar-share", str(args.grammar_share)]
    run(work / ".synth.done", "synth", "--out", str(corpus), "--train-utts", str(args.train_utts),
        "--dev-utts", "200", "--test-utts", "0", "--seed", str(args.seed), *train_text)
    text = fortune_text(work / "fortunes.txt")
    run(work / ".unseen.done", "synth", "--out", str(unseen), "--text", str(text), "--text-format", "prose",
        "--train-utts", "0", "--dev-utts", "0", "--test-utts", str(args.test_utts), "--seed", str(args.seed + 1))
    sets = {"train": corpus / "train", "dev": corpus / "dev", "unseen": unseen / "test"}
    for name, folder in sets.items():
        run(work / f".{name}.manifest.done", "prepare", "dir", str(folder), "--out", str(manifests / f"{name}.jsonl"))
    found = {name: manifests / f"{name}.jsonl" for name in sets}
    if args.real_dev:
        found["real_dev"] = Path(args.real_dev)
    return found


def train(work: Path, manifests: dict[str, Path], args) -> tuple[Path, float]:
    """Stats, training and averaging; returns (experiment, CPU seconds of training)."""
    exp = work / "exp"
    overrides = [*([f"train.epochs={args.epochs}"] if args.epochs else []), *args.set]
    run(work / ".stats.done", "stats", "--config", args.config, "--train", str(manifests["train"]), "--exp", str(exp),
        *overrides)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    run(work / ".train.done", "train", "--config", args.config, "--train", str(manifests["train"]),
        "--valid", str(manifests["dev"]), "--exp", str(exp), *overrides)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    print(f"training: {cpu / 60:.1f} CPU-minutes, {(time.monotonic() - started) / 60:.1f} minutes wall")
    run(work / ".average.done", "average", "--exp", str(exp), "--last", str(args.avg))
    return exp, cpu


def evaluate(work: Path, exp: Path, manifests: dict[str, Path], name: str) -> list[dict]:
    """Greedy and beam + LM (weights tuned on dev) on the set `name`; their results.json."""
    lm = work / "lm" / "train-4gram.arpa"
    run(work / ".lm.done", "lm", "build", "--text", str(work / "corpus" / LM_TEXT), "--order", "4", "--out", str(lm))
    run(work / ".tune.done", "decode", "--exp", str(exp), "--manifest", str(manifests["dev"]), "--set", "dev",
        "--decoder", "beam", "--lm", str(lm), "--tune")
    tuned = exp / "decode" / "dev" / "beam-train-4gram" / "tuned.json"
    for vtln in ([], ["--vtln"]):  # and with test-time VTLN (a warp per speaker)
        suffix = "".join(vtln).replace("--", ".")
        run(work / f".{name}.greedy{suffix}.done", "decode", "--exp", str(exp), "--manifest", str(manifests[name]),
            "--set", name, *vtln)
        run(work / f".{name}.beam{suffix}.done", "decode", "--exp", str(exp), "--manifest", str(manifests[name]),
            "--set", name, "--decoder", "beam", "--lm", str(lm), "--tuned-from", str(tuned), *vtln)
    return [json.loads((exp / "decode" / name / label / "results.json").read_text())
            for label in ("greedy", "beam-train-4gram", "greedy-vtln", "beam-train-4gram-vtln")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="folder for both corpora, the experiment and the results")
    p.add_argument("--config", default="conf/demo.yaml", help="config to train (default conf/demo.yaml)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the config's train.epochs)")
    p.add_argument("--train-utts", type=int, default=4000, help="training utterances (default 4000, the demo's)")
    p.add_argument("--test-utts", type=int, default=300, help="unseen test utterances (default 300)")
    p.add_argument("--avg", type=int, default=3, help="checkpoints averaged (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-text", choices=("wordnet", "grammar"), default="wordnet",
                   help="training text: WordNet's examples with a grammar share (default, as make demo), "
                        "or the grammar")
    p.add_argument("--grammar-share", type=float, default=0.25,
                   help="with --train-text wordnet: share of utterances from the grammar (default 0.25, as make demo)")
    p.add_argument("--real-dev", default=None, help="a manifest of real speech to decode too (never trained on)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    args = p.parse_args(argv)
    work = Path(args.work)
    manifests = prepare(work, args)
    exp, cpu = train(work, manifests, args)
    print(f"\n{args.config}, {args.epochs or 'its'} epochs, {cpu / 60:.1f} CPU-minutes of training; "
          f"unseen voices and text ({manifests['unseen']})")
    for name in ("unseen", "real_dev") if args.real_dev else ("unseen",):
        for result in evaluate(work, exp, manifests, name):
            low, high = result["wer_ci95"]
            decoder = result["decoder_settings"]["decoder"] + (" + LM" if result["decoder_settings"].get("lm") else "")
            decoder += " + VTLN" if "vtln" in result else ""
            print(f"  {name:<8} {decoder:<17} WER {result['wer']:6.2f}% (95% CI {low:.2f}-{high:.2f})"
                  f"  CER {result['cer']:5.2f}%  on {result['utterances']} utterances")
    return 0


if __name__ == "__main__":
    sys.exit(main())
