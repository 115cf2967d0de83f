"""Registry of compression steps (quantize, prune...) that run after training: config type + function per kind."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel, ValidationError



@dataclass(frozen=True)
class StepKind:
    config_type: type[BaseModel]
    apply: Callable[..., Any]  # apply(model, config, context) -> model


_STEPS: dict[str, StepKind] = {}


def register_step(kind: str, config_type: type[BaseModel]):
    """Register `fn(model, config, context) -> model` as the step named `kind`."""

    def wrap(fn):
        _STEPS[kind] = StepKind(config_type, fn)
        return fn

    return wrap


def step_kinds() -> dict[str, StepKind]:
    _load_builtin()
    return dict(_STEPS)


def validate_step(index: int, raw: dict) -> dict:
    """Check one step mapping {'kind': ..., ...}; returns it with defaults filled in (so the hash sees them)."""
    kinds = step_kinds()
    if not isinstance(raw, dict) or "kind" not in raw:
        raise ValueError(f"step {index} needs a 'kind' (one of: {', '.join(sorted(kinds)) or 'none registered'})")
    kind = raw["kind"]
    if kind not in kinds:
        raise ValueError(f"step {index}: unknown kind {kind!r} (known: {', '.join(sorted(kinds)) or 'none'})")
    body = {k: v for k, v in raw.items() if k != "kind"}
    try:
        parsed = kinds[kind].config_type.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        raise ValueError(f"step {index} ({kind}): {where + ': ' if where else ''}{msg}") from None
    return {"kind": kind, **parsed.model_dump(mode="json")}


def _load_builtin() -> None:
    # Step modules register themselves on import; absent packages simply add no steps.
    import importlib

    for name in ("slimlab.quantize", "slimlab.prune"):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
