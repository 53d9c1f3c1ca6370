"""Tests for asr.evaluate: decoding a manifest, tuning LM weights as the report scores, output folders."""

from __future__ import annotations

import json

import pytest
import torch
from test_decode import LETTERS, batch_of, spell, write_cat_lm

from asr.decode import DecodingOptions, build_decoder
from asr.errors import ConfigError, DataError
from asr.evaluate import TuneGrid, decode_manifest, decoder_label, load_tuned, tune_weights


@pytest.fixture
def cat_lm(tmp_path):
    return write_cat_lm(tmp_path)


def test_tune_weights_and_load_tuned(cat_lm, tmp_path):
    # (the build_decoder assertions of this test, as it was, are in test_decode.test_build_decoder_from_options)
    decoder = build_decoder(DecodingOptions(decoder="beam", lm=str(cat_lm), beam_size=16), LETTERS, 0.02)
    emissions = [batch_of(spell("THE CAT SAT", ambiguous={4: {"H": 0.5, "C": 0.45}}), spell("THE DOG SAT"))]
    best, grid, hyps = tune_weights(decoder, emissions, ["THE CAT SAT", "THE DOG SAT"], TuneGrid((0.0, 1.0), (0.0,)))
    assert [(g["lm_weight"], g["wer"]) for g in grid] == [(0.0, pytest.approx(100 / 6)), (1.0, 0.0)]
    assert best == {"lm_weight": 1.0, "word_score": 0.0, "wer": 0.0}
    assert [h.text for h in hyps] == ["THE CAT SAT", "THE DOG SAT"]
    (tmp_path / "tuned.json").write_text(json.dumps({"lm_weight": 1.0, "word_score": 0.5}))
    (tmp_path / "results.json").write_text(json.dumps({"wer": 3.0, "tuned": {"lm_weight": 0.7, "word_score": -1}}))
    assert load_tuned(tmp_path / "tuned.json") == {"lm_weight": 1.0, "word_score": 0.5}
    assert load_tuned(tmp_path / "results.json") == {"lm_weight": 0.7, "word_score": -1.0}
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(DataError, match="other.json: no tuned"):
        load_tuned(tmp_path / "other.json")


def test_tuning_scores_hypotheses_as_the_report_does(cat_lm):
    from asr.score import score_texts

    decoder = build_decoder(DecodingOptions(decoder="beam", lm=str(cat_lm), beam_size=16), LETTERS, 0.02)
    emissions = [batch_of(spell("THE CAT SAT", ambiguous={4: {"H": 0.5, "C": 0.45}}), spell("THE DOG SAT"))]
    refs = ["the cat sat", "The  dog\tsat"]  # not normalised: the report's normalisation applies to both sides
    best, grid, hyps = tune_weights(decoder, emissions, refs, TuneGrid((0.0, 1.0), (0.0,)))
    assert best == {"lm_weight": 1.0, "word_score": 0.0, "wer": 0.0}
    assert [(g["lm_weight"], g["wer"]) for g in grid] == [(0.0, pytest.approx(100 / 6)), (1.0, 0.0)]
    report = score_texts(["a", "b"], refs, [h.text for h in hyps])
    assert 100 * report.wer == best["wer"]
    with pytest.raises(ConfigError, match="--tune needs a beam decoder with an LM"):
        tune_weights(build_decoder(DecodingOptions(), LETTERS, 0.02), emissions, refs)
    with pytest.raises(ConfigError, match="at least one LM weight"):
        TuneGrid(lm_weights=())


def test_decoder_labels_are_distinct_for_every_decoder_lm_and_lexicon():
    labels = {
        decoder_label(DecodingOptions()): "greedy",
        decoder_label(DecodingOptions(word_pause=0.3)): "greedy-pause0.3",
        decoder_label(DecodingOptions(decoder="beam")): "beam",
        decoder_label(DecodingOptions(decoder="beam", beam_size=8)): "beam",
        decoder_label(DecodingOptions(decoder="beam", lm="lm/4gram.arpa")): "beam-4gram",
        decoder_label(DecodingOptions(decoder="beam", lm="lm/3-gram.pruned.1e-7.arpa.gz")): "beam-3-gram.pruned.1e-7",
        decoder_label(DecodingOptions(decoder="beam", lm="lm/4gram.bin", lexicon="lm/words.txt")):
            "beam-4gram-lex-words",
        decoder_label(DecodingOptions(decoder="beam", lexicon="words.txt")): "beam-lex-words",
    }
    for label, expected in labels.items():
        assert label == expected
    assert len(labels) == 7  # beam size is not part of the label; everything else is


def make_experiment(tmp_path):
    """A randomly initialised model checkpoint and a 4-utterance manifest of noise."""
    import soundfile

    from asr.checkpoint import save_checkpoint
    from asr.config import to_dict
    from asr.features import FeatureConfig
    from asr.model import BiRNNCTC, ModelConfig

    features = FeatureConfig(num_mel_bins=23)
    model_config = ModelConfig(input_dim=23, vocab_size=len(LETTERS), subsample=2, conv_channels=4, hidden=16, layers=1)
    torch.manual_seed(0)
    exp = tmp_path / "exp"
    save_checkpoint(exp / "checkpoints" / "best.pt", {
        "model": BiRNNCTC(model_config).state_dict(), "model_config": to_dict(model_config),
        "feature_config": to_dict(features), "tokens": LETTERS,
        "cmvn": {"mean": torch.zeros(23), "std": torch.ones(23)}, "step": 1, "epoch": 0, "valid": None,
    })
    rng = torch.Generator().manual_seed(1)
    texts = {"11-1-0": "THE CAT SAT", "11-1-1": "THE DOG SAT", "22-1-0": "A RED HAT", "22-1-1": "THE CAT"}
    lines = []
    for i, (utt, text) in enumerate(texts.items()):
        samples = 4000 + 2000 * i
        soundfile.write(tmp_path / f"{utt}.wav", (0.1 * torch.randn(samples, generator=rng)).numpy(), 16000)
        lines.append(json.dumps({"id": utt, "audio": f"{utt}.wav", "duration": samples / 16000, "text": text,
                                 "speaker": utt.split("-")[0]}))
    (tmp_path / "dev.jsonl").write_text("\n".join(lines) + "\n")
    return exp, tmp_path / "dev.jsonl", texts


def test_decode_manifest_greedy_and_tuned_beam(tmp_path, cat_lm, capsys):
    from asr.cli import main as cli_main
    from asr.score import read_kaldi_text, score_files

    exp, manifest, texts = make_experiment(tmp_path)
    results = decode_manifest(exp, manifest, DecodingOptions(), device="cpu", max_duration=1.0)
    out = exp / "decode" / "dev" / "greedy"
    assert results["out_dir"] == str(out)
    assert read_kaldi_text(out / "ref.txt") == texts
    hyps = read_kaldi_text(out / "hyp.txt")
    assert set(hyps) == set(texts)
    written = json.loads((out / "results.json").read_text())
    rescored = score_files(out / "ref.txt", out / "hyp.txt")["systems"][0]
    assert written["wer"] == pytest.approx(rescored["wer"]) and written["cer"] == pytest.approx(rescored["cer"])
    assert written["utterances"] == 4 and written["ref_words"] == 11
    assert written["decoder_settings"] == {"decoder": "greedy", "word_pause_frames": 25} and written["rtf"] > 0
    assert "PER-UTTERANCE" in (out / "report.txt").read_text()

    # tune on "dev", reuse on another set through the CLI
    code = cli_main(["decode", "--exp", str(exp), "--manifest", str(manifest), "--decoder", "beam",
                     "--lm", str(cat_lm), "--beam-size", "4", "--tune", "--tune-lm-weights", "0.5,2",
                     "--tune-word-scores", "0", "--device", "cpu"])
    assert code == 0
    beam_dir = exp / "decode" / "dev" / "beam-lm"
    tuned = json.loads((beam_dir / "tuned.json").read_text())
    written = json.loads((beam_dir / "results.json").read_text())
    assert len(written["tune_grid"]) == 2
    assert tuned["lm_weight"] == written["tuned"]["lm_weight"] == written["decoder_settings"]["lm_weight"]
    assert written["wer"] == pytest.approx(min(g["wer"] for g in written["tune_grid"]))
    # every hypothesised word is an LM word
    vocabulary = {"THE", "CAT", "SAT", "ON", "MAT", "DOG", "A", "RED", "HAT"}
    assert all(set(t.split()) <= vocabulary for t in read_kaldi_text(beam_dir / "hyp.txt").values())
    assert "tuned: lm_weight" in capsys.readouterr().out
    code = cli_main(["decode", "--exp", str(exp), "--manifest", str(manifest), "--set", "test", "--decoder", "beam",
                     "--lm", str(cat_lm), "--beam-size", "4", "--tuned-from", str(beam_dir / "results.json"),
                     "--device", "cpu"])
    assert code == 0
    reused = json.loads((exp / "decode" / "test" / "beam-lm" / "results.json").read_text())
    assert reused["decoder_settings"]["lm_weight"] == tuned["lm_weight"]
    assert reused["wer"] == pytest.approx(written["wer"])
    # user errors: one line, exit 1
    assert cli_main(["decode", "--exp", str(exp), "--manifest", str(manifest), "--tune", "--device", "cpu"]) == 1
    assert "--tune and --tuned-from need --decoder beam with --lm" in capsys.readouterr().err


def test_decode_with_a_lexicon_keeps_the_plain_beam_results(tmp_path, capsys):
    from asr.cli import main as cli_main

    exp, manifest, texts = make_experiment(tmp_path)
    words = tmp_path / "words.txt"
    words.write_text("THE\nCAT\nSAT\n")
    common = ["decode", "--exp", str(exp), "--manifest", str(manifest), "--decoder", "beam", "--beam-size", "4",
              "--device", "cpu"]
    assert cli_main(common) == 0
    assert cli_main([*common, "--lexicon", str(words), "--word-score", "0.5", "--beam-threshold", "10"]) == 0
    plain = json.loads((exp / "decode" / "dev" / "beam" / "results.json").read_text())
    lexicon = json.loads((exp / "decode" / "dev" / "beam-lex-words" / "results.json").read_text())
    assert "lexicon" not in plain["decoder_settings"]
    assert lexicon["decoder_settings"]["lexicon"] == str(words)
    assert lexicon["decoder_settings"]["beam_threshold"] == 10.0 and lexicon["decoder_settings"]["lexicon_words"] == 3
    lexicon_hyps = (exp / "decode" / "dev" / "beam-lex-words" / "hyp.txt").read_text().split()
    assert set(lexicon_hyps) - set(texts) <= {"THE", "CAT", "SAT"}
    # --tune with --tuned-from is refused in one line
    (tmp_path / "t.json").write_text(json.dumps({"lm_weight": 1.0, "word_score": 0.0}))
    assert cli_main([*common, "--lm", "x.arpa", "--tune", "--tuned-from", str(tmp_path / "t.json")]) == 1
    assert "give either --tune or --tuned-from, not both" in capsys.readouterr().err


def test_decode_and_transcribe_share_one_set_of_decoding_options():
    import dataclasses

    from asr.cli import _decoding_options, build_parser

    parser = build_parser()
    decode = parser.parse_args(["decode", "--exp", "e", "--manifest", "m.jsonl"])
    transcribe = parser.parse_args(["transcribe", "--model", "m.pt", "a.wav"])
    assert _decoding_options(decode) == _decoding_options(transcribe) == DecodingOptions()
    verbs = {name: sub for action in parser._actions if hasattr(action, "choices") and action.choices
             for name, sub in action.choices.items() if name in ("decode", "transcribe")}
    groups = {}
    for name, sub in verbs.items():
        (group,) = [g for g in sub._action_groups if g.title == "decoding"]
        groups[name] = [(a.option_strings, a.dest, a.type, a.choices) for a in group._group_actions]
    assert groups["decode"] == groups["transcribe"]
    assert [dest for _, dest, _, _ in groups["decode"]] == [f.name for f in dataclasses.fields(DecodingOptions)]
    beam = ["--decoder", "beam", "--lm", "lm.arpa", "--lexicon", "words.txt", "--beam-size", "7", "--beam-threshold",
            "9", "--lm-weight", "0.25", "--word-score", "-1"]
    expected = DecodingOptions(decoder="beam", lm="lm.arpa", lexicon="words.txt", beam_size=7, beam_threshold=9.0,
                               lm_weight=0.25, word_score=-1.0)
    assert _decoding_options(parser.parse_args(["decode", "--exp", "e", "--manifest", "m.jsonl", *beam])) == expected
    assert _decoding_options(parser.parse_args(["transcribe", "--model", "m.pt", *beam, "a.wav"])) == expected
    help_text = verbs["transcribe"].format_help()
    assert "(default 50)" in help_text and "(default 0.5)" in help_text  # the dataclass's defaults


# --- test-time VTLN ------------------------------------------------------------------------------
def test_speaker_warps_pool_each_speakers_frames(tmp_path):
    """A stand-in model is surest at a warp the audio's level sets (0.05 -> 0.9, 0.1 -> 1.05,
    0.5 -> 1.1): the quiet speaker's long utterance outweighs its short one, frame by frame."""
    import soundfile

    from asr.data.dataset import WAVEFORM_SCALE
    from asr.data.manifest import read_manifest
    from asr.evaluate import speaker_warps
    from asr.inference import InferenceModel

    exp, _, _ = make_experiment(tmp_path)
    inference = InferenceModel.from_checkpoint(exp / "checkpoints" / "best.pt", device="cpu")
    lines = []
    for utt, level, seconds, speaker in [("q-1-0", 0.05, 4.0, "q"), ("q-1-1", 0.1, 1.0, "q"),
                                         ("l-1-0", 0.5, 1.0, "l"), ("l-1-1", 0.5, 2.0, "l")]:
        samples = int(seconds * 16000)
        soundfile.write(tmp_path / f"{utt}.wav", level * torch.ones(samples).numpy(), 16000, subtype="FLOAT")
        record = {"id": utt, "audio": f"{utt}.wav", "duration": seconds, "text": "A", "speaker": speaker}
        lines.append(json.dumps(record))
    (tmp_path / "two.jsonl").write_text("\n".join(lines) + "\n")
    records = read_manifest(tmp_path / "two.jsonl")

    class StandIn:
        tokenizer, sample_rate = inference.tokenizer, inference.sample_rate

        def features(self, waveforms, wave_lengths, warp=None):  # what it "hears": the audio and the warp
            return (waveforms, warp), wave_lengths

        def run_features(self, heard, wave_lengths):
            waveforms, warp = heard
            level = waveforms.abs().amax(dim=1) / WAVEFORM_SCALE  # the loader's batches are int16
            target = torch.where(level < 0.07, 0.9, torch.where(level < 0.2, 1.05, 1.1))
            frames = wave_lengths // 160
            log_probs = torch.full((len(level), int(frames.max()), 3), -5.0)
            log_probs[:, :, 0] = -(warp - target).abs()[:, None]  # summed over frames: the frames' median wins
            return log_probs, frames

    warps = (0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15)
    assert speaker_warps(StandIn(), records, warps, max_duration=3.0) == {"l": 1.1, "q": 0.9}
    assert speaker_warps(StandIn(), records[1:2], warps) == {"q": 1.05}


def test_decode_with_vtln_warps_each_speaker_and_warp_one_changes_nothing(tmp_path, capsys):
    import soundfile

    from asr.checkpoint import load_checkpoint, save_checkpoint
    from asr.cli import main as cli_main
    from asr.data.manifest import read_manifest
    from asr.decode import GreedyDecoder
    from asr.inference import InferenceModel
    from asr.score import read_kaldi_text

    exp, manifest, texts = make_experiment(tmp_path)
    plain = decode_manifest(exp, manifest, DecodingOptions(), device="cpu", max_duration=1.0)
    same = decode_manifest(exp, manifest, DecodingOptions(), device="cpu", max_duration=1.0, vtln_warps=[1.0])
    assert read_kaldi_text(f"{same['out_dir']}/hyp.txt") == read_kaldi_text(f"{plain['out_dir']}/hyp.txt")

    assert cli_main(["decode", "--exp", str(exp), "--manifest", str(manifest), "--vtln", "--device", "cpu"]) == 0
    out = exp / "decode" / "dev" / "greedy-vtln"
    results = json.loads((out / "results.json").read_text())
    chosen = results["vtln"]["speakers"]
    assert set(chosen) == {"11", "22"} and set(chosen.values()) <= set(results["vtln"]["warps"])
    assert "dev greedy + VTLN: %WER" in capsys.readouterr().out
    # each utterance alone through the model at its speaker's warp: the same words
    inference = InferenceModel.from_checkpoint(exp, device="cpu")
    decoder = GreedyDecoder(inference.tokenizer, word_pause_frames=25)
    for record in read_manifest(manifest):
        wave = torch.from_numpy(soundfile.read(tmp_path / record["audio"], dtype="float32")[0])
        warp = torch.tensor([chosen[record["speaker"]]])
        log_probs, lengths = inference(wave[None], torch.tensor([wave.numel()]), warp)
        assert read_kaldi_text(out / "hyp.txt")[record["id"]] == decoder.decode(log_probs, lengths)[0].text

    # a filterbank with no room for the warp: one line, exit 1
    payload = load_checkpoint(exp / "checkpoints" / "best.pt")
    payload["feature_config"]["high_freq"] = 7000.0
    save_checkpoint(tmp_path / "narrow" / "checkpoints" / "best.pt", payload)
    assert cli_main(["decode", "--exp", str(tmp_path / "narrow"), "--manifest", str(manifest), "--vtln",
                     "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert "VTLN: the warp needs features.low_freq < 100 Hz" in err and len(err.splitlines()) == 1
    with pytest.raises(ConfigError, match="VTLN warps must be positive"):
        decode_manifest(exp, manifest, DecodingOptions(), device="cpu", vtln_warps=[0.0, 1.0])
