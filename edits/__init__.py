"""Operators that change a model: learn, edit, forget, compress, merge. One small file per method.

Every method has the same shape: a typed config dataclass and one function
``(net, data, config, env) -> list[ComponentDraft]``, registered with :func:`register_method`
(like timm's ``@register_model``). Operators never touch the registry, the ledger or the gate, and
read samples only through the data layer. A method's module is imported when a step first asks for
it (:data:`edits.registry.BUILTIN_METHODS`), so importing ``edits`` costs nothing.
"""

from edits.registry import BUILTIN_METHODS, Method, OperatorEnv, get_method, list_methods, register_method

__all__ = ["BUILTIN_METHODS", "Method", "OperatorEnv", "get_method", "list_methods", "register_method"]
