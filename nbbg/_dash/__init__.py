"""The Dash adapter: ``LokyManager`` speaks Dash's background-callback contract to the engine.

``manager`` (the contract) · ``delivery`` (what polls have not taken yet) ·
``outcomes`` (what the browser gets) · ``runner`` (the callback inside a
worker) · ``private`` (every Dash/Flask private name nbbg uses).
"""
