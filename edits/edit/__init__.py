"""``edit`` steps: targeted fixes described in ``edits/specs/<name>.yaml``, trained as a removable LoRA overlay."""
