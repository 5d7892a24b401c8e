"""``Stored``: the one way an API view answers with a stored object, and the detail view built on it."""
from __future__ import annotations

import pytest
from django.http import Http404
from rest_framework import serializers
from rest_framework.test import APIRequestFactory

from avengers_web.api import Stored, StoredDetailApi


class PointOutput(serializers.Serializer):
    x = serializers.IntegerField()


POINTS = {7: {"x": 3}}
STORED = Stored(POINTS.get, PointOutput)


def test_it_answers_with_the_row_as_found_now_and_the_given_status() -> None:
    rows = {8: {"x": 1}}
    stored = Stored(rows.get, PointOutput)
    assert stored.get(8) == {"x": 1}
    response = stored.response(8, 201)
    assert response.status_code == 201 and response.data == {"x": 1}
    rows[8]["x"] = 2  # a service changed it: the next answer reads it again
    assert stored.response(8).data == {"x": 2} and stored.response(8).status_code == 200


def test_a_row_the_selector_does_not_find_is_a_404() -> None:
    with pytest.raises(Http404):
        STORED.get(99)


class PointDetailApi(StoredDetailApi):
    stored = STORED
    permission_classes = ()  # this test is about the answer, not about who may read it


def test_the_detail_view_answers_get_and_names_its_output_for_the_schema() -> None:
    assert PointDetailApi.as_view()(APIRequestFactory().get("/points/7"), pk=7).data == {"x": 3}
    assert PointDetailApi().get_serializer_class() is PointOutput
    missing = PointDetailApi.as_view()(APIRequestFactory().get("/points/99"), pk=99)
    assert missing.status_code == 404 and missing.data["error"]["code"] == "not_found"
