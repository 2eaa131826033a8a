"""Build stage 4, exits: exit heads rendered from Jinja2 templates, their cost and their training.

Owns the exit definitions and heads (:mod:`.heads`: sandboxed rendering, parsing and building of
the generated Keras code, attaching heads at cut points), the heads' parameter and MAC cost
(:mod:`.cost`), and distillation/joint training of the exits (:mod:`.training`). It may import
:mod:`edgelesspart.model`, the runtime core and the root helpers.
"""
