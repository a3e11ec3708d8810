"""The one error type export and repository writing raise for a user's mistake, and how tools' errors are shown."""

import re


class ExportError(Exception):
    """A problem with the user's source, options or data, said in one line that names the fix."""


# Where a C++ runtime says which of its source lines raised: noise to a user, and often the
# whole first line of the message ("Check 'false' failed at src/.../report.cpp:151:").
_SOURCE_LOCATION = re.compile(r"(Exception from |failed at )?\S*src/\S+\.(cpp|cc|c|h|hpp):\d+:?")
_EMPTY_CHECK = re.compile(r"^Check '.*'\s*$")


def meaningful_lines(text: str) -> list:
    """The lines of a tool's message that say something: source locations and empty checks dropped."""
    lines = []
    for line in text.splitlines():
        line = _SOURCE_LOCATION.sub("", line).strip(" :")
        if line and not _EMPTY_CHECK.match(line):
            lines.append(line)
    return lines


def one_line(exc: BaseException, limit: int = 400) -> str:
    """A tool's exception as one bounded line that carries the cause: our own errors as they are,
    others as the type, the first meaningful line and the tool's own summary line when it has one."""
    if isinstance(exc, ExportError):
        return str(exc)
    lines = meaningful_lines(str(exc))
    if not lines:
        return type(exc).__name__
    text = lines[0]
    summary = next((lines[i + 1] for i, line in enumerate(lines[:-1]) if line.rstrip(":") == "Summary"), None)
    if summary and summary not in text:
        text = f"{text} ({summary.lstrip('- ')})"
    return f"{type(exc).__name__}: {text}"[:limit]


# ONNX Runtime's status prefix ("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : ") and the C++
# signatures its checks print ("void onnxruntime::BroadcastIterator::Append(ptrdiff_t, ptrdiff_t)").
_ORT_PREFIX = re.compile(r"\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")
_CPP_SIGNATURE = re.compile(r"\b((void|bool|int|auto|size_t|Status|common::Status)\s+)?[\w:<>~]+::[\w~]+\([^()]*\)\s*(const\s*)?")


def runtime_cause(exc: BaseException, limit: int = 300) -> str:
    """A runtime's failure as one bounded line that keeps the cause.

    Runtimes put the cause last: OpenVINO's first lines are only "Exception from
    src/inference/...", ONNX Runtime's message ends with the kernel's "Status Message".
    So every meaningful line is kept, and when the text is too long its middle is cut,
    never its end.
    """
    lines = [" ".join(_CPP_SIGNATURE.sub("", _ORT_PREFIX.sub("", line)).split()) for line in meaningful_lines(str(exc))]
    text = " | ".join(line for line in lines if line) or type(exc).__name__
    if len(text) <= limit:
        return text
    head = limit // 3
    return text[:head].rstrip() + " … " + text[-(limit - head - 3):].lstrip()
