"""The review page's routes through Starlette's TestClient, on real folders and a real journal.

Each test sorts a small dataset with `clipsort sort` and the tiny CLIP (the
line patterns go to Review/ as unknown), then drives the page as a browser
would: same-origin requests carrying the page's CSRF token.
"""

from __future__ import annotations

import hashlib
import html
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import structlog
from PIL import Image
from starlette.testclient import TestClient
from typer.testing import CliRunner

from clipsort.cli import app
from clipsort.config import load_settings
from clipsort.decode.images import DecodeLimits
from clipsort.service.status import read_status
from clipsort.store.journal import Journal
from clipsort.web.app import Pages, create_app
from clipsort.web.thumbnails import Thumbnails
from tests.helpers import RGB, running_service, work_beside
from tests.synthetic import draw, grid, make_dataset, save
from tests.waiting import wait_until

PAGE = "http://127.0.0.1:8765"  # web_host and web_port's defaults: the page's own address
SAME_ORIGIN = {"Origin": PAGE}
TOKEN = "a-token-of-twenty-chars"


def sorted_dataset(root: Path, tiny_model: Path) -> Path:
    """rgb: three pictures of its classes sorted, four line patterns held in Review/."""
    dataset = root / "rgb"
    make_dataset(dataset, RGB, references=4, inbox=["red", "green", "blue"], seed=5)
    for k in range(4):
        save(grid(np.random.default_rng(k)), dataset / "Images" / f"lines-{k}.png")
    # Decoded on threads: seven pictures do not pay for starting the decoding processes (0.3 s),
    # and the page's tests are not about decoding.
    done = CliRunner(env={"CLIPSORT_DECODE_IN": "threads"}).invoke(
        app, ["sort", "--root", str(root), "--model", str(tiny_model)]
    )
    assert done.exit_code == 0, done.output
    assert len(list((dataset / "Review").iterdir())) >= 3
    return dataset


@pytest.fixture
def page(data_root: Path, tiny_model: Path) -> Iterator[TestClient]:
    """The page on a data root of its own, sorted for this test: for tests that change anything."""
    sorted_dataset(data_root, tiny_model)
    with TestClient(create_app(load_settings(None, {"root": data_root})), base_url=PAGE) as client:
        yield client


@pytest.fixture(scope="module")
def shown(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The page on one sorted data root shared by this module's tests that only look, or whose
    requests are refused before anything happens: sorted once per worker, not once per test (25 of
    them at about 0.8 s each)."""
    root = tmp_path_factory.mktemp("shown") / "Data"
    root.mkdir()
    with pytest.MonkeyPatch.context() as patch:  # as data_root makes its root
        work_beside(root.parent, patch)
        sorted_dataset(root, tiny_model)
        with TestClient(create_app(load_settings(None, {"root": root})), base_url=PAGE) as client:
            yield client


def csrf(client: TestClient) -> dict[str, str]:
    """The headers the page's script sends with every state change."""
    token = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/review").text)
    assert token is not None
    return {**SAME_ORIGIN, "X-CSRF-Token": token.group(1)}


def queue(client: TestClient) -> list[int]:
    """The entry ids of the review queue, in page order (a card's copies of its picture after it)."""
    cards = re.findall(
        r'<article class="card[^"]*"\s+id="card-(\d+)".*?data-copies="([\d ]*)"',
        client.get("/review").text,
        re.S,
    )
    return [int(n) for card, copies in cards for n in (card, *copies.split())]


def test_every_page_renders_from_the_journal_and_the_folders(shown: TestClient) -> None:
    """Overview, queue (least confident first), recent decisions and classes, without the model."""
    overview = shown.get("/")
    assert (
        overview.status_code == 200 and "Daemon not running" in overview.text and ">rgb</a>" in overview.text
    )
    ids = queue(shown)
    assert len(ids) >= 3
    review = shown.get("/review").text
    confidences = [float(p) for p in re.findall(r"<ol class=\"top\">\s*<li>\w+ <span>([\d.]+)%", review)]
    assert confidences == sorted(confidences), "least confident first"
    assert "unknown: reference" in review and "nearest references" in review
    recent = shown.get("/recent", params={"dataset": "rgb", "status": "review"}).text
    assert recent.count('<tr id="row-') == len(ids)
    classes = shown.get("/classes").text
    assert classes.count("leave-one-out accuracy 100%") == 3 and classes.count('<svg class="histogram"') == 3
    assert shown.get(f"/thumb/entry/{ids[0]}").headers["content-type"] == "image/jpeg"
    assert shown.get("/thumb/reference/rgb/red/0").status_code == 200


def test_the_classes_view_shows_each_class_gate_as_the_running_daemon_calibrated_it(
    data_root: Path, tiny_model: Path
) -> None:
    """Threshold and references kept per class come from the daemon's status; without it, it says so."""
    sorted_dataset(data_root, tiny_model)
    structlog.reset_defaults()  # the CLI run bound the log to its captured stderr, closed since
    settings = load_settings(None, {"root": data_root})
    with TestClient(create_app(settings), base_url=PAGE) as client:
        assert client.get("/classes").text.count("not calibrated by a running daemon") == 3
        with running_service(data_root, tiny_model):
            state = settings.state_path

            def calibrated() -> dict[str, dict[str, float]]:
                status = read_status(state)
                running = status.datasets.get("rgb") if status is not None else None
                return running.gate if running is not None else {}

            wait_until(lambda: len(calibrated()) == 3, timeout=60)
            gate = calibrated()
            shown = client.get("/classes").text
        for label, found in gate.items():
            assert 0.0 < found["kept"] <= 1.0, gate
            assert (
                f"unknown gate: threshold {found['threshold']:.3f},\n      keeps {found['kept']:.0%} of its "
                f"references (unknown_held 0.05)" in shown
            ), (label, shown)


def test_filing_a_card_is_a_correction_a_double_submit_is_harmless_and_undo_takes_it_back(
    page: TestClient, data_root: Path
) -> None:
    """Key 1-9's request: the file moves to Dataset/<class>/, journalled; undo puts it back in Review/."""
    headers = csrf(page)
    first = queue(page)[0]
    journal = Journal(data_root / ".clipsort")
    held = journal.by_id(first)
    assert held is not None and held.destination is not None
    filed = page.post(f"/entries/{first}/file", data={"label": "green"}, headers=headers)
    assert filed.status_code == 200 and "filed into green" in filed.text
    assert (data_root / "rgb" / "Dataset" / "green" / held.destination.name).exists()
    assert not held.destination.exists()
    [correction] = journal.corrections(dataset="rgb")
    assert (correction.decision, correction.old_label, correction.new_label) == (
        first,
        held.intent.label,
        "green",
    )
    again = page.post(f"/entries/{first}/file", data={"label": "green"}, headers=headers)
    assert again.status_code == 200 and "already in green" in again.text
    assert len(journal.corrections(dataset="rgb")) == 1
    assert first not in queue(page)

    undone = page.post("/undo", headers=headers)
    assert undone.status_code == 200 and "back in Review" in undone.text
    assert held.destination.exists() and journal.corrections(dataset="rgb") == []
    back = journal.by_id(first)
    assert back is not None and back.state == "moved" and back.destination == held.destination
    assert page.post("/undo", headers=headers).status_code == 400  # nothing left to undo


def test_key_zero_files_into_the_negatives_folder_only_where_there_is_one(
    page: TestClient, data_root: Path
) -> None:
    """_none is refused without Clases/_none/; with it the file becomes a negative."""
    headers = csrf(page)
    first = queue(page)[0]
    refused = page.post(f"/entries/{first}/file", data={"label": "_none"}, headers=headers)
    assert refused.status_code == 400 and "has no class '_none'" in html.unescape(refused.text)
    (data_root / "rgb" / "Clases" / "_none").mkdir()
    taken = page.post(f"/entries/{first}/file", data={"label": "_none"}, headers=headers)
    assert taken.status_code == 200
    assert len(list((data_root / "rgb" / "Clases" / "_none").iterdir())) == 1
    assert Journal(data_root / ".clipsort").corrections(label="_none")[0].decision == first


def test_bad_requests_move_nothing_and_say_why(page: TestClient, data_root: Path) -> None:
    """Unknown class, unknown entry, a file deleted since, a dataset that disappeared."""
    headers = csrf(page)
    ids = queue(page)
    review = data_root / "rgb" / "Review"
    before = sorted(p.name for p in review.iterdir())
    unknown = page.post(f"/entries/{ids[0]}/file", data={"label": "purple"}, headers=headers)
    assert unknown.status_code == 400 and "has no class 'purple'" in html.unescape(unknown.text)
    assert page.post("/entries/99999/file", data={"label": "red"}, headers=headers).status_code == 404
    assert sorted(p.name for p in review.iterdir()) == before

    entry = Journal(data_root / ".clipsort").by_id(ids[1])
    assert entry is not None and entry.destination is not None
    entry.destination.unlink()  # a person deleted it meanwhile
    assert "the file was moved or deleted since" in page.get("/review").text
    gone = page.post(f"/entries/{ids[1]}/file", data={"label": "red"}, headers=headers)
    assert gone.status_code == 404 and "moved or changed since" in gone.text

    os.rename(data_root / "rgb", data_root.parent / "elsewhere")
    vanished = page.post(f"/entries/{ids[2]}/file", data={"label": "red"}, headers=headers)
    assert vanished.status_code == 404 and "no longer exists" in vanished.text
    assert page.get("/review").status_code == 200 and queue(page) == []


def test_state_changes_need_the_same_origin_and_the_csrf_token(page: TestClient, data_root: Path) -> None:
    """A POST without the token, from another origin, or with no origin at all, is refused."""
    first = queue(page)[0]
    good = csrf(page)
    attempts = [
        {**SAME_ORIGIN},  # no token
        {**good, "Origin": "http://evil.example"},  # cross-origin, even with the token
        {"X-CSRF-Token": good["X-CSRF-Token"]},  # no Origin nor Referer
        {**SAME_ORIGIN, "X-CSRF-Token": "forged"},
    ]
    for headers in attempts:
        assert page.post(f"/entries/{first}/file", data={"label": "red"}, headers=headers).status_code == 403
    assert first in queue(page) and Journal(data_root / ".clipsort").corrections() == []
    referer = {"Referer": f"{PAGE}/review", "X-CSRF-Token": good["X-CSRF-Token"]}
    assert page.post(f"/entries/{first}/file", data={"label": "red"}, headers=referer).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/thumb/reference/rgb/..%2F..%2F..%2Fetc/0",
        "/thumb/reference/..%2Frgb/red/0",
        "/thumb/reference/rgb/red/99",
        "/thumb/entry/99999",
        "/static/..%2F..%2F..%2Fconfig.py",
        "/static/../app.py",
    ],
)
def test_nothing_outside_the_datasets_can_be_served(shown: TestClient, path: str) -> None:
    """Path-traversal attempts name no file: requests name entries and references, not paths."""
    response = shown.get(path)
    assert response.status_code == 404
    assert b"import" not in response.content


def test_a_symlink_swapped_in_is_neither_served_nor_moved(
    page: TestClient, data_root: Path, tmp_path: Path
) -> None:
    """A Review/ file replaced by a symlink to a picture elsewhere: no thumbnail, no move."""
    first = queue(page)[0]
    entry = Journal(data_root / ".clipsort").by_id(first)
    assert entry is not None and entry.destination is not None
    outside = save(draw(np.random.default_rng(1), "red", "circle"), tmp_path / "secret.png")
    entry.destination.unlink()
    entry.destination.symlink_to(outside)
    pages: Pages = page.app.state.pages  # type: ignore[attr-defined]
    shutil.rmtree(pages.thumbnails.folder, ignore_errors=True)  # nothing cached from before the swap
    assert page.get(f"/thumb/entry/{first}").status_code == 404
    moved = page.post(f"/entries/{first}/file", data={"label": "red"}, headers=csrf(page))
    assert moved.status_code == 404 and entry.destination.is_symlink() and outside.exists()


def test_a_token_is_asked_for_once_and_kept_in_a_session_cookie(data_root: Path, tiny_model: Path) -> None:
    """With web_token: every page redirects to /login until the token is given; a wrong one is refused.

    The cookie is a random session id, not the token nor a digest of it: another server (a restart)
    does not know it, and a session expires.
    """
    sorted_dataset(data_root, tiny_model)
    settings = load_settings(None, {"root": data_root, "web_session_hours": 1})
    with TestClient(create_app(settings, token=TOKEN), base_url=PAGE) as client:
        assert client.get("/review", follow_redirects=False).headers["location"] == "/login"
        assert client.post("/entries/1/file", data={"label": "red"}, headers=SAME_ORIGIN).status_code == 401
        wrong = client.post("/login", data={"token": "guess"}, headers=SAME_ORIGIN)
        assert wrong.status_code == 401 and "not the token" in wrong.text
        right = client.post("/login", data={"token": TOKEN}, headers=SAME_ORIGIN, follow_redirects=False)
        cookie = right.headers["set-cookie"]
        assert right.status_code == 303 and TOKEN not in cookie and "Max-Age=3600" in cookie
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
        session = client.cookies["clipsort_session"]
        assert hashlib.sha256(f"clipsort-web:{TOKEN}".encode()).hexdigest() != session
        assert client.get("/review").status_code == 200 and queue(client)
    with TestClient(create_app(settings, token=TOKEN), base_url=PAGE) as restarted:
        restarted.cookies.set("clipsort_session", session)
        assert restarted.get("/review", follow_redirects=False).status_code == 303, "a restart ends sessions"


def test_wrong_tokens_are_slowed_then_refused(data_root: Path) -> None:
    """Guessing: each wrong token waits longer, and past ten in ten minutes the client gets 429."""
    waited: list[float] = []

    async def record(seconds: float) -> None:
        waited.append(seconds)

    with TestClient(
        create_app(load_settings(None, {"root": data_root}), token=TOKEN, login_wait=record), base_url=PAGE
    ) as client:
        codes = [
            client.post("/login", data={"token": f"guess{k}"}, headers=SAME_ORIGIN).status_code
            for k in range(12)
        ]
        assert codes[:10] == [401] * 10 and codes[10:] == [429, 429]
        # One wait per wrong guess until the lockout, each at least as long as the one before.
        assert len(waited) == 10 and waited == sorted(waited) and waited[0] < waited[-1], waited
        assert sum(waited) >= 5, "the wrong guesses were slowed down"
        locked = client.post("/login", data={"token": TOKEN}, headers=SAME_ORIGIN, follow_redirects=False)
        assert locked.status_code == 429, "locked out: even the right token waits for the window"


def test_a_token_that_is_too_short_is_refused_at_start(data_root: Path) -> None:
    Path("config.toml").write_text('web_token = "s3cret"\n')
    refused = CliRunner().invoke(app, ["web", "--root", str(data_root)])
    assert refused.exit_code == 2 and "at least 16" in refused.stderr


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize(
    "path", ["/", "/review", "/recent", "/classes", "/static/style.css", "/thumb/entry/1", "/undo"]
)
def test_a_rebound_host_is_refused_before_anything(shown: TestClient, method: str, path: str) -> None:
    """DNS rebinding: a request for evil.example that reaches the loopback page gets 400 and nothing else."""
    good = csrf(shown)
    headers = {
        "Host": "evil.example:8765",
        "Origin": "http://evil.example:8765",
        "X-CSRF-Token": good["X-CSRF-Token"],
    }
    response = shown.request(method, path, headers=headers)
    assert response.status_code == 400 and "clipsort" not in response.text
    assert response.headers["X-Frame-Options"] == "DENY"


def test_a_foreign_origin_with_a_valid_token_moves_nothing(page: TestClient, data_root: Path) -> None:
    """Origin is checked against the page's own hosts, never against the request's Host."""
    first = queue(page)[0]
    forged = {**csrf(page), "Origin": "http://evil.example:8765", "Host": "127.0.0.1:8765"}
    assert page.post(f"/entries/{first}/file", data={"label": "red"}, headers=forged).status_code == 403
    assert Journal(data_root / ".clipsort").corrections() == []


def test_every_response_forbids_framing_and_sniffing(shown: TestClient) -> None:
    for path in ("/", "/review", "/static/review.js", "/thumb/entry/99999", "/nothing"):
        headers = shown.get(path).headers
        assert (
            headers["X-Frame-Options"] == "DENY"
            and "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        )
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["Referrer-Policy"] == "same-origin"


@pytest.mark.parametrize("path", ["/thumb/entry/99999999999999999999999", "/thumb/entry/-1"])
def test_an_id_that_is_no_row_is_404(shown: TestClient, path: str) -> None:
    assert shown.get(path).status_code == 404
    huge = shown.post("/entries/99999999999999999999999/file", data={"label": "red"}, headers=csrf(shown))
    assert huge.status_code == 404


def test_a_symlinked_clases_folder_is_not_followed_by_the_page(
    page: TestClient, data_root: Path, tmp_path: Path
) -> None:
    """Clases/ replaced by a symlink to a folder of pictures elsewhere: no reference thumbnail from there."""
    outside = tmp_path / "elsewhere"
    (outside / "red").mkdir(parents=True)
    save(draw(np.random.default_rng(1), "red", "circle"), outside / "red" / "secret.png")
    classes = data_root / "rgb" / "Clases"
    shutil.rmtree(classes)
    classes.symlink_to(outside)
    pages: Pages = page.app.state.pages  # type: ignore[attr-defined]
    shutil.rmtree(pages.thumbnails.folder, ignore_errors=True)
    assert page.get("/thumb/reference/rgb/red/0").status_code == 404
    assert "secret" not in page.get("/classes").text


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::"])
def test_a_bind_beyond_loopback_without_a_token_is_refused_at_start(data_root: Path, host: str) -> None:
    """clipsort web --host <not loopback> with no web_token: exit 2 and one line, nothing served."""
    refused = CliRunner().invoke(app, ["web", "--root", str(data_root), "--host", host])
    assert refused.exit_code == 2
    assert "web_token" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_thumbnails_are_upright_bounded_and_only_of_allowed_formats(data_root: Path, tmp_path: Path) -> None:
    """EXIF orientation applied; formats outside image_formats get none; the cache stays under its cap."""
    thumbs = Thumbnails(
        tmp_path / "state", DecodeLimits(("JPEG", "PNG"), 10_000_000, 10 * 2**20), max_bytes=40_000, timeout=5
    )
    portrait = Image.new("RGB", (120, 60), (200, 30, 30))
    exif = portrait.getexif()
    exif[0x0112] = 6  # rotate 90 degrees to show
    portrait.save(tmp_path / "phone.jpg", exif=exif)
    data = thumbs.get(tmp_path / "phone.jpg")
    assert data is not None
    (tmp_path / "t.jpg").write_bytes(data)
    with Image.open(tmp_path / "t.jpg") as shown:
        assert shown.height > shown.width
    Image.new("RGB", (50, 50)).save(tmp_path / "old.bmp")
    assert thumbs.get(tmp_path / "old.bmp") is None
    rng = np.random.default_rng(0)
    for k in range(12):
        Image.fromarray(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(tmp_path / f"n{k}.png")
        assert thumbs.get(tmp_path / f"n{k}.png") is not None
    assert sum(p.stat().st_size for p in thumbs.folder.iterdir()) <= 40_000
    thumbs.close()


def test_recent_decisions_filter_by_dataset_class_status_and_time(page: TestClient, data_root: Path) -> None:
    """The filters are the journal's own query; a bad status matches nothing, a bad time says why."""
    journal = Journal(data_root / ".clipsort")
    everything = journal.entries()

    def rows(**query: str) -> list[int]:
        return [int(n) for n in re.findall(r'<tr id="row-(\d+)"', page.get("/recent", params=query).text)]

    assert sorted(rows()) == [e.id for e in everything]
    assert rows(**{"class": "red"}) == [e.id for e in everything if e.intent.label == "red"][::-1]
    assert sorted(rows(status="review")) == sorted(queue(page))
    first = queue(page)[0]
    page.post(f"/entries/{first}/file", data={"label": "blue"}, headers=csrf(page))
    assert rows(status="corrected") == [first]
    assert rows(status="corrected", dataset="other") == []
    assert rows(status="bogus") == []
    assert sorted(rows(since="1h")) == [e.id for e in everything]
    assert rows(since="2099-01-01") == []
    wrong = page.get("/recent", params={"since": "soon"})
    shown = html.unescape(wrong.text)
    assert wrong.status_code == 400 and "since: cannot read 'soon'" in shown and "--since" not in shown
    assert '<form class="filters"' in shown and 'value="soon"' in html.unescape(wrong.text), "the form stays"


def test_a_thumbnail_over_the_pixel_cap_or_the_time_limit_is_not_made(tmp_path: Path) -> None:
    """The daemon's pixel cap holds for thumbnails, and a decode past web_decode_seconds is given up."""
    Image.new("RGB", (50, 50), (10, 200, 10)).save(tmp_path / "small.png")
    capped = Thumbnails(tmp_path / "a", DecodeLimits(("PNG",), 100, 2**20), max_bytes=2**20, timeout=5)
    assert capped.get(tmp_path / "small.png") is None
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (3000, 4000, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    hurried = Thumbnails(tmp_path / "b", DecodeLimits(("PNG",), 10**8, 2**30), max_bytes=2**20, timeout=1e-4)
    assert hurried.get(tmp_path / "big.png") is None
    assert not hurried.folder.exists(), "nothing was cached"
    patient = Thumbnails(tmp_path / "c", DecodeLimits(("PNG",), 10**8, 2**30), max_bytes=2**20, timeout=60)
    assert patient.get(tmp_path / "big.png") is not None
    for thumbs in (capped, hurried, patient):
        thumbs.close()


def test_copies_of_one_picture_are_one_card_filed_and_undone_together(
    page: TestClient, data_root: Path
) -> None:
    """lines-2 and lines-3 are the same bytes: one card (x2); filing moves both, one undo takes both back."""
    review = page.get("/review").text
    copies = re.search(r'id="card-(\d+)"[^>]*?data-files="2" data-copies="(\d+)"', review, re.S)
    assert copies is not None and "\u00d72" in review
    both = [int(copies.group(1)), int(copies.group(2))]
    files = page.post(
        "/entries/file", data={"label": "green", "entry": [str(n) for n in both]}, headers=csrf(page)
    )
    assert files.status_code == 200 and files.headers["X-Clipsort-Entries"] == ",".join(map(str, both))
    green = data_root / "rgb" / "Dataset" / "green"
    assert sorted(p.name for p in green.glob("lines-*")) == ["lines-2.png", "lines-3.png"]
    undone = page.post("/undo", headers=csrf(page))
    assert (
        undone.status_code == 200
        and sorted(map(int, undone.headers["X-Clipsort-Entries"].split(","))) == both
    )
    assert not list(green.glob("lines-*")) and (data_root / "rgb" / "Review" / "lines-3.png").exists()
    assert page.post("/undo", headers=csrf(page)).status_code == 400, "the whole action was one undo"


def test_recent_pages_on_and_a_forgotten_correction_is_not_shown_as_one(
    page: TestClient, data_root: Path
) -> None:
    """Past 200 decisions an "older" link pages on; corrections forgotten by the CLI lose their undo."""
    first = queue(page)[0]
    assert page.post(f"/entries/{first}/file", data={"label": "red"}, headers=csrf(page)).status_code == 200
    row = re.search(rf'<tr id="row-{first}">.*?</tr>', page.get("/recent").text, re.S)
    assert row is not None and "<td>corrected (review" in row.group(0) and "/revert" in row.group(0)
    assert '<option value="" selected disabled>class…</option>' in row.group(0), (
        "no class chosen for the user"
    )
    assert f'src="/thumb/entry/{first}"' in row.group(0), "each row with its picture"
    assert (
        CliRunner().invoke(app, ["corrections", "forget", "--all", "--root", str(data_root)]).exit_code == 0
    )
    row = re.search(rf'<tr id="row-{first}">.*?</tr>', page.get("/recent").text, re.S)
    assert row is not None and "correction forgotten" in row.group(0) and "/revert" not in row.group(0)
    with Journal(data_root / ".clipsort") as journal:
        template = journal.entries()[0].intent
        journal.plan([template] * 250)
        newest = journal.entries(last=1)[0].id
    first_page = page.get("/recent").text
    shown = [int(n) for n in re.findall(r'<tr id="row-(\d+)"', first_page)]
    assert len(shown) == 200 and shown[0] == newest
    older = re.search(r'<a href="([^"]+)">older decisions', first_page)
    assert older is not None and f"before={shown[-1]}" in html.unescape(older.group(1))
    second = [int(n) for n in re.findall(r'<tr id="row-(\d+)"', page.get(html.unescape(older.group(1))).text)]
    assert second and max(second) < min(shown) and len(set(shown) | set(second)) == len(shown) + len(second)


def test_every_page_has_a_viewport_and_an_icon(shown: TestClient) -> None:
    for path in ("/", "/review", "/recent", "/classes"):
        text = shown.get(path).text
        assert 'name="viewport" content="width=device-width' in text and 'rel="icon"' in text
    icon = shown.get("/static/favicon.svg")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg")
