"""The Dash adapter: nbbg's managers speak Dash's background-callback contract to the engine.

``manager`` (the contract, ``EngineManager``) · ``loky_manager`` and
``ray_manager`` (the two backends) · ``dash_jobs`` (what Dash hands a manager
for a job) · ``delivery`` (what polls have not taken yet) ·
``outcomes`` (what the browser gets) · ``runner`` (the callback inside a
worker) · ``private`` (every Dash/Flask private name nbbg uses).
"""
