"""A run folder belongs to one run of one recipe at a time.

- A lock file (`.mmcompress.lock`, holding the owner's pid) stops a second process: it fails in
  one line instead of mixing stages. A lock whose process is gone is stale and taken over.
- `run.json` names the recipe (its hash) the folder holds. Another recipe is refused unless
  `force`, which deletes every stage the new recipe does not share (same stage key) and every
  top-level artifact of the old run, so whatever record.json names belongs to that record.

Example:
    >>> with locked(out):
    ...     claim(out, recipe, keys, force=False)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mmcompress.core.io import atomic_write_json, stable_hash
from mmcompress.errors import ConfigError

LOCK_FILE = ".mmcompress.lock"
RUN_FILE = "run.json"
ARTIFACTS = ("record.json", "model.safetensors", "report.md", "report.html", "plots")  # plus *.onnx


class RunFolderBusy(ConfigError):
    """Another process holds the run folder."""


@contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold `out`'s lock for the duration (a second holder gets RunFolderBusy)."""
    path = out / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            owner = _owner(path)
            if owner is not None and _alive(owner):
                raise RunFolderBusy(
                    f"run folder {out} is in use by another mmcompress process (pid {owner['pid']} on "
                    f"{owner['host']}); wait for it to finish or choose another --out"
                ) from None
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        break
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _owner(path: Path) -> dict | None:
    try:
        owner = json.loads(path.read_text())
        return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None
    except (OSError, ValueError):
        return None


def _alive(owner: dict) -> bool:
    if owner.get("host") != socket.gethostname():
        return True  # another machine's process: cannot tell, so assume it runs
    if owner["pid"] == os.getpid():
        return False  # our own leftover (an earlier run in this process was interrupted)
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recipe_identity(recipe_dict: dict) -> str:
    """The hash a run folder records for its recipe."""
    return stable_hash(recipe_dict, 16)


def claim(out: Path, recipe_dict: dict, keys: list[str], *, force: bool) -> None:
    """Bind `out` to this recipe: refuse another recipe's folder unless `force` (which clears what
    the new recipe cannot reuse); write run.json.

    Example:
        >>> claim(Path("runs/x"), recipe.to_dict(), stage_keys, force=False)
    """
    identity = recipe_identity(recipe_dict)
    held = _held_recipe(out)
    if held is not None and held != identity and _holds_work(out):  # (a run that failed before writing
        if not force:  # anything, e.g. on wrong --data at its first stage, leaves nothing to keep)
            raise ConfigError(
                f"{out} holds the run of another recipe; choose another --out, or --force to replace it "
                "(stages the new recipe shares are kept, the rest is deleted)"
            )
        _clear(out, set(keys))
    atomic_write_json(out / RUN_FILE, {"recipe": identity})


def _holds_work(out: Path) -> bool:
    """Whether any stage of the run in `out` wrote a file (a result, a checkpoint, a log)."""
    stages = out / "stages"
    return (out / "record.json").is_file() or (stages.is_dir() and any(p.is_file() for p in stages.rglob("*")))


def _held_recipe(out: Path) -> str | None:
    """The recipe hash of the run in `out` (None: an empty folder)."""
    run = out / RUN_FILE
    if run.is_file():
        try:
            return json.loads(run.read_text())["recipe"]
        except (OSError, ValueError, KeyError, TypeError):
            return "unreadable"
    record = out / "record.json"
    if record.is_file():  # a run written before run.json existed
        try:
            return recipe_identity(json.loads(record.read_text())["recipe"])
        except (OSError, ValueError, KeyError, TypeError):
            return "unreadable"
    return "unknown" if (out / "stages").is_dir() and any((out / "stages").iterdir()) else None


def _clear(out: Path, keep_keys: set[str]) -> None:
    stages = out / "stages"
    if stages.is_dir():
        for stage in stages.iterdir():
            try:
                key = json.loads((stage / "stage.json").read_text()).get("key")
            except (OSError, ValueError, AttributeError):
                key = None
            if key not in keep_keys:
                shutil.rmtree(stage, ignore_errors=True)
    for name in ARTIFACTS:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)
    for onnx in out.glob("*.onnx"):
        onnx.unlink()
    (out / RUN_FILE).unlink(missing_ok=True)
