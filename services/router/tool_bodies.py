"""The tool-calling parts of a chat request's body (OpenAI's shapes): the functions offered,
the choice among them, and the calls an assistant's message carries back (tools.py reads
what they ask of the model)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import StringConstraints

from services.router.body_types import Body

# A function's name, as OpenAI bounds it.
FunctionName = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
MAX_TOOLS = 128  # OpenAI's bound


class CalledFunction(Body):
    name: FunctionName
    arguments: str  # JSON text of an object, as OpenAI sends it


class ToolCallIn(Body):
    """A call the assistant made, in a message sent back with the tool's result."""

    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


def arguments(call: ToolCallIn) -> Any:
    """A call's arguments as chat templates take them: an object where the text is one."""
    try:
        got = json.loads(call.function.arguments)
    except ValueError:
        return call.function.arguments
    return got if isinstance(got, dict) else call.function.arguments


class FunctionDef(Body):
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema of the arguments
    strict: bool | None = None


class ToolDef(Body):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(Body):
    name: FunctionName


class NamedToolChoice(Body):
    type: Literal["function"]
    function: NamedFunction
