"""SlimEdge: device-aware pruning of a multi-view model on heterogeneous, failure-prone devices.

This package owns the multi-view model (one backbone per view, a fusion head trained with view
dropout, :mod:`~edgelesspart.slimedge.model`), multi-view data (:mod:`~.views`), the per-view
pruning curves the optimiser reads (:mod:`~.curves`), the NSGA-II choice of one pruning ratio per
device under memory constraints with precomputed plans for every single failure
(:mod:`~.optimize`), the deployment export (:mod:`~.deploy`) and the Ray fan-in runtime with
failure re-planning (:mod:`~.ray_runtime`). Channel surgery itself lives in
:mod:`edgelesspart.pruning`. TensorFlow, pymoo and Ray are imported lazily.
"""
