"""Cheap copies of the supported presentation contexts: equal to deep copies, independent."""

from __future__ import annotations

import copy

import pynetdicom.transport as pynetdicom_transport
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom import AE
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import MRImageStorage, Verification

from dicom_node.context_copies import copy_contexts, use_cheap_context_copies


def _contexts() -> list[PresentationContext]:
    contexts = [
        build_context(MRImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
        build_context(Verification),
    ]
    contexts[0].context_id = 1
    contexts[0].scp_role = True
    contexts[1].result = 0
    return contexts


def _state(contexts: list[PresentationContext]) -> list[dict[str, object]]:
    return [dict(vars(context)) for context in contexts]


def test_a_cheap_copy_equals_a_deep_copy_and_shares_no_list() -> None:
    originals = _contexts()
    cheap = copy_contexts(originals)
    assert _state(cheap) == _state(copy.deepcopy(originals))
    assert all(type(c) is PresentationContext for c in cheap)
    cheap[0].transfer_syntax.append(JPEG2000Lossless)  # negotiation changes the copy
    cheap[0].result = 3
    assert originals[0].transfer_syntax == [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    assert originals[0].result is None
    assert cheap is not originals and all(
        a is not b for a, b in zip(cheap, originals, strict=True)
    )


def test_anything_else_is_deep_copied() -> None:
    nested = {"a": [1, [2, 3]]}
    copied = copy_contexts(nested)
    assert copied == nested and copied["a"][1] is not nested["a"][1]
    unusual = _contexts()
    unusual[1].extra = ["not a plain context attribute"]  # type: ignore[attr-defined]
    copied_unusual = copy_contexts(unusual)
    assert copied_unusual[1].extra == ["not a plain context attribute"]
    assert copied_unusual[1].extra is not unusual[1].extra


def test_accepted_associations_get_their_own_contexts() -> None:
    use_cheap_context_copies()
    assert pynetdicom_transport.deepcopy is copy_contexts
    ae = AE("SCP")
    ae.add_supported_context(Verification)
    ae.add_supported_context(MRImageStorage)
    server = ae.start_server(("127.0.0.1", 0), block=False)
    try:
        requester = AE("SCU")
        requester.add_requested_context(Verification)
        assoc = requester.associate("127.0.0.1", server.server_address[1], ae_title="SCP")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        (accepted,) = server.active_associations
        assert accepted.acceptor.supported_contexts is not server.contexts
        assoc.release()
        assert [c.abstract_syntax for c in server.contexts] == [Verification, MRImageStorage]
        assert all(c.result is None for c in server.contexts)  # the server's own are untouched
    finally:
        server.shutdown()
