"""Files written so that a kill never loses what was saved: :func:`atomic_write_bytes` (used for
checkpoints, metrics, plots and every benchmark's results JSON)."""
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes):
    """Write via a temporary file in the same folder and rename: a kill never leaves half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)     # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
