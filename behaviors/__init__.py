"""Behaviour specs: plain pytest tests over ume's fixtures, run after every step and by users.

A spec is a function in ``behaviors/test_*.py`` that takes fixtures (``candidate``, ``champion``,
``splits``, ``thresholds``, ``predict``, ``behavior``...) and asserts. ``@pytest.mark.blocking``
makes a failure block promotion; unmarked specs are advisory. Errors fail closed. Measured values
go through ``behavior.check(name, value, at_least=... | at_most=...)`` so reports show the number,
the threshold and the direction (like torchmetrics' ``higher_is_better``).

The fixtures live in :mod:`behaviors.plugin`, loaded by pytest through the ``pytest11`` entry point.
"""
