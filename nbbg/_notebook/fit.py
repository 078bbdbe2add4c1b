"""The inline app sized to its content, so the jobs panel sits right under what the app shows.

Dash shows an inline app in an iframe 650 px tall whatever the app holds: under
a short app the panel sits a screen below it. The iframe's page is served from
another origin (the app's port), so the notebook cannot measure it; the page
tells the notebook instead::

    app page (the app's origin)                      notebook output (Jupyter's origin)
      FRAME_SCRIPT: ResizeObserver on the           <iframe> + a message listener:
      app's root ─► parent.postMessage(              height = the reported height
        {nbbg_height: h})  ─────────────────────►    (only from that iframe's window)

The script is added to every app page by a Dash ``index`` hook while the
extension is loaded, and does nothing outside an iframe. A front end that does
not run the output's script (an untrusted notebook) keeps Dash's height. What
opens beyond the app's content (a dropdown's menu at the bottom) may be cut:
``MIN_HEIGHT`` leaves some room, and the iframe grows as soon as the content does.
"""

from __future__ import annotations

import html
import json
import uuid
from collections.abc import Callable
from typing import Any

MIN_HEIGHT = 100
"""Pixels the iframe keeps at least (some room for a menu opening under a short app)."""
MAX_HEIGHT = 4000

FRAME_SCRIPT = """<script>
(function () {
  if (window.parent === window) return;
  var last = 0;
  function root() { return document.getElementById("react-entry-point") || document.body; }
  function report() {
    var body = getComputedStyle(document.body);
    var height = Math.ceil(root().getBoundingClientRect().bottom + window.scrollY
      + parseFloat(body.marginBottom || "0") + parseFloat(body.paddingBottom || "0"));
    if (height > 0 && Math.abs(height - last) > 1) {
      last = height;
      window.parent.postMessage({nbbg_height: height}, "*");
    }
  }
  function start() {
    if (window.ResizeObserver) new ResizeObserver(report).observe(root());
    report();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
</script>"""

_LISTENER = """<script>
(function () {
  var frame = document.getElementById(%(id)s);
  if (!frame) return;
  window.addEventListener("message", function (event) {
    if (event.source !== frame.contentWindow || !event.data) return;
    var height = event.data.nbbg_height;
    if (typeof height !== "number") return;
    frame.height = Math.max(%(min)d, Math.min(%(max)d, Math.ceil(height)));
  });
})();
</script>"""


def add_frame_script(index: str) -> str:
    """An app page with :data:`FRAME_SCRIPT` before ``</body>`` (a Dash ``index`` hook)."""
    position = index.rfind("</body>")
    if position < 0:
        return index + FRAME_SCRIPT
    return index[:position] + FRAME_SCRIPT + index[position:]


def fitted_iframe(url: str, width: str | int, height: str | int) -> str:
    """The app's iframe (Dash's size at first) and the listener that fits it to its content."""
    frame_id = f"nbbg-app-{uuid.uuid4().hex[:12]}"
    frame = (
        f'<iframe id="{frame_id}" class="nbbg-app-frame" src="{html.escape(url)}" '
        f'width="{html.escape(str(width))}" height="{html.escape(str(height))}" '
        'frameborder="0" style="border:0;display:block" allowfullscreen></iframe>'
    )
    listener = _LISTENER % {"id": json.dumps(frame_id), "min": MIN_HEIGHT, "max": MAX_HEIGHT}
    return frame + listener


Display = Callable[[str, int, str, Any, Any], None]


def fitted_display(original: Display) -> Display:
    """Dash's inline display with :func:`fitted_iframe`; other modes as Dash shows them."""

    def display_app(dashboard_url: str, port: int, mode: str, width: Any, height: Any) -> None:
        if mode != "inline":
            original(dashboard_url, port, mode, width, height)
            return
        from IPython.display import display

        bundle = {
            "text/html": fitted_iframe(dashboard_url, width, height),
            "text/plain": f"Dash app running on {dashboard_url}",
        }
        display(bundle, raw=True)

    return display_app
