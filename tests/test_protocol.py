"""The MP2RAGE protocol comes from headers, then the site profile, else a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from service.inputs.protocol import (
    ProtocolError,
    SiteProtocol,
    load_site_protocols,
    protocol_from_headers,
    protocol_from_profile,
)


def _series(**values: object) -> Dataset:
    ds = Dataset()
    ds.ProtocolName = "mp2rage_cspine"
    for key, value in values.items():
        setattr(ds, key, value)
    return ds


PROFILE = [
    SiteProtocol("mp2rage_cspine", echo_spacing_s=0.0067, n_excitations=48, efficiency=0.96)
]


def test_headers_and_profile_combine() -> None:
    protocol, sources = protocol_from_headers(
        uni=_series(RepetitionTime=5000),
        inv1=_series(InversionTime=800, FlipAngle=4, RepetitionTime=5000),
        inv2=_series(InversionTime=2700, FlipAngle=5, RepetitionTime=5000),
        profiles=PROFILE,
    )
    assert (protocol.tr_mp2rage_s, protocol.ti1_s, protocol.ti2_s) == (5.0, 0.8, 2.7)
    assert (protocol.flip1_deg, protocol.flip2_deg) == (4.0, 5.0)
    assert protocol.n_excitations == 48
    assert sources["ti1_s"] == "header" and sources["echo_spacing_s"] == "site profile"


def test_enhanced_mr_functional_groups_are_read() -> None:
    def enhanced(ti_ms: float, flip: float) -> Dataset:
        timing = Dataset()
        timing.RepetitionTime = 5000
        timing.FlipAngle = flip
        modifier = Dataset()
        modifier.InversionTimes = [ti_ms]
        shared = Dataset()
        shared.MRTimingAndRelatedParametersSequence = [timing]
        shared.MRModifierSequence = [modifier]
        ds = _series()
        ds.SharedFunctionalGroupsSequence = [shared]
        return ds

    protocol, _ = protocol_from_headers(
        uni=enhanced(800, 4), inv1=enhanced(800, 4), inv2=enhanced(2700, 5), profiles=PROFILE
    )
    assert (protocol.ti1_s, protocol.ti2_s, protocol.tr_mp2rage_s) == (0.8, 2.7, 5.0)


def test_missing_values_are_named() -> None:
    with pytest.raises(ProtocolError) as info:
        protocol_from_headers(
            uni=_series(RepetitionTime=5000),
            inv1=_series(InversionTime=800),
            inv2=_series(InversionTime=2700, FlipAngle=5),
            profiles=[],
        )
    message = str(info.value)
    for name in ("flip1_deg", "echo_spacing_s", "n_excitations", "efficiency"):
        assert name in message
    assert "mp2rage_cspine" in message


def test_profile_fills_values_the_headers_lack_and_wildcards_match() -> None:
    profile = [
        SiteProtocol("*", echo_spacing_s=0.007, n_excitations=40, efficiency=0.9),
        SiteProtocol(
            "mp2rage_*",
            echo_spacing_s=0.0067,
            n_excitations=48,
            efficiency=0.96,
            ti1_s=0.8,
            ti2_s=2.7,
            flip1_deg=4,
            flip2_deg=5,
        ),
    ]
    protocol, sources = protocol_from_headers(
        uni=_series(RepetitionTime=5000), inv1=None, inv2=None, profiles=profile
    )
    assert protocol.n_excitations == 48 and sources["ti2_s"] == "site profile"


def test_inconsistent_timing_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="TD2"):
        protocol_from_headers(
            uni=_series(RepetitionTime=5000),
            inv1=_series(InversionTime=800, FlipAngle=4),
            inv2=_series(InversionTime=900, FlipAngle=5),
            profiles=PROFILE,
        )


def test_site_profile_file(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(
        '[[protocol]]\nprotocol_name = "a"\necho_spacing_s = 0.0067\nn_excitations = 48\n'
    )
    assert load_site_protocols(path) == [
        SiteProtocol("a", echo_spacing_s=0.0067, n_excitations=48)
    ]
    path.write_text('[[protocol]]\nprotocol_name = "a"\necho_spacing = 0.0067\n')
    with pytest.raises(ValueError, match="unknown keys"):
        load_site_protocols(path)
    path.write_text('[[protocol]]\nprotocol_name = "a"\nn_excitations = -4\n')
    with pytest.raises(ValueError, match="n_excitations"):
        load_site_protocols(path)


# ---- exams with only the scanner's T1 map ---------------------------------------------------

FULL_PROFILE = [
    SiteProtocol(
        "mp2rage_cspine", tr_mp2rage_s=5.0, ti1_s=0.8, ti2_s=2.7, flip1_deg=4.0,
        flip2_deg=5.0, echo_spacing_s=0.0067, n_excitations=48, efficiency=0.96,
    )
]  # fmt: skip


def test_t1_map_only_protocol_comes_whole_from_the_profile() -> None:
    protocol, profile = protocol_from_profile(
        _series(RepetitionTime=5000, FlipAngle=4), FULL_PROFILE
    )
    assert profile is FULL_PROFILE[0]
    assert (protocol.tr_mp2rage_s, protocol.ti1_s, protocol.ti2_s) == (5.0, 0.8, 2.7)
    assert (protocol.flip1_deg, protocol.flip2_deg, protocol.n_excitations) == (4.0, 5.0, 48)
    # headers without TR or flip angle are fine: the profile gives everything
    assert protocol_from_profile(_series(), FULL_PROFILE)[0] == protocol


def test_t1_map_only_without_a_full_profile_entry_names_what_to_add() -> None:
    with pytest.raises(ProtocolError) as info:
        protocol_from_profile(_series(RepetitionTime=5000), PROFILE)
    text = str(info.value)
    assert "site protocol entry 'mp2rage_cspine'" in text
    assert "add tr_mp2rage_s, ti1_s, ti2_s, flip1_deg, flip2_deg to it" in text
    with pytest.raises(ProtocolError, match="add a \\[\\[protocol\\]\\] entry with protocol_name"):
        protocol_from_profile(_series(ProtocolName="other_protocol"), FULL_PROFILE)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({"RepetitionTime": 6000}, "RepetitionTime 6000 ms .* vs tr_mp2rage_s 5 s"),
        ({"FlipAngle": 7}, "FlipAngle 7 deg .* is neither flip1_deg 4 nor flip2_deg 5"),
    ],
)
def test_t1_map_header_must_agree_with_the_profile(
    header: dict[str, object], message: str
) -> None:
    with pytest.raises(ProtocolError, match=message):
        protocol_from_profile(_series(**header), FULL_PROFILE)
