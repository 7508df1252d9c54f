"""What a request may carry, checked before it reaches the model: every problem is a 4xx naming the part.

A request carries a task's raw fields (rte: `premise`, `hypothesis`), as the task's files hold them. Which
fields a task reads is not declared anywhere but in its formatter, so it is found by asking the formatter
(`input_fields`): a field is an input when changing its value changes the formatted text. Fields the
formatter needs only for targets or bookkeeping (labels, gold answers, ids) are optional and filled in.
"""

from __future__ import annotations

import functools
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from softprompt.tasks.base import Task
from softprompt.tasks.loading import field_problem

MODES = ("generate", "rank")
# Two values of each field kind: a field is an input when the formatted text differs between them.
_PROBES: dict[str, tuple[Any, Any]] = {"str": ("alpha beta gamma", "delta epsilon zeta"), "int": (0, 1),
                                       "bool": (False, True), "float": (0.0, 1.0),
                                       "list": ([], ["alpha"]), "dict": ({}, {"alpha": 1})}
# v2 (Open Inference Protocol) tensor datatypes a field kind accepts; the first is the one model metadata names.
# JSON carries every float the same way, so each float datatype of the protocol is accepted. A list field (ReCoRD's
# entities) varies in length per instance, which a rectangular tensor cannot hold: it is a BYTES tensor whose
# elements are JSON-encoded lists (metadata says so with the parameter content_type "json").
V2_DATATYPES: dict[str, tuple[str, ...]] = {
    "str": ("BYTES",), "bool": ("BOOL",), "float": ("FP32", "FP64", "FP16", "BF16"),
    "int": ("INT64", "INT8", "INT16", "INT32", "UINT8", "UINT16", "UINT32", "UINT64"), "list": ("BYTES",),
}
JSON_ENCODED = {"list"}  # field kinds sent in v2 as JSON text inside BYTES elements
BINARY_UNSUPPORTED = ("the binary tensor extension is not supported; send every tensor as JSON in its \"data\" "
                      "(no Inference-Header-Content-Length header, no binary_data parameters)")


class RequestError(Exception):
    """A bad request: the HTTP status and a message that says what is wrong and what to send instead."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after  # seconds, for a 503: when trying again is worth it


@dataclass(frozen=True)
class Limits:
    """params.yaml `serve:` limits on one request."""

    max_body_bytes: int
    max_instances: int
    max_input_tokens: int


def _filler(kind: str, position: int) -> Any:
    """A neutral value for a field the request left out (a label, a gold answer, an id)."""
    if kind == "dict":  # MultiRC / ReCoRD ids are dicts the formatter indexes for grouping only
        return defaultdict(lambda: position)
    return {"str": "", "int": position, "bool": False, "float": 0.0, "list": []}.get(kind)


def _probe_row(task: Task, overrides: dict[str, Any]) -> dict[str, Any]:
    row = {name: _PROBES[kind][0] if kind in _PROBES else None for name, kind in task.fields.items()}
    if task.fields.get(task.id_field) == "dict":
        row[task.id_field] = _filler("dict", 0)
    return {**row, **overrides}


def input_fields(task: Task) -> tuple[str, ...]:
    """The fields whose values reach the model's input text, in the task's field order."""
    return _input_fields(task.name)


@functools.cache
def _input_fields(name: str) -> tuple[str, ...]:
    from softprompt.tasks import get_task

    task = get_task(name)
    def inputs(row: dict[str, Any]) -> tuple[str, ...]:
        try:
            return tuple(e.inputs for e in task.format(row))
        except Exception:  # noqa: BLE001 - a probe value the formatter cannot take: the field matters
            return ("<error>",)

    plain = inputs(_probe_row(task, {}))
    if plain == ("<error>",):  # the formatter needs consistent values (WSC's spans): every raw field is needed
        return tuple(n for n, kind in task.fields.items() if kind != "label" and n != task.id_field)
    found = []
    for name, kind in task.fields.items():
        if kind in _PROBES and name != task.id_field and inputs(_probe_row(task, {name: _PROBES[kind][1]})) != plain:
            found.append(name)
    return tuple(found)


def check_instances(task: Task, instances: Any, limits: Limits, where: str = "instances") -> list[dict[str, Any]]:
    """The instances as rows the task's formatter takes, or a RequestError naming the first bad one."""
    if not isinstance(instances, list):
        raise RequestError(400, f"{where}: expected a JSON list of objects with {task.name}'s fields "
                                f"({', '.join(input_fields(task))}), got {_kind(instances)}")
    if not instances:
        raise RequestError(400, f"{where}: the list is empty; send at least one instance")
    if len(instances) > limits.max_instances:
        raise RequestError(413, f"{where}: {len(instances)} instances, more than the limit of {limits.max_instances} "
                                "per request (params.yaml serve.max_instances); split the request")
    return [check_instance(task, inst, i, f"{where}[{i}]") for i, inst in enumerate(instances)]


def check_instance(task: Task, instance: Any, position: int, where: str) -> dict[str, Any]:
    needed = input_fields(task)
    if not isinstance(instance, dict):
        raise RequestError(400, f"{where}: expected a JSON object with {task.name}'s fields ({', '.join(needed)}), "
                                f"got {_kind(instance)}")
    unknown = sorted(set(instance) - set(task.fields))  # a label or an id may come along
    if unknown:
        raise RequestError(400, f"{where}: unknown field {unknown[0]!r}; {task.name} takes {', '.join(needed)}")
    missing = [name for name in needed if name not in instance]
    if missing:
        raise RequestError(400, f"{where}: missing field {missing[0]!r}; {task.name} needs {', '.join(needed)}")
    row = {name: instance.get(name, _filler(kind, position)) for name, kind in task.fields.items()
           if kind != "label"}
    if task.fields.get(task.id_field) == "dict" and not isinstance(instance.get(task.id_field), dict):
        row[task.id_field] = _filler("dict", position)
    row["label"] = None  # a label sent along is not an input; it is never read
    problem = field_problem(task, {k: v for k, v in row.items() if k in instance})
    if problem:
        raise RequestError(400, f"{where}: {problem}; send each field as the task's files hold it")
    return row


def check_mode(task: Task, mode: Any, where: str) -> str:
    if mode not in MODES:
        raise RequestError(400, f"{where}: mode {mode!r} is not one of {', '.join(MODES)}")
    if mode == "rank" and not task.is_classification:
        raise RequestError(400, f"{where}: {task.name} has no label strings to rank; use mode generate")
    return mode


def v2_instances(task: Task, body: dict[str, Any], limits: Limits) -> list[dict[str, Any]]:
    """Open Inference Protocol v2 `inputs` (one tensor per field, one element per instance) as v1 instances."""
    tensors = body.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise RequestError(400, "inputs: expected a non-empty list of tensors "
                                '({"name": FIELD, "shape": [N], "datatype": "BYTES", "data": [...]})')
    if _asks_binary(body.get("outputs")):
        raise RequestError(400, f"outputs: {BINARY_UNSUPPORTED}")
    columns: dict[str, list[Any]] = {}
    for i, tensor in enumerate(tensors):
        name, data = _v2_tensor(task, tensor, f"inputs[{i}]")
        if name in columns:
            raise RequestError(400, f"inputs[{i}]: field {name!r} given twice")
        columns[name] = data
    sizes = {len(v) for v in columns.values()}
    if len(sizes) > 1:
        raise RequestError(400, f"inputs: tensors hold different numbers of instances ({sorted(sizes)}); "
                                "every field needs one element per instance")
    count = sizes.pop()
    return check_instances(task, [{k: v[j] for k, v in columns.items()} for j in range(count)], limits, "inputs")


def _v2_tensor(task: Task, tensor: Any, where: str) -> tuple[str, list[Any]]:
    if not isinstance(tensor, dict):
        raise RequestError(400, f"{where}: expected a tensor object with name, shape, datatype and data")
    if _asks_binary([tensor]):
        raise RequestError(400, f"{where}: {BINARY_UNSUPPORTED}")
    name, shape, datatype, data = (tensor.get(k) for k in ("name", "shape", "datatype", "data"))
    if name not in task.fields or task.fields[name] == "label":
        raise RequestError(400, f"{where}: unknown field {name!r}; {task.name} takes {', '.join(input_fields(task))}")
    kind = task.fields[name]
    if kind not in V2_DATATYPES:
        raise RequestError(400, f"{where}: field {name!r} is a {kind}, which v2 tensors cannot carry; "
                                f"use POST /v1/models/{task.name}:predict")
    if datatype not in V2_DATATYPES[kind]:
        raise RequestError(400, f"{where}: field {name!r} needs datatype {' or '.join(V2_DATATYPES[kind])}, "
                                f"got {datatype!r}")
    if not isinstance(shape, list) or not shape or not all(isinstance(s, int) and s >= 0 for s in shape) \
            or any(s != 1 for s in shape[1:]):
        raise RequestError(400, f"{where}: shape must be [N] (or [N, 1]), got {shape!r}")
    flat = _flatten(data) if isinstance(data, list) else None
    if flat is None or len(flat) != math.prod(shape):
        raise RequestError(400, f"{where}: data must be a list of {math.prod(shape)} elements (the shape), flat or "
                                f"nested, got {_kind(data) if flat is None else f'{len(flat)} elements'}")
    if kind in JSON_ENCODED:
        flat = [_json_element(value, f"{where}.data[{j}]", name, kind) for j, value in enumerate(flat)]
    return name, flat


def _flatten(data: list[Any]) -> list[Any]:
    """A tensor's elements in row-major order, whether `data` is flat or nested (both are valid v2 JSON)."""
    out: list[Any] = []
    for value in data:
        out.extend(_flatten(value) if isinstance(value, list) else [value])
    return out


def _json_element(value: Any, where: str, name: str, kind: str) -> Any:
    """A BYTES element carrying a JSON-encoded field value (a list field), decoded."""
    try:
        decoded = json.loads(value) if isinstance(value, str) else None
    except json.JSONDecodeError:
        decoded = None
    if not isinstance(decoded, list):
        raise RequestError(400, f"{where}: field {name!r} is a {kind}: send each element as JSON text of a list, "
                                'e.g. "[\\"Paris\\", \\"France\\"]"')
    return decoded


def _asks_binary(tensors: Any) -> bool:
    """Whether request tensors use the binary tensor extension (binary_data_size / binary_data parameters)."""
    return isinstance(tensors, list) and any(
        isinstance(t, dict) and isinstance(t.get("parameters"), dict)
        and ("binary_data_size" in t["parameters"] or t["parameters"].get("binary_data") is True) for t in tensors)


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
