"""Direct reads of plain Parquet pages: a column chunk's values straight into the caller's buffer.

The feature files' layer columns are uncompressed PLAIN ``fixed_size_binary``
chunks (``features.store``). For those, the values of each page are read with
one ``preadv`` into the preallocated result, with the next page header in the
same call: one copy, page cache -> result, as ``np.load`` does, where Arrow's
decoder and a copy out of it cost twice that. Page headers are parsed by a
small Thrift compact-protocol reader. Anything else raises :class:`NotPlain`
and the caller falls back to Arrow.
"""

from __future__ import annotations

import os
from typing import Any

import pyarrow.parquet as pq


class NotPlain(Exception):
    """A column chunk the direct reader does not handle; Arrow decodes it instead."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _thrift_struct(buf: bytes, pos: int) -> tuple[dict[int, Any], int]:
    """Thrift compact-protocol struct at ``pos``: ``{field id: int | bool | dict}`` and the end offset.

    Enough for a Parquet ``PageHeader``: scalars are kept, binaries and doubles
    skipped; containers (absent from page headers) raise :class:`NotPlain`.
    """
    fields: dict[int, Any] = {}
    field_id = 0
    while True:
        byte = buf[pos]
        pos += 1
        if byte == 0:
            return fields, pos
        kind, delta = byte & 0x0F, byte >> 4
        if delta:
            field_id += delta
        else:
            raw, pos = _varint(buf, pos)
            field_id = (raw >> 1) ^ -(raw & 1)
        if kind in (1, 2):
            fields[field_id] = kind == 1
        elif kind == 3:
            fields[field_id] = buf[pos]
            pos += 1
        elif kind in (4, 5, 6):
            raw, pos = _varint(buf, pos)
            fields[field_id] = (raw >> 1) ^ -(raw & 1)
        elif kind == 7:
            pos += 8
        elif kind == 8:
            size, pos = _varint(buf, pos)
            pos += size
        elif kind == 12:
            fields[field_id], pos = _thrift_struct(buf, pos)
        else:
            raise NotPlain(f"thrift type {kind} in a page header")


#: Bytes read ahead for one page header (headers without statistics take ~20).
_HEADER_PEEK = 4096
_DATA_PAGE, _DATA_PAGE_V2, _PLAIN = 0, 3, 0


def _pread_into(fd: int, views: list[memoryview], offset: int) -> None:
    """Fill ``views`` in turn from the file bytes at ``offset`` (one ``preadv``, unless it comes up short)."""
    views = [view for view in views if len(view)]
    while views:
        n = os.preadv(fd, views, offset)
        if n == 0:
            raise OSError(f"unexpected end of file at byte {offset}")
        offset += n
        while views and n >= len(views[0]):
            n -= len(views.pop(0))
        if views:
            views[0] = views[0][n:]


def _plain_page(header_bytes: bytearray, width: int) -> tuple[int, int]:
    """``(header size, value bytes)`` of a data page of PLAIN, uncompressed, level-free values."""
    try:
        header, size = _thrift_struct(header_bytes, 0)
    except IndexError as err:
        raise NotPlain("page header longer than the read-ahead") from err
    kind, payload = header.get(1), header.get(3)
    if kind == _DATA_PAGE:
        page = header.get(5, {})
        levels, encoding = 0, page.get(2)
    elif kind == _DATA_PAGE_V2:
        page = header.get(8, {})
        levels, encoding = page.get(5, 0) + page.get(6, 0) + page.get(2, 0), page.get(4)
    else:
        raise NotPlain(f"page type {kind}")
    n_bytes = page.get(1, -1) * width
    if encoding != _PLAIN or levels or payload != n_bytes or header.get(2) != payload:
        raise NotPlain("page is not plain, uncompressed, level-free fixed-size values")
    return size, n_bytes


def read_plain_chunk(fd: int, chunk: pq.ColumnChunkMetaData, out: memoryview, width: int) -> None:
    """Copy an uncompressed PLAIN ``fixed_size_binary`` column chunk's values straight into ``out``.

    One copy, page cache -> result, as ``np.load`` does (Arrow's decode then
    our copy cost twice that), and one ``preadv`` per page: its values and the
    next page's header. Raises :class:`NotPlain` for any page it does not
    recognise; ``out`` then holds partial data and must be refilled.
    """
    if chunk.compression != "UNCOMPRESSED" or chunk.has_dictionary_page:
        raise NotPlain(chunk.path_in_schema)
    offset, end, filled = chunk.data_page_offset, chunk.data_page_offset + chunk.total_compressed_size, 0
    peek = bytearray(_HEADER_PEEK)
    _pread_into(fd, [memoryview(peek)[: end - offset]], offset)
    last, size, n_bytes = b"", 0, 0  # pages of one chunk mostly repeat the previous header
    while offset < end:
        if not (last and peek.startswith(last)):
            size, n_bytes = _plain_page(peek, width)
            last = bytes(peek[:size])
        if offset + size + n_bytes > end or filled + n_bytes > len(out):
            raise NotPlain("page runs past its column chunk or the row group's rows")
        offset += size + n_bytes
        ahead = memoryview(peek)[: min(_HEADER_PEEK, end - offset)]
        _pread_into(fd, [out[filled : filled + n_bytes], ahead], offset - n_bytes)
        filled += n_bytes
    if filled != len(out):
        raise NotPlain(f"{filled} value bytes for a {len(out)}-byte slice")
