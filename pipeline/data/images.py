"""The sample table's images, read by row so that memory never grows with the number of images.

``store/data/images.safetensors`` holds one tensor, ``images`` (N x C x H x W, uint8). It is an
ordinary safetensors file (any safetensors reader loads it whole), but ume never loads it whole:
:class:`ImageFile` reads only the rows a consumer asks for, at their byte offsets (``os.pread``,
one read per run of consecutive rows), in whichever process asks (DataLoader workers included).
A step's memory is then the sample table plus a batch, whatever N (issue 17; measured by
``ume bench scale``). :class:`ImageWriter` writes the file one image at a time, so ``ume prepare``
never holds a folder's decoded images either. :class:`MemoryImages` is the same interface over a
tensor already in memory (the embedded digits, tests).

Each row is encrypted under a key of its own (:mod:`pipeline.data.rowkeys`, crypto-shredding): the file's
metadata says so (``ume.cipher``), the keys are bound after opening (:meth:`ImageFile.bind_keys`), and an
erased row (its key destroyed) can no longer be read by anyone, from any copy of the file.

Fixed-size records give O(1) random access by row, which shuffled training, the deleted-set filter
(a selection of rows) and subsampling need; a sequential shard format (a tar of samples) would not.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from pipeline.core.errors import DataError
from pipeline.data.rowkeys import CIPHER, decrypt_rows, encrypt_rows

TENSOR = "images"
_DTYPES = {"U8": "uint8", "I8": "int8", "F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64", "I32": "int32", "I64": "int64"}


class ImageStore(Protocol):
    """N images of one shape, read by row position."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __len__(self) -> int: ...

    def read(self, positions: Sequence[int] | np.ndarray) -> torch.Tensor:
        """uint8 images at ``positions`` (k x C x H x W), in that order."""
        ...


def iter_chunks(store: ImageStore, rows: int = 4096) -> Iterator[torch.Tensor]:
    """Every image in order, ``rows`` at a time (hashing and copying without holding them all)."""
    for start in range(0, len(store), rows):
        yield store.read(np.arange(start, min(start + rows, len(store))))


class MemoryImages:
    """Images already in memory (a uint8 tensor N x C x H x W)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    @property
    def shape(self) -> tuple[int, ...]:
        """``(N, C, H, W)``."""
        return tuple(self.images.shape)

    def __len__(self) -> int:
        return len(self.images)

    def read(self, positions: Sequence[int] | np.ndarray) -> torch.Tensor:
        """uint8 images at ``positions``."""
        return self.images[torch.as_tensor(np.asarray(positions, dtype=np.int64))]


def _runs(positions: np.ndarray) -> list[tuple[int, int, int]]:
    """``(output index, first row, length)`` for each run of consecutive rows, in the given order."""
    if len(positions) == 0:
        return []
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(positions)]])
    return [(int(s), int(positions[s]), int(e - s)) for s, e in zip(starts, ends, strict=True)]


class ImageFile:
    """The prepared ``images.safetensors``, read row by row at byte offsets (never loaded whole)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._pid = -1
        self.keys: list[bytes | None] | None = None
        self.cipher: str | None = None
        try:
            with open(self.path, "rb") as fh:
                (header_len,) = struct.unpack("<Q", fh.read(8))
                if header_len > 1 << 20:
                    raise ValueError(f"header of {header_len} bytes")
                header = json.loads(fh.read(header_len))
            entry = header[TENSOR]
            self.cipher = (header.get("__metadata__") or {}).get("ume.cipher")
            dtype, shape, (begin, end) = entry["dtype"], [int(n) for n in entry["shape"]], entry["data_offsets"]
        except FileNotFoundError:
            raise DataError("cannot read the prepared images (file not found); rerun `ume prepare`", file=str(self.path)) from None
        except (ValueError, KeyError, TypeError, struct.error) as exc:
            problem = f"not a safetensors file with an {TENSOR!r} tensor: {exc}"
            raise DataError(f"cannot read the prepared images ({problem}); rerun `ume prepare`", file=str(self.path)) from None
        if dtype != "U8" or len(shape) != 4:
            raise DataError(f"expected uint8 images N x C x H x W, got {_DTYPES.get(dtype, dtype)} {tuple(shape)}", file=str(self.path))
        self._shape = tuple(shape)
        self.item_bytes = int(np.prod(shape[1:]))
        self.data_start = 8 + header_len + int(begin)
        size = self.path.stat().st_size
        if int(end) - int(begin) != shape[0] * self.item_bytes or size < self.data_start + shape[0] * self.item_bytes:
            raise DataError(f"the file is shorter than its header says ({size} bytes for {shape[0]} images); rerun `ume prepare`", file=str(self.path))

    @property
    def shape(self) -> tuple[int, ...]:
        """``(N, C, H, W)``."""
        return self._shape

    def __len__(self) -> int:
        return self._shape[0]

    @property
    def encrypted(self) -> bool:
        """Whether the rows are encrypted per row (every file ``ume prepare`` writes; older projects' are not)."""
        return self.cipher is not None

    def bind_keys(self, keys: list[bytes | None]) -> ImageFile:
        """The key of every row (None: erased), from :class:`~pipeline.data.rowkeys.RowKeys`."""
        if self.cipher != CIPHER:
            raise DataError(f"unknown row cipher {self.cipher!r} (expected {CIPHER!r})", file=str(self.path), field="ume.cipher")
        if len(keys) != len(self):
            raise DataError(f"{len(keys)} row keys for {len(self)} images; rerun `ume prepare`", file=str(self.path))
        self.keys = keys
        return self

    def _handle(self) -> int:
        """This process's file descriptor (a DataLoader worker opens its own)."""
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def read(self, positions: Sequence[int] | np.ndarray) -> torch.Tensor:
        """uint8 images at ``positions``: one ``pread`` per run of consecutive rows."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"image rows out of range 0..{len(self) - 1}")
        out = np.empty((len(positions), *self._shape[1:]), dtype=np.uint8)
        flat = out.reshape(len(positions), self.item_bytes)
        fd = self._handle()
        for at, row, count in _runs(positions):
            want = count * self.item_bytes
            data = os.pread(fd, want, self.data_start + row * self.item_bytes)
            if len(data) != want:
                raise DataError(f"the prepared images were truncated (row {row}); rerun `ume prepare`", file=str(self.path))
            flat[at : at + count] = np.frombuffer(data, dtype=np.uint8).reshape(count, self.item_bytes)
        if self.cipher is not None:
            if self.keys is None:
                raise DataError("the images are encrypted per row but no row keys were bound (open it with SampleTable.load)", file=str(self.path))
            decrypt_rows(flat, self.keys, positions, file=str(self.path))
        return torch.from_numpy(out)

    def __getstate__(self) -> dict[str, object]:
        """Pickled into DataLoader workers without the open descriptor."""
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def __del__(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            try:
                os.close(self._fd)
            except OSError:
                pass


class ImageWriter:
    """Write ``images.safetensors`` one image at a time; ``count`` and the image shape are known up front."""

    def __init__(self, path: str | Path, count: int, image_shape: tuple[int, int, int], *, encrypted: bool = False) -> None:
        self.path = Path(path)
        self.count, self.image_shape = count, tuple(image_shape)
        self.written = 0
        self.encrypted = encrypted
        self.keys: list[bytes | None] = []
        nbytes = count * int(np.prod(image_shape))
        layout: dict[str, object] = {TENSOR: {"dtype": "U8", "shape": [count, *image_shape], "data_offsets": [0, nbytes]}}
        if encrypted:
            layout["__metadata__"] = {"ume.cipher": CIPHER}
        header = json.dumps(layout, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)  # the format's whitespace padding, to an 8-byte boundary
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "wb")  # noqa: SIM115 (closed by close())
        self._fh.write(struct.pack("<Q", len(header)) + header)

    def append(self, images: np.ndarray | torch.Tensor, keys: list[bytes | None] | None = None) -> None:
        """One image (C x H x W) or a batch (k x C x H x W), uint8; an encrypted file takes each row's key (None: erased)."""
        arr = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.dtype != np.uint8 or tuple(arr.shape[1:]) != self.image_shape:
            raise ValueError(f"expected uint8 images of {self.image_shape}, got {arr.dtype} {tuple(arr.shape[1:])}")
        if self.written + len(arr) > self.count:
            raise ValueError(f"more than the {self.count} images announced")
        if self.encrypted:
            if keys is None or len(keys) != len(arr):
                raise ValueError(f"an encrypted images file needs one key per row ({len(arr)} rows)")
            arr = encrypt_rows(np.ascontiguousarray(arr), keys)
            self.keys.extend(keys)
        self._fh.write(np.ascontiguousarray(arr).tobytes())
        self.written += len(arr)

    def abort(self) -> None:
        """Stop and remove the partial file."""
        self._fh.close()
        self.path.unlink(missing_ok=True)

    def close(self) -> ImageFile:
        """Finish the file (every announced image written) and open it for reading."""
        self._fh.close()
        if self.written != self.count:
            raise ValueError(f"{self.written} images written, {self.count} announced")
        opened = ImageFile(self.path)
        return opened.bind_keys(self.keys) if self.encrypted else opened


def write_store(store: ImageStore, path: str | Path, keys: list[bytes | None] | None = None) -> ImageFile:
    """Copy a whole store into ``path`` in chunks, each row encrypted under its key when ``keys`` are given."""
    n, *image_shape = store.shape
    writer = ImageWriter(path, n, tuple(image_shape), encrypted=keys is not None)  # type: ignore[arg-type]
    chunk_rows = 4096
    for start, chunk in zip(range(0, n, chunk_rows), iter_chunks(store, chunk_rows), strict=True):
        writer.append(chunk, None if keys is None else keys[start : start + len(chunk)])
    return writer.close()
