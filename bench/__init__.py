"""nbbg's benchmark: real Dash servers per manager, driven like dash-renderer drives them.

Modules, in the order a measurement flows: ``apps`` (the app each server
runs), ``servers`` (start/stop servers, Redis, Celery workers), ``client`` (the
renderer's requests), ``procs`` (processes, memory, CPU), ``metrics`` (one
function per measurement), ``report`` (medians, ratios, targets), ``run``
(interleaving and output).
"""
