"""shmlog — Kafka's model (topics, partitions, offsets, replay) on one host,
over shared memory. Start with `shmlog.connect()`; see README.md.

This module is the public facade: it re-exports and owns nothing else, apart
from one start-up step (_source_tree_redirect).
"""


def _source_tree_redirect() -> bool:
    """`python -m shmlog` run inside a clone after `pip install .` finds the
    clone's source tree first on sys.path (the working directory), and the
    source tree has no compiled core. Then the installed copy is imported in
    its place (the daemons never meet this: shmlog.ipc.launch starts them with -P
    in /). With no installed copy either, the ImportError says what to do."""
    import glob
    import importlib.util
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    if glob.glob(os.path.join(here, "_shmlog_c*")):
        return False
    for entry in sys.path:
        d = os.path.join(os.path.abspath(entry or os.curdir), "shmlog")
        if d != here and glob.glob(os.path.join(d, "_shmlog_c*")) and os.path.isfile(os.path.join(d, "__init__.py")):
            spec = importlib.util.spec_from_file_location(
                __name__, os.path.join(d, "__init__.py"), submodule_search_locations=[d]
            )
            assert spec is not None and spec.loader is not None  # a file location always has both
            mod = importlib.util.module_from_spec(spec)
            sys.modules[__name__] = mod  # what `import shmlog` returns from now on
            spec.loader.exec_module(mod)
            return True
    raise ImportError(
        f"shmlog is imported from its source tree {here}, which has no compiled C core: "
        "install it (`pip install .`, then run from another directory, or "
        "`pip install -e .` to build the core in place)",
        name="shmlog._shmlog_c",
    )


_source_tree_redirect()  # when it redirects, the imports below resolve in the installed copy too

from . import errors
from ._version import __version__
from .client.consumer import Consumer
from .client.log import Log, connect
from .client.producer import Producer
from .control.plane import PartitionInfo, TopicDescription
from .errors import *  # noqa: F403  (every public exception: errors.__all__)
from .records import BatchMetadata, Columns, Message, RecordMetadata

__all__ = [
    "connect",
    "Log",
    "Producer",
    "Consumer",
    "Message",
    "RecordMetadata",
    "BatchMetadata",
    "Columns",
    "TopicDescription",
    "PartitionInfo",
    "errors",
    "__version__",
]
__all__ += errors.__all__
