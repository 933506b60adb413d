"""Run-state files (deep/state.py): verified before they are trusted, read or mapped alike."""

import pytest
import torch

from deep.state import StateDamaged, load_state, save_state


@pytest.mark.parametrize("mmap", [False, True])
def test_state_round_trips_and_damage_is_named(tmp_path, mmap):
    obj = {"w": torch.arange(1000, dtype=torch.float32), "step": 3, "nested": [torch.ones(2, 2)]}
    path = tmp_path / "s.pt"
    save_state(obj, path)
    got = load_state(path, mmap=mmap)
    assert torch.equal(got["w"], obj["w"]) and got["step"] == 3 and torch.equal(got["nested"][0], torch.ones(2, 2))

    raw = path.read_bytes()
    path.write_bytes(raw[:-10])
    with pytest.raises(StateDamaged, match=r"is truncated or altered \(\d+ bytes, \d+ written\)"):
        load_state(path, mmap=mmap)
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 1
    path.write_bytes(bytes(flipped))
    with pytest.raises(StateDamaged, match="is altered"):
        load_state(path, mmap=mmap)
    path.with_name("s.pt.sha256").unlink()
    with pytest.raises(StateDamaged, match="has no s.pt.sha256"):
        load_state(path, mmap=mmap)
    path.unlink()
    with pytest.raises(StateDamaged, match="is missing"):
        load_state(path, mmap=mmap)
