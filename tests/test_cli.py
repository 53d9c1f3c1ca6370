"""The command line's contract: a user error is one line naming the file, and a non-zero exit."""

from __future__ import annotations

import pytest
import torch

from asr.cli import _user_message, main
from asr.errors import AudioError


class _CorruptAudio(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, index):
        raise AudioError("/data/bad.flac: cannot decode audio, the file is truncated or corrupt")


def test_an_error_from_a_loader_worker_is_reported_as_its_own_one_line():
    loader = torch.utils.data.DataLoader(_CorruptAudio(), num_workers=1)
    with pytest.raises(AudioError) as caught:
        next(iter(loader))
    assert "Original Traceback" in str(caught.value)  # what PyTorch re-raises in the main process
    assert _user_message(caught.value) == "/data/bad.flac: cannot decode audio, the file is truncated or corrupt"


def test_a_missing_manifest_is_one_line_and_exit_1(tmp_path, capsys):
    code = main(["prepare", "dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "nowhere" in err[0]
    assert not (tmp_path / "m.jsonl").exists()
