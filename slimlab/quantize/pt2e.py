"""The PT2E engine (torchao): torch.export, X86InductorQuantizer, prepare/convert, torch.compile lowering, a .pt2 file."""
from __future__ import annotations

import copy
import dataclasses
import functools
import io
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.fx import GraphModule, Interpreter

from slimlab.errors import ConfigError, require
from slimlab.quantize.configs import StaticConfig
from slimlab.quantize.engines import register_engine
from slimlab.quantize.error import sqnr_db
from slimlab.quantize.layers import resolve_skip

FORMAT = "torch.export"  # the deployable file: torch.export.save of the converted program, loaded by torch.export.load
WEIGHTED_OPS = ("conv1d", "conv2d", "conv3d", "linear")
EXPORT_BATCH = 4  # a batch of 1 would specialise the batch dimension; any larger example leaves it dynamic


def _torchao():
    require("torchao", "pt2e", "PT2E quantization")
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer

    return x86_inductor_quantizer


@functools.lru_cache(maxsize=1)
def has_vnni() -> bool:
    """Whether the CPU sums u8*s8 products in int32 (VNNI, AMX): then full 8-bit activations are safe."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def export_batch(example: torch.Tensor) -> torch.Tensor:
    """An example of EXPORT_BATCH images (repeated if fewer), so the exported batch dimension stays dynamic."""
    return example[:1].expand(EXPORT_BATCH, *example.shape[1:]).contiguous() if example.shape[0] < 2 else example[:EXPORT_BATCH]


def export_program(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """torch.export with a dynamic batch dimension (Dim.AUTO)."""
    with torch.no_grad():
        return torch.export.export(model, (export_batch(example),), dynamic_shapes=({0: torch.export.Dim.AUTO},))


def export_graph(model: nn.Module, example: torch.Tensor) -> GraphModule:
    """The exported graph to quantize, each call of a module called more than once made a module of its own: its own
    name (split_repeated_calls) and its own weights (untie_shared_weights)."""
    return untie_shared_weights(split_repeated_calls(export_program(model, example).module()))


def untie_shared_weights(graph: GraphModule) -> GraphModule:
    """A weight or bias read by more than one convolution or linear op (a module called twice) gets a copy per further
    op. Folding a batch norm into one call's weights rewrote the tensor in place, so a second call without that batch
    norm computed with the folded weights: a wrong model that reported success. Each call is then quantized on its own
    (its own scales), as the per-module engines do."""
    for node in list(graph.graph.nodes):
        users = [u for u in node.users if u.op == "call_function" and str(u.target).startswith("aten.")
                 and str(u.target).split(".")[1] in WEIGHTED_OPS]
        if node.op != "get_attr" or len(users) < 2:
            continue
        tensor = functools.reduce(getattr, node.target.split("."), graph)
        for index, user in enumerate(users[1:], start=1):
            name = f"{node.target.replace('.', '_')}_call{index}"
            copied = tensor.detach().clone()
            setattr(graph, name, nn.Parameter(copied, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else copied)
            with graph.graph.inserting_before(user):
                attr = graph.graph.get_attr(name)
            attr.meta = dict(node.meta)
            user.replace_input_with(node, attr)
    graph.recompile()
    return graph


def with_repeated_calls(graph: GraphModule, names: Sequence[str]) -> list[str]:
    """`names` and every further call of each ('conv@1'; split_repeated_calls), so that a skipped module stays float at
    every call."""
    calls = {fqn.removeprefix("L['self'].") for n in graph.graph.nodes for fqn, _ in (n.meta.get("nn_module_stack") or {}).values()}
    return list(names) + [c for c in sorted(calls) if c.partition("@")[0] in names and c.partition("@")[2].isdigit()]


def split_repeated_calls(graph: GraphModule) -> GraphModule:
    """Give every call of a module its own name in the nodes' module stacks ('layer1.0.relu@1' for the second call).

    The quantizer groups nodes into partitions by the innermost module's name, so one ReLU module called twice, as in
    torchvision's residual blocks, made one partition with two outputs, which X86InductorQuantizer rejects ("Input
    partition has more than one output node"). torch.export already tells the calls apart in the stack's keys."""
    for node in graph.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if not stack:
            continue
        key, (fqn, cls) = list(stack.items())[-1]
        call = key.rpartition("@")[2] if "@" in key else ""
        if call.isdigit() and not fqn.endswith(f"@{call}"):
            stack[key] = (f"{fqn}@{call}", cls)
    return graph


def x86_quantizer(observer: str, skip_names: Sequence[str], qat: bool = False):
    """X86InductorQuantizer: uint8 activations (chosen observer), symmetric per-channel int8 weights; skipped modules float."""
    xiq = _torchao()
    from torchao.quantization.pt2e import HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver

    # 7-bit activations only without VNNI, whose AVX2 kernels sum u8*s8 pairs in int16 and would saturate.
    config = xiq.get_default_x86_inductor_quantization_config(is_qat=qat, reduce_range=not has_vnni())
    if not qat:
        observers = {"minmax": MinMaxObserver, "moving_average": MovingAverageMinMaxObserver, "histogram": HistogramObserver}
        spec = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=observers[observer].with_args(eps=2**-12))
        config = dataclasses.replace(config, input_activation=spec, output_activation=spec)
    quantizer = xiq.X86InductorQuantizer().set_global(config)
    for name in skip_names:
        quantizer.set_module_name_qconfig(name, None)
    return quantizer


class Lowered(nn.Module):
    """`module` compiled by torch.compile with inductor freezing (weights become constants, so int8 conv and linear
    patterns fuse into oneDNN kernels), for inference. Freezing is switched on around each call only, so no process-wide
    inductor setting is left changed. Batch sizes of 2 and more share one compilation; batch 1 gets its own."""

    def __init__(self, module: nn.Module):
        super().__init__()
        # Neither is a submodule: eval()/train() must not reach an exported graph, which refuses them.
        object.__setattr__(self, "module", module)
        object.__setattr__(self, "_compiled", torch.compile(module))
        self.compilations = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(False), torch.no_grad(), torch._inductor.config.patch(freezing=True):
            # A tensor made under inference_mode has other dispatch keys, which would make dynamo compile again.
            x = x.clone() if x.is_inference() else x
            if self.compilations == 0 and x.shape[0] > 1:
                torch._dynamo.mark_dynamic(x, 0)
                self.compilations += 1
            return self._compiled(x)


class PT2EModule(nn.Module):
    """A PT2E-quantized program behind nn.Module's call: calls run its torch.compile lowering (compiled on first call).

    `program` is the converted graph (quantize/dequantize ops around float ops, int8 weights); `reference` the observed
    float graph it came from (BN folded, same node names), kept for the per-layer error. Neither is a registered
    submodule, so parameter counts fall back to the float model handed to the engine."""

    def __init__(self, program: GraphModule, reference: GraphModule | None = None, compiled: bool = True):
        super().__init__()
        object.__setattr__(self, "program", _drop_unused_parameters(program))
        object.__setattr__(self, "reference", reference)
        self.compiled = compiled
        self._lowered: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.compiled:
            return self.program(x.cpu())
        if self._lowered is None:
            self._lowered = Lowered(self.program)
        return self._lowered(x.cpu())

    def __deepcopy__(self, memo) -> "PT2EModule":
        return PT2EModule(copy.deepcopy(self.program, memo), self.reference, self.compiled)  # the lowering is rebuilt

    def exported(self, example: torch.Tensor) -> torch.export.ExportedProgram:
        """The converted program as a torch.export program (dynamic batch)."""
        return export_program(self.program, example.cpu())

    def deployable(self, example: torch.Tensor) -> tuple[bytes, str]:
        """The .pt2 file (torch.export.save): loads with torch.export.load(path).module(), without slimlab or TorchScript."""
        return save_program(self.exported(example)), FORMAT

    def layer_rows(self) -> list[dict]:
        """One row per weighted op: its module, op, int8 if its weight passes a dequantize node, and its weight count."""
        values = {n.name: functools.reduce(getattr, n.target.split("."), self.program) for n in self.program.graph.nodes if n.op == "get_attr"}
        rows = []
        for node in _weighted_nodes(self.program):
            weight = node.args[1]
            quantized = weight.op == "call_function" and "dequantize" in str(weight.target)
            source = weight.args[0] if quantized else weight
            tensor = values.get(source.name)
            rows.append({"name": module_name(node), "call": call_index(node), "type": str(node.target).split(".")[1],
                         "weight_dtype": str(tensor.dtype).removeprefix("torch.") if tensor is not None else "float32",
                         "weights": tensor.numel() if tensor is not None else 0})
        return rows

    @torch.no_grad()
    def layer_table(self, batches: Sequence[torch.Tensor]) -> list[dict]:
        """layer_rows with two SQNRs per int8 layer against the float reference: `sqnr_db` of its output in the quantized
        program (error accumulated up to here) and `local_sqnr_db`, the float input quantized with this layer's own
        input scale (this layer alone; used to pick layers to skip)."""
        rows = self.layer_rows()
        if self.reference is None:
            return rows
        nodes = _weighted_nodes(self.program)
        energy = [[0.0, 0.0, 0.0] for _ in nodes]
        for x in batches:
            floats = _Recorder(self.reference).outputs(x.cpu())
            quants = _Recorder(self.program).outputs(x.cpu(), floats)
            for e, key in zip(energy, (_key(n, nodes) for n in nodes)):
                if key in floats and key in quants and quants[key][1] is not None:
                    f_out, (q_out, alone) = floats[key][1], quants[key]
                    e[0] += f_out.pow(2).sum().item()
                    e[1] += (f_out - q_out).pow(2).sum().item()
                    e[2] += (f_out - alone).pow(2).sum().item()
        for row, e in zip(rows, energy):
            if row["weight_dtype"] == "int8" and e[0] > 0:
                row.update(sqnr_db=sqnr_db(e[0], e[1]), local_sqnr_db=sqnr_db(e[0], e[2]))
        return rows


KEPT_META = ("val", "tensor_meta", "nn_module_stack")  # shapes, and which module each op came from


def save_program(program: torch.export.ExportedProgram) -> bytes:
    """torch.export.save bytes without the tracing process's call stacks and provenance (paths of this machine, a
    third of the file) and without the example inputs."""
    for node in program.graph.nodes:
        for key in [k for k in node.meta if k not in KEPT_META]:
            del node.meta[key]
    program._example_inputs = None
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def module_name(node: torch.fx.Node) -> str:
    """The name of the module an exported node came from ('layer1.0.conv1'), from its nn_module_stack."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0].removeprefix("L['self'].").partition("@")[0] if stack else node.name


def call_index(node: torch.fx.Node) -> int:
    """Which call of its module an exported node belongs to: 0, or k for the module's (k+1)th call ('conv@1')."""
    stack = node.meta.get("nn_module_stack") or {}
    call = list(stack.values())[-1][0].partition("@")[2] if stack else ""
    return int(call) if call.isdigit() else 0


def _weighted_nodes(graph_module: GraphModule) -> list[torch.fx.Node]:
    return [n for n in graph_module.graph.nodes
            if n.op == "call_function" and str(n.target).startswith("aten.") and str(n.target).split(".")[1] in WEIGHTED_OPS]


def _key(node: torch.fx.Node, nodes: list[torch.fx.Node]) -> tuple[str, int]:
    """(module name, occurrence): the same layer in the reference and in the converted program."""
    name = module_name(node)
    return name, [module_name(n) for n in nodes[: nodes.index(node)]].count(name)


class _Recorder(Interpreter):
    """Runs a graph and keeps each weighted op's (input, output); given the float inputs, also the op on its float input
    quantized with the op's own input scale."""

    def outputs(self, x: torch.Tensor, floats: dict | None = None) -> dict:
        self.nodes, self.floats, self.seen = _weighted_nodes(self.module), floats, {}
        self.run(x)
        return self.seen

    def run_node(self, node: torch.fx.Node):
        out = super().run_node(node)
        if node in self.nodes:
            key = _key(node, self.nodes)
            if self.floats is None:
                self.seen[key] = (self.env[node.args[0]] if isinstance(node.args[0], torch.fx.Node) else None, out.clone())
            else:
                self.seen[key] = (out.clone(), self._alone(node, self.floats.get(key, (None, None))[0]))
        return out

    def _alone(self, node: torch.fx.Node, float_input: torch.Tensor | None) -> torch.Tensor | None:
        dequant = node.args[0]
        if float_input is None or not (isinstance(dequant, torch.fx.Node) and "dequantize_per_tensor" in str(dequant.target)):
            return None
        params = [self.env[a] if isinstance(a, torch.fx.Node) else a for a in dequant.args[1:]]
        quantize = torch.ops.quantized_decomposed.quantize_per_tensor
        fed = dequant.target(quantize.tensor(float_input, *params) if isinstance(params[0], torch.Tensor)
                             else quantize.default(float_input, *params), *params)
        args = [fed, *(self.env[a] if isinstance(a, torch.fx.Node) else a for a in node.args[1:])]
        return node.target(*args, **node.kwargs)


def _drop_unused_parameters(program: GraphModule) -> GraphModule:
    """Delete the float weights the converted graph no longer reads (their int8 copies replaced them), so neither the
    .pt2 file nor the memory holds both."""
    used = {n.target for n in program.graph.nodes if n.op == "get_attr"}
    for name, _ in list(program.named_parameters()):
        if name not in used and not any(u.startswith(name + ".") for u in used):
            owner, _, attr = name.rpartition(".")
            delattr(program.get_submodule(owner) if owner else program, attr)
    return program


def copy_graph(graph: torch.fx.Graph) -> torch.fx.Graph:
    """A new graph of the same nodes (their meta copied shallowly) sharing `graph`'s codegen. Not copy.deepcopy: that
    rebuilds the pytree specs in an exported graph's codegen through torch's deprecated LeafSpec constructor (a
    FutureWarning on every PT2E quantization), and neither prepare nor convert changes the codegen."""
    new = torch.fx.Graph(tracer_cls=graph._tracer_cls)
    value, old_output = new.graph_copy(graph, {}, return_output_node=True)
    new._codegen = graph._codegen
    new.output(value, type_expr=getattr(old_output, "type", None)).meta = copy.copy(old_output.meta)
    return new


def calibrate(prepared: GraphModule, batches: Sequence[torch.Tensor]) -> None:
    """Run the calibration batches through the observers."""
    with torch.no_grad():
        for x in batches:
            prepared(x.cpu())


@register_engine("pt2e")
def quantize_pt2e(model: nn.Module, config: StaticConfig, calibration: Sequence[torch.Tensor]) -> PT2EModule:
    """Static int8 PTQ through torchao's PT2E: export, X86InductorQuantizer, observe, convert; the input is not changed."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if not config.per_channel:
        raise ConfigError("per_channel: the pt2e engine (X86InductorQuantizer) quantizes weights per channel only")
    _torchao()
    model = copy.deepcopy(model).cpu().eval()
    skip_names = resolve_skip(model, config.skip)
    graph = export_graph(model, calibration[0])
    prepared = prepare_pt2e(graph, x86_quantizer(config.observer, with_repeated_calls(graph, skip_names)))
    calibrate(prepared, calibration)
    # The observed graph passes values through its observers: the float graph with BN folded and the node names of the
    # converted one, the reference of the per-layer error. A new graph over the same modules, since convert rewrites it.
    reference = GraphModule(prepared, copy_graph(prepared.graph))
    return PT2EModule(convert_pt2e(prepared), reference)


def load_program(path: str | Path, compiled: bool = True) -> nn.Module:
    """A saved .pt2 program, lowered with torch.compile as the run measured it (or as exported if not `compiled`)."""
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers the quantized_decomposed ops the program calls)

    program = torch.export.load(str(path)).module()
    return PT2EModule(program) if compiled else program


class PT2EQATModel(nn.Module):
    """A prepare_qat_pt2e graph to fine-tune through the one training loop: train()/eval() move its exported batch norm
    and dropout between modes (an exported graph ignores the flag), and batch norm stays in eval once frozen."""

    def __init__(self, graph: GraphModule):
        super().__init__()
        self.graph = graph
        self.bn_frozen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)

    def train(self, mode: bool = True) -> "PT2EQATModel":
        from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

        self.training = mode
        (move_exported_model_to_train if mode and not self.bn_frozen else move_exported_model_to_eval)(self.graph)
        return self

    def freeze_bn_stats(self) -> None:
        """Batch norm uses its running statistics from now on, in training too."""
        self.bn_frozen = True
        self.train(self.training)


def prepare_qat_pt2e(model: nn.Module, skip: Sequence[str], example: torch.Tensor) -> PT2EQATModel:
    """Export in training mode and insert fake quantizers (X86InductorQuantizer, QAT settings); `model` is not changed."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e as prepare

    _torchao()
    model = copy.deepcopy(model).cpu().train()
    graph = export_graph(model, example.cpu())
    skipped = with_repeated_calls(graph, resolve_skip(model, skip))
    return PT2EQATModel(prepare(graph, x86_quantizer("moving_average", skipped, qat=True))).train()


def convert_qat_pt2e(model: PT2EQATModel) -> PT2EModule:
    """The fine-tuned graph -> int8 program (BN folded with its final statistics), lowered by torch.compile when called."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    graph = GraphModule(model.graph, copy_graph(model.graph.graph))  # convert rewrites the graph it is given
    graph.meta.update(model.graph.meta)  # what prepare recorded for convert
    move_exported_model_to_eval(graph.cpu())
    return PT2EModule(convert_pt2e(graph))
