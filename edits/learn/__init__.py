"""``learn`` steps: add a new data slice to the champion as a removable overlay."""
