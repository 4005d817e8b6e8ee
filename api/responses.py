"""JSON out: pydantic models or plain data, encoded by msgspec (money as a JSON number)."""

from __future__ import annotations

from typing import Any

import msgspec
from pydantic import BaseModel
from starlette.responses import Response

_encoder = msgspec.json.Encoder(decimal_format="number")


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        if isinstance(content, BaseModel):
            content = content.model_dump(mode="python")
        return _encoder.encode(content)


class ProblemJSON(JSON):
    media_type = "application/problem+json"
