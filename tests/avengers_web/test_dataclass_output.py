"""DataclassOutput: an API answer that mirrors a dataclass, every field always present, named like any serializer."""
from __future__ import annotations

from dataclasses import dataclass, field

from drf_spectacular.generators import SchemaGenerator

from avengers_web.api import DataclassOutput
from evaluation.api import ImportSummaryOutput
from evaluation.runs.api import ProgressOutput


@dataclass
class Tally:
    name: str
    count: int = 0
    tags: list[str] = field(default_factory=list)
    share: float | None = None


class TallyOutput(DataclassOutput):
    class Meta:
        dataclass = Tally
        extra_kwargs = {"share": {"help_text": "Of all counted."}}


def test_every_field_is_required_even_one_with_a_default_and_extra_kwargs_still_apply() -> None:
    fields = TallyOutput().fields
    assert all(fields[name].required for name in ("name", "count", "tags", "share"))
    assert fields["share"].allow_null and fields["share"].help_text == "Of all counted."
    assert TallyOutput(Tally("a", 2, ["x"])).data == {"name": "a", "count": 2, "tags": ["x"], "share": None}
    assert TallyOutput.Meta.ref_name == "TallyOutput"


def test_the_schema_keeps_the_outputs_names_and_marks_every_field_required() -> None:
    components = SchemaGenerator().get_schema(request=None, public=True)["components"]["schemas"]
    for name, output in (("ImportSummaryOutput", ImportSummaryOutput), ("ProgressOutput", ProgressOutput)):
        assert set(components[name]["required"]) == set(output().fields), name
    assert components["ImportedDataset"]["required"] and "RunProgress" not in components
    assert components["ProgressOutput"]["properties"]["eta_s"]["nullable"] is True
