"""Evaluation of what a loop produced, beyond its own held-out losses: the pairwise judge of two students."""
