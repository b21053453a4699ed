"""Tests for clipsort.ingest.watcher with a real watchdog observer on real folders."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from watchdog.observers.inotify import InotifyWatchGroup
from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent, InotifyFD, WatchDescriptor
from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper, PathedInotifyEvent

from clipsort.config import DEFAULT_IGNORE
from clipsort.ingest.watcher import MOVE_PAIRING_SECONDS, Watcher, adjust_watchdog
from clipsort.layout import DatasetLayout
from clipsort.work import ALL_DATASETS, Hint
from tests.waiting import wait_until


class Sink:
    """Records what the watcher reports."""

    def __init__(self) -> None:
        self.hints: list[Hint] = []
        self.rescans: list[str] = []
        self.classes: list[str] = []
        self.placed_files: list[Path] = []
        self.folder_changes = 0
        self.busy: list[str] = []
        self.sorted_busy_since: list[tuple[str, float]] = []
        self.lock = threading.Lock()

    def hint(self, hint: Hint) -> None:
        with self.lock:
            self.hints.append(hint)

    def request_rescan(self, dataset: str = ALL_DATASETS) -> None:
        with self.lock:
            self.rescans.append(dataset)

    def folders_changed(self) -> None:
        with self.lock:
            self.folder_changes += 1

    def classes_changed(self, dataset: str) -> None:
        with self.lock:
            self.classes.append(dataset)

    def placed(self, dataset: str, path: Path) -> None:
        with self.lock:
            self.placed_files.append(path)

    def rescan_filed(self, dataset: str) -> None:
        with self.lock:
            self.rescans.append(f"filed:{dataset}")

    def destination_changed(self, dataset: str) -> None:
        with self.lock:
            self.rescans.append(f"changed:{dataset}")

    def inbox_busy(self, dataset: str, whole: bool) -> None:
        with self.lock:
            self.busy.append(f"{dataset} whole" if whole else dataset)

    def sorted_busy(self, dataset: str, since: float) -> None:
        with self.lock:
            self.sorted_busy_since.append((dataset, since))

    def hinted(self, name: str, *, kind: str | None = None) -> bool:
        with self.lock:
            return any(h.path.name == name and (kind is None or h.kind == kind) for h in self.hints)


@contextlib.contextmanager
def native(root: Path, sink: Sink, *layouts: DatasetLayout) -> Iterator[Watcher]:
    """An inotify watcher on ``root`` and ``layouts``, stopped (and checked dead) afterwards."""
    watcher = Watcher(root, sink, polling=False, polling_seconds=1, ignore=DEFAULT_IGNORE)
    watcher.start()
    watcher.sync(list(layouts))
    try:
        yield watcher
    finally:
        watcher.stop()
    assert not watcher.is_alive()


def inbox(tmp_path: Path) -> DatasetLayout:
    layout = DatasetLayout(tmp_path / "ds")
    layout.inbox.mkdir(parents=True)
    return layout


@pytest.fixture(params=["native", "polling"])
def watched(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Watcher, Sink, DatasetLayout]]:
    layout = DatasetLayout(tmp_path / "ds")
    layout.inbox.mkdir(parents=True)
    (layout.classes / "red").mkdir(parents=True)
    sink = Sink()
    watcher = Watcher(
        tmp_path, sink, polling=request.param == "polling", polling_seconds=0.1, ignore=DEFAULT_IGNORE
    )
    watcher.start()
    watcher.sync([layout])
    yield watcher, sink, layout
    watcher.stop()
    assert not watcher.is_alive()


def test_written_file_is_hinted(watched: tuple[Watcher, Sink, DatasetLayout]) -> None:
    """A file written into the inbox produces a hint for its dataset."""
    _, sink, layout = watched
    (layout.inbox / "a.jpg").write_bytes(b"x")
    wait_until(lambda: sink.hinted("a.jpg"), timeout=10)
    assert all(h.dataset == "ds" for h in sink.hints)


def test_temporary_names_are_ignored_until_renamed(watched: tuple[Watcher, Sink, DatasetLayout]) -> None:
    """x.jpg.part is never hinted; its rename to x.jpg is, as a closed (complete) file."""
    _, sink, layout = watched
    (layout.inbox / "x.jpg.part").write_bytes(b"partial")
    (layout.inbox / ".hidden.jpg").write_bytes(b"h")
    os.rename(layout.inbox / "x.jpg.part", layout.inbox / "x.jpg")
    wait_until(lambda: sink.hinted("x.jpg"), timeout=10)
    assert not sink.hinted("x.jpg.part") and not sink.hinted(".hidden.jpg")


def test_class_changes_and_new_folders(watched: tuple[Watcher, Sink, DatasetLayout]) -> None:
    """A reference added under Clases/ is a class change; a folder in the inbox asks for a rescan."""
    _, sink, layout = watched
    (layout.classes / "red" / "ref.png").write_bytes(b"x")
    (layout.inbox / "album").mkdir()
    wait_until(lambda: "ds" in sink.classes and "ds" in sink.rescans, timeout=10)


def test_a_datasets_own_output_folders_change_what_is_watched_without_a_rescan(
    watched: tuple[Watcher, Sink, DatasetLayout],
) -> None:
    """Dataset/, Review/, Rejected/ made or removed: watches change, no rescan; other folders rescan all."""
    watcher, sink, layout = watched
    for folder in (layout.sorted, layout.review, layout.rejected):
        folder.mkdir()
    wait_until(lambda: sink.folder_changes == 3, timeout=10)
    layout.review.rmdir()
    wait_until(lambda: sink.folder_changes == 4, timeout=10)
    assert ALL_DATASETS not in sink.rescans
    (watcher.root / "Dataset").mkdir()  # a dataset of that name, beside "ds"
    (layout.root / "Notes").mkdir()
    wait_until(lambda: sink.rescans.count(ALL_DATASETS) >= 2, timeout=10)


def test_native_close_write_is_marked_closed(tmp_path: Path) -> None:
    """inotify's close-after-write event marks the hint as closed (short confirmation)."""
    sink = Sink()
    layout = inbox(tmp_path)
    with native(tmp_path, sink, layout):
        (layout.inbox / "c.jpg").write_bytes(b"x")
        wait_until(lambda: sink.hinted("c.jpg", kind="closed"), timeout=10)


def test_reads_and_each_write_are_not_reported(tmp_path: Path) -> None:
    """A file written in many chunks, then read twice, costs two hints: created and closed."""
    sink = Sink()
    layout = inbox(tmp_path)
    (layout.sorted / "red").mkdir(parents=True)
    kept = layout.sorted / "red" / "kept.jpg"
    kept.write_bytes(b"k")
    with native(tmp_path, sink, layout):
        with (layout.inbox / "chunked.jpg").open("wb", buffering=0) as upload:
            for _ in range(50):
                upload.write(b"x" * 100)
        for _ in range(2):
            (layout.inbox / "chunked.jpg").read_bytes()
            kept.read_bytes()
        (layout.inbox / "last.jpg").write_bytes(b"y")  # events arrive in order: this one comes last
        wait_until(lambda: sink.hinted("last.jpg", kind="closed"), timeout=10)
    with sink.lock:
        assert sorted(h.kind for h in sink.hints if h.path.name == "chunked.jpg") == ["closed", "written"]
        assert sink.placed_files == []  # reading a sorted file is not an arrival


def test_a_failing_sink_does_not_kill_the_observer(tmp_path: Path) -> None:
    """An exception inside a handler is caught, so later events still arrive."""
    layout = inbox(tmp_path)
    sink = Sink()
    calls = {"n": 0}
    original = sink.hint

    def flaky(hint: Hint) -> None:
        calls["n"] += 1
        if hint.path.name == "boom.jpg":
            raise RuntimeError("boom")
        original(hint)

    sink.hint = flaky  # type: ignore[method-assign]
    with native(tmp_path, sink, layout) as watcher:
        (layout.inbox / "boom.jpg").write_bytes(b"x")
        wait_until(lambda: calls["n"] > 0, timeout=10)
        (layout.inbox / "after.jpg").write_bytes(b"x")
        wait_until(lambda: sink.hinted("after.jpg"), timeout=10)
        assert watcher.is_alive()


def test_new_dataset_folder_under_root_asks_for_a_full_rescan(tmp_path: Path) -> None:
    """Creating Data/<new>/ is seen at the root, so the service can discover and watch it."""
    sink = Sink()
    with native(tmp_path, sink) as watcher:
        (tmp_path / "newset").mkdir()
        wait_until(lambda: ALL_DATASETS in sink.rescans, timeout=10)
        (tmp_path / "newset" / "Images").mkdir()
        watcher.sync([DatasetLayout(tmp_path / "newset")])
        (tmp_path / "newset" / "Images" / "n.jpg").write_bytes(b"x")
        wait_until(lambda: sink.hinted("n.jpg"), timeout=10)


def test_restart_gives_a_working_observer(tmp_path: Path) -> None:
    """After restart() events flow again through a fresh observer."""
    sink = Sink()
    layout = inbox(tmp_path)
    with native(tmp_path, sink, layout) as watcher:
        watcher.restart()
        assert watcher.is_alive()
        (layout.inbox / "r.jpg").write_bytes(b"x")
        wait_until(lambda: sink.hinted("r.jpg"), timeout=10)


def test_inotify_overflow_record_triggers_a_full_rescan(tmp_path: Path) -> None:
    """watchdog only logs IN_Q_OVERFLOW; the watcher turns that record into a full rescan."""
    sink = Sink()
    with native(tmp_path, sink):
        logging.getLogger("watchdog.observers.inotify_c").warning(
            "Inotify queue overflowed; filesystem events were lost"
        )
        assert sink.rescans == [ALL_DATASETS]
    logging.getLogger("watchdog.observers.inotify_c").warning("Inotify queue overflowed")
    assert sink.rescans == [ALL_DATASETS], "a stopped watcher no longer listens"


def test_arrivals_in_class_folders_are_reported_but_departures_are_not(tmp_path: Path) -> None:
    """Arrivals in Dataset/ or Clases/ folders are reported (not departures); new folders are scanned."""
    layout = inbox(tmp_path)
    for folder in (layout.class_dir("red"), layout.class_dir("blue"), layout.classes / "blue"):
        folder.mkdir(parents=True)
    (layout.class_dir("red") / "a.jpg").write_bytes(b"A")
    (layout.class_dir("red") / "b.jpg").write_bytes(b"B")
    (layout.review).mkdir()
    (layout.review / "c.jpg").write_bytes(b"C")
    sink = Sink()
    with native(tmp_path, sink, layout):
        os.rename(layout.class_dir("red") / "a.jpg", layout.class_dir("blue") / "a.jpg")
        os.rename(layout.review / "c.jpg", layout.classes / "blue" / "c.jpg")
        (layout.class_dir("red") / "b.jpg").unlink()
        (layout.class_dir("green")).mkdir()
        layout.negatives.mkdir()  # a folder made under Clases/ is scanned as well
        wait_until(lambda: len(sink.placed_files) >= 2 and sink.rescans.count("filed:ds") == 2, timeout=10)
    assert sorted(sink.placed_files) == sorted(
        [layout.class_dir("blue") / "a.jpg", layout.classes / "blue" / "c.jpg"]
    )


def test_a_deletion_in_a_class_folder_reports_a_changed_destination(tmp_path: Path) -> None:
    """A file deleted from Dataset/ (space freed) is reported; clipsort's own hidden temporaries are not."""
    layout = inbox(tmp_path)
    layout.class_dir("red").mkdir(parents=True)
    (layout.class_dir("red") / "a.jpg").write_bytes(b"A")
    (layout.class_dir("red") / ".clipsort-0123abcd.tmp").write_bytes(b"half a copy")
    sink = Sink()
    with native(tmp_path, sink, layout):
        (layout.class_dir("red") / ".clipsort-0123abcd.tmp").unlink()  # first: events keep their order
        (layout.class_dir("red") / "a.jpg").unlink()
        wait_until(lambda: "changed:ds" in sink.rescans, timeout=10)
    assert sink.rescans.count("changed:ds") == 1


def test_a_class_folder_whose_permissions_change_reports_a_changed_destination(tmp_path: Path) -> None:
    """chmod on a destination (made writable again) is reported; files arriving there are not."""
    layout = inbox(tmp_path)
    layout.class_dir("red").mkdir(parents=True)
    sink = Sink()
    with native(tmp_path, sink, layout):
        (layout.class_dir("red") / ".a.part").write_bytes(b"A")
        os.rename(layout.class_dir("red") / ".a.part", layout.class_dir("red") / "a.jpg")
        wait_until(lambda: sink.placed_files, timeout=10)
        assert "changed:ds" not in sink.rescans  # a file coming in changes nothing for the retries
        layout.class_dir("red").chmod(0o755)
        wait_until(lambda: "changed:ds" in sink.rescans, timeout=10)
    assert sink.rescans.count("changed:ds") == 1


def test_a_folder_renamed_inside_the_inbox_is_watched_under_its_new_name(tmp_path: Path) -> None:
    """Moves are not paired (watcher's caveats): a renamed sub-folder still reports, by its new path."""
    sink = Sink()
    layout = inbox(tmp_path)
    (layout.inbox / "album").mkdir()
    with native(tmp_path, sink, layout):
        os.rename(layout.inbox / "album", layout.inbox / "trip")
        wait_until(lambda: "ds" in sink.rescans, timeout=10)
        (layout.inbox / "trip" / "a.jpg").write_bytes(b"x")
        wait_until(lambda: sink.hinted("a.jpg", kind="closed"), timeout=10)
    with sink.lock:
        assert {h.path for h in sink.hints} == {layout.inbox / "trip" / "a.jpg"}


def test_a_burst_of_renames_into_place_is_hinted_once_each_as_closed(tmp_path: Path) -> None:
    """500 uploads renamed from hidden names in one go: each final name hinted closed, once, none lost."""
    sink = Sink()
    layout = inbox(tmp_path)
    names = [f"p{k:03d}.jpg" for k in range(500)]
    for name in names:
        (layout.inbox / f".{name}").write_bytes(b"x")
    with native(tmp_path, sink, layout):
        for name in names:
            os.rename(layout.inbox / f".{name}", layout.inbox / name)
        wait_until(lambda: len(sink.hints) >= len(names), timeout=30)
    with sink.lock:
        assert sorted((h.path.name, h.kind) for h in sink.hints) == [(name, "closed") for name in names]


def test_a_burst_past_the_busy_rate_is_reported_once_and_its_inbox_unwatched_until_resumed(
    tmp_path: Path,
) -> None:
    """Past 50 events in a second the inbox reports itself busy once and hints no more; paused,
    it has no watch (the kernel queues nothing); resumed, a new file is hinted again."""
    sink = Sink()
    layout = inbox(tmp_path)
    names = [f"p{k:03d}.jpg" for k in range(500)]
    for name in names:
        (layout.inbox / f".{name}").write_bytes(b"x")
    watcher = Watcher(tmp_path, sink, polling=False, polling_seconds=1, ignore=DEFAULT_IGNORE, busy_rate=50)
    watcher.start()
    watcher.sync([layout])
    try:
        for name in names:
            os.rename(layout.inbox / f".{name}", layout.inbox / name)
        wait_until(lambda: sink.busy == ["ds whole"], timeout=30)  # renamed in: whole
        watcher.pause_inbox("ds")  # what the reactions thread does with the report
        assert not watcher.watching(layout.inbox)
        watcher.sync([layout])  # a rescan's sync leaves a paused inbox alone
        assert not watcher.watching(layout.inbox)
        (layout.inbox / "unwatched.jpg").write_bytes(b"x")
        watcher.resume_inbox("ds")
        assert watcher.watching(layout.inbox)
        (layout.inbox / "watched.jpg").write_bytes(b"x")
        wait_until(lambda: sink.hinted("watched.jpg"), timeout=30)
    finally:
        watcher.stop()
    with sink.lock:
        assert sink.busy == ["ds whole"]
        # 50 a second, counted as watchdog hands them over: on a loaded machine, a few windows' worth
        hinted = {h.path.name for h in sink.hints if h.path.name in names}
        assert 50 <= len(hinted) < len(names), "the rest set aside once busy"
        assert not any(h.path.name == "unwatched.jpg" for h in sink.hints)


def test_a_dataset_folder_being_filled_is_unwatched_until_its_class_folders_are_still(
    tmp_path: Path,
) -> None:
    """Past 50 events in a second a Dataset/ reports itself busy once (with the time its events were
    dropped from) and reports no more arrivals; paused, it has no watch; it is found still only
    once no class folder has changed for the quiet time, then watched again."""
    sink = Sink()
    layout = inbox(tmp_path)
    (layout.sorted / "red").mkdir(parents=True)
    names = [f"p{k:03d}.jpg" for k in range(500)]
    for name in names:
        (layout.inbox / name).write_bytes(b"x")
    watcher = Watcher(tmp_path, sink, polling=False, polling_seconds=1, ignore=DEFAULT_IGNORE, busy_rate=50)
    watcher.start()
    made = time.time()
    watcher.sync([layout])
    try:
        started = time.time()
        for name in names:  # what the placer does
            os.rename(layout.inbox / name, layout.sorted / "red" / name)
        wait_until(lambda: len(sink.sorted_busy_since) == 1, timeout=30)
        ((dataset, since),) = sink.sorted_busy_since
        # From the watch's start at the earliest (the dropped events happened after it), and at
        # most QUEUED_SECONDS before they were dropped.
        assert dataset == "ds" and made <= since <= started
        watcher.pause_sorted("ds", since)  # what the reactions thread does with the report
        assert not watcher.watching(layout.sorted)
        watcher.sync([layout])  # a rescan's sync leaves a paused folder alone
        assert not watcher.watching(layout.sorted)
        assert watcher.still_sorted(quiet=0.3) == []  # its folders' times are first read here
        (layout.sorted / "blue").mkdir()  # a new class folder changes Dataset/'s own time
        assert watcher.still_sorted(quiet=0.3) == []
        (layout.sorted / "red" / "late.jpg").write_bytes(b"x")  # and a file, its class folder's
        assert watcher.still_sorted(quiet=0.3) == []
        wait_until(lambda: watcher.still_sorted(quiet=0.3) == [("ds", since)], timeout=30)
        assert watcher.still_sorted(quiet=0.3) == [], "reported once"
        watcher.resume_sorted("ds")
        assert watcher.watching(layout.sorted)
        (layout.sorted / "blue" / "watched.jpg").write_bytes(b"x")
        wait_until(lambda: any(path.name == "watched.jpg" for path in sink.placed_files), timeout=30)
    finally:
        watcher.stop()
    with sink.lock:
        assert len(sink.sorted_busy_since) == 1
        reported = {path.name for path in sink.placed_files}
        # Two events a move (the file's and its folder's modification), 50 a second: 25 files at least.
        assert 25 <= len(reported & set(names)) < len(names), "the rest dropped once busy"
        assert "late.jpg" not in reported


def test_a_watcher_made_by_a_reload_keeps_a_dataset_folder_paused_until_still(tmp_path: Path) -> None:
    """A reload that replaces the watcher mid-burst carries its paused Dataset/ over: unwatched, and
    reported still with the time its events were first dropped from."""
    layout = inbox(tmp_path)
    (layout.sorted / "red").mkdir(parents=True)
    old = Watcher(tmp_path, Sink(), polling=False, polling_seconds=1, ignore=DEFAULT_IGNORE, busy_rate=50)
    old.pause_sorted("ds", 1234.5)
    new = Watcher(tmp_path, Sink(), polling=False, polling_seconds=1, ignore=DEFAULT_IGNORE, busy_rate=50)
    new.keep_paused(old)
    new.start()
    try:
        new.sync([layout])
        assert new.watching(layout.inbox) and not new.watching(layout.sorted)
        wait_until(lambda: new.still_sorted(quiet=0.2) == [("ds", 1234.5)], timeout=30)
        new.resume_sorted("ds")
        assert new.watching(layout.sorted)
    finally:
        new.stop()


def test_watchdog_move_pairing_is_switched_off() -> None:
    """The watchdog in use has the internals the watcher adjusts (else a burst pays a scan per move)."""
    grouper = InotifyMoveEventGrouper()
    assert grouper.delay == MOVE_PAIRING_SECONDS
    wd = WatchDescriptor(1)
    source = PathedInotifyEvent(InotifyEvent(wd, InotifyConstants.IN_MOVED_FROM, 7, b"a"), b"/inbox/a")
    target = PathedInotifyEvent(InotifyEvent(wd, InotifyConstants.IN_MOVED_TO, 7, b"b"), b"/inbox/b")
    grouper.put_event(source)
    assert grouper.get_queued_moved_from_event(7) is None
    grouper.put_event(target)
    assert [grouper.read_event(), grouper.read_event()] == [source, target], "two moves, not a pair"


def kernel_masks() -> dict[int, int]:
    """Each inotify watch of this process: the watched folder's inode and the kernel's event mask."""
    masks = {}
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
                if line.startswith("inotify "):
                    fields = dict(part.split(":", 1) for part in line.split()[1:])
                    masks[int(fields["ino"], 16)] = int(fields["mask"], 16)
    return masks


def test_moves_out_of_the_inbox_and_dataset_are_not_asked_of_the_kernel(tmp_path: Path) -> None:
    """IN_MOVED_FROM (each sorted file's) is left out in Images/ and Dataset/, kept in Clases/."""
    layout = inbox(tmp_path)
    for folder in (layout.inbox / "album", layout.class_dir("red"), layout.classes / "red"):
        folder.mkdir(parents=True)
    sink = Sink()
    with native(tmp_path, sink, layout):
        masks = kernel_masks()
        (layout.inbox / ".a.part").write_bytes(b"A")
        os.rename(layout.inbox / ".a.part", layout.inbox / "a.jpg")  # an upload renamed into place
        os.rename(layout.inbox / "a.jpg", layout.class_dir("red") / "a.jpg")  # as clipsort sorts it
        os.rename(layout.class_dir("red") / "a.jpg", layout.classes / "red" / "a.jpg")  # a new reference
        # Each watch has its emitter thread: the inbox's hint may come after the other two.
        wait_until(
            lambda: sink.classes and len(sink.placed_files) == 2 and sink.hinted("a.jpg", kind="closed"),
            timeout=10,
        )
    moved_from, moved_to = InotifyConstants.IN_MOVED_FROM, InotifyConstants.IN_MOVED_TO
    for folder in (layout.inbox, layout.inbox / "album", layout.sorted, layout.class_dir("red")):
        mask = masks[folder.stat().st_ino]
        assert mask & moved_to and not mask & moved_from, folder
    for folder in (layout.classes, layout.classes / "red", layout.root):
        assert masks[folder.stat().st_ino] & moved_from, folder
    assert sink.hinted("a.jpg", kind="closed")
    # Each watch has its emitter thread: the two arrivals may come in either order.
    assert sorted(sink.placed_files) == sorted(
        [layout.class_dir("red") / "a.jpg", layout.classes / "red" / "a.jpg"]
    )


AT_FDCWD = -100
RENAME_EXCHANGE = 2


def exchange(first: Path, second: Path) -> None:
    """Swap two names atomically (``renameat2(RENAME_EXCHANGE)``): each keeps existing throughout."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE):
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def swappable(tmp_path: Path) -> tuple[DatasetLayout, Path, Path]:
    """A dataset whose Dataset/red can be swapped with a symlink out of the root."""
    layout = inbox(tmp_path)
    red = layout.sorted / "red"
    red.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    decoy = layout.sorted / ".decoy"
    decoy.symlink_to(outside)
    return layout, red, decoy


def test_a_watched_folder_swapped_many_times_never_breaks_the_watchers_stop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Dataset/red swapped with a symlink 2,000 times under a live watch: stop() ends every thread."""
    layout, red, decoy = swappable(tmp_path)
    sink = Sink()
    watcher = Watcher(tmp_path, sink, polling=False, polling_seconds=1, ignore=DEFAULT_IGNORE)
    watcher.start()
    watcher.sync([layout])
    for _ in range(2000):
        exchange(red, decoy)
    folder = red if red.is_dir() and not red.is_symlink() else decoy
    (folder / "after.png").write_bytes(b"x")
    wait_until(lambda: sink.placed_files, timeout=20)  # every swap's event was read by then
    before = threading.active_count()
    watcher.stop()
    assert not watcher.is_alive()
    assert threading.active_count() < before, "the observer's threads ended"


def test_watches_whose_books_disagree_are_still_removed(tmp_path: Path) -> None:
    """The state a swapped folder leaves (a watch whose path is no longer mapped to it) stops cleanly.

    watchdog 7.1's own bookkeeping raised KeyError here, from Observer.stop(), which cut the
    daemon's shutdown short; this test fails loudly if the pinned watchdog changes what is patched.
    """
    layout, red, _ = swappable(tmp_path)
    watcher = Watcher(tmp_path, Sink(), polling=False, polling_seconds=1, ignore=DEFAULT_IGNORE)
    watcher.start()
    watcher.sync([layout])
    groups = [emitter._inotify for emitter in watcher._observer.emitters]  # type: ignore[attr-defined]
    (group,) = [group for group in groups if group is not None and group.path == bytes(layout.sorted)]
    del group._active_callbacks_by_path[bytes(red)]
    watcher.stop()
    assert not watcher.is_alive()
    assert not group._active_callbacks_by_watch, "every watch forgotten"


def test_a_watch_whose_events_fail_is_reported_degraded_and_its_thread_lives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error handling one folder's events (injected) is logged once; the dataset shows as degraded."""
    layout = inbox(tmp_path)
    sink = Sink()
    with native(tmp_path, sink, layout) as watcher:

        def broken(self: InotifyWatchGroup, event: InotifyEvent) -> None:
            raise RuntimeError("injected")

        monkeypatch.setattr(InotifyWatchGroup, "on_event", broken)
        for k in range(3):
            (layout.inbox / f"p{k}.png").write_bytes(b"x")
        wait_until(watcher.degraded, timeout=10)
        assert watcher.degraded() == {layout.name: "Images/ not watched: RuntimeError: injected"}
        assert watcher.is_alive(), "the reader thread goes on"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the injected death
def test_a_dead_watchdog_reader_thread_is_seen_and_a_restart_brings_events_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """watchdog's inotify reader killed by an injected error: is_alive says so; restart() revives it."""
    layout = inbox(tmp_path)
    sink = Sink()
    with native(tmp_path, sink, layout) as watcher:
        original = InotifyFD.handle_event

        def once(self: InotifyFD, event: InotifyEvent) -> None:
            monkeypatch.setattr(InotifyFD, "handle_event", original)
            raise RuntimeError("injected into watchdog's reader")

        monkeypatch.setattr(InotifyFD, "handle_event", once)
        (layout.inbox / "killer.png").write_bytes(b"x")
        wait_until(lambda: not watcher.is_alive(), timeout=10)
        watcher.restart()
        (layout.inbox / "after.png").write_bytes(b"x")
        wait_until(lambda: sink.hinted("after.png"), timeout=10)
        assert watcher.is_alive()


def test_the_pinned_watchdog_has_everything_the_watcher_adjusts() -> None:
    """Each internal of watchdog's that the watcher turns off exists: a new watchdog fails here, loudly."""
    assert adjust_watchdog() == []
    assert InotifyMoveEventGrouper.delay == MOVE_PAIRING_SECONDS


def test_importing_the_watcher_or_the_decoders_changes_nothing_global() -> None:
    """No import-time side effects: watchdog, the warnings filters and transformers' registry stay."""
    probe = (
        "import warnings; "
        "from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper as G; "
        "delay = G.delay; method = G._group_moved_to_event; "
        "import clipsort.ingest.watcher, clipsort.decode.images, clipsort.encode.cliphead; "
        "from transformers.models.auto.configuration_auto import CONFIG_MAPPING; "
        "ours = [f for f in warnings.filters if f[1] is not None and 'Callback with id' in f[1].pattern]; "
        "print(ours == [], G.delay == delay, G._group_moved_to_event is method, "
        "clipsort.encode.cliphead.MODEL_TYPE in CONFIG_MAPPING)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "True", "False"]


class HeldSink(Sink):
    """A sink whose first report of a placed file holds watchdog's dispatcher until released."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = threading.Event()
        self.release = threading.Event()

    def placed(self, dataset: str, path: Path) -> None:
        if not self.holding.is_set():
            self.holding.set()
            self.release.wait(10)
        super().placed(dataset, path)


def test_a_hard_link_whose_first_name_is_gone_before_its_event_is_handled_is_an_arrival(
    tmp_path: Path,
) -> None:
    """ln then rm, with the rm done before the link's IN_CREATE is handled (a busy machine): reported."""
    layout = inbox(tmp_path)
    for color in ("red", "blue"):
        layout.class_dir(color).mkdir(parents=True)
    sink = HeldSink()
    with native(tmp_path, sink, layout):
        (layout.class_dir("red") / "first.png").write_bytes(b"first")  # its close holds the dispatcher
        wait_until(sink.holding.is_set, timeout=10)
        (layout.class_dir("red") / "moved.png").write_bytes(b"picture")
        os.link(layout.class_dir("red") / "moved.png", layout.class_dir("blue") / "moved.png")
        os.unlink(layout.class_dir("red") / "moved.png")  # one link left when the event is handled
        sink.release.set()
        wait_until(lambda: layout.class_dir("blue") / "moved.png" in sink.placed_files, timeout=10)
