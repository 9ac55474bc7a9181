"""ExamTracker: when an exam is handed out, and how often."""

from __future__ import annotations

import dataclasses

import pytest

from dicom_node.completion import ExamTracker
from dicom_node.components import Component
from tests.test_dicom_node_factories import make_info

STUDY = "1.2.3"


def _series(
    tracker: ExamTracker,
    component: Component,
    *,
    n: int,
    expected: int | None,
    now: float,
    series_uid: str | None = None,
    study_uid: str = STUDY,
) -> str:
    series_uid = series_uid or f"{study_uid}.{list(Component).index(component) + 1}"
    for _ in range(n):
        tracker.add(
            make_info(
                study_uid=study_uid,
                series_uid=series_uid,
                component=component,
                images_in_acquisition=expected,
            ),
            now=now,
        )
    return series_uid


def _mp2rage(tracker: ExamTracker, *, now: float, slabs: int = 1, n: int = 3) -> None:
    for slab in range(slabs):
        for component in (Component.INV1, Component.INV2, Component.UNI):
            _series(
                tracker,
                component,
                n=n,
                expected=n,
                now=now,
                series_uid=f"{STUDY}.{slab}.{component.value}",
            )


def test_complete_exam_waits_for_settle_then_is_handed_out_once() -> None:
    tracker = ExamTracker(settle_s=3.0, stale_s=120.0)
    _mp2rage(tracker, now=100.0)
    assert tracker.ready(now=102.9) == []
    (exam,) = tracker.ready(now=103.0)
    assert exam.study_uid == STUDY
    assert exam.complete is True and exam.reason == "complete"
    assert exam.update is False
    assert set(exam.components) == {Component.INV1, Component.INV2, Component.UNI}
    assert sum(len(instances) for instances in exam.series.values()) == 9
    assert tracker.ready(now=200.0) == []


def test_missing_images_block_completion_until_they_arrive() -> None:
    tracker = ExamTracker(settle_s=3.0, stale_s=120.0)
    _series(tracker, Component.INV1, n=3, expected=3, now=0.0, series_uid="1.2.3.1")
    _series(tracker, Component.INV2, n=3, expected=3, now=0.0, series_uid="1.2.3.2")
    uni = _series(tracker, Component.UNI, n=2, expected=3, now=0.0, series_uid="1.2.3.3")
    assert tracker.ready(now=10.0) == []
    _series(tracker, Component.UNI, n=1, expected=3, now=11.0, series_uid=uni)
    assert tracker.ready(now=12.0) == []  # still settling
    (exam,) = tracker.ready(now=14.0)
    assert exam.complete


def test_missing_component_waits_for_stale_fallback_with_reason() -> None:
    tracker = ExamTracker(settle_s=3.0, stale_s=120.0)
    _series(tracker, Component.INV1, n=3, expected=3, now=0.0, series_uid="1.2.3.1")
    _series(tracker, Component.UNI, n=3, expected=3, now=0.0, series_uid="1.2.3.3")
    assert tracker.ready(now=119.0) == []
    (exam,) = tracker.ready(now=120.0)
    assert exam.complete is False
    assert "missing INV2" in exam.reason
    assert "120 s" in exam.reason


def test_stale_reason_names_the_short_series() -> None:
    tracker = ExamTracker(settle_s=1.0, stale_s=10.0)
    _mp2rage(tracker, now=0.0)
    short = _series(tracker, Component.T2STAR, n=4, expected=10, now=0.0, series_uid="1.2.3.9")
    (exam,) = tracker.ready(now=10.0)
    assert not exam.complete
    assert f"series {short} has 4 of 10 images" in exam.reason


def test_t1_map_alone_is_enough_when_there_is_no_uni() -> None:
    tracker = ExamTracker(settle_s=3.0, stale_s=120.0)
    _series(tracker, Component.T1MAP, n=3, expected=3, now=0.0)
    (exam,) = tracker.ready(now=3.0)
    assert exam.complete and list(exam.components) == [Component.T1MAP]


def test_inversions_without_uni_or_t1_map_are_not_complete() -> None:
    tracker = ExamTracker(settle_s=3.0, stale_s=60.0)
    _series(tracker, Component.INV1, n=2, expected=2, now=0.0, series_uid="1.2.3.1")
    _series(tracker, Component.INV2, n=2, expected=2, now=0.0, series_uid="1.2.3.2")
    assert tracker.ready(now=30.0) == []
    (exam,) = tracker.ready(now=60.0)
    assert not exam.complete and "no UNI" in exam.reason


def test_enhanced_series_is_complete_with_one_multiframe_instance() -> None:
    tracker = ExamTracker(settle_s=3.0, stale_s=120.0)
    for number, component in enumerate((Component.INV1, Component.INV2, Component.UNI)):
        tracker.add(
            make_info(
                series_uid=f"1.2.3.{number + 1}",
                component=component,
                number_of_frames=48,
                images_in_acquisition=48,  # some scanners copy the frame count here
            ),
            now=0.0,
        )
    (exam,) = tracker.ready(now=3.0)
    assert exam.complete
    assert all(len(instances) == 1 for instances in exam.series.values())


def test_two_slabs_need_the_same_number_of_series_per_component() -> None:
    tracker = ExamTracker(settle_s=3.0, stale_s=120.0)
    _mp2rage(tracker, now=0.0, slabs=2)
    # a third UNI slab without its inversions breaks the slab count
    _series(tracker, Component.UNI, n=3, expected=3, now=0.0, series_uid="1.2.3.2.UNI")
    assert tracker.ready(now=60.0) == []
    (exam,) = tracker.ready(now=120.0)
    assert not exam.complete
    assert "slab count differs" in exam.reason and "UNI=3" in exam.reason


def test_two_consistent_slabs_are_complete() -> None:
    tracker = ExamTracker(settle_s=3.0, stale_s=120.0)
    _mp2rage(tracker, now=0.0, slabs=2)
    (exam,) = tracker.ready(now=3.0)
    assert exam.complete
    assert len(exam.components[Component.UNI]) == 2
    assert len(exam.series) == 6


def test_own_results_are_ignored_entirely() -> None:
    tracker = ExamTracker(settle_s=3.0, stale_s=120.0)
    own = make_info(component=Component.SEG, is_own_result=True)
    assert tracker.add(own, now=0.0) is False
    assert tracker.ready(now=1000.0) == []
    assert len(tracker) == 0
    # results forwarded back after hand-out never trigger an update either
    _mp2rage(tracker, now=0.0)
    assert len(tracker.ready(now=3.0)) == 1
    tracker.add(make_info(study_uid=STUDY, series_uid="9.9", is_own_result=True), now=50.0)
    assert tracker.ready(now=1000.0) == []


def test_reader_seg_is_attached_and_does_not_block() -> None:
    tracker = ExamTracker(settle_s=3.0, stale_s=120.0)
    _mp2rage(tracker, now=0.0)
    tracker.add(make_info(series_uid="1.2.3.77", component=Component.SEG), now=0.0)
    (exam,) = tracker.ready(now=3.0)
    assert exam.complete
    assert exam.components[Component.SEG] == ["1.2.3.77"]
    assert "1.2.3.77" in exam.series


def test_re_adding_known_instances_is_idempotent() -> None:
    tracker = ExamTracker(settle_s=3.0, stale_s=120.0)
    info = make_info(component=Component.T1MAP, images_in_acquisition=1)
    assert tracker.add(info, now=0.0) is True
    (exam,) = tracker.ready(now=3.0)
    assert tracker.add(info, now=500.0) is False  # e.g. rebuild after restart, or re-send
    assert tracker.ready(now=1000.0) == []
    assert exam.series[info.series_uid] == [info]


def test_a_known_instance_received_again_hands_the_exam_out_again_naming_it() -> None:
    tracker = ExamTracker(settle_s=3.0, stale_s=120.0)
    info = make_info(component=Component.T1MAP, images_in_acquisition=1)
    unknown = make_info(component=Component.T1MAP, images_in_acquisition=1)
    tracker.add(info, now=0.0)
    (first,) = tracker.ready(now=3.0)
    assert first.resent == ()
    assert tracker.resent(unknown, now=100.0) is False  # not known: add() is for that
    again = dataclasses.replace(info, received_at=100.0, size_bytes=info.size_bytes + 2)
    assert tracker.resent(again, now=100.0) is True
    assert tracker.ready(now=102.0) == []  # waits for settle_s like new instances
    (second,) = tracker.ready(now=103.0)
    assert second.update is True and second.resent == (info.sop_instance_uid,)
    assert second.series[info.series_uid] == [again]
    assert tracker.ready(now=1000.0) == []  # handed out once; the set is cleared
    own = dataclasses.replace(info, is_own_result=True)
    assert tracker.resent(own, now=1001.0) is False


def test_rebuild_after_restart_hands_out_once() -> None:
    infos = [make_info(component=Component.T1MAP, images_in_acquisition=2) for _ in range(2)]
    tracker = ExamTracker(settle_s=3.0, stale_s=120.0)
    for info in infos + infos:
        tracker.add(info, now=0.0)
    (exam,) = tracker.ready(now=3.0)
    assert len(exam.series[infos[0].series_uid]) == 2


def test_new_instances_after_hand_out_give_an_update() -> None:
    tracker = ExamTracker(settle_s=3.0, stale_s=120.0)
    _mp2rage(tracker, now=0.0)
    (first,) = tracker.ready(now=3.0)
    tracker.add(make_info(series_uid="1.2.3.77", component=Component.SEG), now=400.0)
    assert tracker.pending() == [STUDY]
    assert tracker.ready(now=401.0) == []
    (second,) = tracker.ready(now=403.0)
    assert second.update is True and first.update is False
    assert Component.SEG in second.components
    assert len(second.series) == len(first.series) + 1
    assert tracker.ready(now=1000.0) == []


def test_exams_are_tracked_separately_and_forget_drops_one() -> None:
    tracker = ExamTracker(settle_s=3.0, stale_s=120.0)
    _series(tracker, Component.T1MAP, n=1, expected=1, now=0.0, study_uid="1.1")
    _series(tracker, Component.T1MAP, n=1, expected=1, now=5.0, study_uid="2.2")
    assert [exam.study_uid for exam in tracker.ready(now=4.0)] == ["1.1"]
    assert [exam.study_uid for exam in tracker.ready(now=8.0)] == ["2.2"]
    tracker.forget("1.1")
    assert len(tracker) == 1


def test_images_are_counted_per_acquisition() -> None:
    tracker = ExamTracker(settle_s=1.0, stale_s=100.0)
    for acquisition in (1, 2):
        for _ in range(2):
            tracker.add(
                make_info(
                    series_uid="1.2.3.5",
                    component=Component.T1MAP,
                    images_in_acquisition=2,
                    acquisition_number=acquisition,
                ),
                now=0.0,
            )
    tracker.add(
        make_info(
            series_uid="1.2.3.5",
            component=Component.T1MAP,
            images_in_acquisition=2,
            acquisition_number=3,
        ),
        now=0.0,
    )
    assert tracker.ready(now=50.0) == []
    (exam,) = tracker.ready(now=100.0)
    assert "has 1 of 2 images (acquisition 3)" in exam.reason


@pytest.mark.parametrize(("settle_s", "stale_s"), [(-1.0, 10.0), (5.0, 1.0), (float("nan"), 1.0)])
def test_bad_timeouts_are_refused(settle_s: float, stale_s: float) -> None:
    with pytest.raises(ValueError, match=r"settle_s|stale_s"):
        ExamTracker(settle_s=settle_s, stale_s=stale_s)


def test_t2star_and_b1_series_on_their_own_grids_join_the_job_without_being_waited_for() -> None:
    tracker = ExamTracker(settle_s=3.0, stale_s=120.0)
    _mp2rage(tracker, now=0.0)
    # a multi-echo GRE counting every echo in ImagesInAcquisition (4 slices x 3 echoes)
    t2star = _series(tracker, Component.T2STAR, n=12, expected=12, now=1.0)
    b1 = _series(tracker, Component.B1MAP, n=8, expected=8, now=1.0)
    (exam,) = tracker.ready(now=4.0)
    assert exam.complete and exam.reason == "complete"
    assert exam.components[Component.T2STAR] == [t2star]
    assert exam.components[Component.B1MAP] == [b1]
    assert {t2star, b1} <= set(exam.series)
    # an exam without them is complete as well: they are optional
    other = ExamTracker(settle_s=3.0, stale_s=120.0)
    _mp2rage(other, now=0.0)
    (alone,) = other.ready(now=3.0)
    assert alone.complete


def test_a_t2star_series_arriving_after_the_hand_out_gives_an_update_with_it() -> None:
    tracker = ExamTracker(settle_s=3.0, stale_s=120.0)
    _mp2rage(tracker, now=0.0)
    (first,) = tracker.ready(now=3.0)
    t2star = _series(tracker, Component.T2STAR, n=4, expected=4, now=50.0)
    assert tracker.ready(now=52.0) == []
    (update,) = tracker.ready(now=53.0)
    assert update.update and update.complete and t2star in update.series
    assert t2star not in first.series


def test_multi_echo_series_whose_first_echo_looks_other_is_listed_as_t2star() -> None:
    tracker = ExamTracker(settle_s=3.0, stale_s=120.0)
    _mp2rage(tracker, now=0.0)
    series_uid = "1.2.3.77"
    for component in (Component.OTHER, Component.OTHER, Component.T2STAR, Component.T2STAR):
        tracker.add(make_info(series_uid=series_uid, component=component), now=0.0)
    (exam,) = tracker.ready(now=3.0)
    assert exam.components[Component.T2STAR] == [series_uid]
    assert Component.OTHER not in exam.components
