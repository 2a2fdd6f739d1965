"""The agent core. Nothing in this package imports IPython or ipywidgets."""

from .approval import ApprovalDecision, ApprovalRequest
from .chat_agent import ChatAgent
from .options import RUN_OPTIONS, RunOptions
from .result import IterationLog, RunResult, RunUsage, ToolCallRecord, Usage
from .settings import ChatMode, RunSettings
from .sync import RunningLoopError
from .turn import QueuedTurnWarning
from .workflow import StepResult, WorkflowResult, WorkflowStep

__all__ = [
    "RUN_OPTIONS",
    "ApprovalDecision",
    "ApprovalRequest",
    "ChatAgent",
    "ChatMode",
    "IterationLog",
    "QueuedTurnWarning",
    "RunOptions",
    "RunResult",
    "RunSettings",
    "RunUsage",
    "RunningLoopError",
    "StepResult",
    "ToolCallRecord",
    "Usage",
    "WorkflowResult",
    "WorkflowStep",
]
