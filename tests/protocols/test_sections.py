"""The split protocol's optional sections: one registry, in report order, each enabled by its options,
and each results.json entry in the place the records have always had it."""

import pytest

from mi_bridge.config import ExperimentConfig
from mi_bridge.protocols.split import sections
from mi_bridge.protocols.split.summary import placed


def test_the_sections_are_registered_once_in_report_order():
    assert [s.key for s in sections.sections()] == ["second_site", "site_scan", "kv_channel"]
    with pytest.raises(ValueError, match="registered already"):
        sections.register_section("site_scan", "elsewhere:Scan")


@pytest.mark.parametrize(
    "options, keys",
    [
        ({}, ["second_site", "site_scan"]),
        ({"site_scan": False, "second_site": False}, []),
        ({"second_site": False, "kv_channel": True}, ["site_scan", "kv_channel"]),
    ],
)
def test_the_options_enable_the_sections(options, keys):
    assert [s.key for s in sections.enabled(ExperimentConfig(options=options).options)] == keys


def test_each_entry_sits_where_records_have_it_and_the_report_shows_what_a_record_holds():
    core = {"site": 1, "sender_probe": 2, "conditions": 3, "verdict": 4, "verdict_parts": 5}
    added = {"second_site": "b", "site_scan": "a", "kv_channel": "c"}
    assert list(placed(core, added)) == [
        "site",
        "site_scan",
        "sender_probe",
        "conditions",
        "second_site",
        "verdict",
        "verdict_parts",
        "kv_channel",
    ]
    held = {"site_scan": [], "second_site": {"layer": 0}}  # a scan that did not run is an empty entry
    assert [s.key for s in sections.present(held)] == ["second_site"]
