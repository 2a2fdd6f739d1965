"""Kernel tools through the real ``openai`` client against the scripted server: a figure drawn by run_code goes to
a model that accepts images as an image part after the tool results, and never to one that does not."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from IPython.core.interactiveshell import InteractiveShell

from menglong_magic import ChatAgent
from menglong_magic.ipython.kernel_tools import KernelTools
from menglong_magic.models import OpenAIModel
from menglong_magic.testing.server import ScriptedOpenAIServer, call_tools, reply, tool_call

CODE = "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\nplt.plot([1, 4, 2])\nNone"


@pytest.fixture
def shell() -> Iterator[InteractiveShell]:
    sh = InteractiveShell.instance()
    sh.reset()
    yield sh
    sh.reset()


@pytest.mark.parametrize("accepts_images", [True, False])
async def test_figures_reach_only_models_that_accept_images(shell: InteractiveShell, accepts_images: bool) -> None:
    with ScriptedOpenAIServer() as server:
        server.enqueue(call_tools(tool_call("run_code", {"code": CODE}, id="c1")), reply("a line going up then down"),
                       reply("still here"))
        model = OpenAIModel("scripted", base_url=server.base_url, api_key="sk-test-images")
        model.accepts_images = accepts_images
        agent = ChatAgent(model=model, mode="auto")
        result = await agent.arun("plot it", toolsets=[KernelTools(shell, run_code="allow")])
        assert result.stop_reason == "completed"
        after = server.requests[1]["messages"]
        assert after[-2]["role"] == "tool" if accepts_images else after[-1]["role"] == "tool"
        images = [part for m in after if isinstance(m.get("content"), list) for part in m["content"]
                  if part.get("type") == "image_url"]
        if not accepts_images:
            assert images == [] and "data:image/png" not in str(server.requests)
            return
        assert len(images) == 1
        url = images[0]["image_url"]["url"]
        assert base64.b64decode(url.removeprefix("data:image/png;base64,")).startswith(b"\x89PNG")
        assert after[-1]["content"][0]["text"].startswith("Attached by run_code (call c1): figure 1")
        # the round (assistant call, tool result, images) is in the history; the next turn sends it valid
        await agent.chat_async("and now?")
        assert [m["role"] for m in server.requests[2]["messages"]] == ["user", "assistant", "tool", "user",
                                                                      "assistant", "user"]
