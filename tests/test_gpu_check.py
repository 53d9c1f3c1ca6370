"""scripts/gpu_check.sh: its dry run lists every check with commands the tools accept; on the CPU
the same checks run end to end on a tiny tone corpus; the figures are read from real outputs."""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from asr.cli import build_parser
from asr.data.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[1]


def script(name: str):
    """scripts/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_check = script("gpu_check")


def dry_run(*args: str) -> dict[str, list[list[str]]]:
    """check name -> its commands, from `scripts/gpu_check.sh --dry-run`."""
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", *args], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr
    checks: dict[str, list[list[str]]] = {}
    name = None
    for line in done.stdout.splitlines():
        if line.startswith("# ") and "(limit " in line:
            name = line[2:line.index(" (limit ")]
            checks[name] = []
        elif not line.startswith("#"):
            checks[name].append(shlex.split(line))
    return checks


def test_dry_run_lists_every_check_and_writes_nothing(tmp_path):
    out = tmp_path / "never"
    checks = dry_run("--out", str(out))
    benches = [f"bench {size} {amp}" for size in ("small", "large") for amp in ("bf16", "fp16", "none")]
    ddp = [name for name in checks if name.startswith("ddp 2")]
    assert list(checks) == ["corpus", "cuda tests", "amp dtypes", *benches, "train bf16 300 steps", "decode greedy",
                            *ddp]
    assert ddp == ["ddp 2 (gloo)"]  # this machine has fewer than 2 GPUs
    assert not out.exists()
    assert checks["cuda tests"][0][1:] == ["-m", "pytest", "-q", "-k", "cuda", "-p", "no:cacheprovider",
                                          str(ROOT / "tests")]
    assert checks["amp dtypes"] == [[sys.executable, str(ROOT / "scripts" / "amp_report.py")]]
    bench_train = script("bench_train")
    for name in benches:
        [command] = checks[name]
        parsed = bench_train.parse_args(command[2:])  # bench_train accepts every option
        size, amp = name.split()[1:]
        assert parsed.config.endswith(f"conf/{size}.yaml") and parsed.overrides == [f"train.amp={amp}"]
        assert parsed.device == "cuda" and parsed.only == "ours"
    parser = build_parser()
    stats, train = checks["train bf16 300 steps"]
    for command in (stats, train, *checks["decode greedy"], checks[ddp[0]][0]):
        assert command[1:3] == ["-m", "asr.cli"]
        parser.parse_args(command[3:])
    assert {"train.device=cuda", "train.amp=bf16", "train.max_steps=300"} <= set(train)
    assert checks["decode greedy"][0][-2:] == ["--device", "cuda"]
    torchrun = checks[ddp[0]][1]
    assert torchrun[1:7] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    parser.parse_args(torchrun[8:])
    assert "train.device=cpu" in torchrun


def test_without_a_gpu_it_says_so_in_one_line(tmp_path, capsys):
    if gpu_check.machine("cuda")[1] > 0:
        pytest.skip("this machine has a GPU")
    assert gpu_check.main(["--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA device" in err and "--device cpu" in err


def test_the_checks_run_end_to_end_on_the_cpu(tmp_path, capsys):
    out = tmp_path / "out"
    code = gpu_check.main(["--device", "cpu", "--out", str(out), "--configs", "tiny", "--amp-modes", "none",
                           "--train-config", "tiny", "--train-steps", "4", "--ddp-steps", "4", "--train-utts", "12",
                           "--valid-utts", "4", "--max-seconds", "2", "--bench-steps", "2",
                           "--only", "corpus,bench,train,decode,ddp"])
    report = (out / "report.txt").read_text()
    assert code == 0, report
    rows = {line[:26].strip(): line[26:] for line in report.splitlines()[3:] if line[26:35].strip() in ("ok", "FAIL")}
    assert list(rows) == ["corpus", "bench tiny none", "train bf16 4 steps", "decode greedy", "ddp 2 (gloo)"]
    assert all(row.startswith("ok") for row in rows.values()), report
    assert "audio-s/s" in rows["bench tiny none"] and "peak" not in rows["bench tiny none"]  # no peak off CUDA
    assert "step 4: loss" in rows["train bf16 4 steps"] and "(all finite)" in rows["train bf16 4 steps"]
    assert "WER" in rows["decode greedy"] and "device cpu" in rows["decode greedy"]
    assert "2 processes, gloo" in rows["ddp 2 (gloo)"]
    assert (out / "logs" / "corpus.log").is_file()
    records = read_manifest(out / "corpus" / "train.jsonl")
    assert len(records) == 12 and all(1.0 <= r["duration"] <= 2.0 for r in records)
    assert report in capsys.readouterr().out


def test_figures_are_read_from_bench_trains_table(capsys):
    bench_train = script("bench_train")
    results = [bench_train.Result("ours", params=1000, steps=20, utts=80, audio_s=900.0, wall_s=2.0,
                                  padded_frames=10, valid_frames=9, peak_mb=4321.0)]
    bench_train.print_table(results, training=False)
    on_gpu = capsys.readouterr().out
    assert "peak MB" in on_gpu
    assert gpu_check.bench_figures(on_gpu) == "450 audio-s/s, peak 4321 MB (20 steps)"
    results[0].peak_mb = float("nan")  # on the CPU: no peak column
    bench_train.print_table(results, training=False)
    on_cpu = capsys.readouterr().out
    assert "peak" not in on_cpu and gpu_check.bench_figures(on_cpu) == "450 audio-s/s (20 steps)"
    with pytest.raises(gpu_check.CheckFailed, match="no result table"):
        gpu_check.bench_figures("Traceback (most recent call last):\n...")


def test_figures_of_pytest_and_of_a_failed_training(tmp_path):
    assert gpu_check.pytest_figures("....\n3 passed, 2 skipped, 500 deselected in 12.3s\n") == \
        "3 passed, 2 skipped, 500 deselected in 12.3s"
    with pytest.raises(gpu_check.CheckFailed, match="1 failed, 2 passed"):
        gpu_check.pytest_figures("F..\n===== 1 failed, 2 passed in 3.1s =====\n")
    log = tmp_path / "log"
    log.mkdir()
    (log / "metrics.jsonl").write_text('{"kind": "train", "step": 25, "loss": 3.5}\n'
                                       '{"kind": "valid", "step": 25, "loss": 9.0}\n'
                                       '{"kind": "train", "step": 50, "loss": NaN}\n')
    with pytest.raises(gpu_check.CheckFailed, match=r"loss not finite at step\(s\) \[50\]"):
        gpu_check.training_figures(tmp_path, 50)("")


@pytest.mark.parametrize("closable", [False, True])
def test_bench_train_times_steps_across_epochs_and_closes_each_epochs_batches(closable):
    """Throughput mode runs on over epoch ends, and leaves each epoch's batches closed where they
    can be (a DataLoader's iterator cannot; `training_batches` stops its front-end thread)."""
    import argparse

    import torch

    bench_train = script("bench_train")
    opened, closed = [], []

    def epoch_batches(epoch):
        opened.append(epoch)
        if not closable:
            return iter([epoch, epoch])

        def batches():
            try:
                yield from (epoch, epoch)
            finally:
                closed.append(epoch)
        return batches()

    seen = []
    pipeline = bench_train.Pipeline("fake", torch.nn.Linear(1, 1), 2, epoch_batches,
                                    lambda batch: seen.append(batch) or (1, 1.0, 1, 1), lambda records: iter(()), 0.04)
    result = bench_train.time_steps(pipeline, torch.device("cpu"),
                                    argparse.Namespace(warmup=1, steps=4, seconds=None))
    assert result.steps == 4 and seen == [0, 0, 1, 1, 2]  # one untimed warm-up step, then four
    assert opened == [0, 1, 2] and closed == ([0, 1, 2] if closable else [])
