"""Tests for asr.score: WER/CER against jiwer and a hand count, bootstrap, report, missing ids."""

from __future__ import annotations

import jiwer
import pytest

from asr.score import wer_cer


def test_wer_cer_matches_jiwer():
    refs = ["THE CAT SAT ON THE MAT", "HELLO WORLD", "A B C D"]
    hyps = ["THE HAT SAT DOWN ON MAT", "HELLO  WORLD", "A C D E F"]
    wer, cer = wer_cer(refs, hyps)
    assert wer == pytest.approx(jiwer.wer(refs, hyps))
    assert cer == pytest.approx(jiwer.cer(refs, [" ".join(h.split()) for h in hyps]))


def test_wer_hand_computed_and_empty_reference():
    # sub CAT->HAT, ins DOWN, del THE  -> 3 errors / 6 words; empty ref with 2 words -> 2 insertions
    refs = ["THE CAT SAT ON THE MAT", ""]
    hyps = ["THE HAT SAT DOWN ON MAT", "UH UM"]
    wer, _ = wer_cer(refs, hyps)
    assert wer == pytest.approx(5 / 6)
    assert wer_cer(["", ""], ["", ""]) == (0.0, 0.0)


# --- files, report, bootstrap ---------------------------------------------------------------------

import numpy as np  # noqa: E402

from asr.cli import main as cli_main  # noqa: E402
from asr.errors import DataError  # noqa: E402
from asr.score import (  # noqa: E402
    bootstrap_wer_ci,
    format_report,
    paired_bootstrap,
    per_speaker,
    read_kaldi_text,
    score_files,
    score_texts,
)


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_score_texts_hand_counts_and_alignment():
    result = score_texts(
        ["1-1-0", "1-1-1", "2-5-0"],
        ["the cat sat on the mat", "hello, world", ""],
        ["THE HAT SAT DOWN ON MAT", "Hello World", "uh"],
    )
    assert result.refs[1] == "HELLO WORLD" and result.hyps[1] == "HELLO WORLD"  # normalised both sides
    assert result.substitutions.tolist() == [1, 0, 0]
    assert result.deletions.tolist() == [1, 0, 0]
    assert result.insertions.tolist() == [1, 0, 1]
    assert result.ref_words.tolist() == [6, 2, 0]
    assert result.wer == pytest.approx(4 / 8)
    assert result.ser == pytest.approx(2 / 3)
    assert result.aligned[0] == "THE (CAT->HAT) SAT (*->DOWN) ON (THE->*) MAT"
    assert result.aligned[2] == "(*->UH)"
    # CER against jiwer on the normalised texts
    chars = jiwer.process_characters(result.refs, result.hyps)
    assert result.char_errors.sum() == chars.substitutions + chars.deletions + chars.insertions
    speakers = {row["speaker"]: row for row in per_speaker(result)}
    assert speakers["1"]["wer"] == pytest.approx(100 * 3 / 8) and speakers["2"]["word_errors"] == 1


def test_bootstrap_ci_contains_estimate_and_narrows():
    rng = np.random.default_rng(1)

    def corpus(n):
        words = rng.integers(5, 30, size=n)
        errors = rng.binomial(words, 0.15)
        return errors, words

    e_small, w_small = corpus(50)
    e_big, w_big = corpus(2000)
    for errors, words in ((e_small, w_small), (e_big, w_big)):
        low, high = bootstrap_wer_ci(errors, words, 1000, seed=0)
        assert low <= errors.sum() / words.sum() <= high
    small = bootstrap_wer_ci(e_small, w_small, 1000, seed=0)
    big = bootstrap_wer_ci(e_big, w_big, 1000, seed=0)
    assert big[1] - big[0] < (small[1] - small[0]) / 2
    assert bootstrap_wer_ci(e_small, w_small, 500, seed=3) == bootstrap_wer_ci(e_small, w_small, 500, seed=3)


def test_paired_bootstrap():
    rng = np.random.default_rng(2)
    words = rng.integers(5, 30, size=200)
    errors_a = rng.binomial(words, 0.2)
    errors_b = np.maximum(errors_a - 1, 0)
    errors_b[0] = errors_a[0] - 1 if errors_a[0] else 0
    assert (errors_b <= errors_a).all() and (errors_b < errors_a).any()
    assert paired_bootstrap(errors_a, errors_b, words, 1000) > 0.99
    assert paired_bootstrap(errors_b, errors_a, words, 1000) < 0.01
    # identical systems: B is never strictly better
    assert paired_bootstrap(errors_a, errors_a, words, 200) == 0.0
    # systems that differ by noise only: somewhere in between
    noisy = errors_a + rng.choice([-1, 1], size=200) * (errors_a > 0)
    assert 0.01 < paired_bootstrap(errors_a, noisy, words, 1000) < 0.99


def test_missing_ids_error_and_allow_missing(tmp_path):
    ref = write(tmp_path / "ref.txt", [f"1-1-{i} HELLO WORLD" for i in range(8)])
    hyp = write(tmp_path / "hyp.txt", ["1-1-0 HELLO WORLD", "9-9-9 EXTRA"])
    with pytest.raises(DataError) as err:
        score_files(ref, hyp)
    message = str(err.value)
    assert "7 utterances" in message and "1-1-1" in message and "(7 in all)" in message
    assert "9-9-9" in message and "--allow-missing" in message
    out = score_files(ref, hyp, allow_missing=True, report_path=tmp_path / "report.txt")
    system = out["systems"][0]
    assert system["deletions"] == 14 and system["ref_words"] == 16 and system["insertions"] == 0
    assert system["missing_hypotheses"] == 7 and system["ignored_hypotheses"] == 1
    report = (tmp_path / "report.txt").read_text()
    assert "1-1-1 2/2:\t(HELLO->*) (WORLD->*)" in report
    assert "9-9-9" in report


def test_read_kaldi_text_duplicate(tmp_path):
    path = write(tmp_path / "t.txt", ["a-1 X", "a-2", "a-1 Y"])
    with pytest.raises(DataError, match=r"t.txt:3: .*'a-1' appears twice"):
        read_kaldi_text(path)
    assert read_kaldi_text(write(tmp_path / "u.txt", ["a-1 X Y", "a-2"])) == {"a-1": "X Y", "a-2": ""}


def test_report_and_cli_compare_two_systems(tmp_path, capsys):
    refs = [f"{s}-1-{i} THE CAT SAT ON THE MAT NUMBER {i}" for s in (10, 20) for i in range(30)]
    ref = write(tmp_path / "ref.txt", refs)
    worse = write(tmp_path / "a.txt", [r.replace("CAT", "HAT").replace(" MAT", "") for r in refs])
    better = write(tmp_path / "b.txt", [r.replace(" MAT", "") for r in refs])
    code = cli_main(["score", "--ref", str(ref), "--hyp", str(worse), "--hyp", str(better),
                     "--report", str(tmp_path / "report.txt")])
    assert code == 0
    out = capsys.readouterr().out
    assert "%WER 25.00" in out and "%WER 12.50" in out
    assert f"P({better} better than {worse}) = 1.000" in out
    report = (tmp_path / "report.txt").read_text()
    assert "10-1-3 2/8:\tTHE (CAT->HAT) SAT ON THE (MAT->*) NUMBER 3" in report
    assert "    60  CAT -> HAT" in report and "    60  MAT" in report
    assert "P(B better than A) = 1.000" in report
    assert "PER-SPEAKER" in report and "          10     30" in report
    text = format_report(score_texts(["x"], ["A"], ["A"]))
    assert text.startswith("%WER 0.00 [ 0 / 1, 0 ins, 0 del, 0 sub ]")
    assert cli_main(["score", "--ref", str(tmp_path / "nope.txt"), "--hyp", str(better)]) == 1
    assert "nope.txt: file not found" in capsys.readouterr().err


def test_collect_results_writes_one_row_per_set_and_decoder_in_reading_order(tmp_path):
    import json

    from asr.score import collect_results

    exp = tmp_path / "exp1"
    for set_name, label, wer in [("test", "beam-4gram", 9.5), ("test", "greedy", 12.25), ("dev", "beam", 11.0)]:
        out = exp / "decode" / set_name / label
        out.mkdir(parents=True)
        settings = {"lm": "4gram.arpa", "lm_weight": 0.75, "word_score": 1.0} if "4gram" in label else {}
        (out / "results.json").write_text(json.dumps({
            "set": set_name, "wer": wer, "cer": wer / 3, "ser": 50.0, "wer_ci95": [wer - 1, wer + 1],
            "utterances": 7, "checkpoint": "/x/avg-3.pt", "decoder_settings": settings}))
    table = collect_results([exp]).splitlines()
    rows = [line for line in table if line.startswith("| exp1")]
    assert [r.split(" | ")[1:3] for r in rows] == [["dev", "beam"], ["test", "greedy"], ["test", "beam-4gram"]]
    assert "| 12.25 | [11.25, 13.25] |" in rows[1]
    assert "0.75 / 1.0" in rows[2] and "`avg-3.pt`" in rows[2]
    with pytest.raises(DataError, match="no decode"):
        collect_results([tmp_path / "empty"])
