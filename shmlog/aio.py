"""aio.py — the public import path of the asyncio API (`from shmlog.aio import
AIOConsumer, AIOProducer`, aiokafka's shape). The code is client/aio.py; this
module only names it, as shmlog/__init__.py names the rest of the API."""

from .client.aio import AIOConsumer, AIOProducer, TopicPartition, waiter_threads

__all__ = ["AIOConsumer", "AIOProducer", "TopicPartition", "waiter_threads"]
