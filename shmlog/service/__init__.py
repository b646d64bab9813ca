"""service — the instance's daemons and their configuration.

Layer: the top (with the CLI, which starts them). They build on the control
plane (control/plane.py), never on a client's Log, except where a daemon is
itself a client (the Kafka listener the supervisor hosts).

    supervisor.py  one per instance: restore, reaping, sealing, admin, the persister's parent
    persister.py   copies durable rings to segment files, fsyncs, publishes positions
    workers.py     the processes a config file declares
    metrics.py     the Prometheus endpoint
    notify.py      systemd's notify protocol
    configfile.py  the service config file (TOML)
"""
