"""Weights and their composition: the timm network, components, manifests, LoRA, deltas, pruning masks, int8."""
