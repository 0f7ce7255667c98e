"""The HTTP routes and what they share.

Owns: one module per route family (``denoise``, ``edges``, ``weather``, ``jobs``, ``web`` for the
page and the offline docs), the dependencies every model route runs first (``deps``: API key,
stray query parameters, ``?format=``), the request path they all take (``operation``: prepare ->
run_model -> encode_run -> respond) and the documented contract (``openapi``). A new endpoint or
parameter changes this folder and nothing below it.
"""
