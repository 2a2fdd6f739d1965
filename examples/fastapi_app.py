"""A FastAPI service that runs agent tasks: ``uvicorn examples.fastapi_app:app``.

Each request awaits ``agent.arun`` on the server's event loop; concurrent requests run concurrently,
bounded by the agent's ``max_concurrency``. Model configuration comes from the environment
(``OPENAI_API_KEY`` / ``OPENAI_BASE_URL`` / ``MENGLONG_MODEL``).
"""

from __future__ import annotations

import os

from fastapi import FastAPI
from pydantic import BaseModel

from menglong_magic import ChatAgent, ChatMode, tool


@tool
def word_count(text: str) -> int:
    """Count the words in a text."""
    return len(text.split())


class TaskRequest(BaseModel):
    task: str
    max_iterations: int | None = None


class TaskResponse(BaseModel):
    success: bool
    iterations: int
    execution_time: float
    output: str
    stop_reason: str


app = FastAPI(title="menglong_magic agent service")
agent = ChatAgent(mode=ChatMode.AUTO, tools=[word_count],
                  max_concurrency=int(os.environ.get("AGENT_CONCURRENCY", "32")))


@app.post("/execute_task", response_model=TaskResponse)
async def execute_task(request: TaskRequest) -> TaskResponse:
    # A shared agent would mix conversations: each request runs on its own copy of the (empty) history.
    result = (await agent.batch_run_async([request.task]))[0]
    if isinstance(result, BaseException):
        return TaskResponse(success=False, iterations=0, execution_time=0.0, output=str(result), stop_reason="error")
    return TaskResponse(success=result.task_completed, iterations=result.iterations_used,
                        execution_time=result.execution_time, output=result.final_output,
                        stop_reason=result.stop_reason)
