"""The spool: paid-for image bytes that could not be stored yet, kept in the log directory.

An image lands here when the store keeps refusing, or when the provider answered bytes and no
store is configured (or bytes that could not be decoded: kept raw, as `.b64`). Each record is
one paid image, never shared: the same bytes answered for five scenes are five records, so
each scene gets its image back. A record is two files, `SHA256-TOKEN.EXT` and
`SHA256-TOKEN.EXT.json` (where it belongs), written to a temporary name, fsynced and renamed,
so a crash leaves either both or nothing that looks finished. `imgsave repair` uploads and
saves them; audit counts them.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from imgsave.core.documents import SceneRef
from imgsave.core.image_bytes import Image
from imgsave.errors import CannotWork

SPOOL_DIR = "spool"


@dataclass(frozen=True)
class Spooled:
    path: Path
    project: str
    ref: SceneRef
    replaces: tuple[str, ...]
    source_url: str | None

    def remove(self) -> None:
        remove(self.path)


def spool_dir(log_dir: Path) -> Path:
    return log_dir / SPOOL_DIR


def put(
    log_dir: Path,
    project: str,
    ref: SceneRef,
    image: Image,
    *,
    replaces: tuple[str, ...] = (),
    source_url: str | None = None,
) -> Path:
    """Keep `image` for `project`/`ref` on disk; CannotWork if even that fails."""
    directory = spool_dir(log_dir)
    # The token makes the record this image's own (see the module's docstring).
    path = directory / f"{image.sha256}-{secrets.token_hex(6)}.{image.ext}"
    meta = {
        "project": project,
        "scene": ref.index,
        "scene_id": ref.id,
        "replaces": list(replaces),
        "source_url": source_url,
    }
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _write(path, image.data)
        _write(_meta(path), json.dumps(meta, ensure_ascii=True).encode())
    except OSError as exc:
        raise CannotWork(
            f"cannot keep a paid image in {directory}: {exc.strerror} "
            f"(sha256 {image.sha256}, project {project}, {ref})"
        ) from None
    return path


def read(path: Path) -> bytes:
    """A spooled image's bytes (OSError when they are gone)."""
    return path.read_bytes()


def remove(path: Path) -> None:
    """A spooled image whose image reached its scene (or never will): both its files go."""
    for part in (path, _meta(path)):
        part.unlink(missing_ok=True)


def pending(log_dir: Path) -> list[Spooled]:
    """Every spooled image whose record is whole, oldest first."""
    directory = spool_dir(log_dir)
    if not directory.is_dir():
        return []
    found = []
    for meta_path in sorted(directory.glob("*.json"), key=lambda p: p.stat().st_mtime):
        path = meta_path.with_suffix("")
        try:
            meta = json.loads(meta_path.read_text())
            ref = SceneRef(int(meta["scene"]), meta.get("scene_id"))
            found.append(
                Spooled(
                    path,
                    str(meta["project"]),
                    ref,
                    tuple(meta.get("replaces") or ()),
                    meta.get("source_url"),
                )
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a record cut short by a crash: its image file was renamed last
        if not path.is_file():
            found.pop()
    return found


def _meta(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _write(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)
