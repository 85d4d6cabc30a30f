"""Which input dimension of each per-example norm indexes examples: found from the model, not assumed.

The per-example gradient of a norm layer sums over every row of one example, so each tracked
norm must know which dimension of *its* input indexes examples. That is not always the leading
one: ``nn.TransformerEncoderLayer`` defaults to ``(sequence, batch, hidden)``, and many models
flatten tokens to ``(batch * sequence, hidden)`` before a norm.

How it is found (:func:`find_layouts`): a meta skeleton of the model (no memory, no weights;
:func:`fxparam.capture.meta_skeleton`) runs once on fake inputs whose *every* dimension is its
own symbol (a ``ShapeEnv`` without duck sizing; size-1 dims are widened to 2 so they are not
specialised), so each norm's input shape is an expression in the input symbols; a dispatch
mode records which symbols the ATen ops mix. The example symbol is the input
symbol that

- reaches the norm inputs, and
- is never mixed: no matmul / linear contracts over it, no attention takes keys along it, no
  softmax normalises over it. Sequence positions are mixed by attention; examples never are.

A norm input dim equal to that symbol is the example dim; a leading dim that is a product of it
(``B*T``) is a flattened ``(examples x positions)`` layout (examples-major, as ``x.view(-1, H)``
of a ``(B, T, H)`` activation gives). A flattening seen merging positions *before* examples
(``(T, B, H).view(T * B, H)``: examples interleaved) is reported as an error, not read as
examples-major. The number of examples is then read each forward from the
model input dim that carries the symbol.

When it cannot be told (no unmixed symbol reaches a norm, several do, the export fails, or a
norm's input has no example dim), a :class:`~fxparam.errors.GNSError` names the norm and the
override: ``batch_dim=`` on :func:`fxparam.gns.swap_norms` / :func:`fxparam.gns.monitor`
(an int: that dim of every tracked norm's input; or ``{norm FQN: dim}``).
"""

from __future__ import annotations

import inspect
import re
import warnings
from typing import Any

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from fxparam.errors import GNSError
from fxparam.kernels.norms import ExampleLayout, GNSRoot, PerExampleNormMixin, _functorch_active

_aten = torch.ops.aten


def _sdpa_ops() -> list[Any]:
    names = (
        "scaled_dot_product_attention",
        "_scaled_dot_product_attention_math",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
    )
    return [getattr(_aten, n).default for n in names if hasattr(_aten, n)]


#: ATen op -> (argument index, dim) pairs whose sizes the op contracts / normalises over.
_MIXING: dict[Any, tuple[tuple[int, int], ...]] = {
    _aten.mm.default: ((0, -1),),
    _aten.bmm.default: ((0, -1),),
    _aten.addmm.default: ((1, -1),),
    _aten.baddbmm.default: ((1, -1),),
    _aten.matmul.default: ((0, -1),),
    _aten.linear.default: ((0, -1),),
    **{op: ((1, -2), (0, -1)) for op in _sdpa_ops()},
}
_SOFTMAX = {_aten._softmax.default, _aten.softmax.int}
_VIEWS = {_aten.view.default, _aten._unsafe_view.default, _aten.reshape.default}

_FIX = (
    "pass batch_dim= to fxparam.gns.swap_norms / fxparam.gns.monitor (the dim of each norm's input that "
    "indexes examples: an int for all, or {norm FQN: dim})"
)


def _symbols(size: Any) -> set[Any]:
    if isinstance(size, torch.SymInt):
        return set(size.node.expr.free_symbols)
    return set()


def _expr(size: Any) -> Any:
    return size.node.expr if isinstance(size, torch.SymInt) else size


def _dynamic_spec(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return {i: torch.export.Dim.AUTO for i in range(value.dim())} or None
    if isinstance(value, (list, tuple)):
        return type(value)(_dynamic_spec(v) for v in value)
    if isinstance(value, dict):
        return {k: _dynamic_spec(v) for k, v in value.items()}
    return None


def _to_meta(value: Any, widen: bool = False) -> Any:
    """Meta copies of the inputs; ``widen``: size-1 dims become 2 (export specialises sizes 0 and 1)."""
    if isinstance(value, torch.Tensor):
        shape = [2 if (widen and s == 1) else s for s in value.shape]
        return torch.empty(shape, dtype=value.dtype, device="meta")
    if isinstance(value, (list, tuple)):
        return type(value)(_to_meta(v, widen) for v in value)
    if isinstance(value, dict):
        return {k: _to_meta(v, widen) for k, v in value.items()}
    return value


def _walk(value: Any, path: tuple[Any, ...]) -> list[tuple[tuple[Any, ...], torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        return [(path, value)]
    if isinstance(value, (list, tuple)):
        return [hit for i, v in enumerate(value) for hit in _walk(v, (*path, i))]
    if isinstance(value, dict):
        return [hit for k, v in value.items() for hit in _walk(v, (*path, k))]
    return []


def _top_level_tensors(args: tuple, kwargs: dict) -> list[tuple[tuple[str, Any], torch.Tensor]]:
    """Every input tensor with its location: ``("arg", i)`` / ``("kwarg", name)`` at the top level,
    ``("arg", (i, key, ...))`` inside (nested) dicts, lists and tuples (a batch passed as a dict)."""
    out: list[tuple[tuple[str, Any], torch.Tensor]] = []
    for kind, items in (("arg", list(enumerate(args))), ("kwarg", list(kwargs.items()))):
        for top, v in items:
            for path, t in _walk(v, (top,)):
                out.append(((kind, path[0] if len(path) == 1 else path), t))
    return out


class _MixingMode(TorchDispatchMode):
    """Records the symbols of every dim an op contracts (matmul), attends over or softmax-normalises."""

    def __init__(self) -> None:
        super().__init__()
        self.mixed: set[Any] = set()
        self.views: list[tuple[tuple[Any, ...], Any]] = []  # (input size exprs, output dim-0 expr)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        dims: tuple[tuple[int, int], ...] = _MIXING.get(func, ())
        if func in _SOFTMAX and len(args) > 1:
            dims = ((0, int(args[1])),)
        for i, d in dims:
            v = args[i] if i < len(args) else None
            if isinstance(v, torch.Tensor) and v.dim() >= abs(d) and v.dim() > 0:
                self.mixed |= _symbols(v.shape[d])
        out = func(*args, **kwargs)
        if (
            func in _VIEWS
            and isinstance(out, torch.Tensor)
            and out.dim() > 0
            and isinstance(args[0], torch.Tensor)
        ):
            self.views.append((tuple(_expr(s) for s in args[0].shape), _expr(out.shape[0])))
        return out


def _trace_shapes(
    model: nn.Module, args: tuple, kwargs: dict, shorten: bool, widen: bool
) -> tuple[dict[str, list[tuple[Any, ...]]], list[tuple[tuple[str, int | str], tuple[Any, ...]]], set[Any]]:
    """Run a meta skeleton on fake inputs whose every dim is its own symbol.

    Returns (norm skeleton FQN -> input shapes per call, model input shapes, mixed symbols).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

    from fxparam.capture import meta_skeleton

    skeleton, _reduced = meta_skeleton(model, shorten=shorten)
    seen: dict[str, list[tuple[Any, ...]]] = {}
    for fqn, m in skeleton.named_modules():
        if isinstance(m, PerExampleNormMixin):
            m.__class__ = m.base_class  # the skeleton is a copy: run the plain norm
            m.register_forward_pre_hook(
                lambda _m, a, fqn=fqn: seen.setdefault(fqn, []).append(tuple(a[0].shape))
            )
    shape_env = ShapeEnv(duck_shape=False)  # equal sizes (B == T) still get their own symbols
    fake_mode = FakeTensorMode(shape_env=shape_env, allow_non_fake_inputs=True)

    def fake(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            meta = _to_meta(value, widen)
            ctx = StatelessSymbolicContext(
                dynamic_sizes=[DimDynamic.DYNAMIC] * meta.dim(), constraint_sizes=[None] * meta.dim()
            )
            return fake_mode.from_tensor(meta, symbolic_context=ctx)
        if isinstance(value, (list, tuple)):
            return type(value)(fake(v) for v in value)
        if isinstance(value, dict):
            return {k: fake(v) for k, v in value.items()}
        return value

    fargs, fkwargs = fake(tuple(args)), fake(dict(kwargs))
    inputs = [(loc, tuple(t.shape)) for loc, t in _top_level_tensors(fargs, fkwargs)]
    mixing = _MixingMode()
    with torch.no_grad(), fake_mode, mixing:
        skeleton(*fargs, **fkwargs)
    return seen, inputs, (mixing.mixed, mixing.views)


_CACHE: dict[Any, tuple[dict[str, ExampleLayout], tuple[str, int | str, int] | None]] = {}
_CACHE_MAX = 64


def _structure_key(model: nn.Module, args: tuple, kwargs: dict) -> Any:
    """What the layouts can depend on: module tree, classes, plain settings, input ranks and dtypes."""
    mods = []
    for fqn, m in model.named_modules():
        plain = tuple(
            sorted((k, v) for k, v in vars(m).items() if isinstance(v, (bool, int, float, str, type(None))))
        )
        mods.append((fqn, type(m), plain))
    ins = tuple((loc, t.dim(), t.dtype) for loc, t in _top_level_tensors(tuple(args), dict(kwargs)))
    others = tuple(
        (i, v)
        for i, v in [*enumerate(args), *kwargs.items()]
        if isinstance(v, (bool, int, float, str, type(None)))
    )
    return (tuple(mods), ins, others)


def find_layouts(
    model: nn.Module, args: tuple, kwargs: dict
) -> tuple[dict[str, ExampleLayout], tuple[str, int | str, int] | None]:
    """Each per-example norm's :class:`ExampleLayout`, and where the example count sits in the inputs.

    Args:
        model: a model whose norms were swapped (``fxparam.gns.swap_norms``); not modified.
        args, kwargs: the inputs of one forward (any device; only shapes are used).

    Returns:
        ``({norm FQN: layout}, ("arg", i, dim) | ("kwarg", name, dim))``. Norms are keyed by
        their FQN in ``model``; every module instance appears once (a shared module by its first
        name).

    Raises:
        GNSError: the export failed, no single unmixed input symbol reaches the norms, or a
            norm's input has no example dim; the message names the norm(s) and ``batch_dim=``.

    Example:
        >>> from fxparam.models.gpt import GPT, GPTConfig
        >>> from fxparam.gns import swap_norms
        >>> model = GPT(GPTConfig(width=32, depth=1, head_dim=16)); _ = swap_norms(model)
        >>> layouts, loc = find_layouts(model, (torch.zeros(3, 8, dtype=torch.long),), {})
        >>> layouts["ln_f"].dim, loc
        (0, ('arg', 0, 0))
    """
    try:
        key = _structure_key(model, args, kwargs)
        hash(key)
    except TypeError:
        key = None
    if key is not None and key in _CACHE:
        layouts, loc = _CACHE[key]
        return dict(layouts), loc
    layouts, loc = _find_layouts(model, args, kwargs)
    if key is not None:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = (dict(layouts), loc)
    return layouts, loc


def _find_layouts(
    model: nn.Module, args: tuple, kwargs: dict
) -> tuple[dict[str, ExampleLayout], tuple[str, int | str, int] | None]:
    norms: dict[int, str] = {}
    for fqn, m in model.named_modules():
        if isinstance(m, PerExampleNormMixin):
            norms.setdefault(id(m), fqn)
    errors: list[BaseException] = []
    result = None
    for shorten, widen in ((True, True), (False, True), (True, False), (False, False)):
        try:
            result = _trace_shapes(model, args, kwargs, shorten, widen)
            break
        except Exception as exc:  # noqa: BLE001 - reported below with the fix
            errors.append(exc)
    if result is None:
        exc = errors[-1]
        raise GNSError(
            f"fxparam.gns: could not trace {type(model).__name__} to find which input dim of each norm indexes "
            f"examples ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); {_FIX}"
        ) from exc
    seen, inputs, (mixed, views) = result
    input_syms: dict[Any, tuple[str, int | str, int]] = {}
    for (kind, key), shape in inputs:
        for d, size in enumerate(shape):
            if isinstance(size, torch.SymInt) and size.node.expr.is_Symbol:
                input_syms.setdefault(size.node.expr, (kind, key, d))
    reaching = set()
    for shapes in seen.values():
        for shape in shapes:
            for size in shape[:-1]:
                reaching |= _symbols(size)
    candidates = [s for s in input_syms if s not in mixed and s in reaching]
    tracked = sorted(set(norms.values()))
    shown = f"{tracked[:4]}{'...' if len(tracked) > 4 else ''}"
    if len(candidates) > 1:
        # Nothing mixes positions either (no attention): prefer the dim that leads every norm input.
        leading = [
            s
            for s in candidates
            if all(_expr(sh[0]) == s for shapes in seen.values() for sh in shapes if len(sh) > 1)
        ]
        where = ", ".join(f"{k}[{key!r}] dim {d}" for s, (k, key, d) in input_syms.items() if s in candidates)
        if len(leading) != 1:
            raise GNSError(
                f"fxparam.gns: cannot tell which input dim indexes examples for the norms {shown} of "
                f"{type(model).__name__}: several model-input dims ({where}) reach the norms and none is mixed "
                f"(no attention, matmul or softmax over them), so examples and positions look alike; {_FIX}"
            )
        k, key, d = input_syms[leading[0]]
        warnings.warn(
            f"fxparam.gns: several model-input dims ({where}) of {type(model).__name__} reach the norms {shown} "
            f"and none is mixed by attention/matmul/softmax, so examples cannot be told from positions; using "
            f"the one leading every norm input ({k}[{key!r}] dim {d}). If that is wrong, {_FIX}",
            stacklevel=3,
        )
        candidates = leading
    if not candidates:
        raise GNSError(
            f"fxparam.gns: cannot tell which input dim indexes examples for the norms {shown} of "
            f"{type(model).__name__}: no model-input dim reaches the norms without being mixed (contracted by a "
            f"matmul, attended over, or softmax-normalised); {_FIX}"
        )
    batch = candidates[0]
    layouts: dict[str, ExampleLayout] = {}
    bad: list[str] = []
    skel_to_real = {fqn: fqn for fqn in tracked}
    for fqn in tracked:
        # Blocks cut from the skeleton behave like the last kept one: the same layout.
        skel = fqn
        if skel not in seen:
            for name in seen:
                if _same_position(name, fqn):
                    skel = name
                    break
        shapes = seen.get(skel)
        if not shapes:
            bad.append(f"{fqn!r} (not called in the traced forward)")
            continue
        found: set[ExampleLayout] = set()
        for shape in shapes:
            dims = [d for d, size in enumerate(shape[:-1]) if batch in _symbols(size)]
            if len(dims) != 1:
                found.add(ExampleLayout(dim=-1))
                continue
            d = dims[0]
            if _expr(shape[d]) == batch:
                found.add(ExampleLayout(dim=d, source="found"))
            elif d == 0 and not _position_major(views, _expr(shape[0]), batch):
                found.add(ExampleLayout(dim=0, flat=True, source="found"))
            else:
                found.add(ExampleLayout(dim=-1))
        if len(found) != 1 or next(iter(found)).dim < 0:
            bad.append(
                f"{fqn!r} (input shapes {[tuple(str(_expr(s)) for s in sh) for sh in shapes]}, examples {batch})"
            )
            continue
        layouts[fqn] = next(iter(found))
    del skel_to_real
    if bad:
        raise GNSError(f"fxparam.gns: no single example dim in the input of norm(s) {'; '.join(bad)}; {_FIX}")
    return layouts, input_syms[batch]


def _position_major(views: list[tuple[tuple[Any, ...], Any]], flat: Any, batch: Any) -> bool:
    """Whether a view that made a leading ``flat`` dim merged other dims *before* the example dim.

    ``(T, B, H).view(T * B, H)`` interleaves examples (positions-major): the examples-major
    ``(examples, positions)`` reading of a flattened dim would be wrong, so such a norm is
    reported, not guessed.
    """
    for in_shape, out0 in views:
        if out0 != flat:
            continue
        prod: Any = 1
        for k, size in enumerate(in_shape):
            prod = prod * size
            if size == batch:
                if any(s != 1 for s in in_shape[:k]):
                    return True
                break
            if prod == flat:
                break
    return False


def _same_position(skeleton_name: str, fqn: str) -> bool:
    """Whether ``fqn`` (e.g. ``blocks.7.ln_1``) is a block cut from the skeleton whose kept copy is ``skeleton_name``."""
    a, b = skeleton_name.split("."), fqn.split(".")
    if len(a) != len(b):
        return False
    return all(x == y or (x.isdigit() and y.isdigit()) for x, y in zip(a, b, strict=True))


# ------------------------------------------------------------------------------------------------ root


def _read_n(root: GNSRoot, args: tuple, kwargs: dict) -> int | None:
    if root.input_loc is None:
        return None
    kind, key, d = root.input_loc
    path = key if isinstance(key, tuple) else (key,)
    t: Any = args if kind == "arg" else kwargs
    for k in path:  # a nested location (a dict batch) is a tuple of keys
        try:
            t = t[k]
        except (IndexError, KeyError, TypeError):
            return None
    return int(t.shape[d]) if isinstance(t, torch.Tensor) and t.dim() > d else None


def _apply_override(root: GNSRoot) -> None:
    bd = root.batch_dim
    for fqn, m in root.norms.items():
        if isinstance(bd, int):
            m.set_example_layout(bd)  # type: ignore[attr-defined]
        elif isinstance(bd, dict) and fqn in bd:
            m.set_example_layout(int(bd[fqn]))  # type: ignore[attr-defined]


_PACKED = re.compile(r"cu_?seq_?lens", re.IGNORECASE)


def _packed_input(model: nn.Module, args: tuple, kwargs: dict) -> str | None:
    """The name of an input holding cumulative sequence lengths (``cu_seqlens``, ``cu_seq_lens_q``), if any."""
    named: dict[str, Any] = dict(kwargs)
    try:
        named.update(inspect.signature(model.forward).bind_partial(*args).arguments)
    except (TypeError, ValueError):
        pass
    for name, value in named.items():
        for path, t in _walk(value, (name,)):
            hit = next((str(k) for k in path if _PACKED.search(str(k))), None)
            if hit is not None and t.numel() > 0:
                return hit
    return None


def resolve(root: GNSRoot, model: nn.Module, args: tuple, kwargs: dict) -> None:
    """Find the layouts of ``root``'s norms from one forward's inputs (once), honouring overrides.

    Raises:
        GNSError: the layouts cannot be found (see :func:`find_layouts`), or the inputs are packed
            variable-length sequences (a ``cu_seqlens`` input): examples are then segments of one
            token dim, which a per-example norm cannot split.
    """
    if root.found:
        return
    packed = _packed_input(model, args, kwargs)
    if packed is not None:
        raise GNSError(
            f"fxparam.gns: {type(model).__name__} is called with packed variable-length sequences (input "
            f"{packed!r}): examples are segments of one token dim, and the per-example norms of "
            f"{sorted(root.norms)[:4]} cannot split them (each token or each packed row would be read as an "
            "example, a wrong noise scale). Feed padded (batch, sequence) inputs for the steps that measure "
            "GNS, or unswap the norms (fxparam.gns.unswap_norms)"
        )
    overridden = set()
    bd = root.batch_dim
    if isinstance(bd, int):
        overridden = set(root.norms)
    elif isinstance(bd, dict):
        unknown = sorted(set(bd) - set(root.norms))
        if unknown:
            raise GNSError(
                f"fxparam.gns: batch_dim names {unknown}, which are not tracked norms (tracked: {sorted(root.norms)})"
            )
        overridden = set(bd)
    all_overridden = overridden == set(root.norms)
    try:
        with warnings.catch_warnings():
            if all_overridden:  # the trace is only for where the example count sits in the inputs
                warnings.simplefilter("ignore")
            layouts, loc = find_layouts(model, args, kwargs)
    except GNSError:
        if not all_overridden:
            raise
        layouts, loc = {}, None
    for fqn, m in root.norms.items():
        if fqn not in overridden and fqn in layouts:
            m.set_example_layout(layouts[fqn])  # type: ignore[attr-defined]
    _apply_override(root)
    root.input_loc = loc
    root.found = True


class RootHook:
    """Forward pre-hook of a model with per-example norms: layouts at the first eager call, example count each call."""

    fxparam_hook = True

    def __init__(self, root: GNSRoot) -> None:
        self.root = root

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        root = self.root
        if torch.compiler.is_compiling():
            root.n = _read_n(root, args, kwargs)
            return
        if not root.found and torch.is_grad_enabled() and not _functorch_active():
            resolve(root, module, args, kwargs)
        root.forward_id += 1
        root.n = _read_n(root, args, kwargs)


def root_of(model: nn.Module) -> GNSRoot | None:
    """The :class:`GNSRoot` attached to ``model`` (None if none)."""
    for hook in model._forward_pre_hooks.values():
        if isinstance(hook, RootHook):
            return hook.root
    return None


def attach_root(model: nn.Module, batch_dim: int | dict[str, int] | None = None) -> GNSRoot:
    """Attach (or update) the shared state and pre-hook that give ``model``'s per-example norms their layout.

    Every per-example norm inside ``model`` joins the root; ``batch_dim`` (when given) replaces
    the found layouts: an int is that dim of every norm's input, a dict maps norm FQNs to dims.

    Raises:
        GNSError: ``batch_dim`` is neither an int, a dict nor None.
    """
    if batch_dim is not None and not isinstance(batch_dim, (int, dict)):
        raise GNSError(
            f"fxparam.gns: batch_dim must be an int, a {{norm FQN: int}} dict or None, got {batch_dim!r}"
        )
    root = root_of(model)
    if root is None:
        root = GNSRoot(batch_dim)
        model.register_forward_pre_hook(RootHook(root), with_kwargs=True)
    elif batch_dim is not None:
        root.batch_dim = batch_dim
        _apply_override(root)
    for fqn, m in model.named_modules(remove_duplicate=True):
        if isinstance(m, PerExampleNormMixin):
            st = m._gns
            if fqn not in root.norms and m not in root.norms.values():
                root.norms[fqn] = m
            st.root = root
            st.fqn = st.fqn or fqn
    if batch_dim is not None:
        _apply_override(root)
    return root


def detach_root(model: nn.Module) -> None:
    """Remove the root pre-hook :func:`attach_root` installed (``unswap_norms``)."""
    for key, hook in list(model._forward_pre_hooks.items()):
        if isinstance(hook, RootHook):
            del model._forward_pre_hooks[key]
            model._forward_pre_hooks_with_kwargs.pop(key, None)


def prepare(
    model: nn.Module, *args: Any, n_examples: int | None = None, **kwargs: Any
) -> dict[str, ExampleLayout]:
    """Get a model with per-example norms ready for ``torch.compile``: layouts found, gradient sinks allocated.

    Under ``torch.compile`` the per-example gradient sinks are graph inputs, so they must exist
    (for this number of examples) before the first compiled call; eager forwards allocate them
    by themselves. Call it with the inputs of one training forward (only their shapes are used:
    nothing runs on the model's device).

    Args:
        model: the model (swapped by ``fxparam.gns.swap_norms`` or ``fxparam.transform(..., "gns")``);
            a ``torch.compile`` / DDP wrapper is unwrapped.
        *args, **kwargs: the inputs of a forward call.
        n_examples: the number of examples per forward, when the example dim cannot be read off
            the inputs (every norm has a ``batch_dim`` override and the model cannot be traced).

    Returns:
        ``{norm FQN: ExampleLayout}``.

    Raises:
        GNSError: the model has no per-example norms, or the layouts / example count cannot be found.

    Example:
        >>> from fxparam.models.gpt import GPT, GPTConfig
        >>> from fxparam.gns import swap_norms
        >>> model = GPT(GPTConfig(width=32, depth=1, head_dim=16)); _ = swap_norms(model)
        >>> prepare(model, torch.zeros(4, 8, dtype=torch.long))["ln_f"]
        ExampleLayout(dim=0, flat=False, source='found')
    """
    from fxparam.gns._monitor import _unwrap

    inner = _unwrap(model)
    root = root_of(inner) or attach_root(inner)
    if not root.norms:
        raise GNSError(f"fxparam.gns.prepare: {type(inner).__name__} has no per-example norm modules")
    resolve(root, inner, tuple(args), dict(kwargs))
    n = n_examples if n_examples is not None else _read_n(root, tuple(args), dict(kwargs))
    if n is None:
        raise GNSError(
            "fxparam.gns.prepare: cannot read the number of examples off these inputs; pass n_examples="
        )
    device = next((p.device for p in inner.parameters()), torch.device("cpu"))
    for m in root.norms.values():
        names = tuple(k for k in ("weight", "bias") if isinstance(getattr(m, k, None), torch.Tensor))
        if not names:
            continue
        st = m._gns  # type: ignore[attr-defined]
        st.names = names
        hidden = (
            int(getattr(m, "weight", None).shape[0])
            if getattr(m, "weight", None) is not None
            else int(m.bias.shape[0])
        )  # type: ignore[union-attr]
        saved = (root.forward_id, st.pending)
        m._sink_for(n, hidden, device)  # type: ignore[attr-defined]
        root.forward_id, st.pending = saved[0], saved[1]
    return {fqn: m.example_layout for fqn, m in root.norms.items()}  # type: ignore[attr-defined]


__all__ = ["attach_root", "detach_root", "find_layouts", "prepare", "resolve", "root_of"]
