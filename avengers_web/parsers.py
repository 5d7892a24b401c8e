"""The API's JSON parser (REST_FRAMEWORK's DEFAULT_PARSER_CLASSES); apart from api.py, which imports DRF's views,
which read the parser setting when they are imported."""
from __future__ import annotations

import codecs
import io
from typing import IO, Any

from django.conf import settings
from rest_framework import exceptions, parsers

from avengers_web.parsing import json_problem


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, after refusing (400) JSON nested too deep to parse, or holding NUL, which PostgreSQL refuses."""

    def parse(self, stream: IO[bytes], media_type: str | None = None,
              parser_context: dict[str, Any] | None = None) -> Any:
        data = stream.read()
        encoding = (parser_context or {}).get("encoding") or settings.DEFAULT_CHARSET
        try:
            codecs.lookup(encoding)
        except LookupError:
            encoding = "utf-8"  # DRF's parser then says what is wrong
        problem = json_problem(data.decode(encoding, errors="replace"))
        if problem is not None:
            raise exceptions.ParseError(f"JSON parse error - {problem}")
        return super().parse(io.BytesIO(data), media_type, parser_context)
