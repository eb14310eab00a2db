"""A volume under a private directory (like pytest's 0700 tmp dir) is made reachable for the
container's user, and only for that user where ACLs exist."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster.node.access import (
    ACL_EXECUTE,
    ACL_GROUP_OBJ,
    ACL_MASK,
    ACL_OTHER,
    ACL_USER,
    ACL_USER_OBJ,
    ACL_XATTR,
    acl_with_search,
    can_search,
    ensure_reachable,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="granting access to another user needs root")


def _entries(blob: bytes) -> dict[tuple[int, int], int]:
    entry = struct.Struct("<HHI")
    return {
        (tag, ident): perm
        for tag, perm, ident in (entry.unpack_from(blob, o) for o in range(4, len(blob), entry.size))
    }


def test_acl_from_mode_adds_one_named_user_and_a_mask() -> None:
    entries = _entries(acl_with_search(None, 0o700, uid=101))
    undefined = 0xFFFFFFFF
    assert entries == {
        (ACL_USER_OBJ, undefined): 7,
        (ACL_USER, 101): ACL_EXECUTE,
        (ACL_GROUP_OBJ, undefined): 0,
        (ACL_MASK, undefined): ACL_EXECUTE,
        (ACL_OTHER, undefined): 0,
    }


def test_existing_mask_is_only_widened_by_search() -> None:
    existing = acl_with_search(None, 0o750, uid=5)
    entries = _entries(acl_with_search(existing, 0o750, uid=101))
    assert entries[(ACL_USER, 5)] == ACL_EXECUTE
    assert entries[(ACL_USER, 101)] == ACL_EXECUTE
    assert entries[(ACL_MASK, 0xFFFFFFFF)] == 5  # r-x from the group, unchanged


@pytest.fixture
def private_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="sgnode-private-"))  # mode 0700, like pytest's
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_volume_under_a_private_directory_becomes_reachable(private_dir: Path) -> None:
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres user")
    volume = private_dir / "state" / "csi" / "vol-1"
    volume.mkdir(parents=True)
    (private_dir / "state").chmod(0o700)
    assert not can_search("postgres", volume.parent)

    ensure_reachable("postgres", volume)

    assert can_search("postgres", volume.parent)
    for directory in (private_dir, private_dir / "state"):
        mode = directory.stat().st_mode
        # Others gained nothing where the grant is an ACL entry for one user.
        if _has_acl(directory):
            assert not mode & stat.S_IXOTH, oct(mode)
        else:
            assert mode & stat.S_IXOTH


def _has_acl(directory: Path) -> bool:
    try:
        os.getxattr(directory, ACL_XATTR)
    except OSError:
        return False
    return True
