"""Trainer: DPO of the teacher and SFT of the student, with TRL (METHOD.md stages 3, 6, 7)."""
