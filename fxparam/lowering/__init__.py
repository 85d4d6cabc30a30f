"""Lowerings: eager (default, in place), graph (GraphModule), compile (Dynamo backend)."""

from fxparam.lowering.eager import lower_eager, plan_of, unwrap

__all__ = ["lower_eager", "plan_of", "unwrap"]
