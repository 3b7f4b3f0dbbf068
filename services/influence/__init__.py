"""Influence: local data influence of candidates on the student (METHOD.md stage 4)."""
