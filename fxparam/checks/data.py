"""Data for coordinate checks and transfer runs: the built-in text, or the user's own.

Default: real text with no download -- Python's own documentation (``pydoc_data.topics`` ships
with CPython, about 0.5 MB of English reference prose), tokenised as bytes (vocabulary 256).

The user's own data (``--data PATH``), read by :func:`load_tokens`:

- a text file: bytes, or token ids from a local tokenizer (``--tokenizer``: a folder saved
  by ``transformers`` ``save_pretrained`` or a ``tokenizer.json`` file; nothing is downloaded);
- a token-id file: ``.npy`` (a 1-D integer array) or ``.bin`` (raw ``uint16`` ids, the
  nanoGPT convention);
- a folder saved by ``datasets.Dataset.save_to_disk`` (needs ``datasets``): an ``input_ids``
  column, or a ``text`` column (tokenised as above).

In memory, :func:`as_batch` and :class:`FixedBatches` take a ``(inputs, targets)`` pair, a
``[B, T+1]`` token tensor, a dict with ``input_ids``, or any iterable of those (a
``torch.utils.data.DataLoader``).
"""

from __future__ import annotations

import hashlib
import itertools
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from fxparam.errors import ConfigError

VOCAB = 256  # byte-level

Batch = tuple[torch.Tensor, torch.Tensor]


def load_text(path: str | Path | None = None) -> str:
    """The text of ``path``, or the Python documentation topics when None.

    Raises:
        ConfigError: no such file, or fewer than 1024 characters.
    """
    if path is None:
        from pydoc_data.topics import topics

        return "\n\n".join(topics[k] for k in sorted(topics))
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--data {path}: no such file")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        text = raw.decode("utf-8", errors="replace")
        warnings.warn(
            f"--data {path}: not UTF-8 (first bad byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            f"{text.count(chr(0xFFFD))} undecodable sequence(s) read as U+FFFD for the tokenizer. "
            "Re-encode the file as UTF-8, or drop --tokenizer to train on its raw bytes",
            stacklevel=2,
        )
    if len(text) < 1024:
        raise ConfigError(f"--data {path}: only {len(text)} characters; need at least 1024")
    return text


def load_tokenizer(spec: str | Path) -> Any:
    """A local tokenizer: a ``transformers`` folder or a ``tokenizer.json`` file (no download).

    Returns:
        An object with ``encode(text) -> list[int]`` and ``vocab_size`` (an ``int``).

    Raises:
        ConfigError: the path does not exist or holds no tokenizer.
    """
    p = Path(spec)
    if not p.exists():
        raise ConfigError(f"--tokenizer {spec}: no such file or folder (tokenizers are read locally, never downloaded)")
    if p.is_file():
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:  # pragma: no cover - comes with transformers
            raise ConfigError("reading a tokenizer.json needs the 'tokenizers' package: pip install tokenizers") from exc
        try:
            tok = Tokenizer.from_file(str(p))
        except Exception as exc:
            raise ConfigError(f"--tokenizer {spec}: not a tokenizer.json ({exc})") from exc
        return _TokenizerFile(tok)
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise ConfigError("a tokenizer folder needs transformers: pip install 'fxparam[hf]'") from exc
    try:
        return AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except Exception as exc:
        raise ConfigError(f"--tokenizer {spec}: no tokenizer could be loaded from this folder ({exc})") from exc


class _TokenizerFile:
    def __init__(self, tok: Any) -> None:
        self.tok = tok
        self.vocab_size = int(tok.get_vocab_size())

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text).ids)


def tokenizer_vocab(tokenizer: Any) -> int:
    """Size of a tokenizer's id space (``len(tokenizer)`` counts added tokens)."""
    try:
        return int(len(tokenizer))
    except TypeError:
        return int(tokenizer.vocab_size)


def _encode(text: str, tokenizer: Any) -> torch.Tensor:
    if tokenizer is None:
        return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()
    ids = tokenizer.encode(text)
    return torch.tensor(ids, dtype=torch.long)


def load_tokens(path: str | Path | None = None, *, tokenizer: Any = None) -> torch.Tensor:
    """Token ids (1-D ``int64``) of a data path (see the module docstring), or the built-in text.

    Args:
        path: text file, ``.npy`` / ``.bin`` token file, or a ``datasets`` folder; None: Python docs.
        tokenizer: for text: a tokenizer object or a local path (:func:`load_tokenizer`);
            None reads bytes.

    Raises:
        ConfigError: missing path, an unreadable file, too few tokens (< 1024), negative ids, ids
            beyond :data:`MAX_TOKEN_ID` (e.g. ``uint64`` values above the int64 range), or a
            ``datasets`` folder without ``datasets`` installed.
    """
    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer)
    if path is None:
        tokens = _encode(load_text(None), tokenizer)
    else:
        p = Path(path)
        if p.is_dir():
            tokens = _load_dataset_dir(p, tokenizer)
        elif not p.is_file():
            raise ConfigError(f"--data {path}: no such file or folder")
        elif p.suffix == ".npy":
            import numpy as np

            arr = np.load(p, mmap_mode="r")
            if arr.ndim != 1 or arr.dtype.kind not in "iu":
                raise ConfigError(f"--data {path}: a .npy token file holds a 1-D integer array, got {arr.dtype} {arr.shape}")
            if arr.dtype.kind == "u" and arr.size and int(arr.max()) > MAX_TOKEN_ID:
                # checked before the cast: uint64 ids above 2^63 - 1 would wrap to negative int64
                raise ConfigError(_too_large(path, int(arr.max()), int(np.argmax(arr)), str(arr.dtype)))
            tokens = torch.from_numpy(np.array(arr, dtype=np.int64))
        elif p.suffix == ".bin":
            import numpy as np

            if p.stat().st_size % 2:
                raise ConfigError(
                    f"--data {path}: {p.stat().st_size} bytes, an odd count, so not raw uint16 token ids "
                    "(the nanoGPT .bin convention read here); save other id types as a 1-D .npy array"
                )
            tokens = torch.from_numpy(np.fromfile(p, dtype=np.uint16).astype(np.int64))
        elif tokenizer is None:  # byte-level: the file's own bytes (not re-encoded text: non-UTF-8 bytes survive)
            raw = p.read_bytes()
            if len(raw) < 1024:
                raise ConfigError(f"--data {path}: only {len(raw)} bytes; need at least 1024")
            tokens = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
        else:
            tokens = _encode(load_text(p), tokenizer)
    if tokens.numel() < 1024:
        raise ConfigError(f"--data {path}: only {tokens.numel()} tokens; need at least 1024")
    if int(tokens.min()) < 0:
        neg = int((tokens < 0).sum())
        first = int(torch.nonzero(tokens < 0)[0, 0])
        raise ConfigError(
            f"--data {path}: {neg} negative token id(s) (the first, {int(tokens[first])}, at position {first}); "
            "token ids are >= 0. A signed type too narrow for the vocabulary wraps large ids negative "
            "(int16 holds ids < 32768): save the ids as uint16, int32 or int64"
        )
    if int(tokens.max()) > MAX_TOKEN_ID:
        first = int(torch.argmax(tokens))
        raise ConfigError(_too_large(path, int(tokens[first]), first, "int64"))
    return tokens


#: The largest token id accepted: 2^31 - 1. The model's vocabulary is the largest id + 1 (an
#: embedding table of that many rows); real vocabularies hold ~10^4 - 10^6 ids, so an id beyond
#: the int32 range is not a token id but a misread file.
MAX_TOKEN_ID = 2**31 - 1


def _too_large(path: object, value: int, position: int, dtype: str) -> str:
    beyond = "beyond the int64 range (2^63 - 1) of token-id tensors and " if value > 2**63 - 1 else ""
    return (
        f"--data {path}: token id {value} ({dtype}, at position {position}) is {beyond}beyond any "
        f"vocabulary (ids must be < 2^31; the vocabulary is the largest id + 1, an embedding table of that "
        "many rows; real ones hold ~10^4 - 10^6 ids): the file is probably not token ids (hashes, or "
        "another dtype's bytes); save the tokenizer's ids as a 1-D uint16/int32/int64 .npy array"
    )


def _load_dataset_dir(p: Path, tokenizer: Any) -> torch.Tensor:
    try:
        import datasets
    except ImportError as exc:
        raise ConfigError(
            f"--data {p}: a folder is read as a Hugging Face dataset saved with save_to_disk, which needs "
            "'datasets' (pip install datasets); or give a text, .npy or .bin file"
        ) from exc
    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as exc:
        raise ConfigError(f"--data {p}: not a dataset saved with save_to_disk ({exc})") from exc
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    if "input_ids" in ds.column_names:
        return torch.tensor(list(itertools.chain.from_iterable(ds["input_ids"])), dtype=torch.long)
    if "text" in ds.column_names:
        return _encode("\n\n".join(ds["text"]), tokenizer)
    raise ConfigError(f"--data {p}: the dataset has no 'input_ids' or 'text' column (columns: {ds.column_names})")


class TokenCorpus:
    """Token ids with a held-out tail (the last ``eval_fraction``); random windows as batches.

    Args:
        tokens: 1-D token ids.
        eval_fraction: share of the tokens held out for evaluation.
    """

    def __init__(self, tokens: torch.Tensor, *, eval_fraction: float = 0.1) -> None:
        data = tokens.long().flatten()
        split = int(len(data) * (1 - eval_fraction))
        self.train, self.eval = data[:split], data[split:]
        self.vocab = int(data.max()) + 1 if data.numel() else 0

    def digest(self) -> str:
        """SHA-256 prefix of the token ids (so resumed results match the data)."""
        h = hashlib.sha256(self.train.numpy().tobytes())
        h.update(self.eval.numpy().tobytes())
        return h.hexdigest()[:16]

    def batch(self, batch_size: int, seq_len: int, *, split: str = "train", seed: int = 0,
              generator: torch.Generator | None = None) -> Batch:
        """``(inputs, targets)`` of shape ``[batch_size, seq_len]`` (targets shifted by one).

        Raises:
            ConfigError: the split is shorter than ``seq_len + 2`` tokens.
        """
        data = self.train if split == "train" else self.eval
        if len(data) <= seq_len + 1:
            raise ConfigError(f"{split} data ({len(data)} tokens) too short for seq_len={seq_len}")
        g = generator or torch.Generator().manual_seed(seed)
        starts = torch.randint(0, len(data) - seq_len - 1, (batch_size,), generator=g)
        x = torch.stack([data[s : s + seq_len] for s in starts.tolist()])
        y = torch.stack([data[s + 1 : s + 1 + seq_len] for s in starts.tolist()])
        return x, y


class ByteCorpus(TokenCorpus):
    """Byte tokens of a text (default: Python's documentation) with a held-out tail."""

    def __init__(self, text: str | None = None, *, path: str | Path | None = None, eval_fraction: float = 0.1) -> None:
        text = load_text(path) if text is None else text
        super().__init__(_encode(text, None), eval_fraction=eval_fraction)


def _labels_equal_inputs(ids: torch.Tensor, labels: torch.Tensor) -> bool:
    """Hugging Face causal-LM labels: the input ids themselves, -100 where ignored (the model shifts)."""
    return (
        ids.dim() == 2 and ids.shape[1] >= 2 and labels.shape == ids.shape
        and bool(((labels == ids) | (labels == -100)).all())
    )


def _pair_reading(data: Any) -> str | None:
    """How a 2-element tuple/list of tensors reads: one batch or two (review R17b).

    ``"next"``: ``(inputs, targets)`` with ``targets[:, :-1] == inputs[:, 1:]`` (next-token targets;
    -100 ignored); ``"labels"``: targets equal to the inputs (the Hugging Face labels convention, to
    be shifted); ``"pair"``: other same-batch tensors of different shapes (a pair for a loss_fn of
    the user's own); ``"batches"``: two batches of different batch sizes (a list's short last
    batch); ``"ambiguous"``: two same-shape integer tensors related neither way -- two batches
    of token ids, or targets only the user's loss_fn understands. None: not 2 tensors.
    """
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)):
        return None
    x, y = data
    if x.shape != y.shape:
        if x.dim() >= 1 and y.dim() >= 1 and x.shape[0] != y.shape[0] and x.shape[1:] == y.shape[1:]:
            return "batches"
        if x.dim() == y.dim() == 2 and not (x.is_floating_point() or y.is_floating_point()):
            return "ambiguous"  # token batches of two lengths, or targets of another length
        return "pair"
    if x.dim() != 2 or x.shape[1] < 2 or x.is_floating_point() or y.is_floating_point():
        return "pair"
    if bool(((y[:, :-1] == x[:, 1:]) | (y[:, :-1] == -100)).all()):
        return "next"
    if _labels_equal_inputs(x, y):
        return "labels"
    return "ambiguous"


def as_batch(data: Any) -> Batch:
    """One ``(inputs, targets)`` batch from what a user may pass.

    Accepts a pair of ``[B, T]`` tensors, a ``[B, T+1]`` token tensor (split into inputs and
    next-token targets), a dict with ``input_ids`` (and optionally ``labels``: aligned with the
    inputs, or -- when they equal ``input_ids`` wherever they are not -100 -- the Hugging Face
    causal-LM convention, shifted here by one like ``transformers`` models do), or an iterable of any of these (a DataLoader: its first batch).

    A 2-element list or tuple of tensors is a pair when its second tensor holds next-token
    targets of the first, or the first's ids as labels (shifted like a dict's ``labels``). Two
    tensors of different batch sizes are two batches (the first is used). Two same-shape
    token tensors related neither way are read as a pair, with a warning: they may be two
    batches (e.g. ``[batch1, batch2]``, where the second batch's tokens would become the
    first's targets).

    Raises:
        ConfigError: anything else, naming what was given.
    """
    reading = _pair_reading(data)
    if reading == "batches":
        return as_batch(data[0])
    if reading == "labels":
        return data[0][:, :-1], data[1][:, 1:]
    if reading == "ambiguous":
        warnings.warn(
            f"data: 2 token tensors of shapes {list(data[0].shape)}, {list(data[1].shape)} read as one (inputs, targets) batch, but the "
            "targets are neither the inputs shifted by one token (targets[:, :-1] == inputs[:, 1:]) nor the "
            "inputs themselves (labels): if they are two batches of token ids, pass an iterator or DataLoader "
            "(iter([batch1, batch2])); if your loss_fn expects these targets, ignore this warning",
            stacklevel=2,
        )
    if reading is not None:
        return data[0], data[1]
    if isinstance(data, torch.Tensor):
        if data.dim() != 2 or data.shape[1] < 2:
            raise ConfigError(f"a token tensor batch must be [batch, seq_len + 1], got {tuple(data.shape)}")
        return data[:, :-1], data[:, 1:]
    if isinstance(data, dict):
        if "input_ids" not in data:
            raise ConfigError(f"a dict batch needs 'input_ids' (got keys {sorted(data)})")
        ids = data["input_ids"]
        if "labels" in data:
            ids, labels = torch.as_tensor(ids), torch.as_tensor(data["labels"])
            if _labels_equal_inputs(ids, labels):
                # Hugging Face causal-LM convention (DataCollatorForLanguageModeling): labels are the
                # input_ids (-100 where ignored) and the model shifts them; read as aligned, every
                # target would be its own input (a copy task with loss -> 0)
                return ids[:, :-1], labels[:, 1:]
            return ids, labels
        return as_batch(torch.as_tensor(ids))
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
        for first in data:
            return as_batch(first)
        raise ConfigError("the data iterable is empty")
    if isinstance(data, (str, Path)):  # review R17b: transfer(data=) takes a path, so users pass one here too
        raise ConfigError(
            f"data={str(data)!r}: a path where one batch is needed; read it as one with "
            f"fxparam.checks.data.TokenCorpus(load_tokens({str(data)!r})).batch(batch_size, seq_len) "
            "(text, .npy/.bin token ids or a datasets folder; load_tokens(path, tokenizer=...) for text)"
        )
    raise ConfigError(
        f"cannot use {type(data).__name__} as data: give (inputs, targets), a [B, T+1] token tensor, a dict "
        "with input_ids, or an iterable (DataLoader) of these"
    )


def _batches(data: Any) -> Any:
    """``data`` as an iterable of batches: a single batch becomes a list of one (review R17b: a
    ``[B, T+1]`` tensor was iterated row by row and refused, a dict by its keys, and an
    ``(inputs, targets)`` pair was read as two batches -- its inputs, then its targets)."""
    if isinstance(data, (torch.Tensor, dict)) or _pair_reading(data) in ("next", "labels", "pair"):
        return [data]
    return data


class FixedBatches:
    """A fixed list of training and held-out batches (from a DataLoader or any iterable).

    Every run of a sweep sees the same batches in the same order (cycled when a run takes
    more steps than there are batches); picklable, so worker processes get a copy. A single
    batch (a ``[B, T+1]`` tensor, a dict, an ``(inputs, targets)`` pair as :func:`as_batch`
    reads it) is one batch, not iterated (its rows, keys or two halves are not batches).

    Args:
        train: training batches (anything :func:`as_batch` accepts).
        eval: held-out batches; default: none (then the last ``eval_count`` of ``train`` are held out).
        eval_count: how many batches to hold out when ``eval`` is not given.
    """

    def __init__(self, train: Iterable[Any], eval: Iterable[Any] | None = None, *, eval_count: int = 0) -> None:
        batches = [as_batch(b) for b in _batches(train)]
        if eval is not None:
            self.train, self.held_out = batches, [as_batch(b) for b in _batches(eval)]
        else:
            if eval_count >= len(batches):
                raise ConfigError(
                    f"data: {len(batches)} batch(es) cannot hold out {eval_count} for evaluation; "
                    "pass more batches or eval_data="
                )
            self.train, self.held_out = batches[: len(batches) - eval_count], batches[len(batches) - eval_count :]
        if not self.train:
            raise ConfigError("data: no training batch")
        self.vocab = max(int(torch.cat([x.flatten(), y.flatten()]).max()) for x, y in self.train + self.held_out) + 1

    def digest(self) -> str:
        """SHA-256 prefix of every batch."""
        h = hashlib.sha256()
        for x, y in self.train + self.held_out:
            h.update(x.cpu().numpy().tobytes())
            h.update(y.cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    def train_batches(self, n: int) -> list[Batch]:
        return [self.train[i % len(self.train)] for i in range(n)]

    def eval_batches(self, n: int) -> list[Batch]:
        if not self.held_out:
            raise ConfigError("data: no held-out batch to evaluate on; pass eval_data=")
        return [self.held_out[i % len(self.held_out)] for i in range(n)]


__all__ = [
    "MAX_TOKEN_ID",
    "ByteCorpus",
    "FixedBatches",
    "TokenCorpus",
    "VOCAB",
    "as_batch",
    "load_text",
    "load_tokenizer",
    "load_tokens",
    "tokenizer_vocab",
]
