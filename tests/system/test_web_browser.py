"""End to end in a real browser: the daemon sorts, `clipsort web` serves, headless Chromium presses keys.

pytest-playwright drives Debian's chromium (see ``browser_type_launch_args``
in conftest). The screenshots are kept in ``test-artifacts/`` (or
``$CLIPSORT_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Page, expect

from clipsort.store.journal import Journal
from tests.daemonproc import Daemon, free_port, start
from tests.helpers import REPO
from tests.synthetic import draw, grid, make_dataset, save
from tests.waiting import wait_until

ARTIFACTS = Path(os.environ.get("CLIPSORT_TEST_ARTIFACTS", REPO / "test-artifacts"))


def reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture
def served(daemons: list[Daemon], tmp_path: Path, tiny_model: Path) -> Iterator[tuple[Daemon, Path, str]]:
    """A running daemon that held line patterns in Review/, and `clipsort web` on the same config."""
    root = tmp_path / "Data"
    dataset = root / "rgb"
    make_dataset(dataset, {c: c for c in ("red", "green", "blue")}, references=4, seed=5)
    daemon = start(daemons, root, tiny_model, tmp_path / "home")
    for k in range(3):
        save(grid(np.random.default_rng(k)), dataset / "Images" / f"lines-{k}.png")
    save(draw(np.random.default_rng(9), "red", "circle", 80), dataset / "Images" / "red.png")
    wait_until(lambda: len(list((dataset / "Review").glob("lines-*.png"))) >= 2, timeout=30)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "clipsort", "web", "--config", str(daemon.config), "--port", str(port)],
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: reachable(base + "/") or server.poll() is not None, timeout=30)
        assert server.poll() is None, server.communicate()[0].decode()
        yield daemon, dataset, base
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_key_on_the_review_page_files_the_picture_and_u_takes_it_back(
    served: tuple[Daemon, Path, str], page: Page
) -> None:
    """Key 1 files the focused card into Dataset/blue/, a correction the daemon uses; u undoes it."""
    daemon, dataset, base = served
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.goto(base + "/review")
    first = page.locator("#queue .card").first
    expect(first).to_be_focused()
    entry = int(first.get_attribute("data-entry") or 0)
    journal = Journal(daemon.state)
    held = journal.by_id(entry)
    assert held is not None and held.destination is not None and held.destination.parent.name == "Review"
    page.screenshot(path=str(ARTIFACTS / "review-queue.png"), full_page=True)

    page.keyboard.press("1")  # the first class in the keys: blue
    expect(page.locator(f"#card-{entry} .note")).to_have_text("filed into blue")
    filed = dataset / "Dataset" / "blue" / held.destination.name
    assert filed.exists() and not held.destination.exists()
    assert [c.decision for c in journal.corrections(dataset="rgb", label="blue")] == [entry]
    wait_until(lambda: daemon.status().datasets["rgb"].corrections == {"blue": 1}, timeout=30)
    page.screenshot(path=str(ARTIFACTS / "review-queue-filed.png"), full_page=True)

    page.keyboard.press("u")
    expect(page.locator(f"#card-{entry} .note")).to_have_text("back in Review")
    assert held.destination.exists() and not filed.exists()
    assert journal.corrections(dataset="rgb") == []
    wait_until(lambda: daemon.status().datasets["rgb"].corrections == {}, timeout=30)


def test_several_selected_cards_are_filed_with_one_key_and_the_overview_is_live(
    served: tuple[Daemon, Path, str], page: Page
) -> None:
    """x selects two cards, 2 files both; the recent page moves and undoes; the overview is live."""
    daemon, dataset, base = served
    page.goto(base + "/review")
    cards = page.locator("#queue .card")
    ids = [int(cards.nth(k).get_attribute("data-entry") or 0) for k in range(2)]
    page.keyboard.press("x")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("x")
    page.keyboard.press("2")
    for entry in ids:
        expect(page.locator(f"#card-{entry} .note")).to_have_text("filed into green")
    wait_until(lambda: len(list((dataset / "Dataset" / "green").glob("lines-*.png"))) == 2, timeout=10)

    # Recent decisions: the corrected rows, "move to..." another class, and undo back to Review/.
    page.goto(base + "/recent?dataset=rgb&status=corrected")
    row = page.locator(f"#row-{ids[0]}")
    row.locator("select[name=label]").select_option("red")
    row.get_by_role("button", name="move to…").click()
    expect(page.locator(f"#act-{ids[0]}")).to_contain_text("filed into red")
    wait_until(lambda: len(list((dataset / "Dataset" / "red").glob("lines-*.png"))) == 1, timeout=10)
    page.goto(base + "/recent?dataset=rgb&status=corrected")
    page.locator(f"#row-{ids[1]}").get_by_role("button", name="undo").click()
    expect(page.locator(f"#act-{ids[1]}")).to_contain_text("back in Review")
    assert len(list((dataset / "Review").glob("lines-*.png"))) >= 1
    for gone in (dataset / "Dataset" / "red").glob("lines-*.png"):
        gone.unlink()  # a person deleted it meanwhile: the refusal shows in the row
    page.goto(base + "/recent?dataset=rgb&status=corrected")
    row = page.locator(f"#row-{ids[0]}")
    expect(row.locator("select[name=label]")).to_have_value("")  # no class is chosen for the user
    row.locator("select[name=label]").select_option("blue")
    row.get_by_role("button", name="move to…").click()
    expect(page.locator(f"#act-{ids[0]}")).to_contain_text("moved or changed since")
    page.goto(base + "/")
    expect(page.locator("h1")).to_have_text("Daemon running")
    page.screenshot(path=str(ARTIFACTS / "overview.png"), full_page=True)
    assert daemon.stop() == 0
    expect(page.locator("h1")).to_have_text("Daemon not running", timeout=20_000)


def to_review(files: int) -> str:
    return f"{files} file{'' if files == 1 else 's'} to review"


def test_one_key_is_one_action_undone_whole_with_the_count_and_focus_following(
    served: tuple[Daemon, Path, str], page: Page
) -> None:
    """x, j, x, 3 files two cards; u takes both back; the count follows; focus goes to the next card."""
    _, dataset, base = served
    page.goto(base + "/review")
    cards = page.locator("#queue .card")
    total = cards.count()
    assert total >= 3
    ids = [int(cards.nth(k).get_attribute("data-entry") or 0) for k in range(total)]
    expect(page.locator("#count")).to_have_text(to_review(total))
    for key in ("x", "j", "x", "3"):
        page.keyboard.press(key)
    for entry in ids[:2]:
        expect(page.locator(f"#card-{entry} .note")).to_have_text("filed into red")  # key 3: the third
    expect(page.locator("#count")).to_have_text(to_review(total - 2))
    expect(page.locator("#flash")).to_contain_text(f"filed 2 files into red; {total - 2} left")
    expect(page.locator(f"#card-{ids[2]}")).to_be_focused()
    page.keyboard.press("u")
    for entry in ids[:2]:
        expect(page.locator(f"#card-{entry} .note")).to_have_text("back in Review")
    expect(page.locator("#count")).to_have_text(to_review(total))
    wait_until(lambda: not list((dataset / "Dataset" / "red").glob("lines-*.png")), timeout=10)
    assert len(list((dataset / "Review").glob("lines-*.png"))) == total


@pytest.mark.parametrize("width", [1280, 390], ids=["desktop", "phone"])
def test_every_page_has_its_screenshot(served: tuple[Daemon, Path, str], page: Page, width: int) -> None:
    """Each page as a person sees it, kept in test-artifacts/; on a phone nothing runs off the side."""
    _, _, base = served
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": width, "height": 900})
    suffix = "" if width > 600 else "-phone"
    for name, path in (
        ("overview", "/"),
        ("review-queue", "/review"),
        ("recent", "/recent"),
        ("classes", "/classes"),
    ):
        page.goto(base + path)
        expect(page.locator("h1")).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / f"page-{name}{suffix}.png"), full_page=True)
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 1, f"{path} runs {overflow} px off a {width} px screen"
    icon = page.request.get(base + "/static/favicon.svg")
    assert icon.status == 200 and icon.headers["content-type"].startswith("image/svg")
