"""Issue #12 end to end: a notebook executed by nbclient under logging.basicConfig(level=DEBUG), with
credentials planted in the API key (argument and environment), a default header and a base_url's user
info, talking to a scripted server that echoes headers and sends broken bodies. The saved .ipynb (outputs,
stderr log lines, widget state) must contain none of them in any encoding."""

from __future__ import annotations

import base64
import json
import pathlib
import urllib.parse
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from menglong_magic.testing.server import ScriptedOpenAIServer, fault, malformed, reply

pytestmark = pytest.mark.kernel

ENV_KEY = "tok-NBENV-5d4c3b2a1f"
ARG_KEY = "tok-NBARG-0f1e2d3c4b"
HEADER = "hdr-NBHDR-a1b2c3d4e5"
URL_PASSWORD = "tok-SECRET-999"
BASIC_USER, BASIC_PASSWORD = "bob", "pw-NBBASIC-77aa88bb"
SECRETS = [ENV_KEY, ARG_KEY, HEADER, URL_PASSWORD, BASIC_PASSWORD]


def encodings(secret: str) -> set[str]:
    """Plain, Bearer, URL-encoded, base64 (alone, as ``:key`` and ``user:key``), and a recoverable prefix."""
    return {
        secret,
        f"Bearer {secret}",
        urllib.parse.quote(secret, safe=""),
        base64.b64encode(secret.encode()).decode().rstrip("="),
        base64.b64encode(f":{secret}".encode()).decode(),
        base64.b64encode(f"user:{secret}".encode()).decode(),
        base64.b64encode(f"{BASIC_USER}:{secret}".encode()).decode(),
        secret[: len(secret) // 2 + 2],
    }


def responder(body: dict[str, Any]) -> Any:
    last = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
    if "echo-401" in last:
        return fault(401, echo_headers=True, message="Unauthorized")
    if "broken" in last:
        return malformed()
    return reply("hello from the loopback server")


CELLS = [
    "import logging\nlogging.basicConfig(level=logging.DEBUG)",
    "%load_ext menglong_magic",
    # Secrets reach the kernel only through its environment, so the cell sources hold none.
    "import os\n"
    "from menglong_magic import ChatAgent\n"
    "from menglong_magic.models import OpenAIModel, RetryPolicy\n"
    "base = os.environ['NB_BASE_URL']\n"
    "fast = RetryPolicy(max_attempts=2, base_delay=0.01)\n"
    "env_agent = ChatAgent(base_url=base, stream=True)  # key from OPENAI_API_KEY\n"
    "hdr_agent = ChatAgent(model=OpenAIModel('scripted', base_url=base, api_key=os.environ['NB_ARG_KEY'],\n"
    "    default_headers={'X-Api-Token': os.environ['NB_HEADER']}, retry=fast, http_library='httpx'))\n"
    "basic_agent = ChatAgent(model=OpenAIModel('scripted', base_url=base, retry=fast,\n"
    "    default_headers={'Authorization': os.environ['NB_BASIC']}))\n"
    "env_agent, hdr_agent, hdr_agent.model, basic_agent.model",
    "%%agent -a env_agent\nsay hello",
    "%agent_run -a hdr_agent say hello with the header",
    "%%agent -a hdr_agent\nplease echo-401 my headers",
    "print(repr(_agent_last))\nprint(_agent_last.error)\n_agent_last",
    "%%agent -a basic_agent\necho-401 again",
    "%%agent -a env_agent\necho-401 with the key from the environment",
    "%%agent -a env_agent\nsend something broken",
    "print(_agent_last.error)",
    "import traceback\n"
    "try:\n"
    "    await hdr_agent.chat_async('echo-401 from code')\n"
    "except Exception as exc:\n"
    "    traceback.print_exception(exc)\n"
    "    logging.getLogger('menglong_magic').exception('run failed')",
    "ChatAgent(base_url=os.environ['NB_USERINFO_URL'], api_key=os.environ['NB_ARG_KEY'])",
    "env_agent.messages",
]


def test_saved_notebook_holds_no_secret(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = ScriptedOpenAIServer(responder=responder).start()
    base_url = server.base_url
    try:
        basic = base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()
        monkeypatch.delenv("MENGLONG_MODEL", raising=False)
        monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
        monkeypatch.setenv("NB_BASE_URL", server.base_url)
        monkeypatch.setenv("NB_ARG_KEY", ARG_KEY)
        monkeypatch.setenv("NB_HEADER", HEADER)
        monkeypatch.setenv("NB_BASIC", f"Basic {basic}")
        monkeypatch.setenv("NB_USERINFO_URL", server.base_url.replace("://", f"://user:{URL_PASSWORD}@"))
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in CELLS])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        client = NotebookClient(nb, timeout=180, kernel_name="python3", allow_errors=True,
                                resources={"metadata": {"path": str(tmp_path)}})
        client.execute()
        path = tmp_path / "secrets.ipynb"
        nbformat.write(nb, path)
    finally:
        server.stop()

    saved = path.read_text()
    # The secrets were really used: the server received each one.
    sent = server.request_headers
    assert any(h.get("x-api-token") == HEADER for h in sent)
    assert "Basic" in server.authorization_schemes and "Bearer" in server.authorization_schemes
    # ... and the notebook really recorded what could have leaked (else 0 hits proves nothing).
    for evidence in (
        "HTTP Request: POST http://127.0.0.1",  # httpx2's INFO line, saved in the cell's stderr
        "X-Echo-Authorization",  # httpcore2's DEBUG line with the echoed header (hdr_agent's model uses httpx)
        "hello from the loopback server",
        "HTTP 401",
        "request headers:",
        f"malformed response from {base_url}/chat/completions",
        "must not contain credentials",
        "run failed",
        "application/vnd.jupyter.widget-state+json",
    ):
        assert evidence in saved, evidence
    hits = {(secret, form) for secret in SECRETS for form in encodings(secret) if form in saved}
    # json.loads catches forms that the .ipynb stores escaped.
    text = json.dumps(json.loads(saved), ensure_ascii=False)
    hits |= {(secret, form) for secret in SECRETS for form in encodings(secret) if form in text}
    assert hits == set(), sorted(hits)
