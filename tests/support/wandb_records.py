"""Read the history rows of an offline W&B run file (``offline-run-*/run-<id>.wandb``) without
the W&B service, to check what a run sent.

The file is W&B's record log: a 7-byte header (``:W&B``, magic 0xBEE1 little-endian, version 0),
then LevelDB-log records packed into 32 KiB blocks, each record a 7-byte header (crc32c, length
uint16, type: 1 full, 2 first, 3 middle, 4 last) and its bytes; a block's tail shorter than a
header is zero padding. Each complete record is a protobuf ``wandb.proto.Record``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Iterator

BLOCK = 32768
HEADER = 7


def raw_records(path: Path) -> Iterator[bytes]:
    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER])
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path}: not a W&B run file (header {data[:HEADER]!r})")
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # padding at the end of a block
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        pos += HEADER
        chunk = data[pos : pos + length]
        pos += length
        if kind == 0:  # zero fill: nothing more in this block
            pos += left - HEADER - length
        elif kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk
            pending = b""


def history(path: Path) -> list[dict[str, object]]:
    """The history rows (``{"_step": ..., key: value}``) of one run file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    rows = []
    for raw in raw_records(path):
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    return rows


def run_ids(path: Path) -> list[str]:
    """The run ids of the run records of one run file."""
    from wandb.proto import wandb_internal_pb2 as pb

    ids = []
    for raw in raw_records(path):
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "run":
            ids.append(record.run.run_id)
    return ids
