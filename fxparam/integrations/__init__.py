"""Training-framework integrations: give each framework fxparam's planned param groups.

- :mod:`fxparam.integrations.hf_trainer`: Hugging Face ``Trainer`` (``optimizer_cls_and_kwargs``,
  works under FSDP because the optimizer is built from the wrapped model).
- :mod:`fxparam.integrations.lightning`: Lightning ``configure_optimizers``.
- :mod:`fxparam.integrations.torchtitan`: a torchtitan model converter that applies the plan when
  torchtitan builds the model.

Each module imports its framework lazily; nothing here is imported by ``import fxparam``.
"""
