"""Reusing the user's etcd and Kubernetes binaries instead of building them.

No Go build runs here: the binaries are shell scripts that print a version, the cache root is a
temporary directory, and the build step is replaced by one that records what it was asked for.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from localcluster import build

# The versions the pinned modules report, and ones of another minor.
ETCD_OURS = "3.6.2"
KUBE_OURS = "v1.36.0"
ETCD_OTHER = "3.5.21"
KUBE_OTHER = "v1.35.4"

K8S_BINARIES = ("kube-apiserver", "kube-controller-manager", "kubectl")


def fake_binary(directory: Path, name: str, version: str) -> Path:
    """Write an executable ``name`` that answers its version command like the real one."""
    directory.mkdir(parents=True, exist_ok=True)
    if name == "etcd":
        expected_args, output = "--version", f"etcd Version: {version}\\nGit SHA: 0000000"
    elif name == "kubectl":
        expected_args, output = "version --client", f"Client Version: {version}\\nKustomize Version: v5.8.1"
    else:
        expected_args, output = "--version", f"Kubernetes {version}"
    path = directory / name
    path.write_text(
        "#!/bin/sh\n"
        f'[ "$*" = "{expected_args}" ] || {{ echo "unexpected arguments: $*" >&2; exit 2; }}\n'
        f'printf "{output}\\n"\n'
    )
    path.chmod(0o755)
    return path


def fake_all(directory: Path, etcd: str = ETCD_OURS, kube: str = KUBE_OURS) -> None:
    """Write all four providable binaries into ``directory``."""
    fake_binary(directory, "etcd", etcd)
    for name in K8S_BINARIES:
        fake_binary(directory, name, kube)


@pytest.fixture
def path_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty directory that, with a ``go`` that refuses to run, is all of PATH."""
    tools = tmp_path / "tools"
    tools.mkdir()
    go = tools / "go"
    go.write_text('#!/bin/sh\necho "no Go build in these tests" >&2\nexit 99\n')
    go.chmod(0o755)
    on_path = tmp_path / "path"
    on_path.mkdir()
    monkeypatch.setenv("PATH", f"{on_path}{os.pathsep}{tools}")
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    monkeypatch.setenv("SNAPGROUP_CACHE", str(tmp_path / "cache"))
    return on_path


@pytest.fixture
def assets_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path_dir: Path) -> Path:
    """``$KUBEBUILDER_ASSETS``, empty to start with."""
    assets = tmp_path / "kubebuilder" / "bin"
    assets.mkdir(parents=True)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))
    return assets


@pytest.fixture
def build_requests(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Replace the Go build: record the names asked for and write scripts under those names."""
    requests: list[list[str]] = []

    def fake_build_into(staging: Path, names: list[str]) -> None:
        requests.append(list(names))
        for name in names:
            script = staging / name
            script.write_text(f"#!/bin/sh\necho built {name}\n")
            script.chmod(0o755)
        (staging / build.SNAPSHOT_CRDS_DIR).mkdir(parents=True)

    monkeypatch.setattr(build, "_build_into", fake_build_into)
    return requests


# --- finding the user's binaries ---------------------------------------------------------------


def test_versions_follow_the_pinned_modules() -> None:
    """The wanted minors come from go.mod: the fakes above must stay in step with them."""
    assert build.kubernetes_version().startswith("v1.36.")
    assert build.etcd_version().startswith("v3.6.")


def test_assets_with_our_minor_are_chosen(assets_dir: Path) -> None:
    fake_binary(assets_dir, "etcd", ETCD_OURS)
    fake_binary(assets_dir, "kube-apiserver", KUBE_OURS)
    fake_binary(assets_dir, "kubectl", "v1.36.9")

    found = build.find_provided_binaries()

    assert sorted(found) == ["etcd", "kube-apiserver", "kubectl"]
    assert found["etcd"].path == assets_dir / "etcd"
    assert found["etcd"].version == ETCD_OURS
    assert found["kubectl"].version == "v1.36.9"
    assert {binary.origin for binary in found.values()} == {"$KUBEBUILDER_ASSETS"}


def test_other_minor_is_ignored_with_a_message(
    assets_dir: Path, path_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_binary(assets_dir, "etcd", ETCD_OTHER)
    fake_binary(assets_dir, "kube-apiserver", KUBE_OTHER)
    fake_binary(path_dir, "kubectl", "v1.32.4-dispatcher")

    assert build.find_provided_binaries() == {}

    err = capsys.readouterr().err
    assert f"not reusing {assets_dir / 'etcd'} (from $KUBEBUILDER_ASSETS)" in err
    assert f"it reports {ETCD_OTHER}, the local cluster needs etcd 3.6.x" in err
    assert f"it reports {KUBE_OTHER}, the local cluster needs Kubernetes 1.36.x" in err
    assert f"not reusing {path_dir / 'kubectl'} (from PATH)" in err
    assert "v1.32.4-dispatcher" in err


def test_binary_without_a_version_is_ignored(path_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = path_dir / "kube-apiserver"
    broken.write_text("#!/bin/sh\necho 'segmentation fault' >&2\nexit 139\n")
    broken.chmod(0o755)

    assert build.find_provided_binaries() == {}
    assert "exited 139 without a version" in capsys.readouterr().err


def test_binaries_on_path_are_chosen(path_dir: Path) -> None:
    fake_binary(path_dir, "kube-controller-manager", KUBE_OURS)
    fake_binary(path_dir, "kubectl", KUBE_OURS)

    found = build.find_provided_binaries()

    assert sorted(found) == ["kube-controller-manager", "kubectl"]
    assert found["kubectl"].path == path_dir / "kubectl"
    assert found["kubectl"].origin == "PATH"


def test_assets_win_over_path(assets_dir: Path, path_dir: Path) -> None:
    fake_binary(assets_dir, "kubectl", KUBE_OURS)
    fake_binary(path_dir, "kubectl", "v1.36.5")

    found = build.find_provided_binaries()

    assert found["kubectl"].path == assets_dir / "kubectl"
    assert found["kubectl"].origin == "$KUBEBUILDER_ASSETS"


def test_path_is_the_fallback_when_assets_have_another_minor(assets_dir: Path, path_dir: Path) -> None:
    fake_binary(assets_dir, "etcd", ETCD_OTHER)
    fake_binary(path_dir, "etcd", ETCD_OURS)

    found = build.find_provided_binaries()

    assert found["etcd"].path == path_dir / "etcd"
    assert found["etcd"].origin == "PATH"


def test_own_cached_builds_on_path_are_not_user_binaries(
    path_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours = build.cache_root() / "bin" / "somekey"
    fake_all(ours)
    monkeypatch.setenv("PATH", f"{ours}{os.pathsep}{os.environ['PATH']}")

    assert build.find_provided_binaries() == {}


# --- what ensure_binaries builds and returns -----------------------------------------------------


def test_nothing_provided_builds_everything_into_the_cache(
    path_dir: Path, build_requests: list[list[str]]
) -> None:
    bin_dir = build.ensure_binaries()

    assert build_requests == [list(build.expected_binaries())]
    assert bin_dir == build.cache_root() / "bin" / build.cache_key()
    assert all(not (bin_dir / name).is_symlink() for name in build.expected_binaries())


def test_all_four_provided_builds_none_of_them(
    assets_dir: Path,
    path_dir: Path,
    build_requests: list[list[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_binary(assets_dir, "etcd", ETCD_OURS)
    fake_binary(assets_dir, "kube-apiserver", KUBE_OURS)
    fake_binary(assets_dir, "kubectl", KUBE_OURS)
    fake_binary(path_dir, "kube-controller-manager", KUBE_OURS)

    bin_dir = build.ensure_binaries()

    rest = [name for name in build.expected_binaries() if name not in build.PROVIDABLE_BINARIES]
    assert build_requests == [rest]
    assert "hostpath-csi" in rest
    for name in ("etcd", "kube-apiserver", "kubectl"):
        assert (bin_dir / name).resolve() == (assets_dir / name).resolve()
    assert (bin_dir / "kube-controller-manager").resolve() == (path_dir / "kube-controller-manager").resolve()
    for name in build.expected_binaries():
        assert os.access(bin_dir / name, os.X_OK), name
    assert (bin_dir / build.SNAPSHOT_CRDS_DIR).is_dir()
    version = subprocess.run(
        [str(bin_dir / "kube-apiserver"), "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == f"Kubernetes {KUBE_OURS}"
    err = capsys.readouterr().err
    assert f"reusing etcd {ETCD_OURS} from $KUBEBUILDER_ASSETS: {assets_dir / 'etcd'}" in err
    assert f"reusing kube-controller-manager {KUBE_OURS} from PATH: {path_dir}" in err

    # The same choice again: neither a build nor a new directory.
    assert build.ensure_binaries() == bin_dir
    assert len(build_requests) == 1


def test_some_provided_builds_the_rest(assets_dir: Path, build_requests: list[list[str]]) -> None:
    fake_binary(assets_dir, "etcd", ETCD_OURS)
    fake_binary(assets_dir, "kube-apiserver", KUBE_OTHER)  # ignored: built instead

    bin_dir = build.ensure_binaries()

    assert build_requests == [[name for name in build.expected_binaries() if name != "etcd"]]
    assert (bin_dir / "etcd").resolve() == (assets_dir / "etcd").resolve()
    built = build.cache_root() / "bin" / f"{build.cache_key()}-without-etcd"
    assert (bin_dir / "kube-apiserver").resolve() == (built / "kube-apiserver").resolve()


def test_a_cached_full_build_is_reused_alongside_provided_binaries(
    assets_dir: Path, path_dir: Path, build_requests: list[list[str]]
) -> None:
    full = build.ensure_binaries()  # nothing provided yet
    fake_all(assets_dir)

    bin_dir = build.ensure_binaries()

    assert len(build_requests) == 1  # only the first call built
    assert bin_dir != full
    assert (bin_dir / "hostpath-csi").resolve() == (full / "hostpath-csi").resolve()
    assert (bin_dir / "etcd").resolve() == (assets_dir / "etcd").resolve()


def test_a_removed_binary_is_noticed(assets_dir: Path, build_requests: list[list[str]]) -> None:
    fake_all(assets_dir)
    first = build.ensure_binaries()
    (assets_dir / "etcd").unlink()

    second = build.ensure_binaries()

    # etcd is built now; the directory linking to the removed one is gone.
    rest = [name for name in build.expected_binaries() if name not in build.PROVIDABLE_BINARIES]
    assert build_requests == [rest, ["etcd", *rest]]
    assert (second / "etcd").resolve().is_relative_to(build.cache_root() / "bin")
    assert not first.exists()
