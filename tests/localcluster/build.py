"""Build the local cluster's binaries from the Go modules under ``tests/localcluster/go``.

Two modules are built:

- ``controlplane``: kube-apiserver, kube-controller-manager and kubectl (``k8s.io/kubernetes``),
  etcd, the CSI snapshot-controller, csi-snapshotter and csi-provisioner sidecars, and
  ``cmd/hostpath-csi`` (the project's stand-in for csi-driver-host-path);
- ``services`` (when present): FerretDB (the MongoDB stand-in) and ``cmd/s3server``.

Each module's ``tool`` directives and every ``./cmd/<name>`` package are built into one directory,
cached under ``${SNAPGROUP_CACHE:-~/.cache/snapgroup}/bin/<key>``, where the key hashes the
modules' go.mod, go.sum and Go sources together with the build flags. A build goes to a temporary
directory that is renamed into place when complete, under a file lock, so concurrent callers never
see a half-built directory and never build twice.

Binaries the user already has are reused instead of built: etcd, kube-apiserver,
kube-controller-manager and kubectl from ``$KUBEBUILDER_ASSETS`` (the directory envtest uses), else
from PATH, each only when it reports the same minor version as the pinned modules. The rest is
built (a build directory then holds only what was missing) and :func:`ensure_binaries` returns a
small directory of symlinks to both, so callers still find every executable in one place.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

GO_ROOT = Path(__file__).resolve().parent / "go"
CONTROLPLANE_MODULE = GO_ROOT / "controlplane"
SERVICES_MODULE = GO_ROOT / "services"

CONTROLPLANE_BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kubectl",
    "snapshot-controller",
    "csi-snapshotter",
    "csi-provisioner",
    "hostpath-csi",
)
SERVICES_BINARIES = ("ferretdb", "s3server")

# The binaries a user may already have: envtest's assets hold etcd, kube-apiserver and kubectl;
# a full Kubernetes install has kube-controller-manager too.
PROVIDABLE_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")

# How each providable binary reports its version, and how to read that report.
_VERSION_ARGS = {
    "etcd": ("--version",),
    "kube-apiserver": ("--version",),
    "kube-controller-manager": ("--version",),
    # --client: no server is asked, so no kubeconfig is needed.
    "kubectl": ("version", "--client"),
}
_KUBERNETES_VERSION_RE = re.compile(r"\b(v(\d+)\.(\d+)\.\d+[\w.+-]*)")
_ETCD_VERSION_RE = re.compile(r"etcd Version:\s*(v?(\d+)\.(\d+)\.\d+[\w.+-]*)")
_VERSION_TIMEOUT_SECONDS = 15

# Directory, under the cache root, of the symlink directories combining built and reused binaries.
_SELECTIONS_DIR = "bin-selections"

# Go names a binary after the package's last path element; etcd's main package is the module
# root go.etcd.io/etcd/server/v3, which Go names "server".
_RENAMES = {"server": "etcd"}

# Link flags for single programs. FerretDB, built as a dependency, finds itself the main module
# in its build info and then requires build/version/version.txt, which its release tooling
# writes and its module zip lacks: the binary would panic at start ("Invalid
# build/version/version.txt file content"). Without module build info it skips that check and
# reports its version as "unknown".
_EXTRA_LDFLAGS = {"github.com/FerretDB/FerretDB/cmd/ferretdb": "-X runtime.modinfo="}

# Where build() puts the VolumeSnapshot CRDs of the snapshot client module, so that starting a
# cluster needs no Go toolchain and no module cache.
SNAPSHOT_CRDS_DIR = "manifests/volumesnapshot-crds"
_SNAPSHOT_CLIENT_MODULE = "github.com/kubernetes-csi/external-snapshotter/client/v8"
_SNAPSHOT_CRD_FILES = (
    "snapshot.storage.k8s.io_volumesnapshotclasses.yaml",
    "snapshot.storage.k8s.io_volumesnapshotcontents.yaml",
    "snapshot.storage.k8s.io_volumesnapshots.yaml",
)

# Part of the cache key: a change here must produce a new directory.
_RECIPE_VERSION = "3"

# Keep this many superseded builds besides the current one (each is several hundred MB).
_KEEP_OLD_BUILDS = 1


class GoToolchainMissingError(RuntimeError):
    """No ``go`` executable on PATH, and the binaries are not cached yet."""


class BuildError(RuntimeError):
    """``go build`` failed; the message carries the end of its output."""


def cache_root() -> Path:
    """Return the cache root: ``$SNAPGROUP_CACHE`` or ``~/.cache/snapgroup``."""
    configured = os.environ.get("SNAPGROUP_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "snapgroup"


def modules() -> list[Path]:
    """Return the Go modules to build: the control plane, and the services once they exist."""
    found = [CONTROLPLANE_MODULE]
    if (SERVICES_MODULE / "go.mod").is_file():
        found.append(SERVICES_MODULE)
    return found


def expected_binaries() -> tuple[str, ...]:
    """Return the executable names a complete build directory holds."""
    names: tuple[str, ...] = CONTROLPLANE_BINARIES
    if SERVICES_MODULE in modules():
        names += SERVICES_BINARIES
    return names


def kubernetes_version(module: Path = CONTROLPLANE_MODULE) -> str:
    """Return the ``k8s.io/kubernetes`` version the control-plane module requires (``v1.36.3``)."""
    text = (module / "go.mod").read_text()
    match = re.search(r"^\s*k8s\.io/kubernetes\s+(v\d+\.\d+\.\d+)\b", text, re.MULTILINE)
    if not match:
        raise BuildError(f"{module / 'go.mod'} does not require k8s.io/kubernetes")
    return match.group(1)


def etcd_version(module: Path = CONTROLPLANE_MODULE) -> str:
    """Return the etcd version the control-plane module builds (``v3.6.16``)."""
    text = (module / "go.mod").read_text()
    match = re.search(r"^\s*go\.etcd\.io/etcd/server/v3\s+(v\d+\.\d+\.\d+)\b", text, re.MULTILINE)
    if not match:
        raise BuildError(f"{module / 'go.mod'} does not require go.etcd.io/etcd/server/v3")
    return match.group(1)


@dataclass(frozen=True)
class ProvidedBinary:
    """A binary the user already has, reused instead of built."""

    name: str
    path: Path
    version: str
    origin: str  # "$KUBEBUILDER_ASSETS" or "PATH"


def find_provided_binaries() -> dict[str, ProvidedBinary]:
    """Find the user's etcd, kube-apiserver, kube-controller-manager and kubectl to reuse.

    For each name, ``$KUBEBUILDER_ASSETS/<name>`` is tried first, then PATH. A candidate is
    accepted only when it reports the same major.minor version as the pinned modules
    (:func:`kubernetes_version`, :func:`etcd_version`); a rejected one is reported on stderr and
    the next candidate is tried. Binaries inside the cache root are the project's own builds and
    are not candidates.
    """
    k8s = kubernetes_version()
    wanted = {"etcd": etcd_version(), "kube-apiserver": k8s, "kube-controller-manager": k8s, "kubectl": k8s}
    found: dict[str, ProvidedBinary] = {}
    for name in PROVIDABLE_BINARIES:
        for path, origin in _candidates(name):
            checked = _check_version(name, path, origin, wanted[name])
            if isinstance(checked, ProvidedBinary):
                found[name] = checked
                break
            _progress(f"not reusing {path} (from {origin}): {checked}")
    return found


def _candidates(name: str) -> Iterator[tuple[Path, str]]:
    own_builds = cache_root().resolve()
    seen: set[Path] = set()
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    listed = [(str(Path(assets) / name), "$KUBEBUILDER_ASSETS")] if assets else []
    on_path = shutil.which(name)
    if on_path:
        listed.append((on_path, "PATH"))
    for location, origin in listed:
        path = Path(location).absolute()
        if not (path.is_file() and os.access(path, os.X_OK)):
            continue
        real = path.resolve()
        if real in seen or real.is_relative_to(own_builds):
            continue
        seen.add(real)
        yield path, origin


def _check_version(name: str, path: Path, origin: str, wanted: str) -> ProvidedBinary | str:
    """Run ``path``'s version command; return the binary when its minor matches, else why not."""
    major, minor = wanted.lstrip("v").split(".")[:2]
    need = f"{'etcd' if name == 'etcd' else 'Kubernetes'} {major}.{minor}.x"
    try:
        proc = subprocess.run(
            [str(path), *_VERSION_ARGS[name]],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_VERSION_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"its version could not be read ({error}); the local cluster needs {need}"
    pattern = _ETCD_VERSION_RE if name == "etcd" else _KUBERNETES_VERSION_RE
    match = pattern.search(proc.stdout)
    if proc.returncode != 0 or not match:
        return (
            f"`{path.name} {' '.join(_VERSION_ARGS[name])}` exited {proc.returncode} without a"
            f" version; the local cluster needs {need}"
        )
    if (match.group(2), match.group(3)) != (major, minor):
        return f"it reports {match.group(1)}, the local cluster needs {need}"
    return ProvidedBinary(name=name, path=path, version=match.group(1), origin=origin)


def _ldflags(k8s_version: str) -> str:
    major, minor = k8s_version.lstrip("v").split(".")[:2]
    # Without these, the binaries report v0.0.0-master, and kubectl warns about version skew.
    prefix = "k8s.io/component-base/version"
    return (
        f"-s -w -X {prefix}.gitVersion={k8s_version} -X {prefix}.gitMajor={major}"
        f" -X {prefix}.gitMinor={minor} -X {prefix}.gitTreeState=clean"
    )


def _build_flags(k8s_version: str, extra_ldflags: str = "") -> list[str]:
    return ["-trimpath", "-ldflags", f"{_ldflags(k8s_version)} {extra_ldflags}".strip()]


def cache_key() -> str:
    """Hash the modules' go.mod, go.sum and Go sources (not tests) with the build flags."""
    digest = hashlib.sha256()
    digest.update(f"recipe {_RECIPE_VERSION}\n".encode())
    digest.update(" ".join(_build_flags(kubernetes_version())).encode() + b"\n")
    digest.update(json.dumps(_EXTRA_LDFLAGS, sort_keys=True).encode() + b"\n")
    for module in modules():
        sources = [p for p in module.rglob("*.go") if not p.name.endswith("_test.go")]
        files = [module / "go.mod", module / "go.sum", *sources]
        for path in sorted(p for p in files if p.is_file()):
            digest.update(str(path.relative_to(GO_ROOT)).encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:20]


def _holds(directory: Path, names: Iterable[str]) -> bool:
    return (
        all(os.access(directory / name, os.X_OK) for name in names)
        and (directory / SNAPSHOT_CRDS_DIR).is_dir()
    )


def ensure_binaries() -> Path:
    """Return a directory holding every local-cluster executable, building it if needed.

    Binaries found by :func:`find_provided_binaries` are reused, and only the others are built;
    the returned directory then holds symlinks to both. Cached builds are reused without running
    Go. Raises :class:`GoToolchainMissingError` when a build is needed and ``go`` is not on PATH,
    :class:`BuildError` when the build fails.
    """
    provided = find_provided_binaries()
    for binary in provided.values():
        _progress(f"reusing {binary.name} {binary.version} from {binary.origin}: {binary.path}")
    built = _ensure_built([name for name in expected_binaries() if name not in provided])
    if not provided:
        return built
    return _selection(built, provided)


def _ensure_built(names: list[str]) -> Path:
    """Return a cached build directory holding ``names``, building only those if none does."""
    bin_root = cache_root() / "bin"
    key = cache_key()
    omitted = [name for name in expected_binaries() if name not in names]
    # A full build keeps the plain key, so the common case's directory name does not change.
    target = bin_root / (f"{key}-without-{'+'.join(omitted)}" if omitted else key)
    if cached := _cached_build(bin_root, key, names):
        return cached
    if shutil.which("go") is None:
        raise GoToolchainMissingError(
            "the local cluster is built from Go modules, and no `go` executable is on PATH"
        )
    bin_root.mkdir(parents=True, exist_ok=True)
    with _exclusive(bin_root / ".build.lock"):
        if cached := _cached_build(bin_root, key, names):  # built by another process meanwhile
            return cached
        staging = bin_root / f".building-{target.name}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            _build_into(staging, names)
            if target.exists():  # an incomplete leftover
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _prune(bin_root, keep=target)
    return target


def _cached_build(bin_root: Path, key: str, names: list[str]) -> Path | None:
    """Return a build of the current sources that holds ``names``: the full one first."""
    for directory in [bin_root / key, *sorted(bin_root.glob(f"{key}-without-*"))]:
        if _holds(directory, names):
            return directory
    return None


def _selection(built: Path, provided: dict[str, ProvidedBinary]) -> Path:
    """Return a directory of symlinks: the provided binaries, and the rest from ``built``.

    Named after what it links to, so the same choice finds the same directory again; one whose
    targets are gone (a pruned build, a removed binary) is deleted when a new one is made.
    """
    sources = {name: built / name for name in expected_binaries()}
    sources.update({name: binary.path for name, binary in provided.items()})
    crds_top = Path(SNAPSHOT_CRDS_DIR).parts[0]
    sources[crds_top] = built / crds_top
    digest = hashlib.sha256(json.dumps({k: str(v) for k, v in sources.items()}, sort_keys=True).encode())
    root = cache_root() / _SELECTIONS_DIR
    target = root / digest.hexdigest()[:20]
    if _links_intact(target, sources):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive(root / ".lock"):
        if _links_intact(target, sources):
            return target
        _prune_selections(root)
        staging = root / f".making-{target.name}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            for name, source in sources.items():
                (staging / name).symlink_to(source)
            origins = {name: f"{b.origin}: {b.path} ({b.version})" for name, b in provided.items()}
            (staging / "SOURCES.json").write_text(
                json.dumps({"built": str(built), "reused": origins}, indent=2) + "\n"
            )
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _links_intact(directory: Path, sources: dict[str, Path]) -> bool:
    return all(
        (directory / name).is_symlink()
        and os.readlink(directory / name) == str(source)
        and (directory / name).exists()
        for name, source in sources.items()
    )


def _prune_selections(root: Path) -> None:
    """Remove symlink directories with a dangling link: what they pointed at is gone."""
    for directory in root.iterdir():
        if directory.name.startswith(".") or not directory.is_dir():
            continue
        if any(link.is_symlink() and not link.exists() for link in directory.iterdir()):
            shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with lock_path.open("w") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _progress("another process is building the local cluster binaries; waiting for it")
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _build_into(staging: Path, names: list[str]) -> None:
    """Build the programs whose executables are ``names`` (the others are reused) into staging."""
    k8s_version = kubernetes_version()
    started = time.monotonic()
    info: dict[str, object] = {
        "kubernetes": k8s_version,
        "modules": {},
        "omitted": [name for name in expected_binaries() if name not in names],
    }
    for module in modules():
        packages = [p for p in _main_packages(module) if _binary_name(p) in names]
        if not packages:
            continue
        module_started = time.monotonic()
        _progress(
            f"building {module.name} module ({len(packages)} programs) into {staging.parent};"
            " a cold build takes several minutes on 2 cores, later builds reuse Go's build cache"
        )
        # One `go build` for all programs that share flags: it compiles shared packages once.
        groups: dict[str, list[str]] = {}
        for package in packages:
            groups.setdefault(_EXTRA_LDFLAGS.get(package, ""), []).append(package)
        for extra, group in groups.items():
            flags = _build_flags(k8s_version, extra)
            _go(
                module,
                ["build", "-v", *flags, "-o", f"{staging}/", *group],
                label=module.name,
            )
        seconds = round(time.monotonic() - module_started, 1)
        info["modules"][module.name] = {"packages": packages, "seconds": seconds}  # type: ignore[index]
        _progress(f"{module.name} module built in {seconds:.0f}s")
    for built, wanted in _RENAMES.items():
        if (staging / built).exists():
            (staging / built).rename(staging / wanted)
    missing = [name for name in names if not (staging / name).is_file()]
    if missing:
        raise BuildError(f"the build produced no {', '.join(missing)} in {staging}")
    _copy_snapshot_crds(staging / SNAPSHOT_CRDS_DIR)
    info["seconds"] = round(time.monotonic() - started, 1)
    info["go"] = _go(CONTROLPLANE_MODULE, ["env", "GOVERSION"], label="go env").strip()
    (staging / "BUILDINFO.json").write_text(json.dumps(info, indent=2) + "\n")


def _main_packages(module: Path) -> list[str]:
    """Return the module's ``tool`` packages and its own ``./cmd/<name>`` programs."""
    edit = json.loads(_go(module, ["mod", "edit", "-json"], label="go mod edit"))
    packages = [tool["Path"] for tool in edit.get("Tool") or []]
    cmd_dir = module / "cmd"
    if cmd_dir.is_dir():
        packages += [f"./cmd/{d.name}" for d in sorted(cmd_dir.iterdir()) if any(d.glob("*.go"))]
    return packages


def _binary_name(package: str) -> str:
    """Return the executable name ``go build`` gives package, after :data:`_RENAMES`."""
    parts = package.rstrip("/").split("/")
    # Go drops a major-version suffix: go.etcd.io/etcd/server/v3 builds "server".
    if len(parts) > 1 and re.fullmatch(r"v\d+", parts[-1]):
        parts.pop()
    return _RENAMES.get(parts[-1], parts[-1])


def _copy_snapshot_crds(destination: Path) -> None:
    module_dir = _go(
        CONTROLPLANE_MODULE, ["list", "-m", "-f", "{{.Dir}}", _SNAPSHOT_CLIENT_MODULE], label="go list"
    ).strip()
    if not module_dir:
        _go(CONTROLPLANE_MODULE, ["mod", "download", _SNAPSHOT_CLIENT_MODULE], label="go mod download")
        module_dir = _go(
            CONTROLPLANE_MODULE,
            ["list", "-m", "-f", "{{.Dir}}", _SNAPSHOT_CLIENT_MODULE],
            label="go list",
        ).strip()
    source = Path(module_dir) / "config" / "crd"
    destination.mkdir(parents=True)
    for name in _SNAPSHOT_CRD_FILES:
        shutil.copyfile(source / name, destination / name)


def _go(module: Path, args: list[str], *, label: str) -> str:
    """Run ``go args`` in module; return stdout. Stderr lines count as progress (``-v``)."""
    env = {**os.environ, "CGO_ENABLED": "0"}
    proc = subprocess.Popen(
        ["go", *args],
        cwd=module,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    tail: deque[str] = deque(maxlen=40)
    stdout_chunks: list[str] = []
    reader = threading.Thread(
        target=lambda: stdout_chunks.append(proc.stdout.read() if proc.stdout else ""),
        daemon=True,
    )
    reader.start()
    started = last_report = time.monotonic()
    assert proc.stderr is not None
    for compiled, line in enumerate(proc.stderr, start=1):
        tail.append(line.rstrip("\n"))
        now = time.monotonic()
        if now - last_report >= 30:
            last_report = now
            _progress(f"{label}: {compiled} packages compiled, {now - started:.0f}s elapsed")
    code = proc.wait()
    reader.join()
    if code != 0:
        output = "\n".join(tail)
        raise BuildError(f"`go {' '.join(args[:2])} ...` in {module} failed ({code}):\n{output}")
    return "".join(stdout_chunks)


def _prune(bin_root: Path, keep: Path) -> None:
    """Remove superseded builds, keeping the newest few for checkouts that still use them."""
    old = sorted(
        (d for d in bin_root.iterdir() if d.is_dir() and d != keep and not d.name.startswith(".")),
        key=lambda d: d.stat().st_mtime,
        reverse=True,
    )
    for directory in old[_KEEP_OLD_BUILDS:]:
        shutil.rmtree(directory, ignore_errors=True)


def _progress(message: str) -> None:
    print(f"localcluster: {message}", file=sys.stderr, flush=True)
