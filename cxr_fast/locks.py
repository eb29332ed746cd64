"""One lock helper for every folder that one process at a time may write: a study, a store, a fetch.

An advisory ``flock`` on a lock file inside the folder. Either the caller waits its turn (a bench beside a
training run extending the same store finds the work done), or a second process is refused at once with
one line that names what holds the folder (two drivers of one study would duplicate rows). The lock file
stays; a holder that removed the folder meanwhile (a failed first ``prepare``) is noticed, and the lock
is taken again on the new file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from cxr_fast.errors import CxrError


@contextlib.contextmanager
def exclusive(lock_file: str | os.PathLike[str], busy: str | None = None) -> Iterator[None]:
    """Hold the lock on ``lock_file`` (its folder is made if missing) for the ``with`` block.

    ``busy=None``: wait for another holder to finish. ``busy="..."``: refuse at once with that message
    (a ``CxrError``) when another process holds it.
    """
    import fcntl

    path = Path(lock_file)
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+")
        try:
            if busy is None:
                fcntl.flock(fh, fcntl.LOCK_EX)
            else:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise CxrError(busy) from None
            if os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino:
                break  # still the folder's lock file, not one a failed holder removed while we waited
        except FileNotFoundError:
            pass
        except BaseException:
            fh.close()
            raise
        fh.close()
    try:
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()
