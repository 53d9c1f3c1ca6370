#!/usr/bin/env python
"""The prepared GPU check: what a first run on one GPU must show, as one table. Run it as
`scripts/gpu_check.sh` (no network, nothing to edit; about 5 minutes on one recent GPU, 8 at most:
each check has a time limit and the rest are skipped past --budget seconds).

Checks, in order (each one or two commands; the log of each in OUT/logs/):

  corpus        a tone corpus (scripts/tone_corpus.py; no espeak-ng needed)
  cuda tests    pytest -k cuda: the tests that need a GPU (skipped on machines without one)
  amp dtypes    scripts/amp_report.py: the dtype each layer runs in under each train.amp mode
  bench ...     scripts/bench_train.py of conf/small.yaml and conf/large.yaml in each amp mode
                (bf16, fp16, none): audio-seconds trained per second and peak GPU memory
  train bf16    asr stats, then asr train for 300 steps in bf16 on the tone corpus: the loss
                must stay finite
  decode        asr decode (greedy) of the valid split with that model on the GPU
  ddp 2         asr stats, then torchrun with 2 processes of asr train: NCCL when the machine
                has 2 GPUs, else gloo on the CPU

    scripts/gpu_check.sh                 # the check, table at the end (and in OUT/report.txt)
    scripts/gpu_check.sh --dry-run       # the commands it would run

--device cpu with --configs tiny and small step counts runs the same path on a CPU (the test does).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


class CheckFailed(Exception):
    """A check ran but its output shows a failure (the message says what)."""


@dataclass
class Check:
    name: str
    commands: list[list[str]]
    timeout: int  # seconds for all its commands
    figures: Callable[[str], str]  # its combined output -> the table's figures (CheckFailed on failure)
    needs: Path | None = None  # a file it runs; "missing" when absent
    ok_codes: tuple[int, ...] = (0,)


@dataclass
class Row:
    name: str
    result: str  # ok | FAIL | timeout | missing | skipped
    seconds: float = 0.0
    figures: str = ""
    output: str = field(default="", repr=False)


# --- figures from each command's output --------------------------------------------------------
def pytest_figures(output: str) -> str:
    """The summary of `pytest -q`: "3 passed, 1 skipped in 12.3s" (CheckFailed on failures)."""
    lines = [line for line in output.splitlines() if " in " in line and ("passed" in line or "skipped" in line
                                                                          or "deselected" in line or "failed" in line
                                                                          or "error" in line)]
    summary = lines[-1].strip("= ") if lines else "no summary line"
    if "failed" in summary or "error" in summary:
        raise CheckFailed(summary)
    return summary


def bench_figures(output: str) -> str:
    """audio-s/s and peak MB from bench_train's table (the `ours` row)."""
    header = next((line for line in output.splitlines() if line.startswith("pipeline")), None)
    row = next((line for line in output.splitlines() if line.startswith("ours ")), None)
    if header is None or row is None:
        raise CheckFailed("no result table in bench_train's output")
    values = row.split()
    rate = float(values[7])
    if not math.isfinite(rate) or rate <= 0:
        raise CheckFailed(f"audio-s/s is {values[7]}")
    peak = f", peak {float(values[8]):.0f} MB" if "peak MB" in header and len(values) > 8 else ""
    return f"{rate:.0f} audio-s/s{peak} ({values[2]} steps)"


def training_figures(exp: Path, steps: int) -> Callable[[str], str]:
    """Loss at the first and last log lines of exp/log/metrics.jsonl; CheckFailed unless every
    logged loss is finite and the run reached `steps`."""
    def figures(_output: str) -> str:
        path = exp / "log" / "metrics.jsonl"
        if not path.exists():
            raise CheckFailed(f"no {path}")
        train = [json.loads(line) for line in path.read_text().splitlines() if '"kind": "train"' in line]
        if not train:
            raise CheckFailed(f"no training step logged in {path}")
        bad = [entry["step"] for entry in train if not math.isfinite(entry["loss"])]
        if bad:
            raise CheckFailed(f"loss not finite at step(s) {bad[:5]}")
        if train[-1]["step"] < steps:
            raise CheckFailed(f"stopped at step {train[-1]['step']} of {steps}")
        rate = train[-1].get("audio_s_per_s", float("nan"))
        return (f"step {train[-1]['step']}: loss {train[0]['loss']:.2f} -> {train[-1]['loss']:.2f} (all finite), "
                f"{rate:.0f} audio-s/s")
    return figures


def decode_figures(exp: Path, set_name: str) -> Callable[[str], str]:
    def figures(_output: str) -> str:
        found = sorted(glob.glob(str(exp / "decode" / set_name / "*" / "results.json")))
        if not found:
            raise CheckFailed(f"no results.json under {exp / 'decode' / set_name}")
        results = json.loads(Path(found[0]).read_text())
        wer, rtf = results.get("wer"), results.get("rtf")
        text = f"WER {wer:.1f}%" if isinstance(wer, (int, float)) else "WER ?"  # results.json holds percent
        return f"{text}, device {results.get('device', '?')}" + (f", RTF {rtf:.4f}" if rtf else "")
    return figures


def ddp_figures(exp: Path, backend: str) -> Callable[[str], str]:
    def figures(_output: str) -> str:
        log = exp / "log" / "train.log"
        if not (exp / "checkpoints" / "last.pt").exists() or not log.exists():
            raise CheckFailed(f"no checkpoints/last.pt or log/train.log in {exp}")
        if "2 process(es)" not in log.read_text():
            raise CheckFailed(f"{log} does not say 2 processes trained")
        return f"2 processes, {backend}: last.pt written by rank 0"
    return figures


# --- the list of checks ------------------------------------------------------------------------
def asr(*args: str) -> list[str]:
    return [PY, "-m", "asr.cli", *args]


def build_checks(args, gpus: int) -> list[Check]:
    """The checks of this run (see the module docstring), in order."""
    out = Path(args.out)
    corpus, device = out / "corpus", args.device
    train, valid = str(corpus / "train.jsonl"), str(corpus / "valid.jsonl")
    checks = [
        Check("corpus", [[PY, str(ROOT / "scripts" / "tone_corpus.py"), "--out", str(corpus), "--train",
                          str(args.train_utts), "--valid", str(args.valid_utts),
                          "--max-seconds", str(args.max_seconds)]],
              60, lambda output: f"{args.train_utts} train / {args.valid_utts} valid tone utterances"),
        Check("cuda tests", [[PY, "-m", "pytest", "-q", "-k", "cuda", "-p", "no:cacheprovider", str(ROOT / "tests")]],
              90, pytest_figures, ok_codes=(0, 5)),  # 5: no test selected
        Check("amp dtypes", [[PY, str(ROOT / "scripts" / "amp_report.py")]], 45,
              lambda output: "per layer: in the report below", needs=ROOT / "scripts" / "amp_report.py"),
    ]
    for name in args.configs.split(","):
        for amp in args.amp_modes.split(","):
            checks.append(Check(f"bench {name} {amp}", [[
                PY, str(ROOT / "scripts" / "bench_train.py"), "--manifest", train, "--config",
                str(ROOT / "conf" / f"{name}.yaml"), "--set", f"train.amp={amp}", "--device", device, "--only", "ours",
                "--steps", str(args.bench_steps), "--seconds", "15", "--warmup", "2"]], 35, bench_figures))
    exp = out / "exp-train"
    overrides = [f"train.device={device}", "train.amp=bf16", f"train.max_steps={args.train_steps}",
                 "train.epochs=100000", "data.max_duration=60", f"train.valid_every={max(args.train_steps // 3, 1)}",
                 f"train.checkpoint_every={max(args.train_steps // 3, 1)}", "train.log_every=25", "train.threads=0"]
    config = str(ROOT / "conf" / f"{args.train_config}.yaml")
    checks.append(Check(f"train bf16 {args.train_steps} steps", [
        asr("stats", "--config", config, "--train", train, "--exp", str(exp)),
        asr("train", "--config", config, "--train", train, "--valid", valid, "--exp", str(exp), *overrides)],
        90, training_figures(exp, args.train_steps)))
    checks.append(Check("decode greedy", [asr("decode", "--exp", str(exp), "--manifest", valid, "--set", "valid",
                                              "--decoder", "greedy", "--device", device)], 45,
                        decode_figures(exp, "valid")))
    ddp_exp, backend = out / "exp-ddp", "nccl" if device.startswith("cuda") and gpus >= 2 else "gloo"
    tiny = str(ROOT / "conf" / "tiny.yaml")
    checks.append(Check(f"ddp 2 ({backend})", [
        asr("stats", "--config", tiny, "--train", train, "--exp", str(ddp_exp)),
        [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "asr.cli", "train",
         "--config", tiny, "--train", train, "--valid", valid, "--exp", str(ddp_exp),
         f"train.device={'cuda' if backend == 'nccl' else 'cpu'}", f"train.max_steps={args.ddp_steps}",
         "train.epochs=1000", "data.max_duration=60", f"train.checkpoint_every={max(args.ddp_steps // 2, 1)}"]],
        60, ddp_figures(ddp_exp, backend)))
    return [c for c in checks if not args.only or any(c.name.startswith(o) for o in args.only.split(","))]


# --- running and the table ---------------------------------------------------------------------
def run_check(check: Check, logs: Path, env: dict) -> Row:
    if check.needs is not None and not check.needs.exists():
        return Row(check.name, "missing", figures=f"{check.needs.relative_to(ROOT)} not found")
    started, outputs = time.monotonic(), []
    log = logs / f"{check.name.replace(' ', '_').replace('(', '').replace(')', '')}.log"
    for command in check.commands:
        left = check.timeout - (time.monotonic() - started)
        try:
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(left, 1))
        except subprocess.TimeoutExpired as error:
            outputs.append(_text(error.stdout) + _text(error.stderr))
            log.write_text("\n".join(outputs))
            return Row(check.name, "timeout", time.monotonic() - started, f"over {check.timeout} s", outputs[-1])
        outputs.append(f"$ {shlex.join(command)}\n{done.stdout}{done.stderr}")
        if done.returncode not in check.ok_codes:
            log.write_text("\n".join(outputs))
            last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
            return Row(check.name, "FAIL", time.monotonic() - started, f"exit {done.returncode}: {last[:150]}",
                       outputs[-1])
    output = "\n".join(outputs)
    log.write_text(output)
    try:
        return Row(check.name, "ok", time.monotonic() - started, check.figures(output), output)
    except CheckFailed as error:
        return Row(check.name, "FAIL", time.monotonic() - started, str(error), output)


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def table(rows: list[Row]) -> str:
    lines = [f"{'check':<26}{'result':<9}{'seconds':>8}  figures"]
    lines += [f"{r.name:<26}{r.result:<9}{r.seconds:>8.1f}  {r.figures}" for r in rows]
    amp = next((r for r in rows if r.name == "amp dtypes" and r.result == "ok"), None)
    if amp is not None:
        lines += ["", "AMP dtypes per layer (scripts/amp_report.py):", amp.output.split("\n", 1)[-1].rstrip()]
    return "\n".join(lines)


def machine(device: str) -> tuple[str, int]:
    """A line describing torch and the GPUs, and the number of GPUs."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(gpus)) or "no CUDA device"
    return f"torch {torch.__version__}, CUDA {torch.version.cuda}, {gpus} GPU(s): {names}; checks on {device}", gpus


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--out", default="/tmp/asr-gpu-check", help="work folder: corpus, experiments, logs [%(default)s]")
    p.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu [cuda]")
    p.add_argument("--configs", default="small,large", help="conf/*.yaml names to bench [small,large]")
    p.add_argument("--amp-modes", default="bf16,fp16,none", help="train.amp modes to bench [bf16,fp16,none]")
    p.add_argument("--bench-steps", type=int, default=20, help="timed steps per bench (15 s at most) [20]")
    p.add_argument("--train-config", default="small", help="config of the bf16 training [small]")
    p.add_argument("--train-steps", type=int, default=300, help="steps of the bf16 training [300]")
    p.add_argument("--ddp-steps", type=int, default=20, help="steps of the 2-process run [20]")
    p.add_argument("--train-utts", type=int, default=200, help="tone corpus training utterances [200]")
    p.add_argument("--valid-utts", type=int, default=20, help="tone corpus validation utterances [20]")
    p.add_argument("--max-seconds", type=float, default=12.0, help="longest tone utterance [12]")
    p.add_argument("--budget", type=float, default=380, help="seconds after which the remaining checks are skipped")
    p.add_argument("--only", default="", help="comma-separated check name prefixes to run (e.g. bench,train)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    import os

    args = parse_args(argv)
    description, gpus = machine(args.device)
    checks = build_checks(args, gpus)
    if args.dry_run:
        print(f"# {description}")
        for check in checks:
            print(f"# {check.name} (limit {check.timeout} s)")
            for command in check.commands:
                print(shlex.join(command))
        return 0
    if args.device.startswith("cuda") and gpus == 0:
        print(f"error: no CUDA device ({description}); --device cpu runs the checks on the CPU", file=sys.stderr)
        return 1
    logs = Path(args.out) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    print(description, flush=True)
    rows, started = [], time.monotonic()
    for check in checks:
        if time.monotonic() - started > args.budget:
            rows.append(Row(check.name, "skipped", figures=f"past the --budget of {args.budget:.0f} s"))
            continue
        rows.append(run_check(check, logs, env))
        row = rows[-1]
        print(f"{row.name}: {row.result} ({row.seconds:.0f} s) {row.figures}", flush=True)
    report = f"{description}\n\n{table(rows)}\n\nlogs: {logs}\n"
    (Path(args.out) / "report.txt").write_text(report)
    print("\n" + report, end="")
    return 0 if all(r.result in ("ok", "missing") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
