"""``edit`` steps: targeted fixes described in ``edits/specs/<name>.yaml``, trained as a removable LoRA overlay."""

from edits.edit import lora  # noqa: F401  (registers "edit/lora")
