"""The shared memory arena's slots: first fit on 64-byte boundaries, freed slots merged with
their neighbours; a region is a 0600 file another process maps read-only, within its size."""

from __future__ import annotations

import os
import stat

import pytest

from zoo_serving.shm.arena import Slots
from zoo_serving.shm.region import Attached, Region


def test_slots_fit_first_on_64_bytes_and_merge_when_freed() -> None:
    slots = Slots(1 << 20)
    a, b, c = slots.take(100), slots.take(4096), slots.take(64)
    assert (a, b, c) == (0, 128, 128 + 4096)
    assert slots.take(1 << 20) is None  # no room left for it
    slots.give(b, 4096)
    assert slots.take(4000) == 128  # first fit: the hole b left
    slots.give(128, 4000)
    slots.give(a, 100)
    slots.give(c, 64)
    assert slots.free == [(0, 1 << 20)]  # merged back into one


def test_a_region_is_a_0600_file_another_process_maps_read_only() -> None:
    region = Region(4096)
    try:
        info = os.stat(region.path)
        assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.geteuid()
        region.view[:4] = b"zoo!"
        attached = Attached(region.name)
        assert bytes(attached.slice(0, 4)) == b"zoo!"
        with pytest.raises(TypeError):
            attached.slice(0, 4)[0] = 1  # read-only
        with pytest.raises(Exception, match="past its end"):
            attached.slice(4090, 10)
        assert attached.close()
    finally:
        region.close()
    assert not region.path.exists()
