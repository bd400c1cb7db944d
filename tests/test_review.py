"""trainer.review without a browser: how answers are saved, what is refused, and the server's HTTP answers."""
from __future__ import annotations

import http.client
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trainer import review as rv
from trainer.cli import main
from trainer.review import Review, ReviewError

HEADER = "file\ttext\tx1\ty1\tx2\ty2"
ROWS = ["a.jpg\tAB123", "b.jpg\tCD456", "f.jpg\tEF789\t10\t20\t90\t40", "f.jpg\tGH012\t100\t20\t180\t40",
        "c.png\tJK345"]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Three crops and a frame with two boxes; confidences for all but c.png; tiny stand-in image files."""
    for name in ("a.jpg", "b.jpg", "f.jpg", "c.png"):
        (tmp_path / name).write_bytes(b"image " + name.encode())
    (tmp_path / "labels.tsv").write_text("\n".join([HEADER, *ROWS]) + "\n")
    (tmp_path / "confidence.tsv").write_text("file\tconfidence\tcrop\na.jpg\t0.9\tx\nb.jpg\t0.2\tx\nf.jpg\t0.5\tx\n")
    (tmp_path / "secret.txt").write_text("not for the page")
    return tmp_path


def labels(folder: Path) -> list[str]:
    return (folder / "labels.tsv").read_text().splitlines()


def answers(folder: Path) -> dict[str, dict[str, Any]]:
    return json.loads((folder / "review.json").read_text())["answers"]


def temporaries(folder: Path) -> list[Path]:
    return list(folder.glob(".*.tmp"))


def test_crops_come_lowest_confidence_first_and_without_one_last(folder: Path) -> None:
    state = Review(folder).state()
    assert [c["key"] for c in state["crops"]] == [
        "b.jpg", "f.jpg\t10\t20\t90\t40", "f.jpg\t100\t20\t180\t40", "a.jpg", "c.png"]
    assert state["crops"][1] == {"key": "f.jpg\t10\t20\t90\t40", "file": "f.jpg", "text": "EF789",
                                      "read": "EF789", "confidence": 0.5, "box": [10.0, 20.0, 90.0, 40.0],
                                      "answer": None}
    assert state["counts"] == {"total": 5, "reviewed": 0, "remaining": 5, "accepted": 0, "corrected": 0,
                               "not_plate": 0, "skipped": 0}
    assert not (folder / "review.json").exists()  # looking changes nothing


def test_without_confidences_the_order_is_the_file_order(folder: Path) -> None:
    (folder / "confidence.tsv").unlink()
    assert [c["key"].split("\t")[0] for c in Review(folder).state()["crops"]] == ["a.jpg", "b.jpg", "f.jpg",
                                                                                   "f.jpg", "c.png"]


def test_accept_and_correct_rewrite_only_the_row_answered(folder: Path) -> None:
    review = Review(folder)
    inode = (folder / "labels.tsv").stat().st_ino
    (folder / "labels.tsv").chmod(0o640)
    out = review.answer("b.jpg", "accept", "CD456")
    assert out["crop"]["answer"] == "accepted" and out["counts"]["reviewed"] == 1
    assert labels(folder) == [HEADER, *ROWS]
    out = review.answer("f.jpg\t100\t20\t180\t40", "accept", "gh-01 8")  # as typed: lower case, separators
    assert out["crop"] == {"key": "f.jpg\t100\t20\t180\t40", "file": "f.jpg", "text": "GH018", "read": "GH012",
                                "confidence": 0.5, "box": [100.0, 20.0, 180.0, 40.0], "answer": "corrected"}
    assert labels(folder) == [HEADER, *ROWS[:3], "f.jpg\tGH018\t100\t20\t180\t40", ROWS[4]]
    saved = (folder / "labels.tsv").stat()
    assert saved.st_ino != inode and saved.st_mode & 0o777 == 0o640  # a new file renamed over, same mode
    assert {k: (v["answer"], v["read"], v.get("text")) for k, v in answers(folder).items()} == {
        "b.jpg": ("accepted", "CD456", "CD456"), "f.jpg\t100\t20\t180\t40": ("corrected", "GH012", "GH018")}
    # Corrected back to the device's read: accepted after all, and the read stays the device's.
    assert review.answer("f.jpg\t100\t20\t180\t40", "accept", "GH012")["crop"]["answer"] == "accepted"
    assert labels(folder) == [HEADER, *ROWS]
    assert not temporaries(folder)


def test_not_a_plate_leaves_labels_and_comes_back_in_its_place(folder: Path) -> None:
    review = Review(folder)
    review.answer("b.jpg", "not_plate")
    review.answer("a.jpg", "not_plate")  # the row b.jpg followed is out too
    assert labels(folder) == [HEADER, *ROWS[2:]]
    assert answers(folder)["b.jpg"] | {"time": ""} == {"answer": "not_plate", "read": "CD456", "time": "",
                                                       "line": ROWS[1], "index": 2, "after": "a.jpg"}
    state = review.state()
    assert state["counts"] == {"total": 5, "reviewed": 2, "remaining": 3, "accepted": 0, "corrected": 0,
                               "not_plate": 2, "skipped": 0}
    [b] = [c for c in state["crops"] if c["file"] == "b.jpg"]
    assert (b["text"], b["read"], b["answer"]) == ("", "CD456", "not_plate")
    # A plate after all, corrected: back where it was, between the rows it stood between.
    out = review.answer("b.jpg", "accept", "CD457")
    assert out["crop"]["answer"] == "corrected" and out["counts"]["not_plate"] == 1
    assert labels(folder) == [HEADER, "b.jpg\tCD457", *ROWS[2:]]
    review.answer("a.jpg", "accept", "AB123")
    assert labels(folder) == [HEADER, ROWS[0], "b.jpg\tCD457", *ROWS[2:]]
    assert "restore" not in answers(folder)["b.jpg"]


def test_skip_is_kept_and_does_not_undo_an_answer(folder: Path) -> None:
    review = Review(folder)
    out = review.answer("a.jpg", "skip")
    assert out["crop"]["answer"] == "skipped"
    assert (out["counts"]["reviewed"], out["counts"]["remaining"], out["counts"]["skipped"]) == (0, 5, 1)
    review.answer("b.jpg", "accept", "CD999")
    assert review.answer("b.jpg", "skip")["crop"]["answer"] == "corrected"
    assert labels(folder) == [HEADER, ROWS[0], "b.jpg\tCD999", *ROWS[2:]]
    assert Review(folder).state()["counts"]["skipped"] == 1  # a new server reads it back


@pytest.mark.parametrize(("key", "answer", "text", "message"), [
    ("a.jpg", "accept", "", "text is empty"),
    ("a.jpg", "accept", " - ", "text is empty"),
    ("a.jpg", "accept", "AB/12", r"only A-Z, 0-9, spaces and hyphens may be typed, not '/'"),
    ("a.jpg", "accept", "ÄB12", "not 'Ä'"),
    ("a.jpg", "accept", "AB\t12", r"not '\\t'"),
    ("a.jpg", "accept", "A" * 25, "at most 24"),
    ("a.jpg", "accept", 12, "text: expected a string"),
    ("a.jpg", "accept", None, "text: expected a string"),
    ("a.jpg", "delete", "AB123", "answer: expected 'accept', 'not_plate' or 'skip'"),
    (None, "accept", "AB123", "key: expected"),
    (["a.jpg"], "accept", "AB123", "key: expected"),
])
def test_bad_input_is_refused_and_changes_nothing(folder: Path, key: Any, answer: Any, text: Any,
                                                  message: str) -> None:
    before = (folder / "labels.tsv").read_bytes()
    with pytest.raises(ReviewError, match=message) as caught:
        Review(folder).answer(key, answer, text)
    assert caught.value.status == 400
    assert (folder / "labels.tsv").read_bytes() == before and not (folder / "review.json").exists()


@pytest.mark.parametrize("key", ["z.jpg", "../a.jpg", "/etc/passwd", "a.jpg\t1\t2\t3\t4", "f.jpg", "f.jpg\t10"])
def test_an_unknown_crop_is_refused(folder: Path, key: str) -> None:
    review = Review(folder)
    for call in (lambda: review.answer(key, "accept", "AB123"), lambda: review.image(key)):
        with pytest.raises(ReviewError, match="no crop") as caught:
            call()
        assert caught.value.status == 404
    assert labels(folder) == [HEADER, *ROWS] and not (folder / "review.json").exists()


def test_a_failed_write_keeps_the_old_file_whole(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    review = Review(folder)
    before = (folder / "labels.tsv").read_bytes()

    def no_room(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rv.os, "replace", no_room)
    with pytest.raises(ReviewError, match=r"labels.tsv: cannot be written \(No space left on device\)") as caught:
        review.answer("a.jpg", "accept", "AB124")
    assert caught.value.status == 500
    assert (folder / "labels.tsv").read_bytes() == before and not temporaries(folder)
    monkeypatch.undo()
    review.answer("a.jpg", "accept", "AB124")  # the server goes on
    assert labels(folder)[1] == "a.jpg\tAB124"


def test_a_row_that_could_not_be_taken_out_is_taken_out_by_the_next_request(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    review = Review(folder)
    real = rv.write_atomic

    def labels_read_only(path: Path, data: bytes) -> None:
        if path.name == "labels.tsv":
            raise OSError(30, "Read-only file system")
        real(path, data)

    monkeypatch.setattr(rv, "write_atomic", labels_read_only)
    with pytest.raises(ReviewError, match=r"labels.tsv: cannot be written \(Read-only file system\)") as caught:
        review.answer("b.jpg", "not_plate")
    assert caught.value.status == 500 and labels(folder) == [HEADER, *ROWS]
    assert answers(folder)["b.jpg"]["answer"] == "not_plate"  # recorded first
    monkeypatch.undo()
    assert review.state()["counts"]["not_plate"] == 1
    assert labels(folder) == [HEADER, ROWS[0], *ROWS[2:]]


def test_a_crash_between_the_two_files_is_completed_at_start(folder: Path) -> None:
    """review.json is written first where a row leaves or comes back; a server that starts finishes the job."""
    line = ROWS[1]
    (folder / "review.json").write_text(json.dumps({"version": 1, "answers": {
        "b.jpg": {"answer": "not_plate", "read": "CD456", "time": "t", "line": line, "index": 2, "after": "a.jpg"},
        "x.jpg": {"answer": "corrected", "read": "XY1", "text": "XY2", "time": "t",
                  "restore": {"line": "x.jpg\tXY2", "index": 1}}}}))
    Review(folder)
    assert labels(folder) == [HEADER, "x.jpg\tXY2", ROWS[0], *ROWS[2:]]
    assert "restore" not in answers(folder)["x.jpg"] and answers(folder)["b.jpg"]["answer"] == "not_plate"


@pytest.mark.parametrize(("name", "content", "message"), [
    ("labels.tsv", "file\ttext\na.jpg\n", r"labels.tsv:2: expected file<TAB>text"),
    ("labels.tsv", "file\ttext\na.jpg\tX\na.jpg\tY\n", r"labels.tsv:3: a second row for 'a.jpg' \(line 2\)"),
    ("labels.tsv", "", "labels.tsv: empty"),
    ("confidence.tsv", "file\tscore\na.jpg\t1\n", "confidence.tsv:1: the header must name"),
    ("confidence.tsv", "file\tconfidence\na.jpg\thigh\n", r"confidence.tsv:2: confidence: expected a number, "
                                                           r"got 'high'"),
    ("review.json", "{", "review.json: cannot be read as JSON"),
    ("review.json", '{"version": 1, "answers": {"a.jpg": {"answer": "maybe", "read": "A"}}}',
     r"review.json: answers\['a.jpg'\]: answer: expected one of"),
])
def test_a_bad_file_is_named(folder: Path, name: str, content: str, message: str) -> None:
    (folder / name).write_text(content)
    with pytest.raises(ReviewError, match=message):
        Review(folder)


def test_the_command_names_a_folder_it_cannot_review(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["review", str(tmp_path / "nowhere"), "--no-open"]) == 2
    assert "nowhere: not a folder" in capsys.readouterr().err
    assert main(["review", str(tmp_path), "--no-open"]) == 2
    assert "no labels.tsv in this folder" in capsys.readouterr().err


# ---------------------------------------------------------------------- over HTTP

@pytest.fixture
def server(folder: Path) -> Iterator[tuple[str, int]]:
    srv = rv.make_server(folder, "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=10)


def request(server: tuple[str, int], method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(*server, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def post(server: tuple[str, int], body: object, **headers: str) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, _, out = request(server, "POST", "/api/answer", data, {"Content-Type": "application/json"} | headers)
    return status, json.loads(out)


def test_the_page_and_its_assets_are_served_locally(server: tuple[str, int]) -> None:
    status, headers, page = request(server, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'src="/review.js"' in page and b"//" not in page.replace(b"<!DOCTYPE", b"")  # nothing from elsewhere
    for path in ("/review.js", "/review.css"):
        status, headers, body = request(server, "GET", path)
        assert status == 200 and b"http" not in body, path
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    status, _, body = request(server, "GET", "/image?key=f.jpg%0910%0920%0990%0940")
    assert (status, body) == (200, b"image f.jpg")


def test_answers_over_http(server: tuple[str, int], folder: Path) -> None:
    status, out = post(server, {"key": "a.jpg", "answer": "accept", "text": "AB 129"})
    assert status == 200 and out["crop"]["text"] == "AB129" and out["counts"]["reviewed"] == 1
    assert labels(folder)[1] == "a.jpg\tAB129"
    status, _, body = request(server, "GET", "/api/state")
    assert status == 200 and json.loads(body)["crops"][3]["answer"] == "corrected"


@pytest.mark.parametrize(("body", "headers", "status", "message"), [
    (b"{not json", {}, 400, "the body is not JSON"),
    (b"[1, 2]", {}, 400, "expected a JSON object"),
    ({"key": "a.jpg", "answer": "accept", "text": "AB<1>"}, {}, 400, "only A-Z, 0-9"),
    ({"key": "a.jpg", "answer": "accept", "text": "AB1", "path": "/etc"}, {}, 400, "unknown fields ['path']"),
    ({"key": "../../etc/passwd", "answer": "skip"}, {}, 404, "no crop"),
    ({"key": "a.jpg", "answer": "skip"}, {"Content-Type": "text/plain"}, 415, "application/json"),
    ({"key": "a.jpg", "answer": "skip"}, {"Origin": "http://example.com"}, 403, "Origin"),
    ({"key": "a.jpg", "answer": "skip"}, {"Host": "example.com"}, 403, "Host 'example.com'"),
])
def test_bad_requests_get_a_clear_error_and_the_server_goes_on(server: tuple[str, int], folder: Path, body: Any,
                                                               headers: dict[str, str], status: int,
                                                               message: str) -> None:
    before = (folder / "labels.tsv").read_bytes()
    got, out = post(server, body, **headers)
    assert got == status and message in out["error"], out
    assert (folder / "labels.tsv").read_bytes() == before and not (folder / "review.json").exists()
    assert request(server, "GET", "/api/state")[0] == 200


@pytest.mark.parametrize(("path", "status"), [
    ("/../../etc/passwd", 404), ("/secret.txt", 404), ("/labels.tsv", 404), ("/image", 400),
    ("/image?key=secret.txt", 404), ("/image?key=..%2Fsecret.txt", 404), ("/review.py", 404),
])
def test_no_file_is_served_by_a_path_from_the_client(server: tuple[str, int], path: str, status: int) -> None:
    got, _, body = request(server, "GET", path)
    assert got == status and b"not for the page" not in body


def test_an_image_outside_the_folder_or_not_an_image_is_refused(folder: Path) -> None:
    (folder.parent / "outside.jpg").write_bytes(b"x")
    os.symlink(folder.parent / "outside.jpg", folder / "link.jpg")
    (folder / "labels.tsv").write_text(f"{HEADER}\n../outside.jpg\tA1\nlink.jpg\tA2\nsecret.txt\tA3\n")
    review = Review(folder)
    for key, status in (("../outside.jpg", 403), ("link.jpg", 403), ("secret.txt", 415)):
        with pytest.raises(ReviewError) as caught:
            review.image(key)
        assert caught.value.status == status, key
