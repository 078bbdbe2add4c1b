"""The notebook layer: ``%load_ext nbbg``, the inline app, the jobs panel and ``%nbbg``.

``extension`` (load/unload) · ``inline`` (``app.run`` in a notebook: ports,
JupyterHub) · ``magics`` · ``panel`` (widgets) · ``rows`` (what a row shows) ·
``sources`` (where a panel's jobs come from) · ``watch`` (jobs of Dash's own
managers) · ``legacy`` (``jupyter_dash.JupyterDash``) · ``patching`` (undoable changes).
"""
