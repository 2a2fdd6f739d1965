"""A FastAPI service that runs agent tasks: ``uvicorn examples.fastapi_app:app``.

One agent holds the configuration (model, tools, system prompt); each request runs on its own
``agent.fork()``, so requests never see each other's messages and never wait for each other's turns,
while all of them share the agent's ``max_concurrency`` bound. Model configuration comes from the
environment (``OPENAI_API_KEY`` / ``OPENAI_BASE_URL`` / ``MENGLONG_MODEL``).
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
    # One conversation per request: a fork has its own (here empty) history and its own line of turns.
    result = await agent.fork().arun(request.task, request.max_iterations)
    return TaskResponse(success=result.task_completed, iterations=result.iterations_used,
                        execution_time=result.execution_time, output=result.final_output,
                        stop_reason=result.stop_reason)
