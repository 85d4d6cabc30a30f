import os

# Triton kernels run on CPU through the interpreter; it must be set before any kernel is defined.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """``write(name, source)``: a user's module ``name.py`` in a fresh current directory, importable only as the
    ``fxparam`` console script sees it (the current directory is not on ``sys.path``; fxparam must add it)."""
    import sys

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])

    def write(name: str, source: str):
        (tmp_path / f"{name}.py").write_text(source)
        monkeypatch.delitem(sys.modules, name, raising=False)
        return tmp_path

    return write
