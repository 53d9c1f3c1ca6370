"""Tests of asr.transcribe: word times, chunking of long audio, stitching, output formats, the
full path from a file at any rate through an (untrained, tiny) checkpoint, and the CLI verb."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import string

import numpy as np
import pytest
import soundfile
import torch

from asr.decode import GreedyDecoder
from asr.features import FeatureConfig
from asr.transcribe import (
    ChunkingConfig,
    Transcriber,
    Transcript,
    Word,
    batch_chunks,
    expand_inputs,
    hypothesis_words,
    nonsilent_intervals,
    split_on_silence,
    stitch,
    to_srt,
    transcribe_files,
)

SR = 16000
TOKENS = ["<blank>", "|", "'", *string.ascii_uppercase]


# --- helpers ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny untrained BiRNNCTC checkpoint in the contract's format; the blank is pushed down so
    that the untrained model emits words (and word times) at all."""
    from asr.checkpoint import save_checkpoint
    from asr.features import FeatureConfig
    from asr.model import BiRNNCTC, ModelConfig

    torch.manual_seed(0)
    feature_config = FeatureConfig()
    model_config = ModelConfig(input_dim=feature_config.dim, vocab_size=len(TOKENS), hidden=16, layers=1,
                               conv_channels=4, dropout=0.0)
    model = BiRNNCTC(model_config)
    with torch.no_grad():
        model.head.bias[0] = -3.0
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, {
        "model": model.state_dict(), "model_config": dataclasses.asdict(model_config),
        "feature_config": dataclasses.asdict(feature_config), "tokens": TOKENS,
        "cmvn": {"mean": torch.full((feature_config.dim,), 5.0), "std": torch.full((feature_config.dim,), 3.0)},
        "step": 0, "epoch": 0, "valid": None,
    })
    return path


def tone_bursts(bursts: list[tuple[float, float]], total_s: float, rate: int = SR, seed: int = 0) -> np.ndarray:
    """A waveform of `total_s` seconds: 0.3-amplitude tones at [start, end) seconds, faint noise elsewhere."""
    rng = np.random.default_rng(seed)
    wave = 1e-4 * rng.standard_normal(int(total_s * rate))
    for i, (start, end) in enumerate(bursts):
        a, b = int(start * rate), int(end * rate)
        wave[a:b] += 0.3 * np.sin(2 * np.pi * (300 + 50 * (i % 7)) * np.arange(b - a) / rate)
    return wave.astype(np.float32)


# --- word times -------------------------------------------------------------------------------
def test_word_times_from_hand_built_log_probs():
    # Best path over 12 frames: _ H H I _ | | Y O _ _ U  -> "HI YOU"
    path = ["<blank>", "H", "H", "I", "<blank>", "|", "|", "Y", "O", "<blank>", "<blank>", "U"]
    best = 0.7
    probs = np.full((len(path), len(TOKENS)), (1 - best) / (len(TOKENS) - 1))
    for frame, token in enumerate(path):
        probs[frame, TOKENS.index(token)] = best - 0.05 * (frame % 3)  # differ per frame
        probs[frame] /= probs[frame].sum()
    log_probs = torch.tensor(np.log(probs), dtype=torch.float32)[None]  # (1, T, V)
    hyp = GreedyDecoder(TOKENS).decode(log_probs, torch.tensor([len(path)]))[0]
    spf = 0.04
    words = stitch([(10.0, hypothesis_words(hyp, TOKENS, spf, log_probs[0]))])

    def conf(frames_tokens):
        return math.exp(np.mean([np.log(probs[f, TOKENS.index(t)]) for f, t in frames_tokens]))

    expected = [
        Word("HI", 10.0 + 1 * spf, 10.0 + 4 * spf, conf([(1, "H"), (3, "I")])),
        Word("YOU", 10.0 + 7 * spf, 10.0 + 12 * spf, conf([(7, "Y"), (8, "O"), (11, "U")])),
    ]
    assert [w.word for w in words] == ["HI", "YOU"]
    for got, want in zip(words, expected):
        assert got.start == pytest.approx(want.start)
        assert got.end == pytest.approx(want.end)
        assert got.confidence == pytest.approx(want.confidence, rel=1e-5)
        assert 0.0 <= got.confidence <= 1.0


def test_stitch_orders_chunks_and_offsets_words():
    chunk_b = [Word("C", 0.2, 0.5, 0.9), Word("D", 1.0, 1.3, 0.8)]
    chunk_a = [Word("A", 0.0, 0.3, 0.5), Word("B", 0.4, 0.6, 0.7)]
    chunk_c = [Word("E", 0.1, 0.9, 0.6)]
    # Chunks arrive in batch order (longest first), not in time order.
    words = stitch([(30.0, chunk_c), (12.5, chunk_b), (0.0, chunk_a)], duration=30.5)
    assert [w.word for w in words] == ["A", "B", "C", "D", "E"]
    assert [w.start for w in words] == pytest.approx([0.0, 0.4, 12.7, 13.5, 30.1])
    assert [w.end for w in words] == pytest.approx([0.3, 0.6, 13.0, 13.8, 30.5])  # last end clipped to duration
    assert [w.confidence for w in words] == [0.5, 0.7, 0.9, 0.8, 0.6]


# --- long audio -------------------------------------------------------------------------------
def _bursts_3min(seed: int = 1) -> list[tuple[float, float]]:
    rng = np.random.default_rng(seed)
    bursts, t = [], 0.7
    while True:
        length = rng.uniform(0.2, 6.0)
        if len(bursts) == 5:
            length = 47.0  # one stretch of sound much longer than max_chunk_s
        if t + length > 178.0:
            return bursts
        bursts.append((t, t + length))
        t += length + rng.uniform(0.3, 4.0)


@pytest.mark.parametrize("frame_length,hop_length", [(2048, 512), (400, 160)], ids=["whole-hops", "general"])
def test_frame_rms_matches_librosa(frame_length, hop_length):
    """Both ways of computing frame RMS (sums of whole hops, running sums over samples) agree
    with librosa, also when the waveform arrives in small blocks of random size (as a long file
    streams): the same figures, exactly, however it is cut."""
    import librosa

    from asr.transcribe import FrameRms, frame_rms

    rng = np.random.default_rng(0)
    for n in [1, hop_length - 1, frame_length, frame_length + 1, 5 * frame_length + 7, 40 * frame_length]:
        wave = (rng.standard_normal(n) * rng.uniform(0.0, 1.0, n)).astype(np.float32)
        ours = frame_rms(wave, frame_length, hop_length, block_frames=4)
        reference = librosa.feature.rms(y=wave, frame_length=frame_length, hop_length=hop_length,
                                        center=True, pad_mode="constant")[0]
        assert ours.shape == reference.shape
        np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-7)
        meter, cut = FrameRms(frame_length, hop_length, block_frames=4), 0
        while cut < n:
            step = int(rng.integers(1, 3 * hop_length))
            meter.push(wave[cut : cut + step])
            cut += step
        assert np.array_equal(meter.finish(), ours)


def test_split_three_minutes_of_bursts():
    import librosa

    bursts = _bursts_3min()
    wave = tone_bursts(bursts, 180.0)
    config = ChunkingConfig(max_chunk_s=20.0, top_db=40.0)
    # The silence detector agrees with librosa.effects.split.
    assert np.array_equal(nonsilent_intervals(wave, 40.0), librosa.effects.split(wave, top_db=40.0))

    chunks = split_on_silence(wave, config)
    max_len = int(config.max_chunk_s * SR)
    assert all(0 < end - start <= max_len for start, end in chunks)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(chunks, chunks[1:]))  # in order, disjoint
    covered = np.zeros(len(wave), dtype=bool)
    for start, end in chunks:
        covered[start:end] = True
    for start, end in bursts:
        assert covered[int(start * SR) : int(end * SR)].all(), f"burst {start:.2f}-{end:.2f} s not covered"
    # Long silences are left out, and the 47 s burst needed at least 3 chunks.
    assert covered.sum() < 0.95 * len(wave)
    long_start, long_end = bursts[5]
    inside = [c for c in chunks if c[1] > long_start * SR and c[0] < long_end * SR]
    assert len(inside) >= 3


def test_batches_are_bounded_and_cover_all_chunks():
    lengths = [5, 20, 3, 19, 20, 1, 7, 7, 12]
    batches = batch_chunks(lengths, 40)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) * max(lengths[i] for i in b) <= 40 for b in batches)


class _OnsetModel:
    """Stands in for InferenceModel: emits "A" at each output frame where the audio turns loud and
    "|" where it turns quiet, so each tone burst becomes one word starting at its onset."""

    feature_config = FeatureConfig()
    seconds_per_frame = 0.04
    tokenizer = type("Tok", (), {"tokens": TOKENS})()

    def __init__(self):
        self.batch_shapes = []

    def __call__(self, waves, wave_lengths):
        self.batch_shapes.append(tuple(waves.shape))
        hop = int(self.seconds_per_frame * SR)
        frames = waves.shape[1] // hop
        loud = waves[:, : frames * hop].reshape(len(waves), frames, hop).abs().amax(dim=2) > 0.05
        previous = torch.nn.functional.pad(loud[:, :-1], (1, 0), value=False)
        best = torch.zeros(len(waves), frames, dtype=torch.long)
        best[loud & ~previous] = TOKENS.index("A")
        best[~loud & previous] = TOKENS.index("|")
        log_probs = torch.full((len(waves), frames, len(TOKENS)), -10.0).scatter(2, best[..., None], 0.0)
        return log_probs, wave_lengths // hop


def test_long_audio_words_come_back_in_order_at_their_onsets():
    bursts = _bursts_3min(seed=2)
    wave = tone_bursts(bursts, 180.0)
    model = _OnsetModel()
    transcriber = Transcriber(model, GreedyDecoder(TOKENS), ChunkingConfig(max_chunk_s=20.0, batch_s=45.0))
    transcript = transcriber.transcribe(torch.from_numpy(wave), sample_rate=SR)
    assert transcript.duration == pytest.approx(180.0)
    assert all(batch * samples <= 45.0 * SR for batch, samples in model.batch_shapes)
    assert len(model.batch_shapes) > 1
    # Each burst is one word starting at its onset (a chunk cut inside the 47 s burst adds one).
    onsets = [w.start for w in transcript.words]
    assert onsets == sorted(onsets)
    for start, _ in bursts:
        assert min(abs(o - start) for o in onsets) <= 0.04 + 1e-6
    assert len(bursts) <= len(onsets) <= len(bursts) + 3


# --- output formats ---------------------------------------------------------------------------
def test_srt_format():
    words = [Word("HELLO", 0.5, 0.9, 1.0), Word("WORLD", 1.0, 1.4, 1.0),  # cue 1
             Word("AFTER", 4.0, 4.5, 1.0),  # pause > 1.5 s: cue 2
             *[Word(f"WORD{i}", 5.0 + 0.5 * i, 5.4 + 0.5 * i, 1.0) for i in range(8)],  # split at 42 chars
             Word("LATE", 3725.5, 3726.25, 1.0)]
    srt = to_srt(Transcript(" ".join(w.word for w in words), words, 3727.0))
    blocks = srt.strip("\n").split("\n\n")
    assert blocks[0] == "1\n00:00:00,500 --> 00:00:01,400\nHELLO WORLD"
    assert blocks[-1].endswith("01:02:05,500 --> 01:02:06,250\nLATE")
    pattern = re.compile(r"^(\d+)\n(\d\d:\d\d:\d\d,\d{3}) --> (\d\d:\d\d:\d\d,\d{3})\n(.+)$")
    for number, block in enumerate(blocks, 1):
        match = pattern.match(block)
        assert match, block
        assert int(match.group(1)) == number
        assert match.group(2) < match.group(3)
        assert len(match.group(4)) <= 42
    texts = [pattern.match(b).group(4) for b in blocks]
    assert " ".join(texts) == " ".join(w.word for w in words)  # nothing lost or reordered
    assert texts[1].startswith("AFTER")


# --- full path through a checkpoint -------------------------------------------------------------
@pytest.mark.parametrize("rate,channels", [(44100, 2), (8000, 1)])
def test_files_at_any_rate_transcribe_through_a_checkpoint(checkpoint, tmp_path, rate, channels):
    bursts = [(0.3, 1.1), (1.6, 2.4)]
    mono = tone_bursts(bursts, 3.0, rate=rate)
    data = np.stack([mono, 0.5 * mono], axis=1) if channels == 2 else mono
    path = tmp_path / f"speech_{rate}.wav"
    soundfile.write(path, data, rate, subtype="PCM_16")
    transcriber = Transcriber.from_checkpoint(checkpoint, device="cpu")
    transcript = transcriber.transcribe(path)
    assert transcript.duration == pytest.approx(3.0, abs=1e-3)
    assert transcript.words, "the blank-suppressed tiny model should emit words"
    assert transcript.text == " ".join(w.word for w in transcript.words)
    for w in transcript.words:
        assert 0.0 <= w.start < w.end <= transcript.duration
        assert 0.0 <= w.confidence <= 1.0
    assert [w.start for w in transcript.words] == sorted(w.start for w in transcript.words)

    # The same audio given as a waveform at its own rate gives the same transcript.
    again = transcriber.transcribe(torch.from_numpy(data.T.copy() if channels == 2 else data), sample_rate=rate)
    assert again.text == transcript.text

    # JSON output to a folder, one file per input.
    out = tmp_path / "out"
    summary = transcribe_files(transcriber, [str(path)], "json", out)
    assert summary.done == 1 and not summary.failed
    payload = json.loads((out / f"speech_{rate}.json").read_text())
    assert payload["text"] == transcript.text
    assert [w["word"] for w in payload["words"]] == [w.word for w in transcript.words]
    assert all(0 <= w["start"] < w["end"] <= payload["duration"] for w in payload["words"])
    assert [w for segment in payload["segments"] for w in segment["words"]] == payload["words"]


def test_expand_inputs_folders_globs_and_missing(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ("a/one.wav", "a/deep/two.flac", "a/notes.txt", "three.wav"):
        (tmp_path / name).write_bytes(b"x")
    items = expand_inputs([str(tmp_path / "a"), str(tmp_path / "*.wav")])
    assert [(i.path.name, str(i.name)) for i in items] == [("two.flac", "deep/two"), ("one.wav", "one"),
                                                            ("three.wav", "three")]
    with pytest.raises(Exception, match="missing.wav: no such file"):
        expand_inputs([str(tmp_path / "missing.wav")])
    with pytest.raises(Exception, match="no file matches"):
        expand_inputs([str(tmp_path / "*.mp3")])


# --- CLI --------------------------------------------------------------------------------------
def test_cli_missing_file_is_one_line_and_exit_1(checkpoint, tmp_path, capsys):
    from asr.cli import main

    code = main(["transcribe", "--model", str(checkpoint), str(tmp_path / "nowhere.wav")])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "nowhere.wav" in lines[0] and "error" in lines[0]


def test_cli_folder_with_corrupt_file_continues_and_exits_1(checkpoint, tmp_path, capsys):
    from asr.cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    soundfile.write(folder / "good.wav", tone_bursts([(0.2, 0.9)], 1.2), SR)
    (folder / "bad.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk")
    code = main(["transcribe", "--model", str(checkpoint), "--output-format", "srt",
                 "--output-dir", str(tmp_path / "out"), str(folder)])
    captured = capsys.readouterr()
    assert code == 1
    assert "bad.wav" in captured.err and "1 failed" in captured.err
    assert (tmp_path / "out" / "good.srt").exists()
    assert not (tmp_path / "out" / "bad.srt").exists()


def test_cli_tuned_from_takes_the_weights_tuned_by_decode(checkpoint, tmp_path, capsys, monkeypatch):
    from asr import transcribe
    from asr.cli import main

    wav = tmp_path / "a.wav"
    soundfile.write(wav, tone_bursts([(0.2, 0.9)], 1.2), SR)
    tuned = tmp_path / "tuned.json"
    tuned.write_text(json.dumps({"lm_weight": 0.75, "word_score": -1.5}))
    seen = {}

    def fake_from_checkpoint(path, device=None, options=None, chunking=None, vtln_warps=None):
        seen.update(decoder=options.decoder, lm_weight=options.lm_weight, word_score=options.word_score)
        raise transcribe.AsrError("stop here")  # the options are all this test needs

    monkeypatch.setattr(transcribe.Transcriber, "from_checkpoint", staticmethod(fake_from_checkpoint))
    # (--lm added: tuned weights without an LM are refused now, as asr decode refuses them)
    assert main(["transcribe", "--model", str(checkpoint), "--decoder", "beam", "--lm", "lm.arpa",
                 "--tuned-from", str(tuned), str(wav)]) == 1
    assert seen["decoder"] == "beam" and seen["lm_weight"] == 0.75 and seen["word_score"] == -1.5
    assert main(["transcribe", "--model", str(checkpoint), "--decoder", "beam", "--tuned-from", str(tuned),
                 str(wav)]) == 1
    assert "--tuned-from needs --decoder beam with --lm" in capsys.readouterr().err
    assert main(["transcribe", "--model", str(checkpoint), "--tuned-from", str(tuned), str(wav)]) == 1
    assert "need --decoder beam" in capsys.readouterr().err
    assert main(["transcribe", "--model", str(checkpoint), "--decoder", "beam", "--lm", "lm.arpa",
                 "--tuned-from", str(tmp_path / "no.json"), str(wav)]) == 1
    assert "no.json: file not found" in capsys.readouterr().err


def test_cli_beam_options_reach_the_beam_decoder(checkpoint, tmp_path, capsys, monkeypatch):
    from asr import transcribe
    from asr.cli import main
    from asr.decode import BeamSearchDecoder
    from asr.lm import build_lm

    wav = tmp_path / "a.wav"
    soundfile.write(wav, tone_bursts([(0.2, 0.9), (1.3, 2.0)], 2.4), SR)
    text = tmp_path / "lm.txt"
    text.write_text("the cat sat on the mat\nthe dog sat\n" * 5, encoding="utf-8")
    build_lm(text, 2, tmp_path / "lm.arpa")
    words = tmp_path / "words.txt"
    words.write_text("THE\nCAT\nSAT\n")
    built = []
    real_init = transcribe.Transcriber.__init__

    def spy_init(self, inference_model, decoder, chunking=transcribe.ChunkingConfig(), vtln_warps=None):
        built.append(decoder)
        real_init(self, inference_model, decoder, chunking, vtln_warps)

    monkeypatch.setattr(transcribe.Transcriber, "__init__", spy_init)
    code = main(["transcribe", "--model", str(checkpoint), "--decoder", "beam", "--lm", str(tmp_path / "lm.arpa"),
                 "--lexicon", str(words), "--beam-size", "5", "--beam-threshold", "12", "--lm-weight", "0.75",
                 "--word-score", "-0.5", "--output-format", "json", str(wav)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    (decoder,) = built
    assert isinstance(decoder, BeamSearchDecoder)
    assert (decoder.beam_size, decoder.beam_threshold, decoder.lm_weight, decoder.word_score) == (5, 12.0, 0.75, -0.5)
    assert decoder.lm_path == str(tmp_path / "lm.arpa") and decoder.lexicon_file == str(words)
    assert set(decoder.lexicon.spellings) == {"THE", "CAT", "SAT"}  # the given lexicon, not the LM's 6 words
    assert set(json.loads(captured.out)["text"].split()) <= {"THE", "CAT", "SAT"}
    assert "Loading the LM" not in captured.err and "----5" not in captured.err  # KenLM's chatter is kept quiet


def test_cli_binary_lm_without_lexicon_names_the_option(checkpoint, tmp_path, capsys):
    from asr.cli import main

    wav = tmp_path / "a.wav"
    soundfile.write(wav, tone_bursts([(0.2, 0.9)], 1.2), SR)
    binary = tmp_path / "lm.bin"
    binary.write_bytes(b"mmap lm http://kheafield.com/code format version 5\n\0")
    assert main(["transcribe", "--model", str(checkpoint), "--decoder", "beam", "--lm", str(binary), str(wav)]) == 1
    err = capsys.readouterr().err
    assert err == f"asr transcribe: error: {binary}: a KenLM binary LM needs a lexicon or word list (--lexicon)\n"


def test_silence_and_too_short_audio_give_empty_transcripts(checkpoint):
    transcriber = Transcriber.from_checkpoint(checkpoint, device="cpu")
    assert split_on_silence(np.zeros(3 * SR, dtype=np.float32)) == []  # digital silence has no sound
    for waveform, duration in [(torch.zeros(3 * SR), 3.0), (0.1 * torch.randn(200), 200 / SR), (torch.zeros(0), 0.0)]:
        transcript = transcriber.transcribe(waveform)
        assert transcript.text == "" and transcript.words == []
        assert transcript.duration == pytest.approx(duration)


def test_long_files_are_read_in_blocks_like_a_whole_read(checkpoint, tmp_path):
    from asr.audio import load_audio

    rate = 44100
    rng = np.random.default_rng(3)
    tone = 0.2 * np.sin(2 * np.pi * 220 * np.arange(int(3.5 * rate)) / rate)
    data = np.stack([tone, tone + 0.01 * rng.standard_normal(tone.shape)], axis=1).astype(np.float32)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, data, rate, subtype="FLOAT")
    transcriber = Transcriber.from_checkpoint(checkpoint, device="cpu",
                                             chunking=ChunkingConfig(read_block_s=1.0, stream_block_s=1.0))
    blocks, whole = transcriber.read(path), load_audio(path)
    assert blocks.shape == whole.shape
    # Identical away from the block joins; within a few samples of them, only resampling edge error.
    assert torch.allclose(blocks[1000:15000], whole[1000:15000], atol=1e-4)
    assert (blocks - whole).abs().max() < 0.05
    # The streaming resampler reads real samples across the joins: equal to a whole read to float rounding.
    assert (blocks - whole).abs().max() < 1e-5


def test_channels_last_weights_leave_the_model_output_unchanged(checkpoint):
    from asr.inference import InferenceModel

    inference = InferenceModel.from_checkpoint(checkpoint, device="cpu")  # channels_last conv weights on CPU
    assert inference.model.frontend.convs[0].weight.is_contiguous(memory_format=torch.channels_last)
    waves = 0.1 * torch.randn(2, SR)
    lengths = torch.tensor([SR, SR // 2])
    after, after_lengths = inference(waves, lengths)
    inference.model.to(memory_format=torch.contiguous_format)
    before, before_lengths = inference(waves, lengths)
    assert torch.equal(before_lengths, after_lengths)
    assert torch.allclose(before, after, atol=1e-4)


def test_files_transcribed_together_match_one_by_one(checkpoint):
    transcriber = Transcriber.from_checkpoint(checkpoint, device="cpu")
    waveforms = [torch.from_numpy(tone_bursts(bursts, total, seed=i)) for i, (bursts, total) in enumerate(
        [([(0.2, 1.0)], 1.4), ([(0.3, 2.5), (3.0, 4.2)], 5.0), ([(0.1, 0.6)], 0.8)])]
    together = transcriber.transcribe_waveforms(waveforms)
    for waveform, joint in zip(waveforms, together):
        alone = transcriber.transcribe_waveform(waveform)
        assert joint.text == alone.text and joint.duration == alone.duration
        assert [w.start for w in joint.words] == pytest.approx([w.start for w in alone.words])
        assert [w.confidence for w in joint.words] == pytest.approx([w.confidence for w in alone.words], abs=1e-4)


# --- media through FFmpeg (PyAV), folders of mixed formats, stdin ---------------------------------
BURSTS = [(0.4, 1.1), (1.7, 2.3)]


def encode(path, wave: np.ndarray, rate: int, container: str, codec: str, codec_rate: int | None = None,
           video: bool = False) -> None:
    """Write a mono waveform (float, at `rate`) with PyAV: `codec` in `container`, optionally with
    a small video track in front of it (a phone's or a screen recording's layout)."""
    import av

    with av.open(str(path), "w", format=container) as out:
        if video:  # every stream is added before the first packet is written
            picture = out.add_stream("mpeg4", rate=10)
            picture.width, picture.height, picture.pix_fmt = 64, 48, "yuv420p"
        sound = out.add_stream(codec, rate=codec_rate or rate, layout="mono")
        if video:
            for _ in range(int(len(wave) / rate * 10)):
                frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), dtype=np.uint8), format="rgb24")
                out.mux(picture.encode(frame))
            out.mux(picture.encode(None))
        frame = av.AudioFrame.from_ndarray(wave.astype(np.float32)[None], format="fltp", layout="mono")
        frame.sample_rate = rate
        to_codec = av.AudioResampler(format=sound.codec_context.format, layout="mono", rate=codec_rate or rate)
        for converted in [*to_codec.resample(frame), *to_codec.resample(None)]:
            out.mux(sound.encode(converted))
        out.mux(sound.encode(None))


def media_files(folder, total_s: float = 3.0) -> dict[str, np.ndarray]:
    """wav, flac, m4a (AAC), webm (Opus) and mp4 (video + AAC) of the same tone bursts; returns the
    16 kHz waveform written, by file name."""
    folder.mkdir(parents=True, exist_ok=True)
    wave44 = tone_bursts(BURSTS, total_s, rate=44100)
    soundfile.write(folder / "a.wav", tone_bursts(BURSTS, total_s), SR)
    soundfile.write(folder / "b.flac", wave44, 44100, subtype="PCM_16")
    encode(folder / "c.m4a", wave44, 44100, "mp4", "aac")
    encode(folder / "d.webm", tone_bursts(BURSTS, total_s, rate=48000), 48000, "webm", "libopus")
    encode(folder / "e.mp4", wave44, 44100, "mp4", "aac", video=True)
    return {name: tone_bursts(BURSTS, total_s) for name in ("a.wav", "b.flac", "c.m4a", "d.webm", "e.mp4")}


def test_m4a_webm_and_video_audio_transcribe_with_words_at_their_onsets(tmp_path):
    from asr.audio import audio_info, load_audio

    media_files(tmp_path)
    transcriber = Transcriber(_OnsetModel(), GreedyDecoder(TOKENS))
    for name in ("c.m4a", "d.webm", "e.mp4"):
        path = tmp_path / name
        with pytest.raises(soundfile.LibsndfileError):
            soundfile.info(str(path))  # libsndfile refuses these: FFmpeg reads them
        info = audio_info(path)
        assert info.channels == 1 and info.duration == pytest.approx(3.0, abs=0.05)
        waveform = load_audio(path)
        assert waveform.shape[0] == pytest.approx(3.0 * SR, abs=0.05 * SR)
        segment = load_audio(path, offset=1.0, duration=0.5)  # decoded up to its end, resampled alone
        assert segment.shape == (SR // 2,)
        assert torch.allclose(segment[100:-100], waveform[SR + 100 : SR + SR // 2 - 100], atol=1e-5)
        transcript = transcriber.transcribe(path)
        # One word per burst, at its onset (AAC's encoder delay, 1024 samples, shifts the audio by 23 ms).
        assert [w.word for w in transcript.words] == ["A", "A"], name
        for word, (start, _) in zip(transcript.words, BURSTS):
            assert abs(word.start - start) <= 0.04 + 0.025, (name, word)


def test_truncated_and_non_audio_media_name_the_file(tmp_path):
    from asr.audio import audio_info, load_audio
    from asr.errors import AudioError

    media_files(tmp_path)
    cut = tmp_path / "cut.webm"
    data = (tmp_path / "d.webm").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    notes = tmp_path / "notes.txt"
    notes.write_text("not audio\n")
    picture = tmp_path / "silent.mp4"
    encode(tmp_path / "silent.mp4", np.zeros(SR, dtype=np.float32), SR, "mp4", "aac", video=True)
    with pytest.raises(AudioError, match=f"{cut}: truncated file"):
        load_audio(cut)
    with pytest.raises(AudioError, match=f"{notes}: cannot read audio header .libsndfile: .*; FFmpeg: "):
        audio_info(notes)
    assert audio_info(picture).duration == pytest.approx(1.0, abs=0.1)  # the audio track of a video


def test_folder_of_mixed_formats_with_a_non_audio_file(checkpoint, tmp_path, capsys):
    from asr.cli import main

    folder = tmp_path / "in"
    media_files(folder)
    (folder / "notes.txt").write_text("the transcript, not audio\n")
    soundfile.write(folder / "no_extension", tone_bursts(BURSTS[:1], 1.5), SR, format="WAV")  # taken: it reads
    code = main(["transcribe", "--model", str(checkpoint), "--output-format", "json",
                 "--output-dir", str(tmp_path / "out"), str(folder)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["a.json", "b.json", "c.json", "d.json", "e.json", "no_extension.json"]
    skipped = [line for line in captured.err.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 1 and skipped[0].startswith(f"skipped {folder / 'notes.txt'}: ")
    for name in written:
        payload = json.loads((tmp_path / "out" / name).read_text())
        assert payload["duration"] == pytest.approx(1.5 if name.startswith("no_") else 3.0, abs=0.05)
        assert payload["segments"], name


def test_stdin_reads_audio_like_the_file(checkpoint, tmp_path, capsys, monkeypatch):
    import io
    import sys

    from asr.cli import main

    media_files(tmp_path)
    for name in ("c.m4a", "a.wav"):
        assert main(["transcribe", "--model", str(checkpoint), str(tmp_path / name)]) == 0
        from_file = capsys.readouterr().out
        monkeypatch.setattr(sys, "stdin", type("Stdin", (), {"buffer": io.BytesIO((tmp_path / name).read_bytes())}))
        assert main(["transcribe", "--model", str(checkpoint), "--output-format", "text", "-"]) == 0
        assert capsys.readouterr().out == from_file
    monkeypatch.setattr(sys, "stdin", type("Stdin", (), {"buffer": io.BytesIO(b"not audio at all")}))
    assert main(["transcribe", "--model", str(checkpoint), "--output-dir", str(tmp_path / "out"), "-"]) == 1
    err = capsys.readouterr().err
    assert "error: -: cannot read audio header" in err and "asr-stdin" not in err  # named "-", not the copy
    monkeypatch.setattr(sys, "stdin", type("Stdin", (), {"buffer": io.BytesIO((tmp_path / "b.flac").read_bytes())}))
    assert main(["transcribe", "--model", str(checkpoint), "--output-dir", str(tmp_path / "out"), "-"]) == 0
    assert (tmp_path / "out" / "stdin.txt").read_text().endswith("\n")
    with pytest.raises(Exception, match="given twice"):
        expand_inputs(["-", "-"])


def test_long_file_streams_to_the_same_chunks_and_words_as_a_whole_read(tmp_path):
    """A file longer than read_block_s goes through the two streaming passes (frame RMS, then
    chunks cut from a second read, model windows of batch_s): the chunks are those of the whole
    waveform and the words are the same, from FLAC at 44.1 kHz and from M4A."""
    from asr.audio import load_audio, stream_audio
    from asr.transcribe import FrameRms, chunk_intervals

    bursts = _bursts_3min(seed=4)
    wave = tone_bursts(bursts, 180.0, rate=44100)
    flac = tmp_path / "long.flac"
    soundfile.write(flac, wave, 44100, subtype="PCM_16")
    m4a = tmp_path / "long.m4a"
    encode(m4a, wave, 44100, "mp4", "aac")
    config = ChunkingConfig(max_chunk_s=20.0, batch_s=45.0, read_block_s=60.0, stream_block_s=7.3)
    for path in (flac, m4a):
        whole = load_audio(path)
        meter = FrameRms(config.frame_length, config.hop_length)
        blocks = list(stream_audio(path, SR, config.stream_block_s))
        assert len(blocks) > 20 and max(len(b) for b in blocks) <= 8 * SR
        for block in blocks:
            meter.push(block)
        streamed = chunk_intervals(meter.finish(), sum(len(b) for b in blocks), config)
        assert streamed == split_on_silence(whole, config)
        model = _OnsetModel()
        transcript = Transcriber(model, GreedyDecoder(TOKENS), config).transcribe(path)
        alone = Transcriber(_OnsetModel(), GreedyDecoder(TOKENS), config).transcribe_waveform(whole)
        assert [(w.word, w.start, w.end) for w in transcript.words] == [(w.word, w.start, w.end) for w in alone.words]
        assert transcript.duration == alone.duration
        assert all(batch * samples <= 45.0 * SR for batch, samples in model.batch_shapes)


# --- output formats, each read back by a parser ---------------------------------------------------
def _sample_transcript() -> Transcript:
    words = [Word("HELLO", 0.5, 0.9, 0.91), Word("WORLD", 1.0, 1.4, 0.5),
             Word("AFTER", 4.0, 4.5, 0.25), Word("IT'S", 4.6, 4.8, 1.0),
             *[Word(f"WORD{i}", 5.0 + 0.5 * i, 5.4 + 0.5 * i, 0.123456) for i in range(8)],
             Word("LATE", 3725.5, 3726.25, 0.75)]
    return Transcript(" ".join(w.word for w in words), words, 3727.0)


def _cues(transcript):
    from asr.transcribe import segment_words

    return [(s[0].start, s[-1].end, " ".join(w.word for w in s)) for s in segment_words(transcript.words)]


def test_vtt_parses_in_webvtt_py_and_srt_in_srt():
    import io

    import srt
    import webvtt

    from asr.transcribe import format_transcript

    transcript = _sample_transcript()
    cues = _cues(transcript)
    assert len(cues) == 4  # a pause, a 42-character limit, a far-off word
    vtt = format_transcript(transcript, "vtt")
    parsed = webvtt.from_buffer(io.StringIO(vtt))
    assert [(_seconds(c.start), _seconds(c.end), c.text) for c in parsed] == [
        (pytest.approx(a), pytest.approx(b), t) for a, b, t in cues]
    subtitles = list(srt.parse(format_transcript(transcript, "srt")))
    assert [(s.index, s.start.total_seconds(), s.end.total_seconds(), s.content) for s in subtitles] == [
        (i, pytest.approx(a), pytest.approx(b), t) for i, (a, b, t) in enumerate(cues, 1)]


def _seconds(timestamp: str) -> float:
    hours, minutes, seconds = timestamp.split(":")
    return 3600 * int(hours) + 60 * int(minutes) + float(seconds)


def test_ctm_reads_back_through_the_sclite_reader(tmp_path):
    from asr.score import read_ctm
    from asr.transcribe import format_transcript

    transcript = _sample_transcript()
    path = tmp_path / "hyp.ctm"
    path.write_text(format_transcript(transcript, "ctm", audio="/data/talks/day one.m4a"))
    read = read_ctm(path)
    assert [(w.file, w.channel, w.word) for w in read] == [("day_one", "1", w.word) for w in transcript.words]
    assert [w.begin for w in read] == pytest.approx([w.start for w in transcript.words], abs=5e-4)
    assert [w.begin + w.duration for w in read] == pytest.approx([w.end for w in transcript.words], abs=1e-3)
    confidences = [float(line.split()[5]) for line in path.read_text().splitlines()]
    assert confidences == pytest.approx([w.confidence for w in transcript.words], abs=5e-5)


def test_json_and_tsv_read_back():
    import csv
    import io

    from asr.transcribe import format_transcript

    transcript = _sample_transcript()
    payload = json.loads(format_transcript(transcript, "json", audio="x.wav"))
    assert payload["audio"] == "x.wav"
    back = Transcript.from_dict(payload)
    assert back.text == transcript.text and back.duration == transcript.duration
    assert [(w.word, w.start, w.end) for w in back.words] == [(w.word, w.start, w.end) for w in transcript.words]
    assert [w.confidence for w in back.words] == pytest.approx([w.confidence for w in transcript.words], abs=5e-5)
    assert [(s["start"], s["end"], s["text"]) for s in payload["segments"]] == _cues(transcript)
    assert [w for s in payload["segments"] for w in s["words"]] == payload["words"]
    rows = list(csv.reader(io.StringIO(format_transcript(transcript, "tsv")), delimiter="\t"))
    assert rows[0] == ["start", "end", "text"]
    assert [(float(a), float(b), t) for a, b, t in rows[1:]] == _cues(transcript)
    assert format_transcript(Transcript("", [], 1.0), "vtt") == "WEBVTT\n\n"
    assert format_transcript(Transcript("", [], 1.0), "ctm") == ""


def test_cli_formats_match_the_module_and_skip_existing_leaves_outputs(checkpoint, tmp_path, capsys):
    from asr.cli import build_parser, main
    from asr.transcribe import OUTPUT_FORMATS

    transcribe_parser = build_parser()._subparsers._group_actions[0].choices["transcribe"]
    (choices,) = [a.choices for a in transcribe_parser._actions if a.dest == "output_format"]
    assert tuple(choices) == OUTPUT_FORMATS
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for i in range(3):
        soundfile.write(folder / f"u{i}.wav", tone_bursts(BURSTS, 2.5, seed=i), SR)
    args = ["transcribe", "--model", str(checkpoint), "--output-format", "vtt", "--output-dir", str(out),
            "--skip-existing", str(folder)]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["u0.vtt", "u1.vtt", "u2.vtt"]
    (out / "u1.vtt").write_text("KEPT")
    (out / "u2.vtt").unlink()
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "transcribed 1 file(s)" in err and "2 skipped (output exists)" in err
    assert (out / "u1.vtt").read_text() == "KEPT" and (out / "u2.vtt").read_text().startswith("WEBVTT\n")
    assert main(args[:-2] + [str(folder)]) == 0 and (out / "u1.vtt").read_text() != "KEPT"  # without the flag
    assert main(["transcribe", "--model", str(checkpoint), "--skip-existing", str(folder)]) == 1
    assert "--skip-existing needs --output-dir" in capsys.readouterr().err


# --- scripts/probe_test_time.py ----------------------------------------------------------------
@pytest.mark.parametrize("utterance_cmn", [False, True])
def test_probe_decodes_as_the_inference_model_and_warp_one_is_kaldis_own(checkpoint, tmp_path, utterance_cmn):
    import importlib.util
    from pathlib import Path

    from asr.checkpoint import load_checkpoint
    from asr.inference import InferenceModel

    spec = importlib.util.spec_from_file_location(
        "probe_test_time", Path(__file__).resolve().parents[1] / "scripts" / "probe_test_time.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    payload = load_checkpoint(checkpoint)
    payload["feature_config"]["utterance_cmn"] = utterance_cmn
    inference = InferenceModel(payload, device="cpu")
    decoder = GreedyDecoder(inference.tokenizer)
    wave = torch.from_numpy(tone_bursts([(0.2, 0.9), (1.2, 1.8)], 2.0))
    expected = decoder.decode(*inference(wave[None], torch.tensor([wave.numel()])))[0].text
    assert expected, "the blank-suppressed tiny model should emit words"
    text, mean_log_prob = probe.greedy(inference, decoder, wave)
    assert text == expected
    assert probe.greedy(inference, decoder, wave, warp=1.0) == pytest.approx((text, mean_log_prob), abs=1e-5)
    assert probe.greedy(inference, decoder, wave, warp=0.85)[1] != pytest.approx(mean_log_prob, abs=1e-5)

    # The oracle's CER is at most each warp's, and pick/speaker uses one warp per speaker.
    path = tmp_path / "a.wav"
    soundfile.write(path, wave.numpy(), SR, subtype="FLOAT")
    records = [{"id": f"1-1-000{i}", "audio": str(path), "text": "A B", "duration": 2.0} for i in range(2)]
    hyps = probe.probe(inference, records, [0.9, 1.0, 1.1], [1.1], [1.0, 1.25])
    assert hyps["as-is"] == [expected, expected] == hyps["warp 1"] == hyps["tempo 1"]
    from asr.score import score_texts
    cer = {name: score_texts(["a", "b"], ["A B"] * 2, texts).cer for name, texts in hyps.items() if name != "_chosen"}
    assert cer["oracle"] == min(cer[f"warp {w:g}"] for w in (0.9, 1.0, 1.1))
    assert set(hyps["_chosen"]) == {"1"}
    assert hyps["pick/speaker"] == hyps[f"warp {hyps['_chosen']['1']:g}"]


# --- test-time VTLN -----------------------------------------------------------------------------
def test_vtln_transcribes_each_file_at_the_warp_its_chunks_score_best(checkpoint, tmp_path, capsys):
    from asr.cli import main
    from asr.decode import best_path_scores
    from asr.errors import ConfigError

    warps = (0.9, 1.0, 1.1)
    plain = Transcriber.from_checkpoint(checkpoint, device="cpu")
    vtln = Transcriber.from_checkpoint(checkpoint, device="cpu", vtln_warps=warps)
    one = Transcriber.from_checkpoint(checkpoint, device="cpu", vtln_warps=[1.0])
    waves = [torch.from_numpy(tone_bursts([(0.3, 1.1), (1.6, 2.4)], 3.0, seed=s)) for s in (0, 1)]
    # the warp chosen independently: each file's chunks (as split_on_silence cuts them) through the
    # model at every warp, their best paths' scores summed
    expected = []
    for wave in waves:
        totals = [0.0] * len(warps)
        for start, end in split_on_silence(wave.numpy(), plain.chunking, SR):
            for i, warp in enumerate(warps):
                piece = wave[start:end][None]
                log_probs, lengths = plain.inference(piece, torch.tensor([end - start]), torch.tensor([warp]))
                totals[i] += float(best_path_scores(log_probs, lengths)[0])
        expected.append(warps[max(range(len(warps)), key=totals.__getitem__)])
    together = vtln.transcribe_waveforms(waves)
    assert [t.vtln_warp for t in together] == expected
    for wave, transcript, warp in zip(waves, together, expected):
        alone = Transcriber.from_checkpoint(checkpoint, device="cpu", vtln_warps=[warp]).transcribe_waveform(wave)
        assert transcript.text == alone.text and alone.vtln_warp == warp
    # a warp of 1 is Kaldi's own filterbank; no warp leaves no trace in the output
    assert one.transcribe_waveform(waves[0]).text == plain.transcribe_waveform(waves[0]).text
    assert "vtln_warp" not in plain.transcribe_waveform(waves[0]).to_dict()
    assert Transcript.from_dict(together[0].to_dict()).vtln_warp == expected[0]

    # a file read in blocks (longer than read_block_s) gets the same warp as read whole
    path = tmp_path / "long.wav"
    soundfile.write(path, waves[1].numpy(), SR, subtype="FLOAT")
    streamed = Transcriber(vtln.inference, vtln.decoder, dataclasses.replace(vtln.chunking, read_block_s=1.0),
                           warps).transcribe(path)
    assert streamed.vtln_warp == expected[1]

    code = main(["transcribe", "--model", str(checkpoint), "--vtln", "--output-format", "json", str(path)])
    assert code == 0 and json.loads(capsys.readouterr().out)["vtln_warp"] in (0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15)
    with pytest.raises(ConfigError, match="VTLN warps must be positive"):
        Transcriber(vtln.inference, vtln.decoder, vtln_warps=[])


def test_check_flag_judges_vtln_transcripts_against_the_plain_calibration(checkpoint, tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "check_flag", Path(__file__).resolve().parents[1] / "scripts" / "check_flag.py")
    check_flag = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_flag)
    lines = []
    for i in range(4):
        soundfile.write(tmp_path / f"u{i}.wav", tone_bursts([(0.2, 0.9), (1.2, 1.7)], 2.0, seed=i), SR)
        lines.append(json.dumps({"id": f"s-1-{i}", "audio": f"u{i}.wav", "duration": 2.0, "text": "A", "speaker": "s"}))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    report, printed = {}, {}
    for extra in ([], ["--vtln"]):
        out = tmp_path / f"report{len(extra)}.json"
        assert check_flag.main(["--model", str(checkpoint), "--calibrate-on", str(manifest), str(manifest),
                                "--json", str(out), *extra]) == 0
        report[bool(extra)] = json.loads(out.read_text())[str(manifest)]
        printed[bool(extra)] = capsys.readouterr().out
    # calibrated without the warp both times (the same rules printed first), judged with it once
    assert "manifests transcribed with test-time VTLN" in printed[True]
    assert "manifests transcribed with test-time VTLN" not in printed[False]
    assert printed[True].split("manifests transcribed")[0] == printed[False].split(f"{manifest}:")[0]
    assert report[False]["utterances"] == report[True]["utterances"] == 4
    entropy = [report[v]["statistics"]["entropy"]["median"] for v in (False, True)]
    assert entropy[0] != pytest.approx(entropy[1], abs=1e-6)  # the warped features are what it judged
