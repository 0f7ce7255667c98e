"""Give freed memory back to the system once a large request is done.

glibc keeps freed heap memory for reuse, in one arena per worker thread, so a request that
decoded and blended a 100 MP image in worker threads can leave hundreds of megabytes resident
after its client has gone. ``trim`` asks glibc to return the free pages of every arena
(``malloc_trim(0)``); where the C library is not glibc it does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import threading
import time

#: Requests that held at least this many decoded pixels, or body bytes, trim when they let go:
#: below it the freed memory is small and soon reused, and trimming after every request would cost
#: page faults for nothing.
TRIM_PIXELS = 1_000_000
TRIM_BYTES = 16 * 2**20
#: How long after a request ends its memory is trimmed: a failed or cancelled request's arrays live
#: on in its exception's traceback until the error response is sent.
TRIM_DELAY_S = 1.0

_guard = threading.Lock()
_quiet_until = 0.0  # monotonic time before which a new trim is not scheduled (one is on its way)


@functools.cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim") if name else None
    except (OSError, AttributeError):
        return None


def trim() -> bool:
    """Return free heap pages to the system; False where the C library cannot."""
    function = _malloc_trim()
    if function is None:
        return False
    function(0)
    return True


def trim_soon() -> bool:
    """``trim`` in a thread of its own (it never holds the event loop), TRIM_DELAY_S from now when
    called on the event loop, at once elsewhere; False (nothing scheduled) when one was scheduled
    less than TRIM_DELAY_S ago, so a stream of requests ending together costs one trim, not one
    each. A deadline, not a flag cleared by the trim: a trim whose event loop closes before it
    runs must not disable the ones after it."""
    global _quiet_until
    with _guard:
        now = time.monotonic()
        if now < _quiet_until:
            return False
        _quiet_until = now + TRIM_DELAY_S

    def start() -> None:
        threading.Thread(target=trim, name="malloc-trim").start()

    try:
        asyncio.get_running_loop().call_later(TRIM_DELAY_S, start)
    except RuntimeError:
        start()
    return True
