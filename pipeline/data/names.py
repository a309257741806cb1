"""The sample table's column names and reserved values, importable without pandas or torch (light commands read them)."""

from __future__ import annotations

COLUMNS = ("sample_id", "label", "group", "owner", "slice", "domain")
NO_OWNER = ""  # a sample with no data subject (licensed or public data): never subject to deletion by owner
NO_DOMAIN = ""  # an evaluation sample of no known slice: in no slice's held-out split
EVAL_SLICES = ("test", "canary")
DELETION_ENTRY = "deletion_request"  # the ledger entry whose hashed ids the data layer filters out
