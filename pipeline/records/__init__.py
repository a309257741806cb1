"""What happened, kept: the ledger, the MLflow registry, the gate, deletion requests, step history, the workspace."""
