"""Real text with no download: Python's own documentation, tokenised as bytes.

``pydoc_data.topics`` ships with CPython (about 0.5 MB of English reference prose), so
coordinate checks and transfer runs train on real language on any fresh machine.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fxparam.errors import ConfigError

VOCAB = 256  # byte-level


def load_text(path: str | Path | None = None) -> str:
    """The text of ``path``, or the Python documentation topics when None."""
    if path is None:
        from pydoc_data.topics import topics

        return "\n\n".join(topics[k] for k in sorted(topics))
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--data {path}: no such file")
    text = p.read_text(encoding="utf-8", errors="replace")
    if len(text) < 1024:
        raise ConfigError(f"--data {path}: only {len(text)} characters; need at least 1024")
    return text


class ByteCorpus:
    """Byte tokens with a held-out tail (the last ``eval_fraction`` of the text)."""

    def __init__(self, text: str | None = None, *, path: str | Path | None = None, eval_fraction: float = 0.1) -> None:
        text = load_text(path) if text is None else text
        data = torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()
        split = int(len(data) * (1 - eval_fraction))
        self.train, self.eval = data[:split], data[split:]

    def batch(self, batch_size: int, seq_len: int, *, split: str = "train", seed: int = 0,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, targets)`` of shape ``[batch_size, seq_len]`` (targets shifted by one)."""
        data = self.train if split == "train" else self.eval
        if len(data) <= seq_len + 1:
            raise ConfigError(f"text too short for seq_len={seq_len}")
        g = generator or torch.Generator().manual_seed(seed)
        starts = torch.randint(0, len(data) - seq_len - 1, (batch_size,), generator=g)
        x = torch.stack([data[s : s + seq_len] for s in starts.tolist()])
        y = torch.stack([data[s + 1 : s + 1 + seq_len] for s in starts.tolist()])
        return x, y
