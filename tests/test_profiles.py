"""basisprune.repro.profiles: one table for every setting a profile makes, one check of a profile name."""

import pytest

from basisprune.errors import ParameterError
from basisprune.repro import profiles, speed


def test_unknown_profile_is_refused_by_one_check_everywhere():
    """Every entry point that takes a profile name refuses an unknown one with the same ParameterError."""
    calls = [lambda: profiles.get("nope"), lambda: profiles.section("nope", "pai"),
             lambda: profiles.pai_settings("scratch", "nope"), lambda: speed.timing_settings("nope")]
    for call in calls:
        with pytest.raises(ParameterError, match="profile must be one of smoke, default, gpu, paper, got 'nope'"):
            call()


@pytest.mark.parametrize("profile", list(profiles.PROFILES))
def test_sections_are_read_from_the_one_table_and_left_out_of_the_parameters(profile):
    """The pai and timing settings come from PROFILES (copies), and get() returns no section."""
    params = profiles.get(profile)
    assert not set(profiles.SECTIONS) & set(params)
    timing = speed.timing_settings(profile)
    assert timing == profiles.PROFILES[profile]["timing"]
    timing["rounds"] = -1  # a copy: the table is unchanged
    assert profiles.PROFILES[profile]["timing"]["rounds"] != -1
    for part, defaults in profiles.PAI.items():
        settings = profiles.pai_settings(part, profile)  # every profile's settings pass their Specs
        own = profiles.PROFILES[profile]["pai"].get(part, {})
        assert set(own) <= set(defaults), f"{profile}: unknown pai.{part} setting(s) {set(own) - set(defaults)}"
        assert settings == {k: own.get(k, v) for k, (v, _) in defaults.items()}
        settings["steps"] = -1  # a copy: the table is unchanged
        assert profiles.section(profile, "pai")[part]["steps"] != -1


def test_list_and_mapping_specs_name_the_bad_element():
    """A list or mapping Spec checks each element and names the one that is not allowed."""
    methods = profiles.PAI["transfer"]["methods"][1]
    fixed = profiles.PAI["transfer"]["fixed"][1]
    assert methods.check("methods", ("snip",)) == ["snip"]
    with pytest.raises(ParameterError, match=r"methods\[1\] must be one of"):
        methods.check("methods", ["snip", "obd"])
    with pytest.raises(ParameterError, match="methods must be a list of"):
        methods.check("methods", "snip")
    assert fixed.check("fixed", {"half": 0.5}) == {"half": 0.5}
    with pytest.raises(ParameterError, match=r"fixed\['half'\] must be a finite number in \[0, 1\)"):
        fixed.check("fixed", {"half": 1})


def test_reproduce_chapter_table_shows_every_setting_of_every_profile():
    """The Reproduce chapter's table has a row for each parameter and each setting of each section."""
    from basisprune_book.pages import profiles_markdown

    rows = {line.split("|")[1].strip(" `") for line in profiles_markdown().splitlines() if line.startswith("| `")}
    expected = set(profiles.PARAMETERS)
    for name, prof in profiles.PROFILES.items():
        expected |= {f"pai.{part}.{k}" for part, settings in profiles.section(name, "pai").items() for k in settings}
        expected |= {f"timing.{k}" for k in prof["timing"]}
    assert expected <= rows
