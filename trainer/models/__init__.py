"""Detectors behind one contract (see ``contract.py``), built by name from ``configs/model/<name>.yaml``.

Adding a model is one module here with a ``@register_model("name")`` builder plus ``configs/model/<name>.yaml``:
every module below that is not part of the machinery is imported, which registers its models.
"""
import importlib
import pkgutil

from trainer.models.checkpoint import load_trained_model
from trainer.models.contract import DetectorContract
from trainer.models.groups import parameter_groups
from trainer.models.registry import available_models, build_model, register_model, weights_plan

_MACHINERY = {"checkpoint", "contract", "groups", "registry", "weights"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _MACHINERY:
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["DetectorContract", "available_models", "build_model", "load_trained_model", "parameter_groups",
           "register_model", "weights_plan"]
