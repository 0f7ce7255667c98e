"""Image files in and out: bytes to pixels and back, keeping what a photographer cares about.

Owns: decoding and encoding (``codecs``: bit depth, alpha, ICC profile, orientation), EXIF and
other metadata (``metadata``), and the choice of output format from ``?format=`` and Accept
(``negotiation``). A new file format changes this folder only.
"""
