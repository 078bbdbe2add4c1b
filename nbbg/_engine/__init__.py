"""The engine: jobs in, events out, on warm loky workers. It never imports Dash, IPython or widgets.

``engine`` (the facade) · ``table`` (jobs, FIFO, retention) · ``dispatch``
(queue → slot → final state) · ``slots`` (worker processes) · ``worker``
(what runs in them) · ``channel`` (reports from jobs) · ``shipping``
(callables sent once per version) · ``store`` (results) · ``jobs`` (the job
model) · ``events`` (who is told what).
"""
