"""Where a payload's tensors are: the segments a frame codes by dtype (``airlock.codec.frame``)."""

from __future__ import annotations

from pathlib import Path

from airlock.codec.frame import CODE_OF, Segment
from airlock.errors import TensorFormatError
from airlock.safetensors_io import read_header


def file_layout(path: Path, size: int) -> list[Segment]:
    """Sorted segments covering ``[0, size)``: a safetensors file's header as bytes and each tensor's
    data with its dtype; any other file (or a safetensors file that does not parse) is plain bytes."""
    if path.name.endswith(".safetensors") and size >= 8:
        try:
            header = read_header(path)
        except TensorFormatError:
            return [Segment(0, size)] if size else []
        base = header.data_start
        segs = [Segment(0, base)]
        for t in header.tensors:
            if t.end > t.start:
                segs.append(Segment(base + t.start, base + t.end, t.dtype if t.dtype in CODE_OF else None))
        return segs
    return [Segment(0, size)] if size else []
