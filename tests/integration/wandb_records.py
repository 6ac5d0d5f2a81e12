"""Reading what an offline W&B run recorded, for the tests.

wandb 0.31 writes an offline run only as its transaction log ``wandb/offline-run-*/run-*.wandb`` (no
``config.yaml`` or ``wandb-metadata.json`` until it is synced) and ships no Python reader for it any more. The log
is a LevelDB-style log of ``wandb_internal_pb2.Record`` protobufs: a 7-byte file header, then 32 KiB blocks of
chunks, each with a 7-byte header (CRC32, length, type FULL/FIRST/MIDDLE/LAST).
"""
from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

from wandb.proto import wandb_internal_pb2

_FILE_HEADER = struct.Struct("<4sHB")  # ":W&B", magic 0xBEE1, version
_CHUNK_HEADER = struct.Struct("<IHB")  # crc32, length, type
_BLOCK = 32768
_FULL, _FIRST, _LAST = 1, 2, 4


def records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    ident, magic, _ = _FILE_HEADER.unpack_from(data)
    assert (ident, magic) == (b":W&B", 0xBEE1), f"{path} is not a W&B transaction log"
    position, pending = _FILE_HEADER.size, b""
    while position + _CHUNK_HEADER.size <= len(data):
        left_in_block = _BLOCK - position % _BLOCK
        if left_in_block < _CHUNK_HEADER.size:  # zero padding at the end of a block
            position += left_in_block
            continue
        _, length, kind = _CHUNK_HEADER.unpack_from(data, position)
        start = position + _CHUNK_HEADER.size
        chunk, position = data[start:start + length], start + length
        pending = chunk if kind in (_FULL, _FIRST) else pending + chunk
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def offline_runs(run_dir: Path) -> list[Path]:
    """The transaction logs of the offline W&B runs started in ``run_dir`` (the engine's ``wandb.init(dir=)``)."""
    return sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))


def run_record(path: Path):
    """The run's ``RunRecord`` (project, ``run_group``, ``display_name``, config) from its transaction log."""
    found = [record.run for record in records(path) if record.HasField("run")]
    assert found, f"{path} holds no run record"
    return found[0]
