"""tools.chaos — shmlog's fault campaign (Jepsen / ducktape-bounce style).

Owns: a seeded schedule of faults over every process kind of one scratch
instance (campaign.py), the worker processes that record a history of what
was acknowledged and what was read (worker.py), and an independent checker
that judges those histories and a final read-back (checker.py).
Must never: touch an instance it did not create, or let the checker look at
shmlog's internals (it reads only the JSONL histories).
Run: `python -m tools.chaos --seed 1 --faults 100 --duration 60` (README.md).
"""
