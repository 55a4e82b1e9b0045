"""Writing the Triton model repository atomically (the manifest itself is :mod:`tritune.manifest`'s).

A build writes everything into a staging folder beside the repository (same file system), then moves each
finished model folder into place with renames. A failed build leaves the repository exactly as it was.
"""

from __future__ import annotations

import compileall
import os
import shutil
import tempfile
from pathlib import Path

from tritune.errors import RepositoryError
from tritune.manifest import MANIFEST


def _writable_parent(repository: Path) -> Path:
    parent = repository.resolve().parent
    if repository.exists() and not repository.is_dir():
        raise RepositoryError(f"model repository {repository} is a file, not a folder; pass --repository to a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=".tritune-probe-", dir=parent)
        os.rmdir(probe)
        if repository.exists():
            probe = tempfile.mkdtemp(prefix=".tritune-probe-", dir=repository)
            os.rmdir(probe)
    except OSError as exc:
        raise RepositoryError(
            f"model repository {repository} is not writable ({exc.strerror}); pass --repository to a writable folder"
        ) from exc
    return parent


class StagedRepository:
    """Context manager: yields a staging folder; on success, moves its model folders into the repository."""

    def __init__(self, repository: Path):
        self.repository = Path(repository)
        self.staging: Path | None = None

    def __enter__(self) -> Path:
        parent = _writable_parent(self.repository)
        self.staging = Path(tempfile.mkdtemp(prefix=f".{self.repository.name}.staging-", dir=parent))
        return self.staging

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._commit()
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)

    def _commit(self) -> None:
        assert self.staging is not None
        # Compile model.py now, so the Python stub never writes __pycache__ into a version folder at load time:
        # that would change the folder's mtime and turn Triton's in-place instance-count changes into full reloads.
        compileall.compile_dir(str(self.staging), quiet=1, force=True)
        self.repository.mkdir(parents=True, exist_ok=True)
        trash = Path(tempfile.mkdtemp(prefix=f".{self.repository.name}.trash-", dir=self.repository.resolve().parent))
        moved: list[tuple[Path, Path | None]] = []
        try:
            for model_dir in sorted(p for p in self.staging.iterdir() if p.is_dir() and (p / "config.pbtxt").exists()):
                dest = self.repository / model_dir.name
                old = None
                if dest.exists():
                    old = trash / model_dir.name
                    dest.rename(old)
                    # Recorded before the second rename: if that fails, the previous model is put back below.
                    moved.append((dest, old))
                    model_dir.rename(dest)
                else:
                    model_dir.rename(dest)
                    moved.append((dest, old))
            staged_manifest = self.staging / MANIFEST
            if staged_manifest.exists():
                os.replace(staged_manifest, self.repository / MANIFEST)
        except OSError as exc:
            for dest, old in reversed(moved):  # put the previous models back
                shutil.rmtree(dest, ignore_errors=True)
                if old is not None:
                    old.rename(dest)
            raise RepositoryError(
                f"could not move the built models into {self.repository} ({exc}); nothing changed"
            ) from exc
        finally:
            shutil.rmtree(trash, ignore_errors=True)
