"""client — what an application holds: the connection, producers, consumers.

Layer: above the control plane; below the Kafka listener and the daemons.

    log.py         Log and connect(): the control plane as a client uses it
    producer.py    Producer: batches, partitioning, delivery reports
    consumer.py    Consumer: assignment, positions, poll, commits
    membership.py  a consumer's place in a group
    aio.py         asyncio wrappers of both
"""
