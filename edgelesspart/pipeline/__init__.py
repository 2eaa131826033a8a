"""The multi-node pipeline (DEFER): a chain of edge nodes, each running one stage of a model.

This subpackage owns everything past the two-stage edge/cloud case for a *chain*: the
bottleneck-minimising partition of a model over N heterogeneous nodes and a link
(:mod:`~edgelesspart.planning.chain`, pure), the N-stage bundle export with a codec per link
(:mod:`~edgelesspart.pipeline.export`, needs the ``build`` extra), the Ray stage actors holding
LiteRT segments (:mod:`~edgelesspart.pipeline.stage`), the dispatcher that streams inputs through
them with a bounded window and returns answers in order (:mod:`~edgelesspart.pipeline.dispatcher`,
HTTP in :mod:`~edgelesspart.pipeline.app`), device/link emulation by sleeping and host CPU
sampling (:mod:`~edgelesspart.pipeline.emulation`), the energy model
(:mod:`~edgelesspart.pipeline.energy`) and the Ray helpers other Ray subsystems reuse
(:mod:`~edgelesspart.pipeline.raykit`). Ray is the optional ``pipeline`` extra; nothing here
imports Ray or TensorFlow at import time, and the runtime modules never import TensorFlow.
"""
