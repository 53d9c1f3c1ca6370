import itertools
import json
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.data import manifest as manifest_module
from asr.data.dataset import AudioDataset, Batch, Records, as_records, collate, filter_records, make_loader
from asr.data.manifest import read_manifest
from asr.data.sampler import BucketingBatchSampler
from asr.errors import DataError
from asr.fileio import read_text
from asr.lengths import ctc_min_frames
from asr.text import Tokenizer


def _durations(n=200, seed=1):
    rng = np.random.default_rng(seed)
    return list(rng.uniform(0.5, 12.0, size=n).round(3))


def _epoch(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


# ---------------------------------------------------------------- sampler


@pytest.mark.parametrize("shuffle", [True, False])
def test_every_index_once_and_cost_bounded(shuffle):
    durations = _durations()
    max_duration = 30.0
    sampler = BucketingBatchSampler(durations, max_duration, num_buckets=5, shuffle=shuffle, seed=3)
    batches = _epoch(sampler, 0)
    assert len(batches) == len(sampler)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(durations)))
    for batch in batches:
        assert len(batch) * max(durations[i] for i in batch) <= max_duration
    # Bucketing, not random: the padding waste is far below that of random batches of the same sizes.
    def waste(bs):
        return sum(len(b) * max(durations[i] for i in b) - sum(durations[i] for i in b) for b in bs)

    rng = np.random.default_rng(0)
    perm = rng.permutation(len(durations))
    sizes = [len(b) for b in batches]
    starts = np.cumsum([0] + sizes)
    random_batches = [perm[s : s + n].tolist() for s, n in zip(starts, sizes)]
    assert waste(batches) < 0.5 * waste(random_batches)


def test_unsorted_no_shuffle_is_ascending():
    durations = _durations(50)
    batches = _epoch(BucketingBatchSampler(durations, 20.0, shuffle=False), 0)
    flat = [i for b in batches for i in b]
    assert [durations[i] for i in flat] == sorted(durations)


def test_long_utterance_gets_own_batch():
    durations = [1.0, 25.0, 2.0, 1.5, 3.0]
    batches = _epoch(BucketingBatchSampler(durations, 10.0, num_buckets=2, seed=0), 0)
    assert [1] in batches
    assert sorted(i for b in batches for i in b) == list(range(5))


def test_deterministic_and_epochs_differ():
    durations = _durations()
    a = BucketingBatchSampler(durations, 40.0, seed=7)
    b = BucketingBatchSampler(durations, 40.0, seed=7)
    assert _epoch(a, 0) == _epoch(b, 0)
    assert _epoch(a, 1) == _epoch(b, 1)
    assert _epoch(a, 0) != _epoch(a, 1)
    assert _epoch(a, 2) == _epoch(b, 2) == _epoch(a, 2)  # iterating twice gives the same plan
    assert _epoch(BucketingBatchSampler(durations, 40.0, seed=8), 0) != _epoch(a, 0)


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("drop_last", [True, False])
def test_ranks_disjoint_equal_counts(world_size, drop_last):
    durations = _durations(203)
    single = BucketingBatchSampler(durations, 25.0, seed=5)
    global_batches = _epoch(single, 4)
    samplers = [
        BucketingBatchSampler(durations, 25.0, seed=5, rank=r, world_size=world_size, drop_last=drop_last)
        for r in range(world_size)
    ]
    per_rank = [_epoch(s, 4) for s in samplers]
    counts = {len(b) for b in per_rank}
    assert len(counts) == 1 and counts == {len(s) for s in samplers}
    n = counts.pop()
    if drop_last:
        assert n == len(global_batches) // world_size
    else:
        assert n == -(-len(global_batches) // world_size)
    # Interleaved, the ranks' batches are the single-process plan (plus repeats from its start).
    dealt = [per_rank[r][k] for k in range(n) for r in range(world_size)]
    expected = list(itertools.islice(itertools.cycle(global_batches), n * world_size))
    assert dealt == expected
    # Disjoint: outside of the padding repeats no utterance is on two ranks.
    unique = dealt[: min(len(dealt), len(global_batches))]
    flat = [i for b in unique for i in b]
    assert len(flat) == len(set(flat))
    if drop_last:
        sets = [{i for b in batches for i in b} for batches in per_rank]
        for x, y in itertools.combinations(sets, 2):
            assert not x & y
    else:
        assert {i for b in dealt for i in b} == set(range(len(durations)))


def test_more_ranks_than_batches():
    samplers = [BucketingBatchSampler([1.0, 1.0], 10.0, rank=r, world_size=3) for r in range(3)]
    per_rank = [_epoch(s, 0) for s in samplers]
    assert [len(b) for b in per_rank] == [1, 1, 1]


def test_resume_mid_epoch():
    durations = _durations()
    full = BucketingBatchSampler(durations, 30.0, seed=11, rank=1, world_size=2)
    uninterrupted = _epoch(full, 3)

    first = BucketingBatchSampler(durations, 30.0, seed=11, rank=1, world_size=2)
    first.set_epoch(3)
    it = iter(first)
    seen = [next(it) for _ in range(5)]
    state = first.state_dict()
    assert state["epoch"] == 3 and state["batches_done"] == 5
    assert seen == uninterrupted[:5]

    resumed = BucketingBatchSampler(durations, 30.0, seed=11, rank=1, world_size=2)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # a trainer calls set_epoch at the start of the epoch it resumes
    assert list(resumed) == uninterrupted[5:]
    # The skip applies once; the next epoch is whole again.
    assert _epoch(resumed, 4) == _epoch(full, 4)
    # An explicit count (what the training loop really consumed) overrides the hand-out count.
    assert first.state_dict(batches_done=2)["batches_done"] == 2


def test_empty_sampler():
    sampler = BucketingBatchSampler([], 10.0)
    assert len(sampler) == 0 and list(sampler) == []


# ---------------------------------------------------------------- filters, collate, dataset


def test_filter_records():
    records = [
        {"id": "short", "duration": 0.2, "text": "A"},
        {"id": "ok", "duration": 5.0, "text": "HELLO"},
        {"id": "long", "duration": 40.0, "text": "LONG"},
        {"id": "dense", "duration": 1.0, "text": "X" * 50},
    ]
    kept, dropped = filter_records(records, min_duration=0.5, max_duration=30.0, max_chars_per_second=25)
    assert [r["id"] for r in kept] == ["ok"]
    assert [d[0] for d in dropped] == ["short", "long", "dense"]
    assert "min_duration" in dropped[0][1] and "max_duration" in dropped[1][1]
    kept, dropped = filter_records(records)
    assert len(kept) == 4 and not dropped


def test_collate_shapes_and_padding():
    items = [
        {"id": "a", "waveform": torch.arange(1, 6, dtype=torch.float32) / 8, "tokens": torch.tensor([3, 4]),
         "text": "AB"},
        {"id": "b", "waveform": torch.tensor([-1.0, 1.0, 0.5]), "tokens": torch.tensor([5, 6, 7, 8]), "text": "CDEF"},
    ]
    batch = collate(items)
    assert isinstance(batch, Batch) and len(batch) == 2
    assert batch.ids == ["a", "b"] and batch.texts == ["AB", "CDEF"]
    # int16 samples (half the shared memory of float32), 1.0 clipped to the int16 maximum.
    assert batch.waveforms.shape == (2, 5) and batch.waveforms.dtype == torch.int16
    assert batch.waveforms.tolist() == [[4096, 8192, 12288, 16384, 20480], [-32768, 32767, 16384, 0, 0]]
    assert batch.wave_lengths.tolist() == [5, 3] and batch.wave_lengths.dtype == torch.int64
    assert torch.equal(batch.targets, torch.tensor([[3, 4, 0, 0], [5, 6, 7, 8]]))
    assert batch.targets.dtype == torch.int64
    assert batch.target_lengths.tolist() == [2, 4] and batch.target_lengths.dtype == torch.int64
    moved = batch.to("cpu", non_blocking=True)
    assert torch.equal(moved.targets, batch.targets) and moved.ids == batch.ids
    if torch.cuda.is_available():
        assert batch.pin_memory().waveforms.is_pinned()


def _write_corpus(tmp_path, sample_rate=16000):
    rng = np.random.default_rng(0)
    records, waves = [], {}
    texts = ["HELLO WORLD", "A B", "IT'S FINE", "XYZ"]
    for i, (seconds, text) in enumerate(zip([0.5, 0.2, 0.8, 0.3], texts)):
        wave = (rng.standard_normal(int(seconds * sample_rate)) * 0.1).astype(np.float32)
        ext = "flac" if i % 2 == 0 else "wav"
        path = tmp_path / f"utt{i}.{ext}"
        sf.write(path, wave, sample_rate, subtype="PCM_16")
        waves[f"utt{i}"] = sf.read(path, dtype="float32")[0]  # what the file holds after quantisation
        records.append({"id": f"utt{i}", "audio": str(path), "duration": seconds, "text": text, "speaker": "s"})
    return records, waves


def test_dataset_returns_audio_and_tokens(tmp_path):
    records, waves = _write_corpus(tmp_path)
    tok = Tokenizer.build(r["text"] for r in records[:3])  # "XYZ" is out of vocabulary
    dataset = AudioDataset(records, tok)
    assert len(dataset) == 4 and dataset.durations.tolist() == [0.5, 0.2, 0.8, 0.3]
    assert "3 characters outside the vocabulary" in dataset.oov_report
    for i, record in enumerate(records):
        item = dataset[i]
        assert item["id"] == record["id"] and item["text"] == record["text"]
        assert item["waveform"].dtype == torch.float32 and item["waveform"].ndim == 1
        np.testing.assert_allclose(item["waveform"].numpy(), waves[record["id"]], atol=1e-6)
        assert item["tokens"].dtype == torch.int64
        assert item["tokens"].tolist() == tok.encode(record["text"])


@pytest.mark.parametrize("num_workers", [0, 1])
def test_make_loader(tmp_path, num_workers):
    records, waves = _write_corpus(tmp_path)
    tok = Tokenizer.build(r["text"] for r in records)
    loader = make_loader(records, tok, max_duration=1.0, shuffle=True, seed=0, num_workers=num_workers)
    loader.batch_sampler.set_epoch(1)
    seen = []
    for batch in loader:
        assert batch.waveforms.shape[0] * batch.waveforms.shape[1] <= 1.0 * 16000
        assert batch.waveforms.dtype == torch.int16
        for row, utt in enumerate(batch.ids):
            n = int(batch.wave_lengths[row])
            # Exact: the files hold 16-bit samples, which is what crosses from the workers.
            np.testing.assert_array_equal(batch.waveforms[row, :n].numpy() / 32768, waves[utt])
            assert not batch.waveforms[row, n:].any()
            assert tok.decode(batch.targets[row, : batch.target_lengths[row]].tolist()) == batch.texts[row]
        seen.extend(batch.ids)
    assert sorted(seen) == sorted(waves)


# ---------------------------------------------------------------- compact records


def _texts(n=300, seed=0):
    rng = np.random.default_rng(seed)
    alphabet = list("ABCDEFGHIJ '") + ["É", "|", "7", "\u00e9", "\U0001f600", "ß"]
    weights = np.array([8] * 10 + [6, 1] + [0.2] * 6)
    texts = []
    for _ in range(n):
        size = int(rng.integers(0, 40))
        texts.append("".join(rng.choice(alphabet, size=size, p=weights / weights.sum())))
    return texts


def _dicts(texts):
    return [{"id": f"u{i}", "audio": f"/a/{i}.flac", "duration": 0.5 + (i % 17) * 0.25, "text": text,
             "speaker": f"s{i % 3}"} for i, text in enumerate(texts)]


def test_records_behave_as_a_sequence_of_record_dicts(tmp_path):
    texts = _texts(50)
    dicts = _dicts(texts)
    records = Records.from_dicts(dicts)
    assert len(records) == 50 and list(records) == dicts
    assert records[7] == dicts[7] and records[-1] == dicts[-1]
    assert records.durations.dtype == np.float64 and records.durations.tolist() == [d["duration"] for d in dicts]
    assert list(records.ids()) == [d["id"] for d in dicts] and list(records.texts()) == texts
    picked = records.take([5, 2, 40])
    assert list(picked) == [dicts[5], dicts[2], dicts[40]] and picked.text(2) == texts[40]
    assert picked.take([1]).id(0) == "u2"  # a view of a view
    assert as_records(records) is records
    # No Python object per utterance: the columns are flat numpy arrays.
    columns = records._columns
    assert all(isinstance(getattr(columns, name).flat, np.ndarray) for name in ("ids", "audio", "texts", "speakers"))


def test_records_read_a_manifest_as_read_manifest_does(tmp_path, monkeypatch):
    path = tmp_path / "m.jsonl"
    lines = [json.dumps({"id": f"u{i}", "audio": f"sub/{i}.flac", "duration": i + 0.5, "text": f"CAF\u00c9 {i}",
                         "speaker": i}, ensure_ascii=False) for i in range(40)]
    path.write_bytes(("\r\n".join(lines[:20]) + "\n\n" + "\n".join(lines[20:]) + "\n").encode("utf-8"))
    monkeypatch.setattr(manifest_module, "_BLOCK_BYTES", 64)  # many blocks, lines cut across them
    expected = read_manifest(path)
    assert len(expected) == 40 and expected[3]["audio"] == str(tmp_path / "sub" / "3.flac")
    assert list(Records.read(path)) == expected
    # Errors name the same line as before, whichever block the line falls in.
    path.write_bytes(path.read_bytes() + b'{"id": "x", "audio": "x.flac", "duration": 1, "text": "CAF\xe9", '
                     b'"speaker": "s"}\n')
    with pytest.raises(DataError) as whole:
        read_text(path, "manifest")
    with pytest.raises(DataError) as streamed:
        Records.read(path)
    assert str(streamed.value) == str(whole.value) and "m.jsonl:42: manifest is not UTF-8" in str(whole.value)
    path.write_text("\n".join(lines[:30] + [lines[4]]) + "\n")
    with pytest.raises(DataError, match="m.jsonl:31: id 'u4' already used on line 5"):
        Records.read(path)


def test_encode_gives_the_tokenizers_ids_and_oov_counts():
    texts = _texts()
    tokenizer = Tokenizer.build(t.replace("É", "").replace("\U0001f600", "") for t in texts[:200])
    reference = Tokenizer(tokenizer.tokens)
    expected = [reference.encode(text) for text in texts]
    records = Records.from_dicts(_dicts(texts)).take(np.arange(10, 300))  # a view: rows 10..299 only
    encoded = records.encode(tokenizer)
    assert [encoded.tokens(i).tolist() for i in range(len(encoded))] == expected[10:]
    assert encoded.tokens(0).dtype == np.uint8  # 20-odd tokens
    reference.oov.clear()
    for text in texts[10:]:
        reference.encode(text)
    assert tokenizer.oov == reference.oov and tokenizer.oov_report() == reference.oov_report()
    assert encoded.encoded.oov_report == reference.oov_report() and "'|'" in reference.oov_report()
    assert encoded.encode(tokenizer) is encoded  # encoded once
    assert encoded.token_lengths().tolist() == [len(e) for e in expected[10:]]
    wide = Tokenizer(["<blank>", "|", *[chr(0x4E00 + i) for i in range(300)]])
    assert Records.from_dicts(_dicts([chr(0x4E00 + 299) + " " + chr(0x4E00)])).encode(wide).tokens(0).tolist() == [
        301, 1, 2] and Records.from_dicts(_dicts(["x"])).encode(wide).tokens(0).dtype == np.int16


def test_ctc_labels_count_as_ctc_min_frames():
    texts = ["", "A", "AA", "AAB", "ABBA A", "BBBB", "AB AB", "  ", "ABBBBBBA"] + _texts(100, seed=3)
    tokenizer = Tokenizer.build(texts)
    records = Records.from_dicts(_dicts(texts)).encode(tokenizer)
    encoded = [torch.tensor(tokenizer.encode(t), dtype=torch.int64) for t in texts]
    lengths = torch.tensor([len(e) for e in encoded])
    padded = torch.nn.utils.rnn.pad_sequence(encoded, batch_first=True)
    assert records.ctc_labels().tolist() == ctc_min_frames(padded, lengths).tolist()
    assert records.take([8, 2]).ctc_labels().tolist() == [8 + 5, 2 + 1]


def test_filter_records_counts_characters_not_bytes():
    records = Records.from_dicts(_dicts(["\u00e9" * 10, "E" * 10, "\u00e9" * 30]))  # 0.5, 0.75 and 1.0 s
    kept, dropped = filter_records(records, max_chars_per_second=25)
    assert list(kept.ids()) == ["u0", "u1"] and dropped == [("u2", "30.0 characters/s > max_chars_per_second 25")]
    assert isinstance(kept, Records)


def test_dataset_reuses_the_encoding_and_its_oov_report():
    texts = ["AB", "AXB", "BA"]
    tokenizer = Tokenizer.build(["AB"])
    encoded = Records.from_dicts(_dicts(texts)).encode(tokenizer)
    assert tokenizer.oov == Counter({"X": 1})
    dataset = AudioDataset(encoded, tokenizer)
    assert tokenizer.oov == Counter({"X": 1})  # not counted a second time
    assert dataset.oov_report == "1 character outside the vocabulary: 'X' x1"
    assert dataset.tokens(1).tolist() == tokenizer.encode("AB") and dataset.tokens(1).dtype == torch.int64
