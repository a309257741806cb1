"""Read-only views for people: `ume status`, `ume audit`, deletion certificates."""
