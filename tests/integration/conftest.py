"""Fixtures of the integration tier."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["aiohttp", "httpx"])
def library(request: pytest.FixtureRequest) -> str:
    """The HTTP library under the SDK, each in turn (aiohttp skipped on an SDK without its transport)."""
    from menglong_magic.models import openai_compat

    if request.param == "aiohttp" and not openai_compat._has_aiohttp_transport():
        pytest.skip("this SDK has no aiohttp transport")
    return str(request.param)
