"""``merge`` steps: combine chosen LoRA overlays into one (peft ``add_weighted_adapter``), or fold every
overlay into one weight delta for serving. Every merge keeps the union of lineage, every deletion pin
(``covers``) and every edit it absorbs: a merge can never launder a deleted sample or drop an edit unseen.
"""
