"""Shared memory regions: files of ``/dev/shm`` (POSIX shared memory on Linux) that a
client creates, mode 0600, and a worker on the same host maps read-only.

Only the same user can attach: the file is created 0600, so the kernel keeps other users out
(root aside), and a worker maps a region only when it is a regular file owned by the worker's
own user with no permission for group or others, checked on the opened file (``fstat``), so
a region swapped for a link or another file between the check and the map is not mapped.
A client of the same user is trusted as far as that user is: it could signal the worker
anyway; a region it shrinks under a worker would fault the worker, so the size is checked
again before each read.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import stat
import uuid
from pathlib import Path

from ..errors import DecodeError

DIR = Path("/dev/shm")
PREFIX = "zs-"
NAME = re.compile(r"zs-[A-Za-z0-9_.-]{1,120}")
ALIGN = 64  # tensors start on cache lines


def new_name() -> str:
    return f"{PREFIX}{uuid.uuid4().hex}"


class Region:
    """A region this process created: ``nbytes`` of ``/dev/shm/<name>``, mapped read-write.

    Args:
        nbytes: its size.
        directory: where it lives (``/dev/shm``; tests may point elsewhere).
    """

    def __init__(self, nbytes: int, directory: Path = DIR) -> None:
        self.name = new_name()
        self.path = directory / self.name
        self.size = nbytes
        flags = os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.path, flags, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask said
            os.ftruncate(fd, nbytes)
            self.map = mmap.mmap(fd, nbytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise
        os.close(fd)
        self.view = memoryview(self.map)

    def unlink(self) -> None:
        """Remove the file; the memory goes once no process maps it."""
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        """Unmap it here (and unlink it)."""
        self.unlink()
        self.view.release()
        with contextlib.suppress(BufferError):  # an array still views it: it goes with that
            self.map.close()


class Attached:
    """A region another process created, mapped read-only here.

    Raises:
        DecodeError: the name is not a region's, there is no such file, or it is not a
            regular file of this process's user that no one else may read.
    """

    def __init__(self, name: str, directory: Path = DIR) -> None:
        if not NAME.fullmatch(name):
            raise DecodeError(
                f"shared memory region {name[:80]!r}: not a zoo_serving region name "
                f"({PREFIX} and 1 to 120 of [A-Za-z0-9_.-])"
            )
        self.name = name
        try:
            self.fd = os.open(directory / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise DecodeError(
                f"shared memory region {name!r} does not exist on this host; a region is "
                "only for clients on the server's host (and goes when its client does)"
            ) from None
        except OSError as exc:
            raise DecodeError(f"shared memory region {name!r} cannot be opened: {exc}") from None
        try:
            info = os.fstat(self.fd)
            check_owner(name, info)
            self.size = info.st_size
            self.map = mmap.mmap(self.fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ)
        except BaseException:
            os.close(self.fd)
            raise
        self.view = memoryview(self.map)

    def slice(self, offset: int, nbytes: int) -> memoryview:
        """``nbytes`` from ``offset``, without a copy.

        Raises:
            DecodeError: they are not within the region (as it is now).
        """
        size = os.fstat(self.fd).st_size  # a region shrunk since would fault the reader
        if offset + nbytes > min(size, self.size):
            raise DecodeError(
                f"shared memory region {self.name!r}: bytes {offset} to {offset + nbytes} are "
                f"past its end ({min(size, self.size)} bytes)"
            )
        return self.view[offset : offset + nbytes]

    def close(self) -> bool:
        """Unmap it; False while arrays still view it (try again later)."""
        try:
            self.view.release()
            self.map.close()
        except BufferError:
            return False
        os.close(self.fd)
        return True


def check_owner(name: str, info: os.stat_result) -> None:
    """A region may be mapped only when it is a regular file of this user, 0600 or stricter.

    Raises:
        DecodeError: naming what is wrong.
    """
    if not stat.S_ISREG(info.st_mode):
        raise DecodeError(f"shared memory region {name!r} is not a regular file")
    if info.st_uid != os.geteuid():
        raise DecodeError(
            f"shared memory region {name!r} is owned by uid {info.st_uid}, not by the "
            f"server's uid {os.geteuid()}: only the server's own user may share memory with it"
        )
    if info.st_mode & 0o077:
        raise DecodeError(
            f"shared memory region {name!r} has mode {stat.S_IMODE(info.st_mode):04o}: other "
            "users may open it; regions must be 0600"
        )
