"""What the analysis found, as JSON-serialisable pydantic records keyed by FQN."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["embedding", "hidden", "readout", "vector", "frozen"]


class _Fact(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ParamInfo(_Fact):
    """One parameter (every FQN, tied aliases included).

    Attributes:
        role: embedding (input side), hidden (width->width matmul), readout (width->fixed
            output), vector (biases, gains, other parameters without a matmul).
        fan_in_width / fan_out_width: whether that dimension grows with model width.
        fan_in / fan_out: sizes of those dimensions (None for vectors' fan-in).
        fan_in_dim: which tensor dimension is the fan-in (1 for torch Linear [out, in],
            0 for embeddings and HF Conv1D [in, out]); None for vectors.
        module: FQN of the module that owns the parameter.
        block: FQN of the residual block it sits in, if any.
        tied_to: for an alias of a shared Parameter, the FQN that owns the rules.
        used: False when the parameter never appears in the captured forward.
        width_dims: the tensor axes that are width dims (tied to the residual stream or
            derived from it), from dimension identities (fxparam.analysis.dims).
        reason: why this role, in a few words (the use, its fan-in and fan-out dims).
        multiplier_at: where the readout multiplier alpha_out/m_d goes (a Plan.multipliers
            key: ``input:<module>`` or a module whose output is the readout's input), for
            readouts and for an embedding table that is also read out functionally.
    """

    role: Role
    shape: list[int]
    fan_in_width: bool
    fan_out_width: bool
    fan_in: int | None = None
    fan_out: int | None = None
    fan_in_dim: int | None = None
    module: str
    block: str | None = None
    tied_to: str | None = None
    used: bool = True
    width_dims: list[int] = Field(default_factory=list)
    reason: str = ""
    multiplier_at: str | None = None


class ResidualSite(_Fact):
    """A residual add: ``stream = skip + branch(es)``.

    Attributes:
        block: FQN of the repeated block that holds the add.
        branch: FQN of the module whose output is added (the first, for parallel residuals).
        branches: all branch modules added at this site (two for GPT-J / NeoX parallel blocks).
        output_modules: the innermost modules whose outputs are the branch values (up to
            linear ops such as dropout, views, a constant or LayerScale gain): where a
            branch multiplier is applied; never a module whose output includes the skip.
            Empty when the branch is computed inline by the module that adds it.
        stream: which residual stream the site is on (0 for decoder-only models; an
            encoder-decoder has two, each with its own depth).
        application: the nth application of ``block`` on its stream (a block module
            applied n times in a loop has n applications, each one residual block).
        unscalable: why ``output_modules`` is empty (the branch is computed inline, or its
            last module is also called outside every branch); depth configs refuse it.
        own_factor: the product of the scalar constants the model's forward puts between the
            branch's output module and the add (``0.5 * attn(x)``, ``proj(y) / sqrt(2 * L)``, a
            one-element buffer read on the real model; 1 for it on meta); depth configs warn when it looks like a depth rule of the model's own.
    """

    block: str
    branch: str
    branches: list[str]
    output_modules: list[str]
    stream: int = 0
    application: int = 0
    unscalable: str = ""
    own_factor: float = 1.0


class AttentionSite(_Fact):
    """An attention softmax, with its logit scale as captured.

    Attributes:
        module: FQN of the module that calls attention.
        head_dim: size of the query/key vectors.
        scale: the logit scale in use (SDPA's default 1/sqrt(head_dim) made explicit), read
            per layer (a model's own per-layer factors, e.g. GPT-2's 1/layer, are kept);
            None for a softmax over q.k whose scale fxparam could not find (a warning).
        kind: "sdpa" or "manual" (matmul, scale, softmax).
        scale_attr: the module attribute holding the scale (``scaling``, ``scale``...), if any;
            the eager lowering sets it.
        wide_head_dim: the head dim in a second build at twice the width (``rebuild=``), None
            without one: larger than ``head_dim`` when the head dim grows with width (heads fixed).
        softmax_index: for a softmax-based ("manual") site, which softmax of the module's call it is
            (0 = the first, counted in call order, nested modules included): a coord check reads the
            attention logits at that softmax only, not at a router's or gate's; None for SDPA.
        wide_scale: the logit scale in that build, read where the head dim grows: tells a model's
            own 1/sqrt(d_head) (SP) from a 1/d_head it already has (muP-style user code).
    """

    module: str
    head_dim: int
    scale: float | None
    kind: Literal["sdpa", "manual"]
    scale_attr: str | None = None
    scale_attr_module: str | None = None
    wide_head_dim: int | None = None
    wide_scale: float | None = None
    softmax_index: int | None = None


class WidthConstant(_Fact):
    """A constant in the forward that changes with width (issue 13, case 10).

    Attributes:
        module: FQN of the module whose forward applies it ("" for the root).
        value: its value at this width.
        exponent: k in value ~ width^k.
        scales: the module where muP divides it out with a multiplier m_d^-k: the module whose
            output it (only) scales (an embedding, a norm) or, with ``on="input"``, the module
            whose input is (only) its result (a readout fed ``h * d**-0.5``).  None: not corrected
            (a warning and a note say so).
        on: "output" or "input" of ``scales``.
        evidence: the two values from a second build, or the power of the width it equals.
    """

    module: str
    value: float
    exponent: float
    scales: str | None = None
    on: Literal["output", "input"] = "output"
    evidence: str = ""


class NormSite(_Fact):
    """A normalisation layer (its gain / bias are vectors)."""

    module: str
    kind: Literal["layernorm", "rmsnorm"]
    params: list[str] = Field(default_factory=list)
    module_class: str = ""


class Analysis(_Fact):
    """Structure of a model as fxparam sees it.  ``print(analysis)`` shows a table."""

    model_class: str
    width: int | None = Field(description="residual-stream (or hidden matmul fan-in) size")
    depth: int = Field(description="residual blocks applied along the deepest residual stream")
    blocks: list[str]
    stream_depths: list[int] = Field(default_factory=list, description="depth of each residual stream")
    residuals: list[ResidualSite]
    params: dict[str, ParamInfo]
    attention: list[AttentionSite]
    tied: list[list[str]]
    norms: list[NormSite]
    capture_method: str = "export"
    notes: list[str] = Field(default_factory=list, description="warnings and decisions (unclassified parameters...)")
    width_constants: list[WidthConstant] = Field(default_factory=list)
    forward_constants: list[WidthConstant] = Field(
        default_factory=list,
        description="without a second build: other constants that alone scale a module's input or output "
                    "(exponent unknown); the width passes warn when one equals m_d^k",
    )
    capture_seconds: float = 0.0

    def to_json(self, **kwargs: object) -> str:
        return self.model_dump_json(indent=2, **kwargs)

    @classmethod
    def from_json(cls, text: str) -> Analysis:
        return cls.model_validate_json(text)

    def by_role(self, role: Role) -> list[str]:
        return [name for name, p in self.params.items() if p.role == role]

    def __str__(self) -> str:
        from fxparam.analysis.report import format_analysis

        return format_analysis(self)
