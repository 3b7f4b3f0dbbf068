"""Preference: turns influence scores into DPO pairs within each prompt group (METHOD.md stage 5)."""
