"""``compress`` steps: export transforms of a version (int8 quantization, magnitude pruning).

A transform sits on top of the float version (``Manifest.transforms``); later learn, edit, forget
and merge steps train on the float shadow and the runner re-applies every transform's recorded
recipe to their result, so a compressed champion stays compressed and never serves stale weights.
"""
