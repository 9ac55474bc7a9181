"""MP2RAGE protocol presets of the phantom and the site protocol profile they imply."""

from __future__ import annotations

from dataclasses import dataclass

from processing.mp2rage import MP2RAGEProtocol

__all__ = ["PRESETS", "ProtocolPreset", "site_protocols_toml"]


@dataclass(frozen=True)
class ProtocolPreset:
    """A named scanner protocol.

    Parameters
    ----------
    name : str
        Preset key (``PhantomOptions.protocol``).
    protocol_name : str
        DICOM ProtocolName (0018,1030) the phantom writes.
    mp2rage : MP2RAGEProtocol
        Timing and flip angles.
    echo_time_ms : float
        Readout echo time.
    sequence_name : str
        Siemens-like SequenceName (0018,0024).
    """

    name: str
    protocol_name: str
    mp2rage: MP2RAGEProtocol
    echo_time_ms: float
    sequence_name: str

    def as_dict(self) -> dict[str, object]:
        """All acquisition numbers, JSON-ready."""
        p = self.mp2rage
        return {
            "preset": self.name,
            "protocol_name": self.protocol_name,
            "tr_mp2rage_s": p.tr_mp2rage_s,
            "ti1_s": p.ti1_s,
            "ti2_s": p.ti2_s,
            "flip1_deg": p.flip1_deg,
            "flip2_deg": p.flip2_deg,
            "echo_spacing_s": p.echo_spacing_s,
            "n_excitations": p.n_excitations,
            "efficiency": p.efficiency,
            "echo_time_ms": self.echo_time_ms,
        }


PRESETS: dict[str, ProtocolPreset] = {
    preset.name: preset
    for preset in (
        ProtocolPreset(
            name="siemens-7t-cspine",
            protocol_name="mp2rage_cspine_0.3",
            mp2rage=MP2RAGEProtocol(5.0, 0.8, 2.7, 4.0, 5.0, 0.0067, 48, 0.96),
            echo_time_ms=2.26,
            sequence_name="*tfl3d1_16",
        ),
        ProtocolPreset(
            name="siemens-7t-cspine-tr6",
            protocol_name="mp2rage_cspine_tr6_0.35",
            mp2rage=MP2RAGEProtocol(6.0, 0.9, 3.2, 4.0, 5.0, 0.0071, 40, 0.96),
            echo_time_ms=2.51,
            sequence_name="*tfl3d1_16",
        ),
    )
}


#: Stored B1 map value = relative flip angle x B1_MAP_SCALE.
B1_MAP_SCALE = 1000.0


def site_protocols_toml(presets: list[ProtocolPreset]) -> str:
    """The site protocol profile (TOML) for the given presets.

    Only what standard DICOM tags do not carry: echo spacing, excitations per block and
    inversion efficiency.

    Examples
    --------
    >>> print(site_protocols_toml([PRESETS["siemens-7t-cspine"]]))
    [[protocol]]
    protocol_name = "mp2rage_cspine_0.3"
    echo_spacing_s = 0.0067
    n_excitations = 48
    efficiency = 0.96
    b1_map_scale = 1000.0
    <BLANKLINE>
    """
    blocks = []
    for preset in presets:
        p = preset.mp2rage
        blocks.append(
            "[[protocol]]\n"
            f'protocol_name = "{preset.protocol_name}"\n'
            f"echo_spacing_s = {p.echo_spacing_s!r}\n"
            f"n_excitations = {int(p.n_excitations)}\n"
            f"efficiency = {p.efficiency!r}\n"
            f"b1_map_scale = {B1_MAP_SCALE!r}\n"
        )
    return "\n".join(blocks)
