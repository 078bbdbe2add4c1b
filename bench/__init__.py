"""nbbg's benchmark: real Dash servers per manager, driven like dash-renderer drives them.

Modules, in the order a measurement flows: ``apps`` (the app each server
runs), ``floor`` (the reference manager: jobs on threads in the server),
``servers`` (start/stop servers, Redis, Celery workers), ``procs`` (processes,
memory, CPU), ``metrics`` (one function per measurement, sending the
renderer's requests with ``nbbg.client``), ``report`` (medians, ratios,
targets), ``run`` (interleaving and output).
"""
