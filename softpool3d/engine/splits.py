"""The splits a run reads, as its logs and final figures name them."""
from __future__ import annotations

from omegaconf import DictConfig


def split_label(cfg: DictConfig, role: str) -> str:
    """``"val (split 'val')"``, or for a validation that reads the test split, says so."""
    split = {"train": cfg.data.train_split, "val": cfg.data.val_split, "test": cfg.data.test_split}[role]
    if role == "val" and split == cfg.data.test_split:
        return f"val (split '{split}', the test split: best.pt is chosen on test videos)"
    return f"{role} (split '{split}')"
