"""ume's engine: config, data, model composition, stream runner, gate, registry, ledger, CLI.

Import floors (imports only go down), see ``docs/architecture.md``::

    cli -> runner -> (behaviors, edits, gate, compose, data) -> (model, lineage, registry)
        -> (components, config, ledger, errors)
"""
