"""Durable files and versioned directories: the one way lumstream publishes what it writes.

A crash (or SIGKILL) at any moment must leave either the old or the new content:

- a single file (:func:`write_json_atomic`): write a temporary file, fsync it, rename it
  over the target, fsync the directory;
- a version, a directory of files (:class:`VersionedDir`): write everything into a hidden
  staging directory, fsync the files and a manifest listing each file's size and SHA-256,
  then rename the directory to its visible name in one ``os.rename`` and fsync the parent.
  Readers see no version or a whole one. Retention renames an old version to a hidden
  name before deleting it, so a half-deleted version is never visible either; a staging
  directory is removed only when the process that made it is gone.

Example:
    >>> import tempfile
    >>> vd = VersionedDir(Path(tempfile.mkdtemp()), "v")
    >>> stage = vd.stage()
    >>> _ = (stage / "weights.bin").write_bytes(b"abc")
    >>> vd.publish(stage, {"kind": "demo"}).name, [p.name for p in vd.paths()]
    ('v1', ['v1'])
    >>> vd.verify(vd.latest())["files"]["weights.bin"]["bytes"]
    3
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any

import orjson

MANIFEST = "manifest.json"
_HIDDEN = re.compile(r"^\.(tmp|del)-(?P<host>.+)-(?P<pid>[0-9]+)-[0-9a-f]{32}$")


class VersionError(RuntimeError):
    """A version directory that cannot be used; the message says which and why."""


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes renames in it durable)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON so that ``path`` holds either the old or the new content, on disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        fh.write(_dumps(obj))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)  # the rename itself


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _hidden_name(kind: str) -> str:
    return f".{kind}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex}"


class VersionedDir:
    """Immutable versions ``ROOT/<prefix><N>`` published atomically, listed, verified, retained.

    Args:
        root: the directory holding the versions (created on the first publish).
        prefix: the name of a version before its number (``v``, ``r``, ``ck-``).
        width: zero-pad numbers to this many digits (``ck-000000000120``); 0 = none.
        manifest: the file in each version that lists the other files.

    A version's manifest is a JSON object the caller fills; :meth:`publish` adds
    ``number`` and ``files`` (every other file with its size and SHA-256).
    """

    def __init__(self, root: Path, prefix: str, *, width: int = 0, manifest: str = MANIFEST):
        self.root, self.prefix, self.width, self.manifest = Path(root), prefix, width, manifest
        self._name = re.compile(rf"^{re.escape(prefix)}([0-9]+)$")

    def name(self, number: int) -> str:
        return f"{self.prefix}{number:0{self.width}d}"

    def number(self, path: Path) -> int:
        """N of a version directory; VersionError for another name."""
        m = self._name.match(path.name)
        if not m:
            raise VersionError(f"{path}: not a version directory (expected {self.name(1)}...)")
        return int(m.group(1))

    # -- listing ---------------------------------------------------------------------------
    def paths(self) -> list[Path]:
        """Visible version directories, oldest (lowest number) first; not verified."""
        if not self.root.is_dir():
            return []
        found = [
            (int(m.group(1)), p) for p in self.root.iterdir() if (m := self._name.match(p.name))
        ]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        """The newest visible version (not verified; see :meth:`newest_valid`)."""
        paths = self.paths()
        return paths[-1] if paths else None

    def newest_valid(self, on_invalid: Any = None) -> tuple[Path, dict[str, Any]] | None:
        """The newest version that passes :meth:`verify`, with its manifest.

        Args:
            on_invalid: called with ``(path, VersionError)`` for each newer one skipped.
        """
        for path in reversed(self.paths()):
            try:
                return path, self.verify(path)
            except VersionError as exc:
                if on_invalid is not None:
                    on_invalid(path, exc)
        return None

    # -- reading ---------------------------------------------------------------------------
    def read_manifest(self, path: Path) -> dict[str, Any]:
        """The manifest of a version, checked for shape and number (files not checked)."""
        number = self.number(path)
        mpath = path / self.manifest
        if not mpath.is_file():
            raise VersionError(f"{path}: {self.manifest} is missing (partial or foreign directory)")
        try:
            manifest = orjson.loads(mpath.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise VersionError(f"{mpath}: corrupt manifest, not valid JSON ({exc})") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            raise VersionError(f"{mpath}: corrupt manifest, expected an object with files")
        if manifest.get("number") != number:
            raise VersionError(
                f"{mpath}: manifest number {manifest.get('number')!r} does not match "
                f"the directory name {path.name}"
            )
        return manifest

    def verify(self, path: Path, *, hashes: bool = True) -> dict[str, Any]:
        """The manifest, after checking that every listed file is there with its size (and,
        with ``hashes``, its SHA-256). Raises VersionError naming what is wrong."""
        manifest = self.read_manifest(path)
        for name, meta in manifest["files"].items():
            f = path / name
            if not f.is_file():
                raise VersionError(f"{path}: {name} is missing (partial version)")
            size = f.stat().st_size
            if not isinstance(meta, dict) or size != meta.get("bytes"):
                want = meta.get("bytes") if isinstance(meta, dict) else meta
                raise VersionError(f"{f}: {size} bytes, the manifest says {want} (truncated)")
            if hashes and sha256_file(f) != meta.get("sha256"):
                raise VersionError(f"{f}: SHA-256 differs from the manifest (corrupt)")
        return manifest

    # -- writing ---------------------------------------------------------------------------
    def stage(self) -> Path:
        """A new hidden staging directory to write a version into (owned by this process)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.clean()
        tmp = self.root / _hidden_name("tmp")
        tmp.mkdir()
        return tmp

    def publish(self, staged: Path, manifest: dict[str, Any], *, number: int | None = None) -> Path:
        """Make ``staged`` the version ``number`` (None: the next free number).

        Every file in ``staged`` is fsynced and listed in the manifest. When a version with
        that number already exists and verifies, ``staged`` is dropped (the same state was
        published before) and the existing one is returned; when it exists but does not
        verify (truncated, corrupt), it is hidden and replaced.
        """
        files = {}
        for f in sorted(staged.iterdir()):
            if f.is_file() and f.name != self.manifest:
                fsync_path(f)
                files[f.name] = {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
        body = dict(manifest, files=files)
        for _attempt in range(100):
            n = number if number is not None else max(map(self.number, self.paths()), default=0) + 1
            final = self.root / self.name(n)
            body["number"] = n
            (staged / self.manifest).write_bytes(_dumps(body))
            fsync_path(staged / self.manifest)
            fsync_path(staged)
            if final.exists() and number is not None:
                try:
                    self.verify(final)
                except VersionError:
                    self._hide_and_delete(final)
                else:
                    shutil.rmtree(staged, ignore_errors=True)
                    return final
            try:
                os.rename(staged, final)
            except OSError:  # another publisher took that number (or replaced it meanwhile)
                if number is not None and final.exists():
                    shutil.rmtree(staged, ignore_errors=True)
                    return final
                continue
            fsync_path(self.root)
            return final
        raise VersionError(f"{self.root}: could not claim a version number after 100 attempts")

    def discard(self, staged: Path) -> None:
        """Drop a staging directory that will not be published."""
        shutil.rmtree(staged, ignore_errors=True)

    def retain(self, keep: int) -> list[str]:
        """Remove all but the newest ``keep`` versions; returns the removed names."""
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        removed = []
        for path in self.paths()[:-keep]:
            self._hide_and_delete(path)
            removed.append(path.name)
        return removed

    def _hide_and_delete(self, path: Path) -> None:
        hidden = self.root / _hidden_name("del")
        try:
            os.rename(path, hidden)
        except FileNotFoundError:  # removed by another process meanwhile
            return
        fsync_path(self.root)
        shutil.rmtree(hidden, ignore_errors=True)

    def clean(self) -> list[Path]:
        """Remove hidden staging/deletion directories whose process is gone (on this host;
        another host's are left to that host)."""
        removed: list[Path] = []
        if not self.root.is_dir():
            return removed
        host = socket.gethostname()
        for p in self.root.iterdir():
            m = _HIDDEN.match(p.name)
            if not m or m.group("host") != host:
                continue
            pid = int(m.group("pid"))
            if pid == os.getpid() or _alive(pid):
                continue
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
        return removed
