"""The math of gpcheck: the trace format, Definition 1, Theorem 1, the recorder, the ladder."""

from .check import CheckResult, Tolerances, check_trace
from .definition1 import Definition1Result, definition_1, step_bounds, violations_at
from .recorder import PathRecorder, flatten_params, trace_from_iterates
from .theorem1 import distance_monotone, loss_convergence, rate_bound, recording_identity
from .trace import Trace, TraceError, load_trace

__all__ = [
    "CheckResult", "Definition1Result", "PathRecorder", "Tolerances", "Trace", "TraceError",
    "check_trace", "definition_1", "distance_monotone", "flatten_params", "load_trace",
    "loss_convergence", "rate_bound", "recording_identity", "step_bounds", "trace_from_iterates",
    "violations_at",
]
