"""Lowerings: eager (default, in place), graph (GraphModule), compile (Dynamo backend).

``plan_of`` and ``unwrap`` live in :mod:`fxparam.plan` (re-exported here).
"""

from fxparam.lowering.eager import lower_eager
from fxparam.plan import plan_of, unwrap

__all__ = ["lower_eager", "plan_of", "unwrap"]
