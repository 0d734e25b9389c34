"""Chat messages for each task, built from a validated request."""

from __future__ import annotations

from edge_slm.contract import Request, SensorReading, Task

Message = dict[str, str]

_SYSTEM = {
    Task.ANSWER: "You are the assistant of a smart-home device. Answer in one or two short "
    "sentences.",
    Task.SUMMARIZE: "Summarize the user's input in one short sentence.",
    # act always runs constrained with its tools' prompt (agent.actions); here for completeness.
    Task.ACT: "Turn the user's command into one tool call. Reply with JSON only.",
    Task.EXTRACT: "Extract the key facts from the user's input as one compact JSON object. "
    "Reply with JSON only.",
}


def _reading_line(reading: SensorReading) -> str:
    unit = f" {reading.unit}" if reading.unit else ""
    when = f" (at {reading.ts})" if reading.ts is not None else ""
    return f"- {reading.name}: {reading.value}{unit}{when}"


def user_content(request: Request) -> str:
    parts = []
    if request.text.strip():
        parts.append(request.text.strip())
    if request.readings:
        parts.append("Sensor readings:\n" + "\n".join(map(_reading_line, request.readings)))
    return "\n\n".join(parts)


def build_messages(request: Request) -> list[Message]:
    if request.task is Task.CLASSIFY:
        labels = request.labels or []
        # One label per line scored better than a comma list on a 12-utterance probe.
        system = (
            "You classify smart-home requests. Possible labels:\n"
            + "\n".join(f"- {label}" for label in labels)
            + "\nReply with the label only."
        )
    else:
        system = _SYSTEM[request.task]
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": user_content(request)},
    ]
