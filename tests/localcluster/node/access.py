"""Letting a container's OS user reach its volume.

In a real pod the volume is mounted into the container, so the host directories above it
do not matter. Here the process opens the host path itself, so every directory above the
volume must be searchable by the container's user (PostgreSQL runs as `postgres`). A
state directory under a private parent (pytest's `/tmp/pytest-of-root` is mode 0700) is
not. The node then grants that one user search permission (`--x`) on the blocking
directories with a POSIX ACL entry, the narrowest grant there is; where the file system
has no ACLs it falls back to the others' search bit.
"""

from __future__ import annotations

import logging
import os
import pwd
import struct
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

ACL_XATTR = "system.posix_acl_access"
ACL_VERSION = 2
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 1, 2, 4, 8, 16, 32
ACL_UNDEFINED_ID = 0xFFFFFFFF
ACL_EXECUTE = 1
_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")


class AccessDenied(Exception):
    """The user cannot reach the directory, and granting it failed."""


def can_search(user: str, directory: Path) -> bool:
    """True if `user` can reach `directory` (asks the kernel, so ACLs count)."""
    result = subprocess.run(
        ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "test", "-x", str(directory)],
        check=False,
        capture_output=True,
    )
    return result.returncode == 0


def acl_with_search(existing: bytes | None, mode: int, uid: int) -> bytes:
    """An access ACL equal to `existing` (or to `mode`) plus search permission for `uid`."""
    entries: dict[tuple[int, int], int] = {}
    if existing:
        for offset in range(_HEADER.size, len(existing), _ENTRY.size):
            tag, perm, ident = _ENTRY.unpack_from(existing, offset)
            entries[(tag, ident)] = perm
    else:
        entries[(ACL_USER_OBJ, ACL_UNDEFINED_ID)] = (mode >> 6) & 7
        entries[(ACL_GROUP_OBJ, ACL_UNDEFINED_ID)] = (mode >> 3) & 7
        entries[(ACL_OTHER, ACL_UNDEFINED_ID)] = mode & 7
    entries[(ACL_USER, uid)] = entries.get((ACL_USER, uid), 0) | ACL_EXECUTE
    # The mask caps every named entry and the owning group: it must let the grant through,
    # and an existing mask is widened by exactly that.
    mask_key = (ACL_MASK, ACL_UNDEFINED_ID)
    if mask_key in entries:
        entries[mask_key] |= ACL_EXECUTE
    else:
        entries[mask_key] = 0
        for (tag, _), perm in entries.items():
            if tag in (ACL_USER, ACL_GROUP_OBJ, ACL_GROUP):
                entries[mask_key] |= perm
    blob = _HEADER.pack(ACL_VERSION)
    for (tag, ident), perm in sorted(entries.items()):
        blob += _ENTRY.pack(tag, perm, ident)
    return blob


def grant_search(user: str, directory: Path) -> None:
    """Let `user` search `directory`: an ACL entry, or the others' search bit without ACLs."""
    uid = pwd.getpwnam(user).pw_uid
    try:
        try:
            existing: bytes | None = os.getxattr(directory, ACL_XATTR)
        except OSError:
            existing = None
        os.setxattr(directory, ACL_XATTR, acl_with_search(existing, directory.stat().st_mode, uid))
        log.warning("granted user %s search permission on %s (ACL entry u:%s:--x)", user, directory, user)
    except OSError as error:
        os.chmod(directory, directory.stat().st_mode | 0o001)
        log.warning(
            "granted search permission on %s to everyone (chmod o+x; no ACL: %s) so that user %s "
            "reaches its volume",
            directory,
            error,
            user,
        )


def ensure_reachable(user: str, path: Path) -> None:
    """Make every directory above `path` searchable by `user`; AccessDenied if that fails."""
    path = path.resolve()
    if can_search(user, path.parent):
        return
    for ancestor in reversed(path.parents):
        if not can_search(user, ancestor):
            grant_search(user, ancestor)
    if not can_search(user, path.parent):
        raise AccessDenied(f"user {user!r} cannot reach {path}")
