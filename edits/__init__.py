"""Operators that change a model: learn, edit, forget, compress, merge. One small file per method.

Every method has the same shape: a typed config dataclass and one function
``(net, data, config, env) -> list[ComponentDraft]``, registered with :func:`register_method`
(like timm's ``@register_model``). Operators never touch the registry, the ledger or the gate, and
read samples only through the data layer.
"""

# The built-in methods register themselves on import; importing any ``edits`` module runs this first.
from edits import compress, edit, forget, learn, merge  # noqa: F401
from edits.registry import Method, OperatorEnv, get_method, list_methods, register_method

__all__ = ["Method", "OperatorEnv", "get_method", "list_methods", "register_method"]
