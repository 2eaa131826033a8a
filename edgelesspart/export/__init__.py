"""Build stage 5, export: the bundle on disk, and its summary.

Owns writing a plan's segments (LiteRT and Keras, exit heads included) and the manifest into a
bundle directory with the numeric round-trip check (:mod:`.bundle`), and the human-readable
summary of a bundle (:mod:`.summary`). It may import :mod:`edgelesspart.model`, the runtime
core and the root helpers.
"""
