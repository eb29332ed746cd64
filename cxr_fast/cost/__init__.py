"""The cost room: what a training step or a study will cost, predicted without running it.

Activation memory and the largest batch (``memory``, cached on disk by ``memcache``), the counted work
of a step (``work``: FLOPs, bytes, ops on the ``meta`` device), device profiles (``devices``), a step's
time on one of them (``estimate``) and a whole study's plan (``plan``, tables in ``plan_report``;
``memory_report`` for ``cxr-fast memory``). It sits below training and the bench: it measures nothing
(``cxr_fast.bench`` does, and ``bench.calibrate`` fits a device profile from what it timed).
"""
