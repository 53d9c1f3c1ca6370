"""Tests for asr.score: sclite's alignment (hand cases and vendored sclite outputs), file formats,
normalisers, speakers, bootstrap and MAPSSWE, reports, `asr score` and `asr compare`."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import jiwer
import numpy as np
import pytest

from asr.cli import main as cli_main
from asr.errors import ConfigError, DataError
from asr.score import (
    ScoreOptions,
    align_words,
    aligned_text,
    bootstrap_wer_ci,
    detect_format,
    format_pra,
    format_report,
    format_sys,
    mapsswe,
    paired_bootstrap,
    per_speaker,
    read_ctm,
    read_kaldi_text,
    read_stm,
    read_trn,
    score_files,
    score_systems,
    score_texts,
    wer_cer,
)

SCLITE = Path(__file__).parent / "data" / "sclite"
NONE = ScoreOptions(normalize="none")  # the vendored texts are upper case already; sclite ignores case


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def ops(ref: str, hyp: str) -> str:
    return "".join(op for op, _, _ in align_words(ref.split(), hyp.split()))


# --- alignment: hand cases where sclite's convention differs from plain Levenshtein ---------------


def test_sclite_keeps_a_correct_word_where_levenshtein_takes_two_substitutions():
    ref, hyp = "IN LONG PRIMER TYPE", "IN PRIMER ASSERT TYPE"
    assert aligned_text(align_words(ref.split(), hyp.split())) == "IN (LONG->*) PRIMER (*->ASSERT) TYPE"
    levenshtein = jiwer.process_words(ref, hyp)  # the convention asr used before: two substitutions
    assert (levenshtein.substitutions, levenshtein.deletions, levenshtein.insertions) == (2, 0, 0)
    result = score_texts(["u"], [ref], [hyp])
    assert (result.substitutions[0], result.deletions[0], result.insertions[0]) == (0, 1, 1)


def test_ties_go_to_a_substitution_at_the_end_then_an_insertion_then_a_deletion():
    # One substitution and one insertion either way: sclite takes the substitution last.
    assert aligned_text(align_words(["A"], ["B", "C"])) == "(*->B) (A->C)"
    assert aligned_text(align_words(["B", "C"], ["A"])) == "(B->*) (C->A)"
    # Three substitutions cost 12, as do two deletions, a match and two insertions: substitutions.
    assert ops("B C A", "A X Y") == "SSS"
    # A deletion and an insertion (6) are cheaper than two substitutions (8).
    assert ops("A B", "B A") == "DCI"


def test_sclite_can_count_more_errors_than_the_edit_distance():
    # 3 deletions + 3 insertions (cost 18) beat 5 substitutions (cost 20): 6 errors, not 5.
    # (Checked with sclite 2.10; the same case is in the vendored set, utterance alice_008.)
    assert ops("A B C D E", "D E F G H") == "DDDCCIII"
    assert wer_cer(["A B C D E"], ["D E F G H"])[0] == pytest.approx(6 / 5)
    assert jiwer.wer("A B C D E", "D E F G H") == pytest.approx(5 / 5)


def test_alignment_edges():
    assert align_words([], []) == []
    assert ops("", "A B") == "II" and ops("A B", "") == "DD"
    assert ops("THE THE CAT", "THE CAT") == "DCC"  # the deletion is taken back last, so it comes first
    long_ref = ("A B C " * 400).split()
    long_hyp = ("A C C " * 400).split()
    assert ops(" ".join(long_ref), " ".join(long_hyp)) == "CSC" * 400


def test_wer_cer_and_hand_counts():
    refs = ["THE CAT SAT ON THE MAT", ""]
    hyps = ["THE HAT SAT DOWN ON MAT", "UH UM"]
    wer, cer = wer_cer(refs, hyps)
    assert wer == pytest.approx(5 / 6)  # sub CAT->HAT, ins DOWN, del THE; 2 insertions on the empty ref
    assert wer_cer(["", ""], ["", ""]) == (0.0, 0.0)
    chars = jiwer.process_characters(refs[:1], hyps[:1])
    assert wer_cer(refs[:1], hyps[:1])[1] == pytest.approx(
        (chars.substitutions + chars.deletions + chars.insertions) / len(refs[0]))


def test_score_texts_counts_alignment_and_normalisation():
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
    assert result.wer == pytest.approx(4 / 8) and result.ser == pytest.approx(2 / 3)
    assert result.aligned[0] == "THE (CAT->HAT) SAT (*->DOWN) ON (THE->*) MAT"
    assert result.aligned[2] == "(*->UH)"
    assert result.normalizer == "librispeech"
    speakers = {row["speaker"]: row for row in per_speaker(result)}
    assert speakers["1"]["wer"] == pytest.approx(100 * 3 / 8) and speakers["2"]["word_errors"] == 1


# --- the vendored sclite outputs -----------------------------------------------------------------


def sclite_sgml(path: Path) -> dict[str, list[tuple[str, str | None, str | None]]]:
    """Utterance id -> sclite's alignment columns, read from its SGML output."""
    out, utt = {}, None
    for line in path.read_text().splitlines():
        match = re.match(r'<PATH id="\((.+?)\)"', line)
        if match:
            utt = match.group(1)
            out[utt] = []
        elif utt is not None and line and not line.startswith("<"):
            for cell in line.split(":"):
                op, ref, hyp = re.fullmatch(r'([CSDI]),("[^"]*")?,("[^"]*")?', cell).groups()
                out[utt].append((op, ref and ref.strip('"').upper(), hyp and hyp.strip('"').upper()))
        elif line.startswith("</PATH"):
            utt = None
    return out


def sclite_pra(path: Path) -> dict[str, list[str]]:
    """Utterance id -> the lines after its `id:` line in an sclite pra report (Scores, REF, HYP, Eval)."""
    out, utt = {}, None
    for line in path.read_text().splitlines():
        if line.startswith("id: ("):
            utt = line[5:-1]
            out[utt] = []
        elif not line:
            utt = None
        elif utt is not None:
            out[utt].append(line)
    return out


def box_lines(text: str) -> list[str]:
    """The table lines of an sclite sys report, without its indentation."""
    return [line.strip() for line in text.splitlines() if line.strip() and line.strip()[0] in ",|`"]


@pytest.mark.parametrize("system", ["sys_a", "sys_b"])
def test_alignments_and_counts_equal_sclite(system, tmp_path):
    result = score_systems(SCLITE / "ref.trn", [SCLITE / f"{system}.trn"], ScoreOptions(normalize="none"))[0]
    expected = sclite_sgml(SCLITE / "out" / f"{system}.sgml")
    assert sorted(expected) == sorted(result.ids) and len(result.ids) == 44
    for utt, columns in zip(result.ids, result.alignments):
        assert columns == expected[utt], utt
    # every utterance's REF / HYP / Eval lines and counts as in sclite's pra
    ours = tmp_path / f"{system}.pra"
    ours.write_text(format_pra(result, system))
    assert sclite_pra(ours) == sclite_pra(SCLITE / "out" / f"{system}.pra")
    # the per-speaker table, totals, mean, S.D. and median, line for line
    assert box_lines(format_sys(result, system)) == box_lines((SCLITE / "out" / f"{system}.sys").read_text())


def test_total_counts_of_the_vendored_set():
    # From out/sys_a.sys and out/sys_b.sys: 291 words; Sum/Avg Sub/Del/Ins percentages.
    a, b = score_systems(SCLITE / "ref.trn", [SCLITE / "sys_a.trn", SCLITE / "sys_b.trn"], NONE)
    for result, (sub, dele, ins) in ((a, (9.3, 9.3, 7.9)), (b, (21.6, 7.2, 9.3))):
        words = int(result.ref_words.sum())
        assert words == 291
        got = [round(100 * int(x.sum()) / words, 1)
               for x in (result.substitutions, result.deletions, result.insertions)]
        assert got == [sub, dele, ins]


def test_mapsswe_equals_sc_stats():
    a, b = score_systems(SCLITE / "ref.trn", [SCLITE / "sys_a.trn", SCLITE / "sys_b.trn"], NONE)
    line = re.search(r"MTCH_PR_RESULTS.*", (SCLITE / "out" / "sys_a_vs_sys_b.stats.mapsswe").read_text()).group(0)
    pattern = r"# segs: (\d+)\).*\(mean: (\S+)\) \(std dev: (\S+)\) \(Z Stat: (\S+)\)"
    segs, mean, std, z = re.search(pattern, line).groups()
    test = mapsswe(a, b)
    assert test.segments == int(segs)
    assert round(test.mean, 3) == float(mean) and round(test.std, 3) == float(std) and round(test.z, 3) == float(z)
    # sc_stats prints p for |Z| cut to two decimals
    unified = (SCLITE / "out" / "sys_a_vs_sys_b.stats.unified").read_text()
    p_sclite = float(re.search(r"\|\s+sys_a\s+([\d.]+)", unified).group(1))
    assert round(math.erfc(math.floor(abs(test.z) * 100) / 100 / math.sqrt(2)), 3) == p_sclite
    assert test.p == pytest.approx(math.erfc(abs(test.z) / math.sqrt(2))) and test.p < 0.05
    assert test.verdict("A", "B").startswith("A better")
    # identical systems: sc_stats finds 51 segments, all differences 0
    same_line = (SCLITE / "out" / "sys_a_vs_sys_a.stats.mapsswe").read_text()
    same = mapsswe(a, a)
    assert f"(# segs: {same.segments})" in same_line and "(Z Stat: 0.000)" in same_line
    assert same.z == 0 and same.p == 1 and same.verdict().startswith("no difference")


def test_stm_ctm_totals_equal_sclite():
    result = score_systems(SCLITE / "ref.stm", [SCLITE / "sys.ctm"], ScoreOptions(normalize="none"))[0]
    assert result.ids == ["meeting1-1", "meeting1-2", "meeting2-A"]
    total = [line for line in box_lines((SCLITE / "out" / "sys_ctm.sys").read_text()) if "Sum/Avg" in line][0]
    cells = total.split("|")
    snt_wrd, pct = cells[2].split(), [float(v) for v in cells[3].split()]
    words = int(result.ref_words.sum())
    assert words == int(snt_wrd[1]) == 76
    ours = [100 * int(x.sum()) / words for x in (result.correct, result.substitutions, result.deletions,
                                                   result.insertions, result.word_errors)]
    assert [round(v, 1) for v in ours] == pct[:5]
    assert "NOISE" not in " ".join(result.hyps)  # words in the IGNORE_TIME_SEGMENT_IN_SCORING stretch
    assert result.speakers[2] == "meeting2_spk1+meeting2_spk2" and result.speaker_source.startswith("stm")


# --- formats -------------------------------------------------------------------------------------


def test_trn_is_detected_and_scored_as_trn_not_as_kaldi_text(tmp_path):
    # The case: read as Kaldi text this scored %WER 25.00 (the ids became words).
    ref = write(tmp_path / "ref.txt", ["the cat sat (spk_1)", "on the mat (spk_2)"])
    hyp = write(tmp_path / "hyp.txt", ["the cat sat (spk_1)", "on a mat mat (spk_2)"])
    assert detect_format(ref) == "trn"
    system = score_files(ref, hyp)["systems"][0]
    assert (system["ref_words"], system["word_errors"]) == (6, 2) and system["wer"] == pytest.approx(100 * 2 / 6)
    assert read_trn(ref) == {"spk_1": "the cat sat", "spk_2": "on the mat"}


def test_files_that_cannot_be_parsed_are_refused_with_file_and_line(tmp_path):
    mixed = write(tmp_path / "mixed.txt", ["the cat (u_1)", "u_2 the dog"])
    with pytest.raises(DataError, match=r"mixed.txt:2: cannot tell the format"):
        detect_format(mixed)
    with pytest.raises(DataError, match=r"bad.trn:2: not a trn line"):
        read_trn(write(tmp_path / "bad.trn", ["a b (u_1)", "c d"]))
    with pytest.raises(DataError, match=r"dup.trn:2: .*'u_1' appears twice"):
        read_trn(write(tmp_path / "dup.trn", ["a (u_1)", "b (u_1)"]))
    with pytest.raises(DataError, match=r"alt.trn:1: sclite alternations"):
        read_trn(write(tmp_path / "alt.trn", ["{ a / b } c (u_1)"]))
    with pytest.raises(DataError, match=r"opt.trn:1: optionally deletable"):
        read_trn(write(tmp_path / "opt.trn", ["(uh) c (u_1)"]))
    with pytest.raises(DataError, match=r"bad.stm:3: BEGIN and END must be numbers"):
        read_stm(write(tmp_path / "bad.stm", [";; comment", "f 1 s 0 1 a b", "f 1 s x 2 c"]))
    with pytest.raises(DataError, match=r"back.stm:1: segment ends"):
        read_stm(write(tmp_path / "back.stm", ["f 1 s 2 1 a b"]))
    with pytest.raises(DataError, match=r"bad.ctm:2: not a ctm line"):
        read_ctm(write(tmp_path / "bad.ctm", ["f 1 0.1 0.2 a 0.9", "f 1 0.3 b"]))
    with pytest.raises(DataError, match=r"conf.ctm:1: CONFIDENCE"):
        read_ctm(write(tmp_path / "conf.ctm", ["f 1 0.1 0.2 a high"]))
    with pytest.raises(DataError, match=r"t.txt:3: .*'a-1' appears twice"):
        read_kaldi_text(write(tmp_path / "t.txt", ["a-1 X", "a-2", "a-1 Y"]))
    assert read_kaldi_text(write(tmp_path / "u.txt", ["a-1 X Y", "a-2"])) == {"a-1": "X Y", "a-2": ""}


def test_stm_needs_ctm_and_formats_can_be_forced(tmp_path):
    stm = write(tmp_path / "ref.stm", ["f 1 s 0.0 1.0 a b"])
    kaldi = write(tmp_path / "hyp.txt", ["f-1 a b"])
    with pytest.raises(ConfigError, match="stm reference is scored against a ctm"):
        score_files(stm, kaldi)
    ctm_as_txt = write(tmp_path / "hyp2.txt", ["f 1 0.5 0.2 b", "f 1 0.1 0.2 a"])  # out of time order
    assert detect_format(ctm_as_txt) == "ctm"
    assert score_files(stm, ctm_as_txt)["systems"][0]["wer"] == 0.0
    forced = ScoreOptions(ref_format="kaldi", hyp_format="kaldi")
    ref = write(tmp_path / "ref.trn", ["u1 a b"])  # named .trn but Kaldi text
    assert score_files(ref, write(tmp_path / "h", ["u1 a c"]), options=forced)["systems"][0]["substitutions"] == 1
    with pytest.raises(ConfigError, match="unknown transcript format"):
        score_files(ref, ref, options=ScoreOptions(ref_format="json"))


# --- normalisers, speakers, outputs --------------------------------------------------------------


def test_normalisers_apply_to_both_sides_and_are_named(tmp_path):
    ref = write(tmp_path / "ref.txt", ["u1 TWENTY FIVE APPLES", "u2 THE COLOUR RED"])
    hyp = write(tmp_path / "hyp.txt", ["u1 25 apples.", "u2 The color red!"])
    by_name = {name: score_files(ref, hyp, options=ScoreOptions(normalize=name))["systems"][0]
               for name in ("librispeech", "english", "none")}
    assert by_name["english"]["word_errors"] == 0 and by_name["english"]["normalizer"] == "english"
    assert by_name["librispeech"]["word_errors"] == 3  # TWENTY FIVE vs 25 (1 sub, 1 del), COLOUR vs COLOR
    assert by_name["none"]["word_errors"] == 6  # case and punctuation count
    with pytest.raises(ConfigError, match="unknown normaliser"):
        score_files(ref, hyp, options=ScoreOptions(normalize="klingon"))
    out = score_files(ref, hyp, options=ScoreOptions(normalize="english"), out_dir=tmp_path / "out")
    assert out["normalizer"] == "english"
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["normalizer"] == "english" and written["systems"][0]["normalizer"] == "english"
    assert "normaliser: english" in (tmp_path / "out" / "report.txt").read_text()
    assert "normaliser: english" in (tmp_path / "out" / "hyp.txt.sys").read_text()
    assert "Normaliser:    english" in (tmp_path / "out" / "hyp.txt.pra").read_text()


def test_speakers_from_manifest_utt2spk_or_id_prefix(tmp_path):
    ref = write(tmp_path / "ref.txt", ["a-1 X Y", "a-2 X Y", "b-1 X Y"])
    hyp = write(tmp_path / "hyp.txt", ["a-1 X Y", "a-2 X Z", "b-1 X Z"])
    manifest = write(tmp_path / "m.jsonl", [json.dumps({"id": u, "audio": f"{u}.flac", "duration": 1.0, "text": "X Y",
                                                         "speaker": s}) for u, s in
                                             (("a-1", "ann"), ("a-2", "bo"), ("b-1", "bo"))])
    result = score_systems(ref, [hyp], ScoreOptions(manifest=str(manifest)))[0]
    assert result.speakers == ["ann", "bo", "bo"] and result.speaker_source == f"manifest {manifest}"
    assert {r["speaker"]: r["word_errors"] for r in per_speaker(result)} == {"ann": 0, "bo": 2}
    utt2spk = write(tmp_path / "utt2spk", ["a-1 s1", "a-2 s1", "b-1 s2"])
    result = score_systems(ref, [hyp], ScoreOptions(utt2spk=str(utt2spk)))[0]
    assert result.speakers == ["s1", "s1", "s2"]
    fallback = score_systems(ref, [hyp])[0]
    assert fallback.speakers == ["a", "a", "b"]
    assert "speakers: utterance id prefix" in format_report(fallback)
    with pytest.raises(DataError, match=r"short: no speaker for 1 scored utterances: b-1"):
        score_systems(ref, [hyp], ScoreOptions(utt2spk=str(write(tmp_path / "short", ["a-1 s1", "a-2 s1"]))))
    with pytest.raises(DataError, match=r"bad:1: expected 'UTT-ID SPEAKER'"):
        score_systems(ref, [hyp], ScoreOptions(utt2spk=str(write(tmp_path / "bad", ["a-1"]))))


def test_per_utterance_csv_and_json(tmp_path):
    ref = write(tmp_path / "ref.txt", ["u1 IN LONG PRIMER TYPE", "u2 A B"])
    hyp = write(tmp_path / "hyp.txt", ["u1 IN PRIMER ASSERT TYPE", "u2 A B"])
    score_files(ref, hyp, out_dir=tmp_path / "out")
    rows = list(csv.DictReader((tmp_path / "out" / "per_utt.csv").open()))
    assert [(r["id"], r["substitutions"], r["deletions"], r["insertions"], r["correct"]) for r in rows] == [
        ("u1", "0", "1", "1", "3"), ("u2", "0", "0", "0", "2")]
    assert float(rows[0]["wer"]) == pytest.approx(50.0)
    assert cli_main(["score", "--ref", str(ref), "--hyp", str(hyp), "--per-utt", str(tmp_path / "u.json")]) == 0
    data = json.loads((tmp_path / "u.json").read_text())
    assert data["normalizer"] == "librispeech"
    assert data["utterances"][0]["aligned"] == "IN (LONG->*) PRIMER (*->ASSERT) TYPE"
    assert cli_main(["score", "--ref", str(ref), "--hyp", str(hyp), "--per-utt", str(tmp_path / "u.xml")]) == 1


# --- statistics ----------------------------------------------------------------------------------


def test_bootstrap_ci_contains_estimate_and_narrows():
    rng = np.random.default_rng(1)

    def corpus(n):
        words = rng.integers(5, 30, size=n)
        return rng.binomial(words, 0.15), words

    e_small, w_small = corpus(50)
    e_big, w_big = corpus(2000)
    for errors, words in ((e_small, w_small), (e_big, w_big)):
        low, high = bootstrap_wer_ci(errors, words, 1000, seed=0)
        assert low <= errors.sum() / words.sum() <= high
    small = bootstrap_wer_ci(e_small, w_small, 1000, seed=0)
    big = bootstrap_wer_ci(e_big, w_big, 1000, seed=0)
    assert big[1] - big[0] < (small[1] - small[0]) / 2
    assert bootstrap_wer_ci(e_small, w_small, 500, seed=3) == bootstrap_wer_ci(e_small, w_small, 500, seed=3)


def test_paired_bootstrap_probabilities_and_words():
    rng = np.random.default_rng(2)
    words = rng.integers(5, 30, size=200)
    errors_a = rng.binomial(words, 0.2)
    errors_b = np.maximum(errors_a - 1, 0)
    better = paired_bootstrap(errors_a, errors_b, words, 1000)
    assert better.p_b_better > 0.99 and better.p_a_better == 0.0
    assert better.p_a_better + better.p_b_better + better.p_equal == pytest.approx(1.0)
    assert better.verdict("A", "B").startswith("B better")
    worse = paired_bootstrap(errors_b, errors_a, words, 1000)
    assert worse.p_a_better > 0.99 and worse.verdict("A", "B").startswith("A better")
    same = paired_bootstrap(errors_a, errors_a, words, 200)
    assert (same.p_a_better, same.p_b_better, same.p_equal, same.identical) == (0.0, 0.0, 1.0, True)
    assert same.verdict().startswith("no difference")
    # one utterance differs by one error: most resamples that include it favour B, the rest tie
    one = errors_a.copy()
    one[0] = errors_a[0] + 1
    tilted = paired_bootstrap(one, errors_a, words, 2000, seed=1)
    expected_equal = (1 - 1 / 200) ** 200  # the utterance is drawn in none of the 200 draws
    assert tilted.p_a_better == 0.0 and tilted.p_equal == pytest.approx(expected_equal, abs=0.04)
    assert tilted.verdict().startswith("no significant difference")
    noisy = errors_a + rng.choice([-1, 1], size=200) * (errors_a > 0)
    mixed = paired_bootstrap(errors_a, noisy, words, 1000)
    assert 0.01 < mixed.p_b_better < 0.99 and 0.01 < mixed.p_a_better < 0.99


# --- reports and the command line ----------------------------------------------------------------


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
    assert "1-1-1 2/2:\t(HELLO->*) (WORLD->*)" in report and "9-9-9" in report


def test_report_and_cli_score_two_systems(tmp_path, capsys):
    refs = [f"{s}-1-{i} THE CAT SAT ON THE MAT NUMBER {i}" for s in (10, 20) for i in range(30)]
    ref = write(tmp_path / "ref.txt", refs)
    worse = write(tmp_path / "a.txt", [r.replace("CAT", "HAT").replace(" MAT", "") for r in refs])
    better = write(tmp_path / "b.txt", [r.replace(" MAT", "") for r in refs])
    code = cli_main(["score", "--ref", str(ref), "--hyp", str(worse), "--hyp", str(better),
                     "--report", str(tmp_path / "report.txt"), "--out-dir", str(tmp_path / "out")])
    assert code == 0
    out = capsys.readouterr().out
    assert "%WER 25.00" in out and "%WER 12.50" in out and "normaliser librispeech" in out
    assert f"P(A better) = 0.000, P(B better) = 1.000, P(equal) = 0.000: {better} better (P = 1.000)" in out
    report = (tmp_path / "report.txt").read_text()
    assert "10-1-3 2/8:\tTHE (CAT->HAT) SAT ON THE (MAT->*) NUMBER 3" in report
    assert "    60  CAT -> HAT" in report and "    60  MAT" in report
    assert "PER-SPEAKER" in report and "          10     30" in report
    assert "MAPSSWE: Z = " in report
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["comparisons"][0]["p_b_better"] == 1.0 and results["comparisons"][0]["mapsswe_p"] < 0.001
    assert (tmp_path / "out" / "a.txt.sys").exists() and (tmp_path / "out" / "b.txt.pra").exists()
    text = format_report(score_texts(["x"], ["A"], ["A"]))
    assert text.startswith("%WER 0.00 [ 0 / 1, 0 ins, 0 del, 0 sub ]")
    assert cli_main(["score", "--ref", str(tmp_path / "nope.txt"), "--hyp", str(better)]) == 1
    assert "nope.txt: transcript file not found" in capsys.readouterr().err


def test_cli_score_reads_trn_and_stm_ctm(capsys):
    assert cli_main(["score", "--ref", str(SCLITE / "ref.stm"), "--hyp", str(SCLITE / "sys.ctm"),
                     "--normalize", "none"]) == 0
    assert "[ 11 / 76, 1 ins, 3 del, 7 sub ]" in capsys.readouterr().out  # sclite: 76 words, 9.2/3.9/1.3 %
    assert cli_main(["score", "--ref", str(SCLITE / "ref.trn"), "--hyp", str(SCLITE / "sys_a.trn"),
                     "--hyp-format", "kaldi"]) == 1
    assert "sys_a.trn" in capsys.readouterr().err  # read as Kaldi text, its ids are words: refused


def test_cli_compare_three_systems(tmp_path, capsys):
    hyp_a_copy = write(tmp_path / "sys_a_copy.trn", (SCLITE / "sys_a.trn").read_text().splitlines())
    code = cli_main(["compare", "--ref", str(SCLITE / "ref.trn"), str(SCLITE / "sys_a.trn"), str(SCLITE / "sys_b.trn"),
                     str(hyp_a_copy), "--normalize", "none", "--json", str(tmp_path / "compare.json")])
    assert code == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if re.match(r"\s*[123]  ", line)]
    assert [r[1] for r in rows] == ["sys_a.trn", "sys_b.trn", "sys_a_copy.trn"]
    assert [r[2] for r in rows] == ["26.46", "38.14", "26.46"]  # sclite: Err 26.5 and 38.1
    assert re.search(r"1 vs 2: .*1 better.*MAPSSWE p = 0\.0\d\d: 1 better", out)
    assert re.search(r"1 vs 3: .*no difference.*MAPSSWE p = 1\.000: no difference", out)
    data = json.loads((tmp_path / "compare.json").read_text())
    assert len(data["comparisons"]) == 3 and data["comparisons"][1]["p_equal"] == 1.0
    assert cli_main(["compare", "--ref", str(SCLITE / "ref.trn"), str(SCLITE / "sys_a.trn")]) == 1
    assert "at least two" in capsys.readouterr().err


def test_collect_results_writes_one_row_per_set_and_decoder_in_reading_order(tmp_path):
    from asr.score import collect_results

    exp = tmp_path / "exp1"
    for set_name, label, wer in [("test", "beam-4gram", 9.5), ("test", "greedy", 12.25), ("dev", "beam", 11.0)]:
        out = exp / "decode" / set_name / label
        out.mkdir(parents=True)
        settings = {"lm": "4gram.arpa", "lm_weight": 0.75, "word_score": 1.0} if "4gram" in label else {}
        (out / "results.json").write_text(json.dumps({
            "set": set_name, "wer": wer, "cer": wer / 3, "ser": 50.0, "wer_ci95": [wer - 1, wer + 1],
            "utterances": 7, "checkpoint": "/x/avg-3.pt", "decoder_settings": settings, "normalizer": "librispeech"}))
    table = collect_results([exp]).splitlines()
    rows = [line for line in table if line.startswith("| exp1")]
    assert [r.split(" | ")[1:3] for r in rows] == [["dev", "beam"], ["test", "greedy"], ["test", "beam-4gram"]]
    assert "| 12.25 | [11.25, 13.25] |" in rows[1] and "| librispeech |" in rows[1]
    assert "0.75 / 1.0" in rows[2] and "`avg-3.pt`" in rows[2]
    with pytest.raises(DataError, match="no decode"):
        collect_results([tmp_path / "empty"])
