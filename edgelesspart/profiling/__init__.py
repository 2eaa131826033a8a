"""Build stage 2, profiling: what a model costs on a device, and the catalogues it is costed with.

Owns the host profiler (:mod:`.profiler`: per cut point cumulative latency, peak memory and
boundary bytes per codec), the profile dataclasses (:mod:`.profile`), the profiling kit for real
devices (:mod:`.kit`), and the catalogues as data: devices (:mod:`.devices`), links
(:mod:`.links`) and serverless prices (:mod:`.pricing`), with their JSON under ``catalog/``. It
may import :mod:`edgelesspart.model`, the runtime core and the root helpers, nothing above.
"""
