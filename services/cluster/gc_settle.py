"""A serving process's garbage collector, once it has started.

Python's cyclic collector walks every tracked object of the generations it collects. A
router or worker holds, after start-up, hundreds of thousands of objects that live as
long as it does (modules, the tokenizer, the app, the model's Python side), and each full
collection walked them all: 150-170 ms of the router's event loop on a 2-core VM, four of
them in 3,000 requests at concurrency 64 (with the younger generations, 0.28 ms of CPU a
request; `make bench-router`). `gc.freeze()` moves what exists at the call into a
permanent generation that collections skip; what requests allocate is collected as
before.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Call once start-up is done, before serving: start-up's garbage collected, the rest
    frozen."""
    gc.collect()
    gc.freeze()
