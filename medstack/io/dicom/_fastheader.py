"""A minimal Part-10 header walker for pass 1: the wanted top-level elements of a file, without pydicom's
parse of everything else (private sequences included).

pydicom's ``dcmread(specific_tags=...)`` still builds a Dataset for every item of every undefined-length
sequence (Philips / Siemens / GE private sequences: most of a header scan's time on many small files).
Here the file's first bytes are walked once with ``struct``: wanted top-level elements become pydicom
``RawDataElement`` s of a plain :class:`pydicom.Dataset` (so every reader of pass 1 is unchanged), other
elements are skipped by length, undefined-length sequences by walking their items. Anything unusual
(no preamble, big endian, deflate, a wanted sequence, a malformed length) returns ``None``: the caller
falls back to pydicom.
"""

from __future__ import annotations

import struct

_U16 = struct.Struct("<H").unpack_from
_U32 = struct.Struct("<I").unpack_from
_TAG = struct.Struct("<HH").unpack_from
_EXPLICIT = struct.Struct("<HH2sH").unpack_from  # group, element, VR, 16-bit length
_ITEM_HEAD = struct.Struct("<HHI").unpack_from  # group, element, 32-bit length (implicit VR, items)
_LONG_VRS = frozenset((b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"))
_PIXEL_TAGS = frozenset((0x7FE00010, 0x7FE00008, 0x7FE00009))
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_IMPLICIT_LE, _EXPLICIT_LE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
_NOT_LE = frozenset(("1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"))  # big endian, deflate
MORE = object()  # the buffer ends inside the header: read more of the file


class _Short(Exception):
    pass


def _skip_items(buf, pos: int, explicit: bool, n: int) -> int:
    """Position after the sequence delimiter of an undefined-length value starting at ``pos``."""
    while True:
        if pos + 8 > n:
            raise _Short
        g, e, length = _ITEM_HEAD(buf, pos)
        pos += 8
        if g != 0xFFFE:
            raise ValueError("not an item")
        if e == 0xE0DD:  # sequence delimiter
            return pos
        if e != 0xE000:
            raise ValueError("not an item")
        if length != 0xFFFFFFFF:
            pos += length
        else:
            pos = _skip_elements(buf, pos, explicit, n)


def _skip_elements(buf, pos: int, explicit: bool, n: int) -> int:
    """Position after the item delimiter of an undefined-length item whose elements start at ``pos``."""
    long_vrs = _LONG_VRS
    while True:
        if pos + 12 > n:
            raise _Short
        vr = None
        if explicit:
            g, e, vr, length = _EXPLICIT(buf, pos)
            if g == 0xFFFE:
                if e != 0xE00D:
                    raise ValueError("unexpected delimiter")
                return pos + 8
            if vr in long_vrs:
                length = _U32(buf, pos + 8)[0]
                pos += 12
            else:
                pos += 8
        else:
            g, e, length = _ITEM_HEAD(buf, pos)
            if g == 0xFFFE:
                if e != 0xE00D:
                    raise ValueError("unexpected delimiter")
                return pos + 8
            pos += 8
        if length == 0xFFFFFFFF:
            pos = _skip_items(buf, pos, explicit and vr != b"UN", n)
        else:
            pos += length


def walk(buf, wanted: frozenset, complete: bool):
    """``(raw, transfer_syntax, implicit, pixel_pos)`` of a Part-10 file's first bytes ``buf``:
    ``raw`` maps wanted tags to ``(vr or None, value_offset, length)``; ``pixel_pos`` is the offset of the
    pixel data element (None when the header ends without one). ``None``: use pydicom. ``MORE``: the header
    goes on past ``buf`` (only when not ``complete``: ``buf`` is the whole file)."""
    res = _walk(buf, wanted, complete)
    if res is MORE and complete:
        return None  # truncated or malformed: pydicom says what is wrong
    return res


def _walk(buf, wanted: frozenset, complete: bool):
    n = len(buf)
    if n < 144 or buf[128:132] != b"DICM":
        return None
    pos = 132
    ts = None
    try:
        while True:  # file meta: explicit VR little endian, group 0002
            if pos + 8 > n:
                return MORE
            g, e = _TAG(buf, pos)
            if g != 2:
                break
            vr = buf[pos + 4 : pos + 6]
            if vr in _LONG_VRS:
                length = _U32(buf, pos + 8)[0]
                start = pos + 12
            else:
                length = _U16(buf, pos + 6)[0]
                start = pos + 8
            if length == 0xFFFFFFFF or start + length > n:
                return None if length == 0xFFFFFFFF else MORE
            if e == 0x0010:
                ts = bytes(buf[start : start + length]).decode("ascii", "replace").strip("\x00 ")
            pos = start + length
        if ts is None or ts in _NOT_LE:
            return None
        explicit = ts != _IMPLICIT_LE
        raw = {}
        long_vrs = _LONG_VRS
        while True:
            if pos + 12 > n:
                if pos + 8 > n:
                    return (raw, ts, not explicit, None) if pos == n and complete else MORE  # no pixel data
                if not complete:
                    return MORE
            if explicit:
                g, e, vr, length = _EXPLICIT(buf, pos)
                tag = g << 16 | e
                if tag in _PIXEL_TAGS:
                    return raw, ts, False, pos
                if vr in long_vrs:
                    length = _U32(buf, pos + 8)[0]
                    start = pos + 12
                elif b"AA" <= vr <= b"ZZ":
                    start = pos + 8
                else:
                    return None  # an implicit-VR switch or garbage: pydicom knows the workarounds
            else:
                g, e, length = _ITEM_HEAD(buf, pos)
                tag = g << 16 | e
                if tag in _PIXEL_TAGS:
                    return raw, ts, True, pos
                vr = None
                start = pos + 8
            if length == 0xFFFFFFFF:
                if tag in wanted:
                    return None  # a wanted sequence (enhanced multi-frame): pydicom parses it
                # an undefined-length UN value is a sequence encoded in implicit VR (PS3.5 6.2.2)
                pos = _skip_items(buf, start, explicit and vr != b"UN", n)
                continue
            if tag in wanted:
                if start + length > n:
                    return MORE
                if vr == b"SQ":
                    return None
                raw[tag] = (vr, start, length)
            pos = start + length
    except _Short:
        return MORE
    except (ValueError, struct.error):
        return None


def dataset(buf, raw: dict, implicit: bool):
    """A pydicom Dataset of RawDataElements (values decoded lazily by pydicom, as after ``dcmread``); no
    file meta (the caller has the transfer syntax)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.dataset import Dataset
    from pydicom.tag import BaseTag

    new = tuple.__new__  # RawDataElement is a NamedTuple: skip its Python-level __new__
    vrs = _VR_STR
    elems = {}
    for tag, (vr, start, length) in raw.items():
        t = BaseTag(tag)
        if vr is not None:
            vr = vrs.get(vr) or vrs.setdefault(vr, vr.decode("ascii"))
        elems[t] = new(RawDataElement, (t, vr, length, buf[start : start + length], start, implicit, True))
    return Dataset(elems)


_VR_STR: dict[bytes, str] = {}
