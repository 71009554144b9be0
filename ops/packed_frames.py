"""Packed frames: the frame files of one video in one file, read with one ``pread`` per frame.

A frame folder ``<root>/<video>/img_00001.jpg ...`` becomes ``<root>/<video>.zip`` (written by
``tools/pack_frames.py`` or ``tools/extract_frames.py --pack``): a zip archive whose members are
the folder's frame files, stored byte for byte (method 0, no compression), named as in the
folder (no folder part). ``ops/frames.py`` reads it wherever it would read the folder (the rule
is there, ``video_location``), so decoded frames, pixels and scores are the folder's exactly.

Why a zip with stored members (measured on 300 frames of 340x256 JPEG, 17 KB each, one process
on a 2-core machine while it was quiet; the suite's ``data format:`` rows give the end-to-end
clips/s of packed files against folders):
- Standard: ``unzip -l``, ``python -m zipfile -l`` and every language's zip library list and
  extract it; nothing of ours is needed to get the frames back, and packing is reversible.
- Random access at file cost: the central directory at the end of the file is the index
  (name, offset, size and CRC of every member). Opening reads it with one ``pread`` of the file's
  last 64 KiB (the directory of up to ~1000 frames fits in it; a longer one costs one more read);
  parsing it here takes ~0.13 ms for 300 frames, a third of one frame's JPEG decode (0.38 ms)
  and ~4% of a clip's eight (Python's ``zipfile`` builds an object per member: 0.7 ms). A member
  is then one ``pread`` of its local header and its bytes (1.4 us), where a frame folder costs a
  ``stat`` + ``open`` + ``read`` + ``close`` per frame file (17 us, each a metadata operation on a
  network file system).
- Small: 30 + 46 bytes of headers plus the name twice per member, 0.6% of a 17 KB frame
  (frames of a few KB: 2-3%).
- Checked: every member carries a CRC-32 of its bytes, verified on every read (4 us for 17 KB,
  1% of its decode), so a damaged member is a bad frame, counted and replaced as an undecodable
  frame file is, never silently wrong pixels.
A tar with an index would need a sidecar index or a scan of all headers to open; a custom
header + offsets format would save the 0.1 ms parse at the cost of every standard tool.

Zip64 archives (over 4 GiB or 65535 members) are read too. Compressed or encrypted members are
refused (``PackedError``): this is a container for JPEG bytes, not a compressor.

Open files: each process keeps the last ``HANDLES`` packed files open (an LRU), opened lazily in
the process that reads (a DataLoader worker forked with handles of its parent drops them and
opens its own, so no file offset or descriptor is shared across a fork; reads use ``pread``
anyway). A file replaced on disk (another inode, size or mtime) is reopened.
"""

from __future__ import annotations

import os
import socket
import struct
import tempfile
import threading
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterable

EXT = ".zip"  # a packed video is <root>/<video>.zip
HANDLES = 4  # packed files kept open per process
TAIL = 64 * 1024  # bytes read from the end of the file when it opens: the index, usually whole
SLACK = 64  # bytes read after a member beyond its header and data, for a local extra field
PARTIAL = ".partial-"  # temporary name part of a packed file being written

_LOCAL = struct.Struct("<IHHHHHIIIHH")  # 30-byte local file header
_CENTRAL = struct.Struct("<I4xHH4xIIIHHH8xI")  # 46-byte central directory header, fields used
_EOCD = struct.Struct("<IHHHHIIH")  # 22-byte end of central directory record
_EOCD64_LOC = struct.Struct("<IIQI")  # 20-byte zip64 end of central directory locator
_EOCD64 = struct.Struct("<IQHHIIQQQQ")  # 56-byte zip64 end of central directory record
_SIG_LOCAL, _SIG_CENTRAL, _SIG_EOCD = 0x04034B50, 0x02014B50, 0x06054B50
_SIG_EOCD64_LOC, _SIG_EOCD64 = 0x07064B50, 0x06064B50
_DATE = (1980, 1, 1, 0, 0, 0)  # fixed member times: packing the same folder gives the same bytes


class PackedError(OSError):
    """A packed file whose index cannot be read (not a zip, truncated, compressed members...);
    the message is one line naming the file."""


class DamagedMember(OSError):
    """A member whose bytes do not match its index entry (CRC, size, local header)."""


# ------------------------------------------------------------------------------------- index
def _eocd(tail: bytes, tail_start: int, path: str) -> tuple[int, int, int, int]:
    """(members, directory size, directory offset, shift of every offset) from the end records
    found in ``tail``."""
    at = tail.rfind(b"PK\x05\x06")
    while at >= 0 and (len(tail) - at < _EOCD.size or _comment_mismatch(tail, at)):
        at = tail.rfind(b"PK\x05\x06", 0, at)
    if at < 0:
        raise PackedError(f"packed file {path} is not a zip archive or is truncated (no index)")
    _, disk, cd_disk, _, count, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, at)
    if disk or cd_disk:
        raise PackedError(f"packed file {path} is a multi-part archive")
    loc = at - _EOCD64_LOC.size
    if loc >= 0 and _EOCD64_LOC.unpack_from(tail, loc)[0] == _SIG_EOCD64_LOC:  # zip64
        rec = _EOCD64_LOC.unpack_from(tail, loc)[2] - tail_start
        if rec < 0 or rec + _EOCD64.size > len(tail):
            raise PackedError(f"packed file {path}: zip64 index record out of place")
        fields = _EOCD64.unpack_from(tail, rec)
        if fields[0] != _SIG_EOCD64:
            raise PackedError(f"packed file {path}: zip64 index record damaged")
        count, cd_size, cd_offset = fields[7], fields[8], fields[9]
        end_of_cd = tail_start + rec
    elif count == 0xFFFF or cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF:
        raise PackedError(f"packed file {path}: zip64 index locator missing")
    else:
        end_of_cd = tail_start + at
    # Data before the archive (a self-extractor stub) shifts every offset, as zipfile allows.
    shift = end_of_cd - cd_size - cd_offset
    if shift < 0:
        raise PackedError(f"packed file {path}: its index points past the end of the file")
    return count, cd_size, cd_offset + shift, shift


def _comment_mismatch(tail: bytes, at: int) -> bool:
    return _EOCD.unpack_from(tail, at)[7] != len(tail) - at - _EOCD.size


def _zip64_fields(extra: bytes, size: int, offset: int) -> tuple[int, int]:
    """Size and local header offset of a member whose central entry defers them to its zip64
    extra field (fields present in the order: size, compressed size, offset)."""
    i = 0
    while i + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, i)
        if tag == 1:
            values = list(struct.unpack_from(f"<{length // 8}Q", extra, i + 4))
            if size == 0xFFFFFFFF:
                size = values.pop(0)
                values.pop(0)  # compressed size: stored members have the same
            if offset == 0xFFFFFFFF:
                offset = values.pop(0)
            return size, offset
        i += 4 + length
    raise ValueError("zip64 sizes without a zip64 extra field")


def read_index(fd: int, file_size: int, path: str) -> tuple[dict[str, tuple], int]:
    """The members of an open packed file: name -> (local header offset, name length in bytes,
    size, CRC-32), and where the data area ends (the directory's offset). Raises PackedError for
    anything but a zip whose members are stored and lie before its directory."""
    start = max(file_size - TAIL, 0)
    tail = os.pread(fd, file_size - start, start)
    if len(tail) < file_size - start:
        raise PackedError(f"packed file {path} changed size while it was read")
    try:
        count, cd_size, cd_offset, shift = _eocd(tail, start, path)
    except PackedError:
        if start == 0:
            raise
        start = max(file_size - (TAIL + 0xFFFF + _EOCD.size + _EOCD64_LOC.size), 0)
        tail = os.pread(fd, file_size - start, start)  # a long archive comment
        count, cd_size, cd_offset, shift = _eocd(tail, start, path)
    if cd_offset >= start:
        cd = tail[cd_offset - start : cd_offset - start + cd_size]
    else:
        cd = os.pread(fd, cd_size, cd_offset)
    if len(cd) != cd_size:
        raise PackedError(f"packed file {path} is truncated (its index is incomplete)")
    members: dict[str, tuple] = {}
    unpack, fixed, local, pos = _CENTRAL.unpack_from, _CENTRAL.size, _LOCAL.size, 0
    try:
        for _ in range(count):
            sig, flags, method, crc, csize, size, n, e, c, offset = unpack(cd, pos)
            if sig != _SIG_CENTRAL:
                raise PackedError(f"packed file {path}: index entry {len(members) + 1} is damaged")
            raw = cd[pos + fixed : pos + fixed + n]
            if method or flags & 1:
                what = "encrypted" if flags & 1 else f"compressed (method {method})"
                raise PackedError(
                    f"packed file {path}: member {raw.decode('utf-8', 'replace')!r} is {what}; "
                    "pack frames stored (tools/pack_frames.py)"
                )
            if size == 0xFFFFFFFF or offset == 0xFFFFFFFF:
                extra = cd[pos + fixed + n : pos + fixed + n + e]
                size, offset = _zip64_fields(extra, size, offset)
            elif csize != size:
                raise PackedError(f"packed file {path}: member sizes disagree")
            offset += shift
            if offset + local + n + size > cd_offset:
                raise PackedError(
                    f"packed file {path}: member {raw.decode('utf-8', 'replace')!r} runs into "
                    "the index (truncated or damaged)"
                )
            if raw.isascii():  # the usual case; cp437 and UTF-8 names agree with ASCII
                name = raw.decode("ascii")
            else:
                name = raw.decode("utf-8" if flags & 0x800 else "cp437")
            members[name] = (offset, n, size, crc)
            pos += fixed + n + e + c
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise PackedError(f"packed file {path}: its index is damaged ({exc})") from None
    return members, cd_offset


class PackedFile:
    """One open packed file: ``names``, ``read(name)``, ``check()``; a context manager."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            st = os.fstat(self._fd)
            self.identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            self.members, self.data_end = read_index(self._fd, st.st_size, path)
        except BaseException:
            os.close(self._fd)
            raise

    @property
    def names(self) -> list[str]:
        """Member names in archive order."""
        return list(self.members)

    def read(self, name: str) -> bytes:
        """The bytes of member ``name``: one ``pread`` of its local header and data, checked
        against the index (FileNotFoundError: no such member; DamagedMember: damaged)."""
        entry = self.members.get(name)
        if entry is None:
            raise FileNotFoundError(2, "no such member", f"{self.path}:{name}")
        offset, n, size, crc = entry
        buf = os.pread(self._fd, _LOCAL.size + n + size + SLACK, offset)
        if len(buf) < _LOCAL.size or buf[:4] != b"PK\x03\x04":
            raise DamagedMember(f"member {name} of {self.path}: its local header is damaged")
        local_n, local_e = struct.unpack_from("<HH", buf, 26)
        start = _LOCAL.size + local_n + local_e
        if start + size > len(buf):  # a local extra field longer than SLACK
            buf = os.pread(self._fd, start + size, offset)
        data = buf[start : start + size]
        if len(data) != size:
            raise DamagedMember(f"member {name} of {self.path} is truncated")
        if zlib.crc32(data) != crc:
            raise DamagedMember(f"member {name} of {self.path} is damaged (CRC mismatch)")
        return data

    def layout_problems(self) -> list[str]:
        """Inconsistencies of the archive's structure, one line each (empty: consistent): local
        headers that disagree with the index, members that overlap. Reads the local headers,
        not the data."""
        problems, end = [], 0
        for name, (offset, n, size, _) in sorted(self.members.items(), key=lambda m: m[1][0]):
            if offset < end:
                problems.append(f"member {name} overlaps the member before it")
            head = os.pread(self._fd, _LOCAL.size + n, offset)
            if len(head) < _LOCAL.size + n or head[:4] != b"PK\x03\x04":
                problems.append(f"member {name}: its local header is damaged")
            else:
                _, _, flags, method, _, _, _, _, _, local_n, local_e = _LOCAL.unpack_from(head)
                raw = head[_LOCAL.size :]
                if local_n != n or raw.decode("utf-8" if flags & 0x800 else "cp437") != name:
                    problems.append(f"member {name}: the local header names another file")
                elif method != 0:
                    problems.append(f"member {name}: compressed in its local header")
                n += local_e
            end = offset + _LOCAL.size + n + size
        return problems

    def check(self) -> list[str]:
        """``layout_problems`` and every member whose bytes fail their CRC, one line each."""
        problems = self.layout_problems()
        for name in self.members:
            try:
                self.read(name)
            except OSError as exc:
                if f"member {name}: its local header is damaged" not in problems:
                    problems.append(str(exc))
        return problems

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> PackedFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------------ open handles
class _Handles:
    """The packed files open in this process, least recently used first."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.files: OrderedDict[str, PackedFile] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, path: str) -> PackedFile:
        st = os.stat(path)
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self.lock:
            pf = self.files.get(path)
            if pf is not None and pf.identity == identity:
                self.files.move_to_end(path)
                return pf
            if pf is not None:  # replaced on disk since it was opened
                del self.files[path]
                pf.close()
            pf = PackedFile(path)
            self.files[path] = pf
            while len(self.files) > HANDLES:
                self.files.popitem(last=False)[1].close()
            return pf


_handles = _Handles()


def _current() -> _Handles:
    global _handles
    if _handles.pid != os.getpid():  # a forked child: the parent's descriptors are not ours
        for pf in _handles.files.values():
            pf.close()  # this process's copies; the parent keeps its own
        _handles = _Handles()
    return _handles


def forget_handles() -> None:
    """Start a new set of open files (a read timed out: its thread may still hold the old one)."""
    global _handles
    _handles = _Handles()


def close_handles() -> None:
    """Close every packed file this process holds open (the next read opens it again)."""
    handles = _current()
    with handles.lock:
        while handles.files:
            handles.files.popitem()[1].close()


def open_handles() -> int:
    """Packed files currently open in this process."""
    return len(_current().files)


def read_members(path: str, names: Iterable[str]) -> dict[str, bytes | OSError]:
    """The bytes of each member of ``path`` in ``names``, or the error reading it gave (missing:
    FileNotFoundError, damaged: DamagedMember), through this process's open files. Raises
    PackedError (and OSError) when the file itself cannot be opened or indexed."""
    pf = _current().get(path)
    out: dict[str, bytes | OSError] = {}
    for name in names:
        try:
            out[name] = pf.read(name)
        except OSError as exc:
            out[name] = exc
    return out


def member_names(path: str) -> list[str]:
    """Member names of a packed file, in archive order (through this process's open files)."""
    return _current().get(path).names


# ------------------------------------------------------------------------------------ writing
def partial_name(final: str) -> str:
    """Prefix of the temporary files of ``final``: ``.<name>.partial-<host>-<pid>-``."""
    folder, name = os.path.split(final)
    return os.path.join(folder, f".{name}{PARTIAL}{socket.gethostname()}-{os.getpid()}-")


def write_packed(final: str, members: Iterable[tuple[str, bytes]]) -> tuple[int, int]:
    """Write ``(name, bytes)`` members as the packed file ``final``, atomically: into a temporary
    file beside it (``partial_name``), whose index is written last; then re-read with
    ``PackedFile`` and compared with what was given (names in order, sizes, CRC-32 of every
    member's bytes, and the archive's consistency); only then renamed to ``final``. A partial or
    failed file never carries the final name. Returns (members, bytes of the file); raises
    ValueError for a name the archive cannot hold and OSError for write or verification errors.
    """
    prefix = partial_name(final)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(prefix), dir=os.path.dirname(prefix))
    os.close(fd)
    expected: list[tuple[str, int, int]] = []
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, data in members:
                if not name or "/" in name or name.startswith("."):
                    raise ValueError(f"frame file name {name!r} cannot be a packed member")
                info = zipfile.ZipInfo(name, _DATE)
                info.external_attr = 0o644 << 16  # a plain file for unzip
                zf.writestr(info, data)
                expected.append((name, len(data), zlib.crc32(data)))
        verify_packed(tmp, expected)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # as open() would create it, not mkstemp's 0600
        size = os.path.getsize(tmp)
        os.replace(tmp, final)
        return len(expected), size
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def verify_packed(path: str, expected: list[tuple[str, int, int]]) -> None:
    """Raise OSError unless ``path`` holds exactly the members ``(name, size, CRC-32)`` in this
    order, consistently indexed, each reading back with its CRC."""
    with PackedFile(path) as pf:
        got = [(name, entry[2], entry[3]) for name, entry in pf.members.items()]
        if got != expected:
            raise OSError(f"verification of {path} failed: its index is not what was written")
        problems = pf.check()
        if problems:
            raise OSError(f"verification of {path} failed: {problems[0]}")
