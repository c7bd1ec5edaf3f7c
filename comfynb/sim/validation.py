"""Prompt validation with the contract and error bodies of ComfyUI's execution.validate_prompt.

The control flow deliberately follows ComfyUI's (including its quirks: `dependent_outputs` of a
node collects every later failing output, only an output's own errors reach `details`, literal
values are converted in place), so that the 400 bodies match the recorded ones (trace d).
"""

from __future__ import annotations

import traceback
from typing import Any

from .nodes import NodeClass

Validated = tuple[bool, list[dict], str]


def validate_prompt(
    prompt: Any, nodes: dict[str, NodeClass], partial_execution_targets: list[str] | None = None
) -> tuple[bool, dict | None, list[str], dict]:
    """(valid, error, outputs_to_execute, node_errors), like ComfyUI.

    valid=True with non-empty node_errors is a partial failure (HTTP 200, bad outputs dropped).
    Literal inputs are converted in place (INT/FLOAT/STRING/BOOLEAN, `__value__` unwrapped), so
    the caller should queue the same dict. A prompt that is not a dict raises (the server's 500).
    """
    outputs = []
    for node_id in prompt:
        node = prompt[node_id]
        if "class_type" not in node:
            return (
                False,
                _error(
                    "invalid_prompt",
                    "Cannot execute because a node is missing the class_type property.",
                    f"Node ID '#{node_id}'",
                ),
                [],
                {},
            )
        cls = nodes.get(node["class_type"])
        if cls is None:
            return (
                False,
                _error(
                    "invalid_prompt",
                    f"Cannot execute because node {node['class_type']} does not exist.",
                    f"Node ID '#{node_id}'",
                ),
                [],
                {},
            )
        if cls.output_node and (partial_execution_targets is None or node_id in partial_execution_targets):
            outputs.append(node_id)
    if not outputs:
        return False, _error("prompt_no_outputs", "Prompt has no outputs", ""), [], {}

    good_outputs: list[str] = []
    failures: list[tuple[str, list[dict]]] = []
    node_errors: dict[str, dict] = {}
    validated: dict[str, Validated] = {}
    for output in outputs:
        try:
            valid, reasons, _ = _validate_inputs(prompt, output, validated, nodes, [])
        except Exception as ex:
            valid, reasons = (
                False,
                [
                    {
                        "type": "exception_during_validation",
                        "message": "Exception when validating node",
                        "details": str(ex),
                        "extra_info": {
                            "exception_type": _full_type_name(type(ex)),
                            "traceback": traceback.format_tb(ex.__traceback__),
                        },
                    }
                ],
            )
            validated[output] = (False, reasons, output)
        if valid:
            good_outputs.append(output)
            continue
        failures.append((output, reasons))
        # ComfyUI walks every node validated so far, not only this output's ancestors.
        for node_id, (ok, errors, _) in validated.items():
            if not ok and errors:
                entry = node_errors.setdefault(
                    node_id, {"errors": errors, "dependent_outputs": [], "class_type": prompt[node_id]["class_type"]}
                )
                entry["dependent_outputs"].append(output)

    if not good_outputs:
        details = "\n".join(f"{e['message']}: {e['details']}" for _, errors in failures for e in errors)
        return (
            False,
            _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details),
            [],
            node_errors,
        )
    return True, None, good_outputs, node_errors


def _error(type_: str, message: str, details: str) -> dict:
    return {"type": type_, "message": message, "details": details, "extra_info": {}}


def _full_type_name(klass: type) -> str:
    module = klass.__module__
    return klass.__qualname__ if module == "builtins" else f"{module}.{klass.__qualname__}"


def _input_info(spec: dict, name: str) -> tuple[Any, str, dict]:
    for category in ("required", "optional"):
        if name in spec.get(category, {}):
            entry = spec[category][name]
            return entry[0], category, (entry[1] if len(entry) > 1 else {})
    raise KeyError(name)


def _types_match(received: Any, expected: Any) -> bool:
    """comfy_execution.validation.validate_node_input (non-strict)."""
    if received == expected or received == "*" or expected == "*":
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    return bool({t.strip() for t in received.split(",")} & {t.strip() for t in expected.split(",")})


def _validate_inputs(
    prompt: dict, node_id: str, validated: dict[str, Validated], nodes: dict[str, NodeClass], stack: list[str]
) -> Validated:
    if node_id in validated:
        return validated[node_id]
    if node_id in stack:
        # ComfyUI recurses until Python gives up; fail the same way, but at once.
        cycle = " -> ".join([*stack[stack.index(node_id) :], node_id])
        raise RecursionError(f"maximum recursion depth exceeded (cycle {cycle})")
    node = prompt[node_id]
    inputs = node["inputs"]
    cls = nodes[node["class_type"]]
    spec = cls.info["input"]
    names = list(spec.get("required", {})) + [n for n in spec.get("optional", {}) if n not in spec.get("required", {})]
    hooked = cls.validated_inputs if cls.validate else frozenset()
    errors: list[dict] = []
    valid = True

    for x in names:
        input_type, category, extra = _input_info(spec, x)
        if x not in inputs:
            if category == "required":
                errors.append(
                    {
                        "type": "required_input_missing",
                        "message": "Required input is missing",
                        "details": x,
                        "extra_info": {"input_name": x},
                    }
                )
            continue
        val = inputs[x]
        config = [input_type, extra]
        if isinstance(val, list):
            if len(val) != 2:
                errors.append(
                    {
                        "type": "bad_linked_input",
                        "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                        "details": x,
                        "extra_info": {"input_name": x, "input_config": config, "received_value": val},
                    }
                )
                continue
            source_id = val[0]
            received_type = tuple(nodes[prompt[source_id]["class_type"]].info["output"])[val[1]]
            if not _types_match(received_type, input_type):
                errors.append(
                    {
                        "type": "return_type_mismatch",
                        "message": "Return type mismatch between linked nodes",
                        "details": f"{x}, received_type({received_type}) mismatch input_type({input_type})",
                        "extra_info": {
                            "input_name": x,
                            "input_config": config,
                            "received_type": received_type,
                            "linked_node": val,
                        },
                    }
                )
                continue
            stack.append(node_id)
            try:
                if _validate_inputs(prompt, source_id, validated, nodes, stack)[0] is False:
                    valid = False
            except RecursionError:
                raise
            except Exception as ex:
                valid = False
                validated[source_id] = (
                    False,
                    [
                        {
                            "type": "exception_during_inner_validation",
                            "message": "Exception when validating inner node",
                            "details": str(ex),
                            "extra_info": {
                                "input_name": x,
                                "input_config": config,
                                "exception_message": str(ex),
                                "exception_type": _full_type_name(type(ex)),
                                "traceback": traceback.format_tb(ex.__traceback__),
                                "linked_node": val,
                            },
                        }
                    ],
                    source_id,
                )
            finally:
                stack.pop()
            continue

        try:
            if isinstance(val, dict) and "__value__" in val:
                val = inputs[x] = val["__value__"]
            convert = (
                {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}.get(input_type)
                if isinstance(input_type, str)
                else None
            )
            if convert is not None:
                val = inputs[x] = convert(val)
        except Exception as ex:
            errors.append(
                {
                    "type": "invalid_input_type",
                    "message": f"Failed to convert an input value to a {input_type} value",
                    "details": f"{x}, {val}, {ex}",
                    "extra_info": {
                        "input_name": x,
                        "input_config": config,
                        "received_value": val,
                        "exception_message": str(ex),
                    },
                }
            )
            continue
        if x in hooked:
            continue
        if "min" in extra and val < extra["min"]:
            errors.append(
                {
                    "type": "value_smaller_than_min",
                    "message": f"Value {val} smaller than min of {extra['min']}",
                    "details": x,
                    "extra_info": {"input_name": x, "input_config": config, "received_value": val},
                }
            )
            continue
        if "max" in extra and val > extra["max"]:
            errors.append(
                {
                    "type": "value_bigger_than_max",
                    "message": f"Value {val} bigger than max of {extra['max']}",
                    "details": x,
                    "extra_info": {"input_name": x, "input_config": config, "received_value": val},
                }
            )
            continue
        if isinstance(input_type, list) or input_type == "COMBO":
            options = extra.get("options", []) if input_type == "COMBO" else input_type
            if val not in options:
                # ComfyUI does not send back long lists (e.g. hundreds of model files)
                listed = f"(list of length {len(options)})" if len(options) > 20 else str(options)
                errors.append(
                    {
                        "type": "value_not_in_list",
                        "message": "Value not in list",
                        "details": f"{x}: '{val}' not in {listed}",
                        "extra_info": {
                            "input_name": x,
                            "input_config": None if len(options) > 20 else config,
                            "received_value": val,
                        },
                    }
                )

    literal = {x: inputs[x] for x in hooked if x in inputs and not isinstance(inputs[x], list)}
    if literal:
        assert cls.validate is not None  # nothing is hooked without it
        result = cls.validate(literal)
        if result is not True:
            for x in literal:
                errors.append(
                    {
                        "type": "custom_validation_failed",
                        "message": "Custom validation failed for node",
                        "details": x if result is False else f"{x} - {result}",
                        "extra_info": {"input_name": x},
                    }
                )

    ret: Validated = (False, errors, node_id) if errors or not valid else (True, [], node_id)
    validated[node_id] = ret
    return ret
