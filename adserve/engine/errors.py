"""Errors the engine raises for bad user input.

Every error carries a snake_case `code`, a message for a person, and where
applicable a `location`: `{"line": L, "column": C}` in expr/program text (both
1-based) or `{"node": id}` in a graph. The service maps the class to a status.
"""


def clip(text, limit: int = 64) -> str:
    """Client text (a name, an id) as an error message may echo it: at most `limit` characters."""
    text = str(text)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text):,} characters)"


class EngineError(Exception):
    """Base: a definition or evaluation that is well-formed but wrong (422)."""

    code = "invalid"

    def __init__(self, message, location=None, code=None, cite_line=False):
        super().__init__(message)
        self.message = message
        self.location = location
        self.cite_line = cite_line  # the message names the line once a location is attached (`at`)
        if code:
            self.code = code

    def at(self, location):
        """Attach a location unless a more precise one is already set."""
        if self.location is None and location is not None:
            self.location = location
            if self.cite_line and isinstance(location, dict) and "line" in location:
                self.message = f"line {location['line']}: {self.message}"
                self.args = (self.message,)
        return self


class ParseError(EngineError):
    """User text that is not valid syntax (400)."""

    code = "syntax_error"


class DefinitionError(EngineError):
    """A definition that parses but cannot be built: unknown op, bad shape, ..."""

    code = "invalid_definition"


class ShapeError(DefinitionError):
    code = "shape_mismatch"


class EvaluationError(EngineError):
    """A request that cannot be evaluated: missing input, wrong shape, ..."""

    code = "invalid_evaluation"


class LimitError(EngineError):
    """Over a configured size or cost limit (413)."""

    code = "limit_exceeded"
