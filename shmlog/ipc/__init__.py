"""ipc — the contract between clients and the instance's daemons.

Layer: above the primitives, beside storage; below the control plane (which
writes restore progress through it) and everything above. It never imports
a daemon: daemons are processes, started by module name.

    admin.py     the supervisor's admin socket: wire format, server, client
    launch.py    starting a daemon process and reading its status pipe
    daemons.py   the daemons' lock and state files; up, down, start/stop the persister
    progress.py  <data_dir>/recovery.json: a restore's progress
"""
