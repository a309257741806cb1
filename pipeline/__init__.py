"""ume's engine, in floors (imports only go down; ``tests/test_layers.py`` enforces it)::

    cli
    steps (the one step lifecycle and a module per step kind), reports (status, audit, certificate)
    behaviors/, edits/          (outside this package)
    records (ledger, registry, gate, deletion, debt, history, workspace)
    data (sample table, data module, sources)
    model (network, components, manifests, composition, LoRA, deltas, pruning, int8)
    core (config, errors, fault points, ranks, temporary files, Markdown)

See ``docs/architecture.md``.
"""
