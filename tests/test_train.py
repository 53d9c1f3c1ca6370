"""The trainer: an end-to-end run on a tiny generated corpus, exact resume, DDP on CPU, configs.

Every run here is tiny (a 20-utterance corpus of tones, a 2-layer GRU of 16 units) and goes
through `asr.cli.main`, as a user would.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from asr.checkpoint import load_checkpoint
from asr.cli import main
from asr.config import load_config
from asr.data.dataset import collate
from asr.experiment import ExperimentConfig, load_experiment_config
from asr.inference import InferenceModel
from asr.lengths import ctc_min_frames
from asr.text import Tokenizer
from asr.train import build_optimizer, learning_rate

REPO = Path(__file__).resolve().parents[1]
WORDS = ["AB", "BA", "CAB", "A", "ABBA", "BAC"]
INFEASIBLE_ID = "train-long-text"
TINY = [
    "features.num_mel_bins=23",
    "model.hidden=16",
    "model.layers=2",
    "model.conv_channels=4",
    "model.subsample=2",
    "model.dropout=0.3",
    "specaug.freq_width=5",
    "specaug.time_width_ratio=0.2",
    "narrowband.prob=0.5",  # the resume test then also checks the augmentations' random streams
    "speed.prob=0.5",
    "reverb.prob=0.3",
    "noise.prob=0.5",
    "gain.prob=0.5",
    "vtlp.prob=0.5",
    "data.max_duration=5",  # with 2 buckets: 4 batches an epoch
    "data.num_buckets=2",
    "data.num_workers=0",
    "optim.warmup_steps=2",
    "optim.lr=3e-3",
    "train.log_every=2",
    "train.seed=7",
    "train.threads=1",  # tiny models: one thread is fastest (the default fits the machine's cores)
]


def write_corpus(root: Path, name: str, count: int, seed: int, extra: list[dict] = (), fixed: float = 0.0) -> Path:
    """Tones plus noise, 0.6-1.15 s (or all `fixed` s), transcripts from a 3-letter alphabet;
    a JSONL manifest."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(count):
        duration = fixed or 0.6 + 0.05 * (i % 12)
        t = np.arange(int(duration * 16000)) / 16000
        wave = 0.1 * np.sin(2 * np.pi * (200 + 50 * (i % 6)) * t) + 0.01 * rng.standard_normal(len(t))
        path = root / f"{name}-{i}.flac"
        sf.write(path, wave.astype(np.float32), 16000)
        text = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(1 + i % 2))
        records.append({"id": f"{name}-{i}", "audio": path.name, "duration": len(t) / 16000, "text": text,
                        "speaker": "s1"})
    manifest = root / f"{name}.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in [*records, *extra]))
    return manifest


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    # 0.6 s gives 29 output frames at subsample 2: 40 letters cannot be aligned.
    infeasible = {"id": INFEASIBLE_ID, "audio": "train-0.flac", "duration": 0.6, "text": "A" * 40, "speaker": "s1"}
    return {
        "train": write_corpus(root, "train", 16, seed=0, extra=[infeasible]),
        "valid": write_corpus(root, "valid", 4, seed=1),
        "root": root,
    }


def run_train(corpus, exp: Path, *overrides: str) -> int:
    return main(["train", "--train", str(corpus["train"]), "--valid", str(corpus["valid"]), "--exp", str(exp),
                 *TINY, *overrides])


def final_weights(exp: Path) -> dict:
    return load_checkpoint(exp / "checkpoints" / "last.pt")["model"]


@pytest.fixture(scope="module")
def straight(corpus, tmp_path_factory):
    """12 steps in one go (4 batches an epoch: 3 epochs), validating each epoch."""
    exp = tmp_path_factory.mktemp("straight")
    assert run_train(corpus, exp, "train.epochs=3", "train.max_steps=12", "optim.decay_steps=12",
                     "train.checkpoint_every=5", "train.keep_last=2") == 0
    return exp


def test_end_to_end_writes_the_experiment(straight, corpus, capsys):
    exp = straight
    for name in ("config.yaml", "tokens.txt", "cmvn.pt", "training_curves.png", "log/train.log",
                 "log/metrics.jsonl", "log/dropped.txt", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (exp / name).is_file(), name
    assert any((exp / "log" / "tensorboard").iterdir())
    # keep_last=2 of step-5, step-10 and the epoch-end checkpoints 4, 8, 12
    assert sorted(p.name for p in (exp / "checkpoints").glob("step-*.pt")) == ["step-10.pt", "step-12.pt"]
    assert (exp / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The resolved config reloads to the same config (derived model sizes left out).
    config = load_experiment_config(exp / "config.yaml")
    assert config == load_experiment_config(None, TINY + ["train.epochs=3", "train.max_steps=12",
                                                          "optim.decay_steps=12", "train.checkpoint_every=5",
                                                          "train.keep_last=2"])
    assert "input_dim" not in yaml.safe_load((exp / "config.yaml").read_text())["model"]

    # The infeasible utterance is left out, listed and logged, never an infinite loss.
    dropped = (exp / "log" / "dropped.txt").read_text()
    assert dropped.startswith(f"train\t{INFEASIBLE_ID}\t79 CTC labels")  # 40 letters + 39 repeats
    assert INFEASIBLE_ID in (exp / "log" / "train.log").read_text()

    metrics = [json.loads(line) for line in (exp / "log" / "metrics.jsonl").read_text().splitlines()]
    train_lines = [m for m in metrics if m["kind"] == "train"]
    valid_lines = [m for m in metrics if m["kind"] == "valid"]
    assert [m["step"] for m in valid_lines] == [4, 8, 12]
    assert all(math.isfinite(m["loss"]) for m in metrics)
    assert train_lines[-1]["loss"] < train_lines[0]["loss"]  # it learns something
    assert all(0.0 <= m["cer"] and 0.0 <= m["wer"] for m in valid_lines)

    # Checkpoints: plain data (weights_only), training keys only where they belong.
    last = torch.load(exp / "checkpoints" / "last.pt", weights_only=True)
    best = torch.load(exp / "checkpoints" / "best.pt", weights_only=True)
    assert last["step"] == 12 and last["epoch"] == 3
    assert {"optimizer", "scheduler", "sampler", "rng", "config"} <= last.keys()
    assert not {"optimizer", "rng", "config"} & best.keys()
    assert best["valid"]["wer"] == min(m["wer"] for m in valid_lines)
    assert last["tokens"] == Tokenizer.load(exp / "tokens.txt").to_list()
    assert last["model_config"]["input_dim"] == 23 and last["model_config"]["vocab_size"] == 5

    # What transcribe uses: the experiment folder resolves to a model that runs.
    inference = InferenceModel.from_checkpoint(exp, device="cpu")
    log_probs, lengths = inference(torch.zeros(1, 16000), torch.tensor([16000]))
    # 1 s: 1 + (16000 - 400) // 160 = 98 frames (snip_edges), halved by the front-end: 49.
    assert log_probs.shape == (1, 49, 5) and lengths.tolist() == [49]

    # Rerunning a finished experiment trains nothing more.
    capsys.readouterr()
    assert run_train(corpus, exp, "train.epochs=3", "train.max_steps=12", "optim.decay_steps=12",
                     "train.checkpoint_every=5", "train.keep_last=2") == 0
    assert "step 12, epoch 3" in capsys.readouterr().out
    assert torch.equal(final_weights(exp)["head.weight"], last["model"]["head.weight"])

    # asr average: the mean of the last two step checkpoints.
    assert main(["average", "--exp", str(exp), "--last", "2"]) == 0
    averaged = torch.load(exp / "checkpoints" / "avg-2.pt", weights_only=True)["model"]
    a = torch.load(exp / "checkpoints" / "step-10.pt", weights_only=True)["model"]
    b = torch.load(exp / "checkpoints" / "step-12.pt", weights_only=True)["model"]
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(averaged[key], (a[key] + b[key]) / 2, rtol=0, atol=1e-7)
    assert main(["average", "--exp", str(exp), "--last", "3"]) == 1


def test_resume_matches_an_uninterrupted_run(straight, corpus, tmp_path):
    """6 steps, stop (mid-epoch 2), then rerun to 12: the same weights as 12 steps straight.

    Dropout 0.3 and SpecAugment are on, so this also checks that RNG states are restored, and
    that the sampler resumes in the middle of an epoch.
    """
    exp = tmp_path / "resumed"
    common = ["train.epochs=3", "optim.decay_steps=12", "train.checkpoint_every=5", "train.keep_last=2"]
    assert run_train(corpus, exp, *common, "train.max_steps=6") == 0
    first = load_checkpoint(exp / "checkpoints" / "last.pt")
    assert first["step"] == 6 and first["sampler"]["epoch"] == 1 and first["sampler"]["batches_done"] == 2
    assert run_train(corpus, exp, *common, "train.max_steps=12") == 0
    resumed, reference = final_weights(exp), final_weights(straight)
    assert resumed.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=0, atol=1e-6, msg=key)
    assert "resumed from" in (exp / "log" / "train.log").read_text()
    steps = [json.loads(line)["step"] for line in (exp / "log" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == sorted(set(steps))  # no duplicated lines after the resume


def test_the_frontend_in_a_thread_trains_what_it_does_inline_and_resumes_exactly(corpus, tmp_path):
    """train.frontend_thread: 12 steps with the front-end beside the model (stopped after 6 and
    resumed) give the weights of 12 steps with it inline: every batch draws from its own generator."""
    common = ["train.epochs=3", "optim.decay_steps=12", "train.checkpoint_every=5", "train.keep_last=2"]
    assert run_train(corpus, tmp_path / "inline", *common, "train.max_steps=12", "train.frontend_thread=never") == 0
    for steps in (6, 12):
        assert run_train(corpus, tmp_path / "thread", *common, f"train.max_steps={steps}",
                         "train.frontend_thread=always") == 0
    threaded, inline = final_weights(tmp_path / "thread"), final_weights(tmp_path / "inline")
    for key in inline:
        torch.testing.assert_close(threaded[key], inline[key], rtol=0, atol=1e-6, msg=key)


def test_in_background_keeps_order_raises_what_the_thread_raised_and_stops_when_left():
    from asr.train import in_background

    assert list(in_background(iter(range(50)), depth=2)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("bad batch")

    with pytest.raises(ValueError, match="bad batch"):
        list(in_background(failing(), depth=2))

    closed = []

    def endless():
        try:
            yield from range(10**9)
        finally:
            closed.append(True)

    items = in_background(endless(), depth=2)
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    items.close()  # joins the thread, which closes its source
    assert closed == [True]


def test_cli_errors_name_the_key_and_file(corpus, tmp_path, capsys):
    assert run_train(corpus, tmp_path / "e1", "model.hiden=3") == 1
    err = capsys.readouterr().err
    assert "model.hiden" in err and "did you mean 'model.hidden'" in err and len(err.strip().splitlines()) == 1
    assert run_train(corpus, tmp_path / "e2", "model.input_dim=3") == 1
    assert "model.input_dim" in capsys.readouterr().err
    assert run_train(corpus, tmp_path / "e3", "train.amp=fp8") == 1
    assert "train.amp" in capsys.readouterr().err
    missing = tmp_path / "nope.jsonl"
    assert main(["train", "--train", str(missing), "--valid", str(corpus["valid"]), "--exp", str(tmp_path / "e4")]) == 1
    assert str(missing) in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "none.yaml"), "--train", str(corpus["train"]), "--valid",
                 str(corpus["valid"]), "--exp", str(tmp_path / "e5")]) == 1
    assert "none.yaml" in capsys.readouterr().err


def test_stats_verb(corpus, tmp_path, capsys):
    exp = tmp_path / "exp"
    assert main(["stats", "--train", str(corpus["train"]), "--exp", str(exp), "features.num_mel_bins=23"]) == 0
    assert "5 tokens" in capsys.readouterr().out
    assert torch.load(exp / "cmvn.pt", weights_only=True)["mean"].shape == (23,)
    assert Tokenizer.load(exp / "tokens.txt").tokens == ["<blank>", "|", "A", "B", "C"]


def test_ctc_min_frames_and_schedule():
    targets = torch.tensor([[2, 2, 3, 3, 3], [2, 3, 2, 0, 0], [4, 4, 0, 0, 0]])
    lengths = torch.tensor([5, 3, 1])
    assert ctc_min_frames(targets, lengths).tolist() == [5 + 3, 3, 1]
    config = ExperimentConfig()
    optim = load_config(ExperimentConfig, None, ["optim.warmup_steps=10", "optim.lr=1.0", "optim.final_lr=0.01"]).optim
    assert learning_rate(5, optim, 110) == pytest.approx(0.5)
    assert learning_rate(10, optim, 110) == pytest.approx(1.0)
    assert learning_rate(60, optim, 110) == pytest.approx(0.505)  # cosine half way
    assert learning_rate(110, optim, 110) == pytest.approx(0.01)
    noam = load_config(ExperimentConfig, None, ["optim.warmup_steps=10", "optim.decay=noam"]).optim
    assert learning_rate(40, noam, 0) == pytest.approx(noam.lr * 0.5)
    expo = load_config(ExperimentConfig, None, ["optim.warmup_steps=0", "optim.decay=exponential",
                                                "optim.lr=1.0", "optim.final_lr=0.01"]).optim
    assert learning_rate(50, expo, 100) == pytest.approx(0.1)
    assert config.train.amp == "bf16"


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "conf").glob("*.yaml")))
def test_every_conf_builds_and_takes_a_step(name, tmp_path):
    """Each shipped config: its model builds and one optimizer step on a 1 s + 0.25 s batch works."""
    from asr.features import GlobalCMVN
    from asr.frontend import Frontend
    from asr.model import build_model
    from asr.runtime import Runtime
    from asr.train import train_step

    config = load_experiment_config(REPO / "conf" / name)
    tokenizer = Tokenizer.build(["AB BA"])
    model_config = config.model_config(tokenizer.vocab_size)
    torch.manual_seed(0)
    model = build_model(model_config)
    dim = config.features.dim
    items = [{"id": f"u{i}", "waveform": 0.1 * torch.randn(16000 - 12000 * i), "tokens": torch.tensor([2, 3, 1, 3, 2]),
              "text": "AB BA"} for i in range(2)]
    frontend = Frontend.for_training(config, GlobalCMVN(torch.zeros(dim), torch.ones(dim)))
    before = model.head.weight.detach().clone()
    stats = train_step(model, frontend, build_optimizer(model, config.optim), None, collate(items), 1e-3,
                       config.optim.grad_clip, Runtime())
    assert math.isfinite(stats["loss_sum"]) and stats["utts"] == 2 and stats["stepped"]
    assert not torch.equal(before, model.head.weight)


def test_ddp_two_cpu_processes(corpus, tmp_path):
    """torchrun, 2 processes, gloo: disjoint batches per rank, identical weights at the end."""
    # 8 utterances of 1 s, 2 a batch: 4 batches an epoch, 2 per rank, no padding repeats.
    train_manifest = write_corpus(tmp_path / "ddp-data", "train", 8, seed=2, fixed=1.0)
    exp = tmp_path / "ddp"
    # Several processes never compute CMVN behind a barrier: the statistics come first.
    assert main(["stats", "--train", str(train_manifest), "--exp", str(exp), *TINY, "data.max_duration=2"]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "asr.cli", "train", "--train", str(train_manifest), "--valid", str(corpus["valid"]),
               "--exp", str(exp), *TINY, "data.max_duration=2", "train.epochs=2", "train.debug_rank_files=true",
               "train.device=cpu"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    debug = exp / "log" / "debug"
    batches = {}
    for rank in (0, 1):
        lines = (debug / f"rank{rank}.batches.txt").read_text().splitlines()
        batches[rank] = [line.split() for line in lines]  # step epoch ids...
    assert len(batches[0]) == len(batches[1]) > 0
    for (step0, epoch0, *_), (step1, epoch1, *_) in zip(batches[0], batches[1]):
        assert (step0, epoch0) == (step1, epoch1)
    assert len(batches[0]) == 4  # 2 epochs x 2 batches
    for epoch in ("0", "1"):
        rank0 = set().union(*[set(ids) for _, e, *ids in batches[0] if e == epoch])
        rank1 = set().union(*[set(ids) for _, e, *ids in batches[1] if e == epoch])
        assert not rank0 & rank1, f"epoch {epoch}: ranks share {rank0 & rank1}"
        assert len(rank0 | rank1) == 8  # every training utterance, once
    w0 = torch.load(debug / "rank0.final.pt", weights_only=True)["model"]
    w1 = torch.load(debug / "rank1.final.pt", weights_only=True)["model"]
    for key in w0:
        assert torch.equal(w0[key], w1[key]), key
    # Only rank 0 writes the experiment.
    assert (exp / "checkpoints" / "last.pt").is_file()
    assert sorted(p.name for p in exp.iterdir()) == [".train.lock", "checkpoints", "cmvn.pt", "config.yaml", "log",
                                                     "tokens.txt", "training_curves.png"]


@pytest.mark.parametrize("frontend_thread", ["never", "always"])
def test_ctrl_c_saves_last_and_resumes(corpus, tmp_path, monkeypatch, frontend_thread):
    """A SIGINT during step 3 finishes the step, writes last.pt at step 3 and exits 130 (with the
    front-end inline, and in its thread, which the interrupted epoch stops)."""
    import signal

    import asr.train

    real_step = asr.train.train_step
    steps = []

    def step_then_interrupt(*args):
        stats = real_step(*args)
        steps.append(stats)
        if len(steps) == 3:
            signal.raise_signal(signal.SIGINT)
        return stats

    monkeypatch.setattr(asr.train, "train_step", step_then_interrupt)
    handler = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    exp = tmp_path / "interrupted"
    assert run_train(corpus, exp, "train.epochs=2", f"train.frontend_thread={frontend_thread}") == 130
    last = load_checkpoint(exp / "checkpoints" / "last.pt")
    assert last["step"] == 3 and last["sampler"]["batches_done"] == 3 and last["epoch"] == 0
    assert signal.getsignal(signal.SIGINT) is handler  # handler restored


def write_tone_corpus(root: Path, name: str, count: int, seed: int, pitch: float = 1.0) -> Path:
    """Letters as tones (A 300 Hz, B 800 Hz, C 1500 Hz, 150 ms each, times `pitch`: another
    "speaker"), words split by silence."""
    rng = np.random.default_rng(seed)
    freq = {"A": 300 * pitch, "B": 800 * pitch, "C": 1500 * pitch}
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(count):
        words = ["".join(rng.choice(list("ABC"), size=rng.integers(1, 3))) for _ in range(rng.integers(1, 3))]
        pieces = [np.zeros(1600)]
        for word in words:
            for letter in word:
                pieces += [0.3 * np.sin(2 * np.pi * freq[letter] * np.arange(2400) / 16000), np.zeros(800)]
            pieces.append(np.zeros(3200))
        wave = np.concatenate(pieces) + 0.003 * rng.standard_normal(sum(map(len, pieces)))
        sf.write(root / f"{name}{i}.flac", wave.astype(np.float32), 16000)
        records.append({"id": f"{name}{i}", "audio": f"{name}{i}.flac", "duration": len(wave) / 16000,
                        "text": " ".join(words), "speaker": "s"})
    manifest = root / f"{name}.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    return manifest


def test_it_learns_a_toy_task(tmp_path):
    """Tone-coded letters: within 120 steps greedy CER falls from 100% to (near) 0 on held-out data."""
    train_manifest = write_tone_corpus(tmp_path / "data", "train", 64, seed=0)
    valid_manifest = write_tone_corpus(tmp_path / "data", "valid", 8, seed=1)
    exp = tmp_path / "exp"
    assert main(["train", "--train", str(train_manifest), "--valid", str(valid_manifest), "--exp", str(exp),
                 "features.num_mel_bins=23", "model.hidden=64", "model.layers=2", "model.conv_channels=8",
                 "model.subsample=2", "model.dropout=0", "specaug.freq_masks=0", "specaug.time_masks=0",
                 "data.max_duration=12", "data.num_workers=0", "data.min_utt_duration=0", "train.epochs=12",
                 "train.log_every=50", "train.seed=0", "optim.warmup_steps=20", "optim.lr=3e-3",
                 "optim.decay=constant", "train.threads=1"]) == 0
    valid = [json.loads(line) for line in (exp / "log" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "valid"]
    assert valid[0]["cer"] >= 0.5
    assert valid[-1]["cer"] < 0.25 and valid[-1]["loss"] < valid[0]["loss"] / 4


def test_a_second_run_on_the_same_experiment_is_refused(tmp_path):
    from asr.errors import DataError
    from asr.train import experiment_lock

    with experiment_lock(tmp_path):
        with pytest.raises(DataError, match=r"another `asr train` \(pid \d+\) is training this experiment"):
            with experiment_lock(tmp_path):
                pass
    with experiment_lock(tmp_path):  # released when the first run ends
        pass


def test_stats_then_train_and_train_alone_write_the_same_tokens_and_cmvn(corpus, tmp_path):
    """One preparation path: the same manifest gives byte-identical tokens.txt and cmvn.pt whether
    `asr stats` ran first or not, also when the duration filter drops an utterance whose text
    holds a character no other has (Z)."""
    short = {"id": "train-short", "audio": "train-0.flac", "duration": 0.3, "text": "ZZ", "speaker": "s1"}
    manifest = corpus["root"] / "train-with-short.jsonl"
    manifest.write_text(corpus["train"].read_text() + json.dumps(short) + "\n")
    options = [*TINY, "data.min_utt_duration=0.5", "train.max_steps=1"]
    stats_first, alone = tmp_path / "stats-first", tmp_path / "alone"
    assert main(["stats", "--train", str(manifest), "--exp", str(stats_first), *options]) == 0
    for exp in (stats_first, alone):
        assert main(["train", "--train", str(manifest), "--valid", str(corpus["valid"]), "--exp", str(exp),
                     *options]) == 0
    assert (stats_first / "tokens.txt").read_bytes() == (alone / "tokens.txt").read_bytes()
    assert "Z" not in Tokenizer.load(alone / "tokens.txt").to_list()
    first, second = (torch.load(e / "cmvn.pt", weights_only=True) for e in (stats_first, alone))
    assert torch.equal(first["mean"], second["mean"]) and torch.equal(first["std"], second["std"])


def test_cmvn_is_recomputed_when_the_manifest_changes_and_refused_once_trained_on(corpus, tmp_path, capsys):
    exp = tmp_path / "exp"
    assert main(["stats", "--train", str(corpus["train"]), "--exp", str(exp), *TINY]) == 0
    before = torch.load(exp / "cmvn.pt", weights_only=True)
    fewer = corpus["root"] / "train-fewer.jsonl"
    fewer.write_text("".join(corpus["train"].read_text().splitlines(keepends=True)[4:]))
    assert main(["stats", "--train", str(fewer), "--exp", str(exp), *TINY]) == 0
    after = torch.load(exp / "cmvn.pt", weights_only=True)
    assert after["fingerprint"] != before["fingerprint"] and not torch.equal(after["mean"], before["mean"])
    assert main(["train", "--train", str(fewer), "--valid", str(corpus["valid"]), "--exp", str(exp), *TINY,
                 "train.max_steps=1"]) == 0
    capsys.readouterr()
    assert main(["stats", "--train", str(corpus["train"]), "--exp", str(exp), *TINY]) == 1
    assert "cmvn.pt: the training utterances or feature options changed" in capsys.readouterr().err
    assert torch.equal(torch.load(exp / "cmvn.pt", weights_only=True)["mean"], after["mean"])  # left as it was


def test_stats_over_several_processes_equal_one(corpus, tmp_path):
    """asr stats --nj 2 shares the files out to two processes; the statistics equal one process's."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["stats", "--train", str(corpus["train"]), "--exp", str(one), *TINY]) == 0
    assert main(["stats", "--train", str(corpus["train"]), "--exp", str(two), "--nj", "2", *TINY]) == 0
    a, b = (torch.load(e / "cmvn.pt", weights_only=True) for e in (one, two))
    torch.testing.assert_close(a["mean"], b["mean"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a["std"], b["std"], rtol=1e-6, atol=1e-6)
    assert a["fingerprint"] == b["fingerprint"]


def test_ddp_refuses_to_compute_cmvn_behind_a_barrier(corpus, tmp_path):
    """Several processes and no statistics: one line asking for `asr stats`, not a barrier timeout."""
    exp = tmp_path / "ddp-no-stats"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "asr.cli", "train", "--train", str(corpus["train"]), "--valid", str(corpus["valid"]),
               "--exp", str(exp), *TINY, "train.device=cpu"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "asr train: error:" in done.stderr and "run `asr stats" in done.stderr
    assert not (exp / "cmvn.pt").exists()


@pytest.mark.parametrize("frontend_thread", ["never", "always"])
def test_an_unreadable_file_is_skipped_listed_and_not_read_again_on_resume(corpus, tmp_path, capsys, frontend_thread):
    """A file that fails to load mid-epoch: the run finishes, the utterance is listed once in
    log/bad_utterances.txt, and the resumed run does not read it again; past
    data.max_bad_utterances the run stops naming the list (front-end inline or in its thread)."""
    root = tmp_path / "data"
    root.mkdir()
    records = [json.loads(line) for line in corpus["train"].read_text().splitlines()]
    for record in records:
        record["audio"] = str(corpus["root"] / record["audio"])
    (root / "broken.flac").write_bytes(b"fLaC" + bytes(200))  # a FLAC header and nothing decodable
    records.insert(3, {"id": "train-broken", "audio": str(root / "broken.flac"), "duration": 0.8, "text": "AB",
                       "speaker": "s1"})
    manifest = root / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    exp = tmp_path / "exp"

    def train(*overrides):
        return main(["train", "--train", str(manifest), "--valid", str(corpus["valid"]), "--exp", str(exp), *TINY,
                     f"train.frontend_thread={frontend_thread}", *overrides])

    assert train("train.epochs=1") == 0
    listed = (exp / "log" / "bad_utterances.txt").read_text().splitlines()
    assert len(listed) == 1 and listed[0].startswith("0\ttrain-broken\t") and "broken.flac" in listed[0]
    assert load_checkpoint(exp / "checkpoints" / "last.pt")["bad_utterances"] == ["train-broken"]
    assert train("train.epochs=2") == 0  # resumes for a second epoch
    assert (exp / "log" / "bad_utterances.txt").read_text().splitlines() == listed
    assert load_checkpoint(exp / "checkpoints" / "last.pt")["epoch"] == 2

    capsys.readouterr()
    assert main(["train", "--train", str(manifest), "--valid", str(corpus["valid"]), "--exp", str(tmp_path / "strict"),
                 *TINY, "data.max_bad_utterances=0", f"train.frontend_thread={frontend_thread}"]) == 1
    err = capsys.readouterr().err
    assert "more than data.max_bad_utterances=0" in err and "bad_utterances.txt" in err and "Traceback" not in err


@pytest.mark.parametrize("lr_scaling", ["none", "sqrt", "linear"])
def test_the_schedule_keeps_its_shape_when_the_world_size_changes(lr_scaling):
    """1, 8 and 64 ranks over the same 1,856 global batches an epoch: the peak LR comes at the
    same fraction of the run, and is scaled by the effective batch as configured."""
    from asr.experiment import OptimConfig, TrainConfig
    from asr.train import make_schedule

    optim = OptimConfig(lr=1e-3, warmup_fraction=0.1, lr_scaling=lr_scaling, reference_batch_s=200.0)
    peaks = {}
    for world in (1, 8, 64):
        schedule = make_schedule(optim, TrainConfig(epochs=10), math.ceil(1856 / world), world, 200.0)
        lrs = [schedule.lr(step) for step in range(1, schedule.decay_steps + 1)]
        peak_step = max(range(len(lrs)), key=lrs.__getitem__) + 1
        assert peak_step / schedule.decay_steps == pytest.approx(0.1, abs=1 / schedule.decay_steps)
        assert lrs[-1] == pytest.approx(optim.final_lr)
        peaks[world] = max(lrs)
    ratio = {"none": 1.0, "sqrt": math.sqrt(8), "linear": 8.0}[lr_scaling]
    assert peaks[8] / peaks[1] == pytest.approx(ratio) and peaks[1] == pytest.approx(1e-3)
    # A fixed warm-up of 3,000 steps never peaks on 64 ranks: 290 steps in all.
    fixed = make_schedule(OptimConfig(warmup_steps=3000), TrainConfig(epochs=10), 29, 64, 200.0)
    assert fixed.decay_steps == 290 and fixed.lr(290) < OptimConfig().lr / 10


TOY = ["features.num_mel_bins=23", "model.hidden=64", "model.layers=2", "model.conv_channels=8", "model.subsample=2",
       "model.dropout=0", "specaug.freq_masks=0", "specaug.time_masks=0", "data.max_duration=12",
       "data.num_workers=0", "data.min_utt_duration=0", "train.log_every=50", "train.seed=0",
       "optim.warmup_steps=20", "optim.lr=3e-3", "optim.decay=constant", "train.threads=1"]


def greedy_wer(exp: Path, manifest: Path, name: str) -> float:
    assert main(["decode", "--exp", str(exp), "--manifest", str(manifest), "--set", name]) == 0
    return json.loads((exp / "decode" / name / "greedy" / "results.json").read_text())["wer"]


def test_fine_tuning_on_a_new_speaker_lowers_its_wer(tmp_path, capsys):
    """--init-from: a model of one "speaker" (tone pitch) fine-tuned on another's data decodes
    that speaker better than before; tokens and CMVN come from the checkpoint."""
    data = tmp_path / "data"
    base_train = write_tone_corpus(data, "train", 64, seed=0)
    base_valid = write_tone_corpus(data, "valid", 8, seed=1)
    new_train = write_tone_corpus(data, "newtrain", 24, seed=2, pitch=1.7)
    new_valid = write_tone_corpus(data, "newvalid", 12, seed=3, pitch=1.7)
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    assert main(["train", "--train", str(base_train), "--valid", str(base_valid), "--exp", str(base), *TOY,
                 "train.epochs=12"]) == 0
    before = greedy_wer(base, new_valid, "new")
    assert main(["train", "--init-from", str(base), "--train", str(new_train), "--valid", str(new_valid),
                 "--exp", str(tuned), *TOY, "train.epochs=6"]) == 0
    after = greedy_wer(tuned, new_valid, "new")
    assert after < before - 10, (before, after)
    assert (tuned / "tokens.txt").read_bytes() == (base / "tokens.txt").read_bytes()
    base_cmvn, tuned_cmvn = (torch.load(e / "cmvn.pt", weights_only=True) for e in (base, tuned))
    assert torch.equal(base_cmvn["mean"], tuned_cmvn["mean"]) and torch.equal(base_cmvn["std"], tuned_cmvn["std"])

    # A character the checkpoint has no token for: an error naming the checkpoint, unless --reinit-head.
    odd = data / "odd.jsonl"
    odd.write_text(new_train.read_text().replace('"text": "A', '"text": "D'))
    capsys.readouterr()
    assert main(["train", "--init-from", str(base), "--train", str(odd), "--valid", str(new_valid),
                 "--exp", str(tmp_path / "odd"), *TOY, "train.epochs=1"]) == 1
    err = capsys.readouterr().err
    assert "tokens lack (D)" in err and "--reinit-head" in err and "base" in err
    assert main(["train", "--init-from", str(base), "--reinit-head", "--train", str(odd), "--valid", str(new_valid),
                 "--exp", str(tmp_path / "odd2"), *TOY, "train.epochs=1"]) == 0
    assert "D" in Tokenizer.load(tmp_path / "odd2" / "tokens.txt").to_list()


@pytest.mark.parametrize(("cores", "local_world", "workers", "expected"),
                         [(2, 1, 1, 1), (2, 1, 0, 2), (16, 8, 1, 1), (16, 2, 2, 6), (1, 1, 3, 1)])
def test_default_threads_never_ask_for_more_than_the_cores(monkeypatch, cores, local_world, workers, expected):
    """train.threads=0: the process's threads plus its loader workers (one thread each) fit the
    cores it may use, shared by the node's processes."""
    from asr.runtime import fitting_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cores)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world))
    assert fitting_threads(workers) == expected


@pytest.mark.parametrize(("device", "cores", "local_world", "threads", "setting", "expected"),
                         [("cpu", 2, 1, 1, "auto", True), ("cpu", 2, 1, 2, "auto", False),
                          ("cpu", 1, 1, 1, "auto", False), ("cpu", 2, 2, 1, "auto", False),
                          ("cuda", 2, 1, 1, "auto", False),
                          ("cpu", 16, 1, 15, "always", True), ("cpu", 2, 1, 1, "never", False)])
def test_the_frontend_thread_takes_a_spare_core_only(monkeypatch, device, cores, local_world, threads, setting,
                                                     expected):
    """train.frontend_thread=auto: a thread beside the step only where training runs one intra-op
    thread and the process has a second core (two OpenMP teams would oversubscribe the cores)."""
    from asr.runtime import frontend_ahead

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cores)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world))
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    assert frontend_ahead(torch.device(device), setting) is expected


def test_an_infeasible_utterance_is_left_out_of_the_loss_and_named_once(caplog):
    from asr.train import ctc_loss

    torch.manual_seed(0)
    log_probs = torch.randn(2, 6, 5).log_softmax(-1)
    targets = torch.tensor([[1, 2, 3, 0, 0, 0, 0], [1, 2, 3, 4, 1, 2, 3]])
    out_lengths, target_lengths = torch.tensor([6, 6]), torch.tensor([3, 7])  # 7 labels cannot fit in 6 frames
    alone = torch.nn.functional.ctc_loss(log_probs[:1].transpose(0, 1), targets[:1, :3], out_lengths[:1],
                                         target_lengths[:1], reduction="sum")
    for _ in range(2):  # the same batch again (a later epoch)
        loss, stats = ctc_loss(log_probs, out_lengths, targets, target_lengths, ["ok-1", "tight-1"])
        torch.testing.assert_close(loss, alone)
        assert (stats["utts"], stats["skipped"]) == (1, 1)
    named = [r.getMessage() for r in caplog.records if "left out of the loss" in r.getMessage()]
    assert len(named) == 1 and named[0].endswith(": tight-1")
