"""Tests for clipsort.store.mover: no-clobber, no-loss moves and copies."""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipsort.errors import FileReplaced, UnsafeDestination
from clipsort.store import mover
from clipsort.store.mover import (
    candidate_name,
    place,
    preview,
    rename_noreplace,
    write_new,
)
from tests.helpers import tree


def test_move_into_new_folder(tmp_path: Path) -> None:
    """The file moves, the folder is created, the bytes are the same."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(b"AAA")
    target = place(tmp_path / "in" / "a.jpg", tmp_path / "out" / "red", boundary=tmp_path)
    assert target == tmp_path / "out" / "red" / "a.jpg"
    assert tree(tmp_path) == {"out/red": ["a.jpg"]}
    assert target.read_bytes() == b"AAA"


def test_collisions_get_numbered_names_and_nothing_is_overwritten(tmp_path: Path) -> None:
    """Three files of the same name all survive with distinct names."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.jpg").write_bytes(b"old")
    for k in range(3):
        folder = tmp_path / f"in{k}"
        folder.mkdir()
        (folder / "a.jpg").write_bytes(f"new{k}".encode())
        place(folder / "a.jpg", out, boundary=tmp_path)
    assert tree(out) == {".": ["a.jpg", "a_1.jpg", "a_2.jpg", "a_3.jpg"]}
    assert (out / "a.jpg").read_bytes() == b"old"
    assert sorted((out / f"a_{k}.jpg").read_bytes() for k in (1, 2, 3)) == [b"new0", b"new1", b"new2"]


def test_rename_noreplace_refuses_existing_target(tmp_path: Path) -> None:
    """The primitive never replaces."""
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b").write_bytes(b"b")
    with pytest.raises(FileExistsError):
        rename_noreplace(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "a").read_bytes() == b"a"
    assert (tmp_path / "b").read_bytes() == b"b"


def test_link_fallback_when_renameat2_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without renameat2 the link+unlink path is equally no-clobber."""
    monkeypatch.setattr(mover, "_renameat2", None)
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b").write_bytes(b"b")
    with pytest.raises(FileExistsError):
        rename_noreplace(tmp_path / "a", tmp_path / "b")
    rename_noreplace(tmp_path / "a", tmp_path / "c")
    assert tree(tmp_path) == {".": ["b", "c"]}


def test_copy_keeps_source(tmp_path: Path) -> None:
    """action = copy leaves the original where it was."""
    (tmp_path / "a.jpg").write_bytes(b"A")
    target = place(tmp_path / "a.jpg", tmp_path / "out", boundary=tmp_path, keep_source=True)
    assert (tmp_path / "a.jpg").read_bytes() == target.read_bytes() == b"A"


@pytest.mark.skipif(
    not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == os.stat("/tmp").st_dev,
    reason="needs /dev/shm on a different file system than /tmp",
)
def test_cross_filesystem_move(tmp_path: Path) -> None:
    """EXDEV: copied under a temporary name, renamed into place, then the source is removed."""
    source = Path("/dev/shm") / f"clipsort-test-{os.getpid()}.jpg"
    source.write_bytes(b"X" * 100_000)
    os.utime(source, ns=(1_000_000_000, 2_000_000_000))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / source.name).write_bytes(b"taken")
    try:
        target = place(source, tmp_path / "out", boundary=Path("/"))
    finally:
        source.unlink(missing_ok=True)
    assert target.name.endswith("_1.jpg")
    assert target.read_bytes() == b"X" * 100_000
    assert target.stat().st_mtime_ns == 2_000_000_000
    assert not source.exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([source.name, target.name])


@pytest.mark.parametrize("link", ["Dataset/red", "Dataset"])
def test_a_symlinked_folder_on_the_way_is_refused(tmp_path: Path, link: str) -> None:
    """A class folder, or ``Dataset/`` itself, a symlink out of the dataset: never written through."""
    outside = tmp_path / "outside"
    (outside / "red").mkdir(parents=True)
    (tmp_path / "ds" / "Images").mkdir(parents=True)
    (tmp_path / "ds" / link).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "ds" / link).symlink_to(outside / "red" if link == "Dataset/red" else outside)
    (tmp_path / "ds" / "Images" / "a.jpg").write_bytes(b"A")
    with pytest.raises(UnsafeDestination, match=f"{link}' is a symlink"):
        place(
            tmp_path / "ds" / "Images" / "a.jpg",
            tmp_path / "ds" / "Dataset" / "red",
            boundary=tmp_path / "ds",
        )
    assert (tmp_path / "ds" / "Images" / "a.jpg").exists()
    assert list((outside / "red").iterdir()) == []


@pytest.mark.parametrize("folder", ["../elsewhere", "Dataset/../../elsewhere"])
def test_a_path_that_climbs_out_is_refused_before_any_call(tmp_path: Path, folder: str) -> None:
    """'..' in a destination is refused from the names alone; nothing is created."""
    (tmp_path / "ds" / "Images").mkdir(parents=True)
    (tmp_path / "ds" / "Images" / "a.jpg").write_bytes(b"A")
    with pytest.raises(UnsafeDestination):
        place(tmp_path / "ds" / "Images" / "a.jpg", tmp_path / "ds" / folder, boundary=tmp_path / "ds")
    assert tree(tmp_path) == {"ds/Images": ["a.jpg"]}


def test_a_file_replaced_after_it_was_read_is_put_back_not_filed(tmp_path: Path) -> None:
    """``expect`` refuses another inode: the file returns to its folder under a free name."""
    (tmp_path / "in").mkdir()
    source = tmp_path / "in" / "a.jpg"
    source.write_bytes(b"first")
    read = source.lstat()
    replacement = tmp_path / "in" / ".new"
    replacement.write_bytes(b"second")
    replacement.rename(source)  # what an editor's atomic save does
    with pytest.raises(FileReplaced, match="replaced by another file"):
        place(source, tmp_path / "out", boundary=tmp_path, expect=lambda now: now.st_ino == read.st_ino)
    assert tree(tmp_path) == {"in": ["a.jpg"]}
    assert source.read_bytes() == b"second"


def test_candidate_names_stay_within_name_max() -> None:
    """A 255-byte name still gets a numbered, legal variant; multi-byte characters are not split."""
    long = "é" * 125 + ".jpg"  # 254 bytes
    second = candidate_name(long, 1)
    assert len(os.fsencode(second)) <= 255
    assert second.endswith("_1.jpg")
    assert candidate_name("noext", 2) == "noext_2"
    assert candidate_name(".hidden", 1) == ".hidden_1"


def test_preview_changes_nothing(tmp_path: Path) -> None:
    """Dry runs compute the name a move would get without touching anything."""
    (tmp_path / "a.jpg").write_bytes(b"A")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.jpg").write_bytes(b"B")
    assert preview(tmp_path / "a.jpg", tmp_path / "out") == tmp_path / "out" / "a_1.jpg"
    assert tree(tmp_path) == {".": ["a.jpg"], "out": ["a.jpg"]}


def test_write_new_never_overwrites(tmp_path: Path) -> None:
    """Creating a file that exists leaves it alone."""
    assert write_new(tmp_path / "c.toml", "one")
    assert not write_new(tmp_path / "c.toml", "two")
    assert (tmp_path / "c.toml").read_text() == "one"


class Faulty(mover.Syscalls):
    """The real calls, except that call number ``fail_at`` raises ``OSError(code)``.

    ``exdev``: every rename of an inbox file fails with EXDEV, as across file systems.
    """

    def __init__(self, fail_at: int, code: int, *, exdev: bool = False, no_renameat2: bool = False) -> None:
        self.calls = 0
        self.fail_at = fail_at
        self.code = code
        self.exdev = exdev
        self.no_renameat2 = no_renameat2

    def _step(self) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            raise OSError(self.code, f"injected {errno.errorcode[self.code]}")

    def renameat2(self, source: mover.At, target: mover.At) -> None:
        self._step()
        if self.no_renameat2:
            raise OSError(errno.EINVAL, "unsupported")
        if self.exdev and not source.name.startswith(".clipsort-"):
            raise OSError(errno.EXDEV, "cross-device")
        super().renameat2(source, target)


def _counted(name: str) -> None:
    original = getattr(mover.Syscalls, name)

    def call(self: Faulty, *args: object) -> object:
        self._step()
        return original(self, *args)

    setattr(Faulty, name, call)


for _name in (
    "link",
    "unlink",
    "mkdir",
    "open",
    "anchor",
    "lstat",
    "fstat",
    "copy",
    "fsync",
    "close",
    "copystat",
    "replace",
):
    _counted(_name)

SCENARIOS = {"renameat2": {}, "link-unlink": {"no_renameat2": True}, "cross-device": {"exdev": True}}


def _copies(root: Path, data: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p.read_bytes() == data]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EXDEV, errno.EACCES, errno.EEXIST])
def test_a_fault_at_any_step_leaves_the_file_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scenario: str, code: int
) -> None:
    """ENOSPC, EIO, EXDEV, EACCES or EEXIST at the N-th call, for every N: one copy, no temporaries."""
    clean = Faulty(0, code, **SCENARIOS[scenario])
    monkeypatch.setattr(mover, "SYSCALLS", clean)
    (tmp_path / "probe" / "in").mkdir(parents=True)
    (tmp_path / "probe" / "in" / "a.jpg").write_bytes(b"probe")
    place(tmp_path / "probe" / "in" / "a.jpg", tmp_path / "probe" / "out" / "red", boundary=tmp_path)
    assert clean.calls >= 6
    for n in range(1, clean.calls + 2):
        case = tmp_path / f"{n}"
        (case / "in").mkdir(parents=True)
        (case / "out" / "red").mkdir(parents=True)
        (case / "out" / "red" / "a.jpg").write_bytes(b"taken")  # a collision on the way, too
        data = f"picture {n}".encode()
        (case / "in" / "a.jpg").write_bytes(data)
        monkeypatch.setattr(mover, "SYSCALLS", Faulty(n, code, **SCENARIOS[scenario]))
        try:
            place(case / "in" / "a.jpg", case / "out" / "red", boundary=case)
        except OSError as exc:
            assert exc.errno in (code, errno.EXDEV)
        copies = _copies(case, data)
        assert len(copies) == 1, f"step {n}: {copies}"
        assert (case / "out" / "red" / "a.jpg").read_bytes() == b"taken"
        assert not list(case.rglob(".clipsort-*")), f"step {n} left a temporary"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.text(
        st.characters(exclude_categories=["Cs"], exclude_characters="/\x00"), min_size=1, max_size=80
    ).filter(lambda n: n not in (".", "..") and len(os.fsencode(n)) <= 255)
)
def test_any_legal_name_moves_intact(tmp_path: Path, name: str) -> None:
    """Unicode, spaces, newlines, leading dashes: the file arrives under the same name, same bytes."""
    case = tmp_path / uuid.uuid4().hex
    (case / "in").mkdir(parents=True)
    (case / "in" / name).write_bytes(name.encode())
    target = place(case / "in" / name, case / "out", boundary=case)
    assert target == case / "out" / name
    assert target.read_bytes() == name.encode()
    assert not (case / "in" / name).exists()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stem=st.text(st.characters(exclude_categories=["Cs"], exclude_characters="/\x00."), min_size=1))
def test_numbered_names_are_legal_and_distinct(tmp_path: Path, stem: str) -> None:
    """However long or strange a name, every numbered variant is unique and within NAME_MAX."""
    name = (stem * 300)[: 250 - len(".jpg")] + ".jpg"
    while len(os.fsencode(name)) > 255:
        name = name[:-5] + ".jpg"
    variants = [candidate_name(name, k) for k in range(30)]
    assert len(set(variants)) == 30
    assert all(0 < len(os.fsencode(v)) <= 255 and "/" not in v for v in variants)


def test_a_thousand_files_of_one_name_all_survive(tmp_path: Path) -> None:
    """1,000 files called the same land under 1,000 distinct names with their own bytes."""
    out = tmp_path / "out"
    for k in range(1000):
        folder = tmp_path / "in" / str(k)
        folder.mkdir(parents=True)
        (folder / "photo.jpg").write_bytes(str(k).encode())
        place(folder / "photo.jpg", out, boundary=tmp_path)
    landed = {p.read_bytes() for p in out.iterdir()}
    assert len(list(out.iterdir())) == 1000
    assert landed == {str(k).encode() for k in range(1000)}


@given(run=st.integers(0, 5000), holes=st.sets(st.integers(1, 5000), max_size=20), told=st.booleans())
def test_a_free_name_is_found_in_logarithmic_lookups(run: int, holes: set[int], told: bool) -> None:
    """Past a run of taken names, with or without gaps a person made in it: an attempt that is
    free, the run's end where there is no gap, after at most two lookups per bit of its length.
    Told that the first name is taken (a rename there failed), it never looks that one up."""
    length = max(run, int(told))  # told: the first name is taken, whatever the run drawn
    taken = set(range(length)) - holes
    asked: list[int] = []

    def lookup(attempt: int) -> bool:
        asked.append(attempt)
        return attempt in taken

    found = mover.first_free(lookup, first_taken=told)
    assert found not in taken and (found > 0 or not told)
    if not holes & set(range(run)):
        assert found == length
    assert len(asked) <= 2 * run.bit_length() + 2, asked
    assert 0 not in asked or not told


def test_a_long_run_of_one_name_is_placed_in_few_system_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 2,001st ``image.jpg`` lands as ``image_2000.jpg`` after a couple of dozen calls, not
    2,000 renames; with a gap a person made in the run, a name taken beyond it, or one taken
    between the lookup and the rename, nothing is overwritten."""
    out = tmp_path / "out"
    out.mkdir()
    for k in range(2000):
        (out / candidate_name("image.jpg", k)).write_bytes(b"old")
    counted = Faulty(0, errno.EIO)  # fails at no call: counts them
    monkeypatch.setattr(mover, "SYSCALLS", counted)
    source = tmp_path / "image.jpg"
    source.write_bytes(b"new")
    placed = place(source, out, boundary=tmp_path)
    assert placed == out / "image_2000.jpg" and placed.read_bytes() == b"new"
    assert counted.calls <= 40, counted.calls
    (out / "image_5.jpg").unlink()
    (out / "image_2001.jpg").write_bytes(b"raced")
    source.write_bytes(b"newer")
    counted.calls = 0
    again = place(source, out, boundary=tmp_path)
    assert again.read_bytes() == b"newer" and (out / "image_2001.jpg").read_bytes() == b"raced"
    assert sorted(p.read_bytes() for p in out.iterdir()) == [b"new", b"newer"] + [b"old"] * 1999 + [b"raced"]
    assert counted.calls <= 40, counted.calls
    # A name made after its lookup (the lookup says free): the rename finds it taken and goes on.
    monkeypatch.setattr(mover, "SYSCALLS", Unseen(f"image_{again.stem.rsplit('_', 1)[1]}.jpg"))
    source.write_bytes(b"newest")
    last = place(source, out, boundary=tmp_path)
    assert last.read_bytes() == b"newest" and again.read_bytes() == b"newer"


class Unseen(mover.Syscalls):
    """The real calls, except that looking up ``hidden`` finds nothing: made just after the lookup."""

    def __init__(self, hidden: str) -> None:
        self.hidden = hidden

    def lstat(self, entry: mover.At) -> os.stat_result:
        if entry.name == self.hidden:
            raise FileNotFoundError(errno.ENOENT, "not yet", entry.name)
        return super().lstat(entry)


def test_temporaries_of_an_interrupted_copy_are_removed(tmp_path: Path) -> None:
    """Only clipsort's own temporary names go; a user's hidden files stay."""
    (tmp_path / f".clipsort-{uuid.uuid4().hex}.tmp").write_bytes(b"half")
    (tmp_path / ".clipsort-notes.tmp").write_bytes(b"mine")
    (tmp_path / "a.jpg").write_bytes(b"A")
    removed = mover.remove_temporaries(tmp_path, tmp_path)
    assert len(removed) == 1
    assert tree(tmp_path) == {".": [".clipsort-notes.tmp", "a.jpg"]}


def test_a_placed_name_is_recognised_as_coming_from_its_original() -> None:
    """is_candidate accepts exactly the names candidate_name can produce."""
    long = "é" * 125 + ".jpg"
    for original in ("a.jpg", "noext", ".hidden", "a.tar.gz", long):
        for attempt in (0, 1, 7, 120):
            assert mover.is_candidate(candidate_name(original, attempt), original)
    assert not mover.is_candidate("b.jpg", "a.jpg")
    assert not mover.is_candidate("a_1.png", "a.jpg")
    assert not mover.is_candidate("a_x.jpg", "a.jpg")


class CountedSyncs(mover.Syscalls):
    """The real calls, counting the fsyncs."""

    def __init__(self) -> None:
        self.syncs = 0

    def fsync(self, fd: int) -> None:
        self.syncs += 1
        super().fsync(fd)


@pytest.mark.parametrize(("durable", "syncs"), [(True, 2), (False, 0)])
def test_write_atomic_syncs_only_what_must_survive_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool, syncs: int
) -> None:
    """A status file is fsynced with its folder; a cache's file (a thumbnail) is replaced unsynced."""
    counted = CountedSyncs()
    monkeypatch.setattr(mover, "SYSCALLS", counted)
    target = tmp_path / "file"
    target.write_bytes(b"old")
    mover.write_atomic(target, b"new", durable=durable)
    assert target.read_bytes() == b"new"
    assert [path.name for path in tmp_path.iterdir()] == ["file"]
    assert counted.syncs == syncs
