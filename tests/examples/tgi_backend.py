"""A complete backend: Hugging Face text-generation-inference (TGI), as README "Adding a backend" describes.

In the product it would be ``caelum_mcp/engine/backends/tgi.py`` plus one line in ``BUILTIN_BACKENDS``;
``tests/core/test_backend_registry.py`` registers it and serves a host its config names.
"""

from collections.abc import AsyncIterator, Mapping
from typing import Literal, Self

import httpx2
from pydantic import Field

from caelum_mcp.core.types import ChatRequest, ChatResponse, ModelInfo, StreamChunk, Usage
from caelum_mcp.engine.backends.base import HostConfigBase
from caelum_mcp.engine.backends.http import HttpBackend, Wire


class TGIHostConfig(HostConfigBase):  # [[hosts]] kind = "tgi", url = "...", max_new_tokens = 256
    kind: Literal["tgi"] = Field(default="tgi", description="Hugging Face text-generation-inference")
    max_new_tokens: int = Field(default=512, ge=1, description="answer length when a call sets none")


class _WireGenerated(Wire):  # the fields read; the server's others are ignored
    generated_text: str


class _WireInfo(Wire):
    model_id: str
    version: str | None = None


class TGIBackend(HttpBackend):
    kind, protocol, config_model, max_new_tokens = "tgi", "TGI", TGIHostConfig, 512

    @classmethod
    def from_config(cls, config: HostConfigBase, *, http: httpx2.AsyncClient, environ: Mapping[str, str]) -> Self:
        backend = super().from_config(config, http=http, environ=environ)
        backend.max_new_tokens = TGIHostConfig.of(config).max_new_tokens
        return backend

    async def chat(self, request: ChatRequest, *, limit_s: float | None = None) -> ChatResponse:
        prompt = "".join(f"<|{m.role}|>\n{m.content}\n" for m in request.messages) + "<|assistant|>\n"
        body = {"inputs": prompt, "parameters": {"max_new_tokens": request.max_tokens or self.max_new_tokens}}
        with self.wire_errors():  # connect, timeout, dropped -> the error tree
            response = await self.post_json("/generate", body, limit_s=limit_s)
        self.raise_for_status(response)  # 429/503 -> HostOverloadedError: the pool fails over
        wire = self.validate_json(_WireGenerated, response)
        return ChatResponse(model=request.model, content=wire.generated_text, usage=Usage())

    async def stream(self, request: ChatRequest, *, limit_s: float | None = None) -> AsyncIterator[StreamChunk]:
        yield StreamChunk(done=True, response=await self.chat(request, limit_s=limit_s))  # one piece

    async def list_models(self) -> list[ModelInfo]:
        return [ModelInfo(name=(await self._info()).model_id)]

    async def probe(self) -> str | None:  # health() times it and never raises
        return (await self._info()).version

    async def _info(self) -> _WireInfo:
        response = await self.get_checked("/info")
        return self.validate(_WireInfo, self.parse_json(response), response.status_code)
