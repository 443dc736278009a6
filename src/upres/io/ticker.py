"""A heartbeat for work that cannot report progress itself (a model conversion inside a third
party's call): a line every few seconds saying what is running and for how long, so no phase
is silent. Lines go to the ``upres`` logger (``--quiet`` hides them)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator

log = logging.getLogger("upres")


@contextlib.contextmanager
def ticking(what: str, every: float = 10.0, first: float = 5.0) -> Iterator[None]:
    """Log ``what ...`` once the block has run ``first`` seconds (short work stays quiet), then
    ``what: still running, N s`` every ``every`` seconds until it ends."""
    done = threading.Event()
    began = time.monotonic()

    def beat() -> None:
        if done.wait(first):
            return
        log.info("%s ...", what)
        while not done.wait(every):
            log.info("%s: still running, %.0f s", what, time.monotonic() - began)

    thread = threading.Thread(target=beat, name="upres-ticker", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        if time.monotonic() - began >= first:
            log.info("%s: done in %.0f s", what, time.monotonic() - began)
