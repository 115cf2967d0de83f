"""The coverage record of a quantized model: per weighted layer, int8 or float and why; a one-line summary; no no-op.

Reasons a layer stays float: `user skip` (a skip pattern), `sensitivity fallback` (auto_skip_worst_k chose it),
`no dynamic kernel` (dynamic quantization: torch has none for convolutions), `engine fallback` (the engine left it
float, e.g. attention projections torch.ao's x86 engine has no module swap for), `unsupported op`.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable

from torch import nn

from slimlab.errors import SlimlabError
from slimlab.quantize.layers import attention_projections, called_module, layer_rows, matches

FLOAT_DTYPES = ("float32", "float64")


def layer_coverage(model: nn.Module) -> list[dict]:
    """One row per weighted layer of a quantized model of any engine: name, type, weight dtype, weight count."""
    if hasattr(model, "layer_rows"):  # PT2E programs and ONNX Runtime sessions list their own layers
        return model.layer_rows()
    return layer_rows(model)


def per_module(rows: list[dict], float_model: nn.Module | None) -> list[dict]:
    """The rows as one per weighted layer of the float model, whatever the engine: a module called more than once (its
    weights shared) is one row, int8 only if every call is (graph engines list each call: 'conv@1' in a PT2E program,
    'conv_1' in ONNX); and nn.MultiheadAttention's input projection, a parameter of the attention module that no module
    swap reaches, is a float row where the engine's rows do not list it (torch.ao's x86, dynamic)."""
    modules = dict(float_model.named_modules()) if float_model is not None else {}
    first: dict[str, dict] = {}
    kept = []
    for row in rows:
        if (module := called_module(row["name"], modules)) != row["name"]:
            row = {**row, "name": module, "call": int(row["name"].rpartition("_")[2])}
        if row.get("call") and (earlier := first.get(row["name"])) is not None:
            if row["weight_dtype"] in FLOAT_DTYPES:
                earlier["weight_dtype"] = row["weight_dtype"]
            continue
        row = {k: v for k, v in row.items() if k != "call"}
        first.setdefault(row["name"], row)
        kept.append(row)
    for name, module in modules.items():
        if isinstance(module, nn.MultiheadAttention):
            listed = sum(r["weights"] for r in kept if r["name"] == name or r["name"].startswith(f"{name}."))
            inside = sum(p.numel() for n, p in module.named_parameters() if "weight" in n)
            if listed < inside:  # the rows hold out_proj at most: the input projection is a parameter no swap reached
                kept.append({"name": f"{name}.in_proj", "type": "MultiheadAttention", "weight_dtype": "float32",
                             "weights": inside - listed})
    return kept + _unlisted(kept, modules)


def _unlisted(rows: list[dict], modules: dict[str, nn.Module]) -> list[dict]:
    """Float rows for the conv and linear modules an engine did not list at all: modules whose parent reads their
    weight itself (torchvision's Swin calls F.linear(x, self.qkv.weight)), so no engine that swaps modules sees them.
    A module counts as listed when a row names it, one of its parents (a graph engine names the op by the module that
    ran it) or one of its children."""
    names = [r["name"] for r in rows]
    def listed(name: str) -> bool:
        return any(n == name or name.startswith(f"{n}.") or n.startswith(f"{name}.") for n in names)
    return [{"name": name, "type": type(m).__name__, "weight_dtype": "float32", "weights": m.weight.numel(), "uncalled": True}
            for name, m in modules.items() if name and isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
            and getattr(m, "weight", None) is not None and not listed(name)]


def explain(rows: list[dict], float_model: nn.Module | None, method: str, user_skip: Iterable[str] = (),
            sensitivity_skip: Iterable[str] = (), engine: str = "", known_reasons: dict | None = None) -> list[dict]:
    """The rows with a `reason` on every float layer (see the module docstring)."""
    user_skip, sensitivity_skip = list(user_skip), list(sensitivity_skip)
    types = {n: type(m).__name__ for n, m in float_model.named_modules()} if float_model is not None else {}
    attention = attention_projections(float_model) if float_model is not None else []
    known = dict(known_reasons or {})
    for row in rows:
        if row["weight_dtype"] not in FLOAT_DTYPES:
            row["reason"] = ""
        elif matches(row["name"], sensitivity_skip):
            row["reason"] = "sensitivity fallback"
        elif matches(row["name"], user_skip):
            row["reason"] = "user skip"
        elif row["name"] in known:
            row["reason"] = known[row["name"]]
        elif row.pop("uncalled", False):
            row["reason"] = "unsupported op (its parent reads the weight; the module is never called)"
        elif row["name"] in attention or row["type"] == "MultiheadAttention":
            row["reason"] = "unsupported op (torch's attention reads this projection's weight itself)"
        elif method == "dynamic" and "Conv" in types.get(row["name"], row["type"]):
            row["reason"] = "no dynamic kernel"
        else:
            row["reason"] = f"engine fallback ({engine or method})"
    return rows


def summary(rows: list[dict]) -> str:
    """'41 of 53 layers int8; 12 float: 8 engine fallback (x86), 4 user skip'."""
    if not rows:
        return "no weighted layers"
    low = [r for r in rows if r["weight_dtype"] not in FLOAT_DTYPES]
    dtypes = Counter(r["weight_dtype"] for r in low)
    text = f"{len(low)} of {len(rows)} layers " + (", ".join(f"{n} {d}" for d, n in dtypes.items()) if len(dtypes) > 1 else
                                                    next(iter(dtypes), "int8"))
    floats = [r for r in rows if r["weight_dtype"] in FLOAT_DTYPES]
    if floats:
        why = Counter(r.get("reason") or "unexplained" for r in floats)
        text += f"; {len(floats)} float: " + ", ".join(f"{n} {reason}" for reason, n in why.most_common())
    return text


def refuse_no_op(rows: list[dict], method: str) -> None:
    """A quantization that left every layer float did nothing: one line saying why, instead of a run that claims int8."""
    if rows and all(r["weight_dtype"] in FLOAT_DTYPES for r in rows):
        reasons = Counter(r.get("reason") or "unexplained" for r in rows).most_common()
        first = next(r for r in rows)
        raise SlimlabError(f"{method} quantization left all {len(rows)} weighted layers float ({', '.join(f'{n} {w}' for w, n in reasons)}; "
                           f"first: {first['name']} {first['type']}): nothing was compressed")
    if not rows:
        raise SlimlabError(f"{method} quantization found no weighted layer in the model: nothing was compressed")
