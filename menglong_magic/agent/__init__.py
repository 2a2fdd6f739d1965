"""The agent core. Nothing in this package imports IPython or ipywidgets."""

from .core import ChatAgent, ChatMode
from .result import IterationLog, RunResult, RunUsage, ToolCallRecord, Usage
from .sync import RunningLoopError
from .workflow import StepResult, WorkflowResult, WorkflowStep

__all__ = [
    "ChatAgent",
    "ChatMode",
    "IterationLog",
    "RunResult",
    "RunUsage",
    "RunningLoopError",
    "StepResult",
    "ToolCallRecord",
    "Usage",
    "WorkflowResult",
    "WorkflowStep",
]
