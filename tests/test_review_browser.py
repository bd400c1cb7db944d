"""The review page in a real headless Chromium, driven by the keyboard alone, against the real server.

A folder of 50 synthetic plates (40 crops, 10 frame regions with a box, drawn with OpenCV) with reads and a
confidence.tsv is reviewed end to end: answers accepted with Enter, corrected by typing, marked not a plate
with Escape, skipped with Tab and PageDown, one answer changed after going back with PageUp. The counts on the
page and labels.tsv and review.json on disk are checked after every phase; mid-way the page is reloaded, and
the server killed (SIGKILL) and started again, and the review resumes where it was with nothing lost.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make test`` installs them) and Selenium. A trainer test:
skipped where the trainer's packages are not installed (``make test-edge``).
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from trainer.review import CONFIDENCE, LABELS, REVIEW

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
    pytest.skip("needs the Debian packages chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver; "
                "make test installs them)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the test extra)")
from selenium.common.exceptions import TimeoutException  # noqa: E402 (after the skips above)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N, FRAMES = 50, 10
REVIEWED = {"accepted", "corrected", "not_plate"}


# ---------------------------------------------------------------------- the folder

def _plate(text: str) -> np.ndarray:
    img = np.full((48, 170, 3), 235, np.uint8)
    cv2.rectangle(img, (1, 1), (168, 46), (20, 20, 20), 2)
    cv2.putText(img, text, (8, 35), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (15, 15, 15), 2, cv2.LINE_AA)
    return img


@pytest.fixture
def folder(tmp_path: Path) -> dict[str, Any]:
    """50 labelled images: crops (file, text) and frame regions with a box; reads with mistakes; confidences."""
    root = tmp_path / "packed"
    root.mkdir()
    header = "file\ttext\tx1\ty1\tx2\ty2"
    rows, confidence = [header], ["file\tconfidence\tcrop\tbest_read"]
    for i in range(N):
        truth = f"KA{i:03d}{'BCDEF'[i % 5]}"
        name = f"v{i:02d}.jpg"
        if i < N - FRAMES:
            cv2.imwrite(str(root / name), _plate(truth))
            row = [name, truth]
        else:
            frame = np.full((240, 320, 3), 90, np.uint8)
            frame[150:198, 80:250] = _plate(truth)
            cv2.imwrite(str(root / name), frame)
            row = [name, truth, "80", "150", "250", "198"]
        rows.append("\t".join(row))
        # A permutation of 50 distinct values, so the review order is not the file order.
        confidence.append(f"{name}\t{((i * 37) % N + 1) / (N + 1):.4f}\tcrops/{name}\t{truth}")
    (root / LABELS).write_text("\n".join(rows) + "\n")
    (root / CONFIDENCE).write_text("\n".join(confidence) + "\n")
    order = sorted(range(N), key=lambda i: (i * 37) % N)
    return {"root": root, "rows": rows, "order": [rows[1 + i].split("\t")[0] for i in order]}


def _key(line: str) -> str:
    fields = line.split("\t")
    return "\t".join([fields[0], *fields[2:]])


# ---------------------------------------------------------------------- the server and the browser

class Server:
    """``python -m trainer review FOLDER --port 0 --no-open`` as a subprocess; ``url`` from what it prints."""

    def __init__(self, folder: Path, log: Path) -> None:
        self.log = log
        start = log.stat().st_size if log.exists() else 0  # a server started before wrote above
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "trainer", "review", str(folder), "--port", "0",
                                          "--no-open"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            found = re.findall(r"open (http://127\.0\.0\.1:\d+/)", log.read_text()[start:])
            if found:
                self.url = found[-1]
                return
            assert self.proc.poll() is None, f"the review server exited {self.proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"the review server printed no address in 60 s:\n{log.read_text()}"
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1200,800", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    # The driver's path given: Selenium Manager is not asked, so nothing is downloaded.
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


# ---------------------------------------------------------------------- the reviewer

class Reviewer:
    """Drives the page by keys and keeps what the folder must hold: every answer, and the rows of labels.tsv."""

    def __init__(self, driver: Any, folder: dict[str, Any]) -> None:
        self.driver = driver
        self.root: Path = folder["root"]
        self.order: list[str] = folder["order"]  # files, lowest confidence first
        self.lines: list[str] = list(folder["rows"])  # labels.tsv as it must be
        self.original = {line.split("\t")[0]: line for line in folder["rows"][1:]}
        self.answers: dict[str, str | None] = dict.fromkeys(self.order)  # file -> answer shown on the page
        self.texts = {f: self.original[f].split("\t")[1] for f in self.order}  # the text labels.tsv has
        self.history: list[int] = []
        self.current = -1

    def js(self, script: str) -> Any:
        return self.driver.execute_script(script)

    def shown(self) -> str:
        return self.js("return document.getElementById('crop').dataset.file")

    def wait_ready(self, before: str | None = None) -> None:
        """Until the page shows a crop other than ``before`` (or says all are done) and takes keys."""
        def ready(_: Any) -> bool:
            state = self.js("return document.body.dataset.state")
            return state == "done" or (state == "ready" and self.shown() != before)
        try:
            WebDriverWait(self.driver, 20, poll_frequency=0.02).until(ready)
        except TimeoutException:
            said = self.js("return document.getElementById('message').textContent")
            raise AssertionError(f"the page did not move on from {before!r} in 20 s; it says {said!r}") from None

    def press(self, *keys: str, moves: bool = True) -> None:
        before = self.shown()
        ActionChains(self.driver).send_keys(*keys).perform()
        if moves:
            self.wait_ready(before)

    def next_open(self, start: int) -> int:
        """The crop the page must show after index ``start``: the first with no answer, else the first skipped."""
        for wanted in (None, "skipped"):
            for k in range(1, N + 1):
                i = (start + k) % N
                if self.answers[self.order[i]] == wanted:
                    return i
        return -1

    def check_page(self) -> None:
        """The crop shown is the one expected, its text in the box and selected; the counts are right."""
        counts = {k: int(self.js(f"return document.getElementById('{k}').textContent"))
                  for k in ("reviewed", "remaining", "skipped", "total")}
        reviewed = sum(a in REVIEWED for a in self.answers.values())
        skipped = sum(a == "skipped" for a in self.answers.values())
        assert counts == {"reviewed": reviewed, "remaining": N - reviewed, "skipped": skipped, "total": N}
        if self.current < 0:
            assert self.js("return document.body.dataset.state") == "done"
            assert self.js("return document.getElementById('done').hidden") is False
            return
        file = self.order[self.current]
        assert self.shown() == file
        value, start, end = self.js("const t = document.getElementById('text');"
                                    "return [t.value, t.selectionStart, t.selectionEnd];")
        expected = self.original[file].split("\t")[1] if self.answers[file] == "not_plate" else self.texts[file]
        assert (value, start, end) == (expected, 0, len(expected)), file

    def answer(self, how: str, typed: str = "", check: bool = True) -> None:
        """Answer the crop shown: ``accept`` (after typing ``typed``, if any), ``not_plate``, ``skip`` or
        ``skip_pagedown``; then check where the page went. ``check``: first check the page as it shows the crop."""
        if check:
            self.check_page()
        file = self.order[self.current]
        prior = self.answers[file]
        if how == "accept":
            line = self.original[file].split("\t")
            read = line[1]
            text = typed.upper().replace("-", "").replace(" ", "") if typed else (
                read if prior == "not_plate" else self.texts[file])
            self.press(*([typed] if typed else []), Keys.ENTER)
            self.answers[file] = "accepted" if text == read else "corrected"
            self.texts[file] = text
            new = "\t".join([line[0], text, *line[2:]])
            if prior == "not_plate":  # back in its place
                place = [f for f in self.original if f == file or self.answers[f] != "not_plate"]
                self.lines.insert(1 + place.index(file), new)
            else:
                self.lines[self.lines.index(next(s for s in self.lines if s.split("\t")[0] == file))] = new
        elif how == "not_plate":
            self.press(Keys.ESCAPE)
            self.answers[file] = "not_plate"
            self.lines = [s for s in self.lines if s.split("\t")[0] != file]
        else:
            self.press(Keys.TAB if how == "skip" else Keys.PAGE_DOWN)
            if prior not in REVIEWED:
                self.answers[file] = "skipped"
        self.history.append(self.current)
        self.current = self.next_open(self.current)
        self.check_page()

    def back(self) -> None:
        self.press(Keys.PAGE_UP)
        self.current = self.history.pop()
        self.check_page()

    def check_disk(self) -> None:
        """labels.tsv holds exactly the rows it must, in the file's order; review.json every answer given."""
        assert (self.root / LABELS).read_text() == "\n".join(self.lines) + "\n"
        review = json.loads((self.root / REVIEW).read_text())
        got = {key: entry["answer"] for key, entry in review["answers"].items()}
        assert got == {_key(self.original[f]): a for f, a in self.answers.items() if a is not None}
        for f, a in self.answers.items():
            if a in ("accepted", "corrected"):
                assert review["answers"][_key(self.original[f])]["text"] == self.texts[f]
        assert not list(self.root.glob(".*.tmp")), "a temporary file was left behind"


def plan(position: int) -> tuple[str, str]:
    """How the crop at ``position`` in the review order is answered the first time it is shown."""
    if position % 6 == 1:
        return "accept", f"zz-{position:03d}"  # typed over the selected read, lower case and a hyphen
    if position % 6 == 3:
        return "not_plate", ""
    if position % 12 == 5:
        return "skip", ""
    if position % 12 == 11:
        return "skip_pagedown", ""
    return "accept", ""


def test_a_reviewer_reviews_50_crops_by_keyboard(folder: dict[str, Any], browser: Any, tmp_path: Path) -> None:
    server = Server(folder["root"], tmp_path / "server.log")
    try:
        browser.get(server.url)
        r = Reviewer(browser, folder)
        r.wait_ready()
        r.current = r.next_open(-1)
        assert r.current == 0 and r.shown() == folder["order"][0]  # lowest confidence first
        assert "Escape" in browser.find_element("id", "help").text  # the keys are on the page

        # Phase 1: the first 25 crops; after the first "not a plate", back to it and accept it after all.
        for position in range(25):
            if position == 8:  # a text the server refuses: the page says why and stays on the crop
                r.check_page()
                r.press("ab/12", Keys.ENTER, moves=False)
                WebDriverWait(browser, 20, poll_frequency=0.02).until(
                    lambda _: r.js("return document.body.dataset.state") == "error")
                assert "Not saved: text: 'AB/12': only A-Z, 0-9" in browser.find_element("id", "message").text
                assert r.shown() == r.order[r.current]
                r.check_disk()
                r.press(Keys.BACKSPACE * 5, moves=False)
                r.answer("accept", r.texts[r.order[r.current]], check=False)
                continue
            how, typed = plan(position)
            r.answer(how, typed)
            if position == 3:
                r.back()
                assert browser.find_element("id", "answer").text == "not plate"
                r.answer("accept")
        r.check_disk()
        counts = {a: list(r.answers.values()).count(a) for a in ("accepted", "corrected", "not_plate", "skipped")}
        assert all(counts.values()), counts  # every kind of answer was given

        # A reload: nothing lost, and the review resumes at the first crop without an answer.
        on_disk = (folder["root"] / LABELS).read_bytes(), (folder["root"] / REVIEW).read_bytes()
        browser.refresh()
        r.wait_ready()
        r.history.clear()
        r.current = r.next_open(-1)
        assert r.current == 25
        r.check_page()
        assert ((folder["root"] / LABELS).read_bytes(), (folder["root"] / REVIEW).read_bytes()) == on_disk

        # The server killed outright and started again: the same.
        server.kill()
        server = Server(folder["root"], tmp_path / "server.log")
        browser.get(server.url)
        r.wait_ready()
        r.check_page()
        r.check_disk()

        # Phase 2: the rest, then the skipped crops come back and are answered.
        for position in range(25, N):
            how, typed = plan(position)
            r.answer(how, typed)
        r.check_disk()
        skipped = [f for f, a in r.answers.items() if a == "skipped"]
        assert skipped and r.answers[r.order[r.current]] == "skipped"
        for n in range(len(skipped)):
            r.answer("accept", "ab 123" if n == 0 else "")
        assert r.current == -1
        r.check_page()
        r.check_disk()
        assert all(a in REVIEWED for a in r.answers.values())
        assert len(r.lines) - 1 == N - list(r.answers.values()).count("not_plate")
    finally:
        server.kill()
