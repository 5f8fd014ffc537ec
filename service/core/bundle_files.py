"""Reading a bundle's files the way they are verified: once, from inside the bundle directory, and what is
served is exactly what was hashed.

- The directory is opened once and every file is opened relative to it, each path component without
  following symbolic links: a bundle's files are regular files inside it, and a link (to anywhere) is
  refused. `within` confines the directory itself (the reload endpoint's `bundle_root`), checked on the
  directory actually opened, so a path swapped after it was checked cannot lead out.
- The manifest and tokenizer.json are read once into memory, within size caps, and hashed there: the
  tokenizer the service builds is made from those very bytes.
- With `pin`, model.onnx is kept in memory as hashed (ONNX Runtime loads it from there), and each
  external-data file stays open: it is hashed through that descriptor and handed to ONNX Runtime as a
  read-only mapping of the same file, so a file renamed or replaced after hashing is never read. A change
  to the file's own contents while it loads shows in its change time and size (`changed`), and the load
  is then refused.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

MAX_MANIFEST_BYTES = 8 << 20  # bundle.json: input spec, chat template, provenance, golden set
MAX_TOKENIZER_BYTES = 128 << 20  # tokenizer.json: the largest vocabularies (Gemma's) are about 35 MB
_CHUNK = 1 << 20


class UnsafeFile(Exception):
    """A file that is not a regular file inside the bundle (a link, a directory, a path leading out)."""


def sha256_bytes(data: bytes | memoryview | mmap.mmap) -> str:
    """The sha256 of bytes already in memory, as the manifest records it (the one hash step of a load)."""
    return hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> str:
    """The first 12 hex digits of a data file's sha256: how a bundle names the data it was measured on."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def sha256_fd(fd: int) -> str:
    """The sha256 of an open file, read from its start through the descriptor."""
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, _CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def _identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class BundleDirectory:
    """An opened bundle directory; files are opened relative to it, never through a link."""

    def __init__(self, path: Path, within: Path | None = None):
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        if within is not None and not self.real_path().is_relative_to(Path(within).resolve()):
            os.close(self.fd)
            raise UnsafeFile("the bundle directory is not inside bundle_root")

    def real_path(self) -> Path:
        """Where the opened directory really is: its descriptor's path on Linux (not the name it was opened
        by, which may have changed since), else the name resolved."""
        proc = Path(f"/proc/self/fd/{self.fd}")
        return Path(os.readlink(proc)) if proc.exists() else self.path.resolve()

    def open(self, name: str) -> int:
        """A descriptor of the regular file `name` (a relative path inside the bundle)."""
        parts = PurePosixPath(name).parts
        if not parts or PurePosixPath(name).is_absolute() or ".." in parts:
            raise UnsafeFile(f"{name!r} is not a path inside the bundle")
        opened: list[int] = []
        parent = self.fd
        try:
            for part in parts[:-1]:
                parent = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
                opened.append(parent)
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        except OSError as e:
            if e.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
                raise UnsafeFile(f"{name} is a symbolic link; a bundle's files must be regular files inside it") from None
            raise
        finally:
            for fd_ in opened:
                os.close(fd_)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UnsafeFile(f"{name} is not a regular file")
        return fd

    def read(self, name: str, limit: int | None, what: str) -> bytes:
        """The whole file, refused past `limit` bytes (read through one descriptor)."""
        fd = self.open(name)
        try:
            size = os.fstat(fd).st_size
            if limit is not None and size > limit:
                raise UnsafeFile(f"{name} has {size} bytes; {what} may have at most {limit}")
            chunks, total = [], 0
            while chunk := os.read(fd, _CHUNK):
                total += len(chunk)
                if limit is not None and total > limit:  # grew while being read
                    raise UnsafeFile(f"{name} has more than {limit} bytes; {what} may have at most {limit}")
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def close(self) -> None:
        os.close(self.fd)


@dataclass(eq=False)
class PinnedModel:
    """model.onnx as hashed, and its external-data files held open and mapped, for ONNX Runtime to load
    from; `release` once the session is made."""

    onnx: bytes
    external: dict[str, Any] = field(default_factory=dict)  # location -> read-only mmap of the pinned file
    _fds: dict[str, int] = field(default_factory=dict)
    _identities: dict[str, tuple] = field(default_factory=dict)

    def pin(self, name: str, fd: int) -> None:
        """Keep `fd` (the external-data file `name`, hashed through it) open and mapped."""
        self._fds[name] = fd
        self._identities[name] = _identity(os.fstat(fd))
        size = self._identities[name][2]
        self.external[name] = mmap.mmap(fd, size, prot=mmap.PROT_READ) if size else b""

    def changed(self) -> str | None:
        """The first pinned file whose contents changed since it was opened (size or change time), if any."""
        for name, fd in self._fds.items():
            if _identity(os.fstat(fd)) != self._identities[name]:
                return name
        return None

    def release(self) -> None:
        for mapping in self.external.values():
            if isinstance(mapping, mmap.mmap):
                mapping.close()
        for fd in self._fds.values():
            os.close(fd)
        self.external, self._fds, self.onnx = {}, {}, b""
