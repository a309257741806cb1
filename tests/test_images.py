"""The prepared images are read by row (issue 17): same bytes as a whole-file load, in any process, never loaded whole."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from pipeline.core.errors import DataError
from pipeline.data.images import ImageFile, ImageWriter, MemoryImages, write_store
from pipeline.data.module import SampleSet, StoreRows, to_float

IMAGES = torch.from_numpy(np.random.default_rng(0).integers(0, 256, size=(37, 3, 5, 4), dtype=np.uint8))


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> ImageFile:
    return write_store(MemoryImages(IMAGES), tmp_path_factory.mktemp("images") / "images.safetensors")


def test_the_written_file_is_an_ordinary_safetensors_file(image_file: ImageFile) -> None:
    assert torch.equal(load_file(str(image_file.path))["images"], IMAGES)
    assert image_file.shape == (37, 3, 5, 4) and len(image_file) == 37


@given(st.lists(st.integers(0, 36), max_size=60))
def test_any_rows_in_any_order_read_the_same_bytes(image_file: ImageFile, positions: list[int]) -> None:
    assert torch.equal(image_file.read(positions), IMAGES[torch.tensor(positions, dtype=torch.long)])


def test_rows_are_read_in_dataloader_workers(image_file: ImageFile) -> None:
    """The store travels to worker processes without its descriptor, and each worker opens its own."""
    assert pickle.loads(pickle.dumps(image_file))._fd is None
    positions = np.array([5, 6, 7, 30, 2, 3], dtype=np.int64)
    samples = SampleSet("s", StoreRows(image_file, positions), torch.arange(6), tuple("abcdef"), ("g",) * 6, ("o",) * 6)
    batches = list(DataLoader(samples.dataset(), batch_size=4, num_workers=2))
    x = torch.cat([b[0] for b in batches])
    assert torch.equal(x, to_float(IMAGES[torch.from_numpy(positions)])) and torch.equal(x, samples.x)
    assert torch.equal(torch.cat(list(samples.batches(4))), samples.x)
    assert torch.equal(samples.take([4, 0]).x, samples.x[[4, 0]]) and len(samples.concat(samples).inputs) == 12


def test_prepare_writes_one_image_at_a_time_and_a_short_write_is_refused(tmp_path: Path) -> None:
    writer = ImageWriter(tmp_path / "a.safetensors", 3, (3, 5, 4))
    writer.append(IMAGES[0])
    writer.append(IMAGES[1:3])
    assert torch.equal(writer.close().read([0, 1, 2]), IMAGES[:3])
    short = ImageWriter(tmp_path / "b.safetensors", 3, (3, 5, 4))
    short.append(IMAGES[0])
    with pytest.raises(ValueError, match="1 images written, 3 announced"):
        short.close()
    aborted = ImageWriter(tmp_path / "c.safetensors", 3, (3, 5, 4))
    aborted.abort()
    assert not (tmp_path / "c.safetensors").exists()


def test_a_damaged_or_foreign_file_is_a_clear_error(tmp_path: Path, image_file: ImageFile) -> None:
    floats = tmp_path / "floats.safetensors"
    save_file({"images": IMAGES.float()}, str(floats))
    with pytest.raises(DataError, match="expected uint8 images N x C x H x W, got float32"):
        ImageFile(floats)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(image_file.path.read_bytes()[:-10])
    with pytest.raises(DataError, match="shorter than its header says"):
        ImageFile(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00hello")
    with pytest.raises(DataError, match="cannot read the prepared images"):
        ImageFile(garbage)
    with pytest.raises(DataError, match="file not found"):
        ImageFile(tmp_path / "missing.safetensors")
