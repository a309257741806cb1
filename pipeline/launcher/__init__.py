"""The ``ume`` executable: a few milliseconds of standard library that hands the command to the warm process
(:mod:`pipeline.launcher.server`, which has torch, timm, Lightning and MLflow imported already) or runs it
cold in this process (:mod:`pipeline.launcher.entry`). The top floor: it may import everything below.
"""
