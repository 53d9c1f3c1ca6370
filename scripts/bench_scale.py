#!/usr/bin/env python
"""Memory and start-up of the training data path against the size of the corpus (no audio needed).

Builds a fake LibriSpeech-like training manifest of --rows utterances (ids, paths in
LibriSpeech layout, durations 1-35 s, transcripts of about 15 characters a second; no audio
files) and a 2,700-row validation manifest, then measures what one DDP rank of `asr train` does
before and during its first epoch:

- start-up: reading the manifests, the tokens, the utterance selection (duration filter, CTC
  feasibility), the CMVN fingerprint check, the datasets, the sampler and the DataLoader, up to
  the first batch (the same functions `asr train` calls: `asr.train._prepare` and
  `asr.train.build_loaders`);
- the main process's peak RSS above what the imports and the model (--config) hold;
- each DataLoader worker's growth over the epoch: USS (private pages, the copy-on-write copies
  a worker makes of what it touches) and VmRSS, from /proc/<pid>/smaps_rollup and status;
- the waveform bytes of the largest batch at full length (what crosses /dev/shm per batch).

Audio reads return zeros (`asr.audio.load_audio` is replaced before the workers fork) whose
length is the utterance's duration times --audio-scale (default 1/100 of the real length: the
epoch then costs the index path, not memory copies). CMVN statistics are written as identity
statistics by a first, untimed `asr stats`-like step in its own process; each measurement runs in
a fresh process.

    nice -n 10 .venv/bin/python scripts/bench_scale.py --rows 28000 281000 --workers 2
    nice -n 10 .venv/bin/python scripts/bench_scale.py --rows 2810000 --workers 2 --world-size 8

Manifests are cached in --work (default /tmp/asr-bench-scale) and reused.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = ("the and of to a in he that was it his i with had as for you her but she not be him at on is "
         "they said all by this were so from which have one my there would me no when what then if are "
         "them an or their could into more we up out about like very little now great before some man "
         "upon time been only down over any know such thought came again much how who should did say "
         "well long himself must after made away good never day through old eyes men might first most "
         "hand still here where being those life house without other nothing another against mother "
         "yet young face father place seemed toward course heard always looked morning perhaps because "
         "something though everything understand people together whatever household beautiful "
         "gentleman immediately wonderful remember afternoon presently twenty whispered").upper().split()
SPEAKERS = 2338  # LibriSpeech 960 h
CHARS_PER_SECOND = 15.0


def fake_duration(utt_id: str) -> float:
    """Seconds of an utterance, a function of its id: 80 % about 14.5 +- 2.5 s (LibriSpeech's
    segmentation), 20 % anywhere in 1-35 s. The fake audio reader uses the same function."""
    u1 = zlib.crc32(utt_id.encode()) / 2**32
    u2 = (zlib.crc32(utt_id.encode(), 12345) / 2**32) * 0.998 + 0.001
    seconds = 14.5 + 2.5 * statistics.NormalDist().inv_cdf(u2) if u1 < 0.8 else 1.0 + 34.0 * u2
    return round(min(max(seconds, 1.0), 35.0), 3)


def write_fake_manifest(path: Path, rows: int, subset: str, seed: int) -> None:
    """`rows` LibriSpeech-like JSONL records (no audio files behind them)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    per_speaker = max(rows // SPEAKERS, 1)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        for i in range(rows):
            speaker, rest = 19 + i // per_speaker, i % per_speaker
            chapter, utt = 100000 + speaker * 7 + rest // 100, rest % 100
            utt_id = f"{speaker}-{chapter}-{utt:04d}"
            duration = fake_duration(utt_id)
            words, length = [], 0
            target = CHARS_PER_SECOND * duration * rng.uniform(0.7, 1.2)
            for index in rng.integers(0, len(WORDS), size=int(target / 4) + 2):
                if length >= target:
                    break
                words.append(WORDS[index])
                length += len(WORDS[index]) + 1
            record = {"id": utt_id, "audio": f"LibriSpeech/{subset}/{speaker}/{chapter}/{utt_id}.flac",
                      "duration": duration, "text": " ".join(words), "speaker": str(speaker)}
            f.write(json.dumps(record) + "\n")
    os.replace(tmp, path)


def manifests(work: Path, rows: int) -> tuple[Path, Path]:
    train, valid = work / f"train-{rows}.jsonl", work / "valid-2700.jsonl"
    work.mkdir(parents=True, exist_ok=True)
    if not train.exists():
        started = time.monotonic()
        write_fake_manifest(train, rows, "train-other-500", seed=rows)
        print(f"wrote {train} ({time.monotonic() - started:.0f} s)", flush=True)
    if not valid.exists():
        write_fake_manifest(valid, 2700, "dev-clean", seed=1)
    return train, valid


# --- measurements in the child process ---------------------------------------------------------
def memory_of(pid: int | str = "self") -> dict[str, float]:
    """MB: VmRSS, VmHWM (peak RSS) from /proc/<pid>/status; USS (private clean + dirty) and PSS
    from /proc/<pid>/smaps_rollup."""
    values: dict[str, float] = {}
    for name in ("status", "smaps_rollup"):
        with open(f"/proc/{pid}/{name}") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if len(parts) == 2 and parts[1] == "kB":
                    values[key] = int(parts[0]) / 1024
    return {"rss": values.get("VmRSS", 0.0), "hwm": values.get("VmHWM", 0.0), "pss": values.get("Pss", 0.0),
            "uss": values.get("Private_Clean", 0.0) + values.get("Private_Dirty", 0.0)}


def fake_audio(scale: float):
    import torch

    def load_audio(path, sample_rate=16000, *args, **kwargs):
        seconds = fake_duration(Path(str(path)).stem)
        return torch.zeros(max(1, round(seconds * sample_rate * scale)), dtype=torch.float32)

    return load_audio


def setup_child(args):
    """Config, with the fake audio reader and identity CMVN installed."""
    import torch

    import asr.audio
    import asr.experiment
    from asr.features import GlobalCMVN

    asr.audio.load_audio = fake_audio(args.audio_scale)

    def identity_cmvn(records, config, *rest, **kwargs):
        return GlobalCMVN(torch.zeros(config.dim), torch.ones(config.dim))

    asr.experiment.compute_cmvn = identity_cmvn
    overrides = [f"data.num_workers={args.workers}", "train.device=cpu", *args.set]
    return asr.experiment.load_experiment_config(args.config, overrides)


def child_stats(args) -> dict:
    """Untimed: tokens.txt and cmvn.pt, as `asr stats` writes them before training."""
    from asr.experiment import prepare_experiment, read_records

    config = setup_child(args)
    prepare_experiment(config, read_records(args.train), Path(args.exp))
    return {}


def _batch(item):
    """The `Batch` of what the training loader yields (a Batch, or (Batch, unreadable utterances))."""
    return item[0] if isinstance(item, tuple) else item


def child_rank(args) -> dict:
    """One rank's start-up and epoch; returns the figures as a dict."""
    import torch

    from asr.model import build_model
    from asr.runtime import Runtime
    from asr.text import Tokenizer
    from asr.train import _prepare, build_loaders

    torch.set_num_threads(1)
    config = setup_child(args)
    imports = memory_of()
    model = build_model(config.model_config(Tokenizer.load(Path(args.exp) / "tokens.txt").vocab_size))
    base = memory_of()
    started = time.monotonic()
    # _prepare is asr train's own step; parameters it grows later (e.g. --init-from) are left None.
    extra = [None] * (len(inspect.signature(_prepare).parameters) - 5)
    prepared, valid = _prepare(config, args.train, args.valid, Path(args.exp), Runtime(rank=args.rank), *extra)
    prepared_s = time.monotonic() - started
    runtime = Runtime(rank=args.rank, world_size=args.world_size)
    train_loader, _ = build_loaders(config, prepared.tokenizer, prepared.kept, valid, runtime)
    train_loader.batch_sampler.set_epoch(0)
    batches = iter(train_loader)
    first = _batch(next(batches))
    startup_s = time.monotonic() - started
    after_startup = memory_of()
    workers = [w.pid for w in getattr(batches, "_workers", [])]
    start_mem = {pid: memory_of(pid) for pid in workers}
    counted, shm_bytes = 1, first.waveforms.element_size() * first.waveforms.numel()
    for batch in map(_batch, batches):
        counted += 1
        shm_bytes = max(shm_bytes, batch.waveforms.element_size() * batch.waveforms.numel())
    end_mem = {pid: memory_of(pid) for pid in workers}
    epoch_s = time.monotonic() - started - startup_s
    peak = memory_of()
    del model
    return {
        "rows": args.rows, "kept": len(prepared.kept), "batches": counted, "prepare_s": prepared_s,
        "startup_s": startup_s, "epoch_s": epoch_s, "imports_mb": imports["rss"],
        "model_mb": base["rss"] - imports["rss"],
        "peak_above_base_mb": peak["hwm"] - base["hwm"] if peak["hwm"] > base["hwm"] else 0.0,
        "startup_rss_above_base_mb": after_startup["rss"] - base["rss"],
        "end_rss_above_base_mb": peak["rss"] - base["rss"],
        "worker_uss_growth_mb": [end_mem[p]["uss"] - start_mem[p]["uss"] for p in workers],
        "worker_rss_growth_mb": [end_mem[p]["rss"] - start_mem[p]["rss"] for p in workers],
        "worker_uss_end_mb": [end_mem[p]["uss"] for p in workers],
        "waveform_dtype": str(first.waveforms.dtype).replace("torch.", ""),
        "max_batch_waveform_mb_full_length": shm_bytes / args.audio_scale / 2**20,
    }


# --- the parent: one child per measurement, a table --------------------------------------------
def run_child(args, phase: str, rows: int, train: Path, valid: Path, exp: Path) -> dict:
    command = [sys.executable, __file__, "--phase", phase, "--rows", str(rows), "--train", str(train),
               "--valid", str(valid), "--exp", str(exp), "--config", args.config, "--workers", str(args.workers),
               "--world-size", str(args.world_size), "--rank", str(args.rank),
               "--audio-scale", str(args.audio_scale)]
    for override in args.set:
        command += ["--set", override]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{phase} at {rows} rows failed:\n{done.stderr[-3000:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(lines[-1][len("RESULT "):]) if lines else {}


def print_table(results: list[dict], args) -> None:
    print(f"\nconfig {args.config}, {args.workers} loader workers, rank {args.rank} of {args.world_size}, "
          f"audio reads return zeros ({args.audio_scale:g} x real length)")
    print(f"{'rows':>9}{'kept':>9}{'batches':>9}{'start-up s':>12}{'peak MB':>9}{'held MB':>9}{'worker USS+ MB':>16}"
          f"{'worker RSS+ MB':>16}{'epoch s':>9}{'batch wave MB':>15}{'dtype':>9}")
    for r in results:
        uss = "/".join(f"{x:.0f}" for x in r["worker_uss_growth_mb"]) or "-"
        rss = "/".join(f"{x:.0f}" for x in r["worker_rss_growth_mb"]) or "-"
        print(f"{r['rows']:>9}{r['kept']:>9}{r['batches']:>9}{r['startup_s']:>12.1f}{r['peak_above_base_mb']:>9.0f}"
              f"{r['end_rss_above_base_mb']:>9.0f}{uss:>16}{rss:>16}{r['epoch_s']:>9.0f}"
              f"{r['max_batch_waveform_mb_full_length']:>15.1f}{r['waveform_dtype']:>9}")
    if results:
        r = results[0]
        print(f"imports {r['imports_mb']:.0f} MB, model {r['model_mb']:.0f} MB (the base). peak MB: the main process's "
              "peak RSS above the base; held MB: its RSS above the base at the end of the epoch; worker USS+/RSS+: "
              "each worker's growth from its first batch to the end of the epoch; batch wave MB: the largest "
              "batch's waveforms at full length (what one batch puts in /dev/shm)")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[28000, 281000], help="manifest sizes (default 28000 281000)")
    p.add_argument("--config", default=str(ROOT / "conf" / "large.yaml"), help="experiment config [conf/large.yaml]")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (data.num_workers) [2]")
    p.add_argument("--world-size", type=int, default=1, help="simulated DDP world: the rank's share of the epoch [1]")
    p.add_argument("--rank", type=int, default=0, help="the simulated rank (0 writes dropped.txt, config.yaml) [0]")
    p.add_argument("--audio-scale", type=float, default=0.01, help="fake waveform length / real length [0.01]")
    p.add_argument("--work", default="/tmp/asr-bench-scale", help="where manifests and experiments go")
    p.add_argument("--phase", choices=["stats", "rank"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--train", help=argparse.SUPPRESS)
    p.add_argument("--valid", help=argparse.SUPPRESS)
    p.add_argument("--exp", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.phase:
        args.rows = args.rows[0]
        result = (child_stats if args.phase == "stats" else child_rank)(args)
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    work = Path(args.work)
    results = []
    for rows in args.rows:
        train, valid = manifests(work, rows)
        exp = work / f"exp-{rows}-{Path(args.config).stem}"
        run_child(args, "stats", rows, train, valid, exp)
        result = run_child(args, "rank", rows, train, valid, exp)
        print(json.dumps(result), flush=True)
        results.append(result)
    print_table(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
