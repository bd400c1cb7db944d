"""Review a labelled folder's reads in a browser: ``python -m trainer review FOLDER``.

FOLDER holds images and a ``labels.tsv`` in the format of the shared real sets
(a header line, then ``file<TAB>text[<TAB>x1<TAB>y1<TAB>x2<TAB>y2]``), as
``python -m edge collect pack`` writes it with the device's reads filled in.
An optional ``confidence.tsv`` beside it (a header naming at least the columns
``file`` and ``confidence``; other columns are ignored) gives each file the
read's confidence: crops are shown lowest confidence first, those without one
last, in file order.

The page (``trainer/review_static``) sends each answer as it is given and the
server saves it at once, each file written to a temporary name, synced and
renamed over the old one:

- accepted or corrected: the row's text in ``labels.tsv`` becomes the text as
  typed (upper case, A-Z and 0-9: spaces and hyphens are dropped);
- not a plate: the row leaves ``labels.tsv``, so every reader of it (fine-tuning,
  ``evaluate``, ``run_eval.py``) skips it; ``review.json`` keeps the row to put
  back should the crop be answered again;
- skipped: ``labels.tsv`` is unchanged; the crop comes back once every crop not
  yet seen is answered.

Other rows of ``labels.tsv`` and their order are kept as they are. ``review.json``
records every answer by crop key (the row's fields other than the text, joined
by tabs: a crop's file name, or a frame's file name and box)::

    {"version": 1, "answers": {KEY: {"answer": "accepted" | "corrected" | "not_plate" | "skipped",
                                     "read": the text the row had before its first answer,
                                     "text": the text saved (accepted, corrected), "time": UTC,
                                     "line": the row, "index": its line number,
                                     "after": the key of the row before it (not_plate)}}}

A crop is reviewed once accepted, corrected or marked not a plate; a reload
resumes at the first crop in order that has no answer. Where two files must
change, the one that records what is meant is written first, and the server
completes an interrupted answer when it next reads them (at start, at each
request), so a crash or a failed write loses no answer.

The client names a crop by its key, which the server looks up in ``labels.tsv``
and ``review.json``; no path comes from the client. The server listens on
127.0.0.1 unless told otherwise, and answers only requests addressed to the
host it serves.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import math
import os
import re
import socket
import sys
import tempfile
import threading
import traceback
import webbrowser
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

LABELS, CONFIDENCE, REVIEW = "labels.tsv", "confidence.tsv", "review.json"
STATIC = Path(__file__).parent / "review_static"
#: What the page may fetch besides the API: a fixed table, so no request names a file.
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/review.js": ("review.js", "text/javascript; charset=utf-8"),
    "/review.css": ("review.css", "text/css; charset=utf-8"),
}
#: Image types a browser shows, by suffix.
IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".bmp": "image/bmp",
               ".webp": "image/webp", ".gif": "image/gif"}
ANSWERS = ("accepted", "corrected", "not_plate", "skipped")
REVIEWED = frozenset({"accepted", "corrected", "not_plate"})
#: What a typed text may hold: the plate's characters and the separators people type between groups.
TYPED = re.compile(r"[A-Za-z0-9 \-]*")
MAX_TEXT = 24
MAX_BODY = 64 * 1024
REVIEW_VERSION = 1


class ReviewError(ValueError):
    """A request or a file that cannot be used; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def normalize_typed(text: object) -> str:
    """The label form of a typed text (upper case, A-Z and 0-9); ReviewError saying what is wrong with it."""
    if not isinstance(text, str):
        raise ReviewError(f"text: expected a string, got {type(text).__name__}")
    if len(text) > MAX_TEXT:
        raise ReviewError(f"text: {len(text)} characters; a plate has at most {MAX_TEXT}")
    if not TYPED.fullmatch(text):
        bad = "".join(sorted({c for c in text if not TYPED.fullmatch(c)}))
        raise ReviewError(f"text: {text!r}: only A-Z, 0-9, spaces and hyphens may be typed, not {bad!r}")
    norm = text.upper().replace(" ", "").replace("-", "")
    if not norm:
        raise ReviewError("text is empty: type the plate's text, or press Escape if the crop shows no plate")
    return norm


def row_key(fields: list[str]) -> str:
    """A row's key: its fields other than the text, joined by tabs (a crop's file name; a frame's name and box)."""
    return "\t".join([fields[0], *fields[2:]])


def row_box(fields: list[str]) -> list[float] | None:
    """The plate box of a row with one (x1 y1 x2 y2 after the text, as the readers of labels.tsv take it)."""
    if len(fields) < 6:
        return None
    try:
        box = [float(v) for v in fields[2:6]]
    except ValueError:
        return None
    return box if all(math.isfinite(v) for v in box) and box[0] < box[2] and box[1] < box[3] else None


@dataclass
class Labels:
    """``labels.tsv`` as lines: the header, then rows and any blank lines, each kept as written.

    Change ``lines`` through ``put``, ``insert`` and ``delete``, which keep the index of keys.
    """

    path: Path
    lines: list[str]
    _index: dict[str, int] | None = None

    @classmethod
    def read(cls, path: Path) -> Labels:
        """Read and check ``path``: every row has a file and a text, no key twice (ReviewError naming the line)."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ReviewError(f"{path}: no labels.tsv in this folder", 404) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ReviewError(f"{path}: cannot be read ({exc})", 500) from None
        lines = text.splitlines()
        if not lines:
            raise ReviewError(f"{path}: empty; expected a header line (file, text[, x1, y1, x2, y2])", 500)
        labels = cls(path, lines)
        seen: dict[str, int] = {}
        for n, fields in labels.rows():
            if len(fields) < 2 or not fields[0]:
                raise ReviewError(f"{path}:{n + 1}: expected file<TAB>text[<TAB>x1<TAB>y1<TAB>x2<TAB>y2], "
                                  f"got {lines[n]!r}", 500)
            key = row_key(fields)
            if key in seen:
                raise ReviewError(f"{path}:{n + 1}: a second row for {key!r} (line {seen[key] + 1}); "
                                  "each crop may have one row", 500)
            seen[key] = n
        return labels

    def rows(self) -> Iterator[tuple[int, list[str]]]:
        """(line index, fields) of each row that is not blank."""
        for n, line in enumerate(self.lines[1:], start=1):
            if line.strip():
                yield n, line.split("\t")

    def find(self, key: str) -> tuple[int, list[str]] | None:
        """(line index, fields) of the row with ``key``."""
        if self._index is None:
            self._index = {row_key(f): n for n, f in self.rows()}
        n = self._index.get(key)
        return None if n is None else (n, self.lines[n].split("\t"))

    def put(self, n: int, line: str) -> None:
        self.lines[n] = line
        self._index = None

    def insert(self, n: int, line: str) -> None:
        self.lines.insert(n, line)
        self._index = None

    def delete(self, n: int) -> None:
        del self.lines[n]
        self._index = None

    def data(self) -> bytes:
        return ("\n".join(self.lines) + "\n").encode("utf-8")


def read_confidences(path: Path) -> dict[str, float]:
    """File name -> confidence from ``confidence.tsv`` (optional: {} without it); ReviewError naming the line."""
    if not path.is_file():
        return {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ReviewError(f"{path}: cannot be read ({exc})") from None
    header = lines[0].split("\t") if lines else []
    if "file" not in header or "confidence" not in header:
        raise ReviewError(f"{path}:1: the header must name the columns 'file' and 'confidence', got {header}")
    i_file, i_conf = header.index("file"), header.index("confidence")
    out: dict[str, float] = {}
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            value = float(fields[i_conf])
        except (IndexError, ValueError):
            value = math.nan
        if not math.isfinite(value):
            cell = fields[i_conf] if i_conf < len(fields) else None
            raise ReviewError(f"{path}:{n}: confidence: expected a number, got {cell!r}")
        out[fields[i_file] if i_file < len(fields) else ""] = value
    return out


def _answers(data: object, path: Path) -> dict[str, dict[str, Any]]:
    """The checked ``answers`` of a review.json's content; ReviewError naming the file and key."""
    if not isinstance(data, dict) or not isinstance(data.get("answers"), dict):
        raise ReviewError(f"{path}: expected an object with 'answers', as this command writes it", 500)
    if data.get("version") != REVIEW_VERSION:
        raise ReviewError(f"{path}: version: expected {REVIEW_VERSION}, got {data.get('version')!r}", 500)
    answers: dict[str, dict[str, Any]] = data["answers"]
    for key, entry in answers.items():
        where = f"{path}: answers[{key!r}]"
        if not isinstance(entry, dict) or entry.get("answer") not in ANSWERS:
            raise ReviewError(f"{where}: answer: expected one of {', '.join(ANSWERS)}", 500)
        if not isinstance(entry.get("read"), str):
            raise ReviewError(f"{where}: read: expected a string", 500)
        if entry["answer"] == "not_plate" and not (isinstance(entry.get("line"), str)
                                                   and isinstance(entry.get("index"), int)):
            raise ReviewError(f"{where}: a not_plate answer keeps its row: expected 'line' and 'index'", 500)
        restore = entry.get("restore")
        if restore is not None and not (isinstance(restore, dict) and isinstance(restore.get("line"), str)
                                        and isinstance(restore.get("index"), int)):
            raise ReviewError(f"{where}: restore: expected 'line' and 'index'", 500)
    return answers


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a synced temporary file in its folder, renamed over it.

    A reader, or a crash at any point, sees the old file or the new one, whole. The file keeps its mode.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.chmod(tmp, path.stat().st_mode & 0o777)
        except FileNotFoundError:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Review:
    """A folder under review: its crops, their answers and the saving of each answer.

    Every operation reads the files afresh under a lock held across processes (``flock`` on the folder), so
    two servers on one folder, or a row edited by hand between answers, lose nothing.
    """

    def __init__(self, folder: Path) -> None:
        if not folder.is_dir():
            raise ReviewError(f"{folder}: not a folder", 404)
        self.folder = folder.resolve()
        self.labels_path = self.folder / LABELS
        self.review_path = self.folder / REVIEW
        self.confidences = read_confidences(self.folder / CONFIDENCE)
        self._lock = threading.Lock()
        with self._locked():
            self._read()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            fd = os.open(self.folder, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the flock

    def _read(self) -> tuple[Labels, dict[str, dict[str, Any]]]:
        """Both files as they are now, with any answer a crash or a failed write left half done completed."""
        labels = Labels.read(self.labels_path)
        try:
            data = json.loads(self.review_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            data = {"version": REVIEW_VERSION, "answers": {}}
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ReviewError(f"{self.review_path}: cannot be read as JSON ({exc})", 500) from None
        answers = _answers(data, self.review_path)
        self._complete(labels, answers)
        return labels, answers

    def _save_answers(self, answers: dict[str, dict[str, Any]]) -> None:
        data = json.dumps({"version": REVIEW_VERSION, "answers": answers}, indent=1, ensure_ascii=False)
        self._write(self.review_path, (data + "\n").encode("utf-8"))

    def _write(self, path: Path, data: bytes) -> None:
        try:
            write_atomic(path, data)
        except OSError as exc:
            raise ReviewError(f"{path}: cannot be written ({exc.strerror or exc}); the answer was not saved",
                              500) from None

    def _complete(self, labels: Labels, answers: dict[str, dict[str, Any]]) -> None:
        """Finish answers a crash interrupted: a not-a-plate row still in labels.tsv, a row not yet put back."""
        labels_changed = answers_changed = False
        for key, entry in answers.items():
            found = labels.find(key)
            if entry["answer"] == "not_plate" and found is not None:
                labels.delete(found[0])
                labels_changed = True
            restore = entry.get("restore")
            if restore is not None:
                if found is None:
                    labels.insert(min(max(restore["index"], 1), len(labels.lines)), restore["line"])
                    labels_changed = True
                del entry["restore"]
                answers_changed = True
        if labels_changed:
            self._write(self.labels_path, labels.data())
        if answers_changed:
            self._save_answers(answers)

    @staticmethod
    def _place(labels: Labels, answers: dict[str, dict[str, Any]], entry: dict[str, Any]) -> int:
        """The line a row that was marked not a plate goes back to: just after the row it followed (or the one
        that row followed, when it is out too), at the top when it was first, else at its old line number."""
        after, seen = entry.get("after", ""), set()
        while isinstance(after, str) and after and after not in seen:
            found = labels.find(after)
            if found is not None:
                return found[0] + 1
            seen.add(after)
            previous = answers.get(after)
            if previous is None or previous["answer"] != "not_plate":
                break  # the row it followed went by other hands: its line number will do
            after = previous.get("after", "")
        else:
            if after is None:
                return 1
        return min(max(entry["index"], 1), len(labels.lines))

    # ------------------------------------------------------------------ what the page asks

    def _crops(self, labels: Labels, answers: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """Every crop, in review order: lowest confidence first, then those without one; file order within."""
        placed: list[tuple[float, dict[str, Any]]] = []  # (place in labels.tsv, crop)
        for n, fields in labels.rows():
            placed.append((n, self._crop(row_key(fields), fields, answers.get(row_key(fields)))))
        in_labels = {crop["key"] for _, crop in placed}
        for key, entry in answers.items():
            if entry["answer"] == "not_plate" and key not in in_labels:  # just before the row now at its place
                placed.append((entry["index"] - 0.5, self._crop(key, entry["line"].split("\t"), entry)))

        def order(item: tuple[float, dict[str, Any]]) -> tuple[bool, float, float]:
            confidence = item[1]["confidence"]
            return confidence is None, confidence or 0.0, item[0]

        return [crop for _, crop in sorted(placed, key=order)]

    def _crop(self, key: str, fields: list[str], entry: dict[str, Any] | None) -> dict[str, Any]:
        answer = entry["answer"] if entry else None
        text = "" if answer == "not_plate" else fields[1]
        return {"key": key, "file": fields[0], "text": text, "read": entry["read"] if entry else fields[1],
                "confidence": self.confidences.get(key, self.confidences.get(fields[0])),
                "box": row_box(fields), "answer": answer}

    @staticmethod
    def _counts(crops: list[dict[str, Any]]) -> dict[str, int]:
        answers = [c["answer"] for c in crops]
        reviewed = sum(a in REVIEWED for a in answers)
        return {"total": len(crops), "reviewed": reviewed, "remaining": len(crops) - reviewed,
                **{a: answers.count(a) for a in ANSWERS}}

    def state(self) -> dict[str, Any]:
        """The folder's name, every crop in review order and the counts."""
        with self._locked():
            labels, answers = self._read()
            crops = self._crops(labels, answers)
        return {"folder": self.folder.name, "crops": crops, "counts": self._counts(crops)}

    def image(self, key: str) -> tuple[Path, str]:
        """The image file of crop ``key`` and its content type; ReviewError for an unknown crop or a bad file."""
        with self._locked():
            labels, answers = self._read()
            found = labels.find(key)
            if found is not None:
                name = found[1][0]
            elif key in answers and answers[key]["answer"] == "not_plate":
                name = answers[key]["line"].split("\t")[0]
            else:
                raise ReviewError(f"no crop {key!r} in {LABELS}", 404)
        path = (self.folder / name).resolve()
        if not path.is_relative_to(self.folder):
            raise ReviewError(f"{LABELS}: {name!r} lies outside {self.folder}; not served", 403)
        kind = IMAGE_TYPES.get(path.suffix.lower())
        if kind is None:
            raise ReviewError(f"{name}: not an image type a browser shows ({', '.join(IMAGE_TYPES)})", 415)
        if not path.is_file():
            raise ReviewError(f"{path}: image file not found", 404)
        return path, kind

    def answer(self, key: object, answer: object, text: object = None) -> dict[str, Any]:
        """Save one answer (``accept`` with ``text``, ``not_plate`` or ``skip``) for crop ``key``.

        Returns the crop as it now is and the counts. ReviewError (400) for a bad request, 404 for an
        unknown crop, 500 when a file cannot be written: then each file is whole, old or new, and an answer
        that review.json records but labels.tsv does not show yet (a row to take out or put back) is
        completed by the next request.
        """
        if not isinstance(key, str) or not key:
            raise ReviewError("key: expected the crop's key (a string)")
        if answer not in ("accept", "not_plate", "skip"):
            raise ReviewError(f"answer: expected 'accept', 'not_plate' or 'skip', got {answer!r}")
        typed = normalize_typed(text) if answer == "accept" else None
        with self._locked():
            labels, answers = self._read()
            found = labels.find(key)
            prior = answers.get(key)
            if found is None and not (prior is not None and prior["answer"] == "not_plate"):
                raise ReviewError(f"no crop {key!r} in {LABELS}", 404)
            read = prior["read"] if prior else found[1][1] if found else ""
            entry: dict[str, Any] = {"read": read, "time": _now()}
            if typed is not None:
                entry |= {"answer": "accepted" if typed == read else "corrected", "text": typed}
                if found is not None:
                    n, fields = found
                    if fields[1] != typed:
                        labels.put(n, "\t".join([fields[0], typed, *fields[2:]]))
                        self._write(self.labels_path, labels.data())
                    answers[key] = entry
                    self._save_answers(answers)
                else:  # was not a plate: the row goes back where it was
                    assert prior is not None
                    fields = prior["line"].split("\t")
                    line = "\t".join([fields[0], typed, *fields[2:]])
                    place = self._place(labels, answers, prior)
                    answers[key] = entry | {"restore": {"line": line, "index": place}}
                    self._save_answers(answers)
                    labels.insert(place, line)
                    self._write(self.labels_path, labels.data())
                    answers[key] = entry
                    self._save_answers(answers)
            elif answer == "not_plate":
                if found is not None:
                    n, fields = found
                    before = [f for m, f in labels.rows() if m < n]
                    answers[key] = entry | {"answer": "not_plate", "line": labels.lines[n], "index": n,
                                            "after": row_key(before[-1]) if before else None}
                    self._save_answers(answers)
                    labels.delete(n)
                    self._write(self.labels_path, labels.data())
            elif prior is None or prior["answer"] not in REVIEWED:  # skipping a reviewed crop changes nothing
                answers[key] = entry | {"answer": "skipped"}
                self._save_answers(answers)
            crops = self._crops(labels, answers)
        [crop] = [c for c in crops if c["key"] == key]
        return {"crop": crop, "counts": self._counts(crops)}


# ---------------------------------------------------------------------- the server

class _Server(ThreadingHTTPServer):
    daemon_threads = True
    review: Review
    hosts: frozenset[str] | None  # the Host headers answered; None: any (a wildcard address)
    quiet: bool


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "plate-review"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a line per request would bury the answers' lines

    def _send(self, status: int, body: bytes, kind: str, cache: str = "no-store") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self'; object-src 'none'; "
                                                    "base-uri 'none'; frame-ancestors 'none'")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: object) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _handle(self, route: Callable[[], None]) -> None:
        try:
            host = self.headers.get("Host", "")
            if self.server.hosts is not None and host not in self.server.hosts:
                raise ReviewError(f"Host {host!r} is not served here", 403)
            route()
        except ReviewError as exc:
            self._json(exc.status, {"error": str(exc)})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page went away mid-answer; nothing to tell it
        except Exception as exc:  # a request must never stop the server; the trace goes to the log
            traceback.print_exc(file=sys.stderr)
            with contextlib.suppress(OSError):
                self._json(500, {"error": f"internal error: {exc!r}"})

    def do_GET(self) -> None:
        self._handle(self._get)

    def do_HEAD(self) -> None:
        self._handle(self._get)

    def do_POST(self) -> None:
        self._handle(self._post)

    def _get(self) -> None:
        url = urlsplit(self.path)
        if url.path in ASSETS:
            name, kind = ASSETS[url.path]
            self._send(200, (STATIC / name).read_bytes(), kind)
        elif url.path == "/api/state":
            self._json(200, self.server.review.state())
        elif url.path == "/image":
            keys = parse_qs(url.query).get("key", [])
            if len(keys) != 1:
                raise ReviewError("/image: expected one ?key=")
            path, kind = self.server.review.image(keys[0])
            try:
                body = path.read_bytes()
            except OSError as exc:
                raise ReviewError(f"{path}: cannot be read ({exc.strerror or exc})", 500) from None
            self._send(200, body, kind, cache="private, max-age=600")
        elif url.path == "/favicon.ico":
            self._send(204, b"", "image/x-icon", cache="max-age=86400")
        else:
            raise ReviewError(f"{url.path}: no such page", 404)

    def _post(self) -> None:
        if urlsplit(self.path).path != "/api/answer":
            raise ReviewError(f"{self.path}: no such endpoint", 404)
        origin = self.headers.get("Origin")
        if origin is not None and origin != f"http://{self.headers.get('Host', '')}":
            raise ReviewError(f"Origin {origin!r}: answers come from the review page only", 403)
        if self.headers.get_content_type() != "application/json":
            raise ReviewError("expected Content-Type: application/json", 415)
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise ReviewError("expected a Content-Length", 411) from None
        if not 0 <= length <= MAX_BODY:
            raise ReviewError(f"a body of {length} bytes; at most {MAX_BODY}", 413)
        try:
            body = json.loads(self.rfile.read(length))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ReviewError(f"the body is not JSON ({exc})") from None
        if not isinstance(body, dict):
            raise ReviewError("expected a JSON object {key, answer, text}")
        unknown = set(body) - {"key", "answer", "text"}
        if unknown:
            raise ReviewError(f"unknown fields {sorted(unknown)}; expected key, answer, text")
        result = self.server.review.answer(body.get("key"), body.get("answer"), body.get("text"))
        crop = result["crop"]
        if not self.server.quiet:
            told = crop["answer"] + (f" {crop['read']} -> {crop['text']}" if crop["answer"] == "corrected" else "")
            print(f"{crop['file']}: {told}", flush=True)
        self._json(200, result)


def make_server(folder: Path, host: str = "127.0.0.1", port: int = 8765, quiet: bool = False) -> _Server:
    """A review server for ``folder``, bound (port 0: any free one) but not yet serving.

    ReviewError for a folder that cannot be reviewed or an address that cannot be bound.
    """
    review = Review(folder)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("_Server", (_Server,), {"address_family": family})
    try:
        server = server_class((host, port), _Handler)
    except OSError as exc:
        raise ReviewError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    server.review, server.quiet = review, quiet
    bound = server.server_address[1]
    if host in ("", "0.0.0.0", "::"):
        server.hosts = None
    else:
        names = {f"[{host}]" if ":" in host else host}
        if host in ("127.0.0.1", "::1", "localhost"):
            names |= {"localhost", "127.0.0.1", "[::1]"}
        server.hosts = frozenset(f"{name}:{bound}" for name in names)
    return server


def url_of(server: _Server) -> str:
    """The page's address (a wildcard address shown as the loopback one)."""
    host = str(server.server_address[0])
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{server.server_address[1]}/"


def serve(folder: Path, host: str = "127.0.0.1", port: int = 8765, open_browser: bool = True) -> int:
    """Serve the review page of ``folder`` until Ctrl+C; return the exit status."""
    server = make_server(folder, host, port)
    url = url_of(server)
    counts = server.review.state()["counts"]
    print(f"reviewing {folder}: {counts['total']} crops, {counts['reviewed']} reviewed, "
          f"{counts['remaining']} remaining", flush=True)
    print(f"open {url} (Ctrl+C stops)", flush=True)
    if open_browser:
        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped; every answer is saved", flush=True)
    finally:
        server.server_close()
    return 0
