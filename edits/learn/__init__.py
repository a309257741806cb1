"""``learn`` steps: add a new data slice to the champion as a removable overlay."""

from edits.learn import lora  # noqa: F401  (registers "learn/lora")
