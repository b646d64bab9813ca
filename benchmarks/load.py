"""CPU load for the "-loaded" rows (T2-block-loaded): one busy child process per core, so the
ping-pong's two processes compete with runnable threads for every core, as on an oversubscribed host.
Owns the load processes; must never leave one running after its row (terminated, then killed, in finally).

Each hog loops over numpy.add on a 32 KiB array: the time goes to a C loop (one single-threaded ufunc,
no BLAS threads), with the interpreter re-entering only every few microseconds; it never sleeps, so the
scheduler always has a runnable thread for a core a parked receiver frees.
"""

import contextlib
import multiprocessing as mp
import os

CTX = mp.get_context("fork")


def _hog(ready):
    import numpy as np

    a = np.ones(4096)
    ready.set()
    while True:
        np.add(a, 1.0, out=a)


@contextlib.contextmanager
def cpu_hogs(n=None, start_timeout=10.0):
    """Runs n (default: os.cpu_count()) busy processes for the duration of the with block."""
    n = n or os.cpu_count() or 1
    procs = []
    try:
        for _ in range(n):
            ev = CTX.Event()
            p = CTX.Process(target=_hog, args=(ev,), daemon=True)
            p.start()
            procs.append((p, ev))
        for _p, ev in procs:
            if not ev.wait(start_timeout):
                raise RuntimeError("a CPU load process did not start")
        yield n
    finally:
        for p, _ in procs:
            if p.is_alive():
                p.terminate()
        for p, _ in procs:
            p.join(2)
            if p.is_alive():
                p.kill()
                p.join(2)
