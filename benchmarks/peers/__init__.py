"""Registry of peer adapters: name -> module path. Each module exposes PEER (a base.Peer)."""

import importlib

PEERS = {
    "shmlog": "benchmarks.peers.shmlog_peer",
    "mpqueue": "benchmarks.peers.mpqueue",
    "zmq": "benchmarks.peers.zmq_ipc",
    "fasterfifo": "benchmarks.peers.fasterfifo",
    "redis": "benchmarks.peers.redis_streams",
    "iceoryx2": "benchmarks.peers.iceoryx2_peer",
    "pipe": "benchmarks.peers.pipe",
}


def load(name):
    """Return (peer, None) or (None, reason)."""
    try:
        peer = importlib.import_module(PEERS[name]).PEER
    except Exception as e:  # adapter file itself broken
        return None, f"adapter import failed: {type(e).__name__}: {e}"
    reason = peer.check()
    return (None, reason) if reason else (peer, None)
