"""Writing run files so that a crash never leaves one half-written: each is written to a
temporary file beside its destination and renamed into place (an atomic step on POSIX). A
write that runs out of space leaves the previous version in place and says so in one line."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from vaelab.errors import DiskFullError

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def no_space_error(err: BaseException) -> OSError | None:
    """The "no space left on device" (or quota) OSError behind ``err``, if any: libraries such as
    torch.save report it as their own RuntimeError, with the OSError as its context."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _NO_SPACE:
            return err
        err = err.__cause__ or err.__context__
    return None


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on a clean exit give it the usual permissions
    and rename it to ``path``, on an exception delete it (``path`` is left as it was). Running
    out of space raises DiskFullError naming ``path``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.NamedTemporaryFile(mode, dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
        with tmp:
            yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp.name, 0o666 & ~umask)
        os.replace(tmp.name, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp.name).unlink(missing_ok=True)
        if no_space_error(err) is not None:
            previous = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
            raise DiskFullError(
                f"no space left on device while writing {path} ({shutil.disk_usage(path.parent).free / 1e6:.1f} MB "
                f"free there); {previous}: free some space (or point paths.log_dir at a larger disk) and resume"
            ) from err
        raise


def write_json_atomic(path: str | Path, data: Any) -> None:
    with atomic_file(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def save_image_atomic(grid, path: str | Path) -> None:
    """Save an image tensor [C, H, W] in [0, 1] as a PNG."""
    from torchvision.utils import save_image

    with atomic_file(path) as f:
        save_image(grid, f, format="png")
