"""control — the control plane: the Python half of the control segment.

Layer: above the primitives, storage and ipc; below the client, the Kafka
listener and the daemons, which all build on ControlPlane.

    plane.py             ControlPlane: attach, restore, reconcile, topics, rings
    catalog.py           the on-disk topic catalog and its commit order
    ring_map.py          one partition ring mapped into this process
    tables.py            the group, member and offset tables as Python sees them
    groups.py            rebalances, reaping, descriptions, committed offsets
    assignors.py         range, roundrobin, cooperative-sticky
    offsets_snapshot.py  committed offsets on disk, and their restore
"""
