"""`trainer finetune`: labelled folders -> reader crops mixed with synthetic ones -> a model set the edge loads.

The end to end fine-tunes the shipped models for two steps on rendered scenes, in two sessions: the first is
stopped before its export (as a kill would stop it), the second resumes its training and writes the set.
Two steps teach nothing; what is asserted is what breaks when the chain breaks: the split by text, the rows
skipped and why, the resumed state, a set that loads and reads, the card's before/after figures.
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from conftest import ROOT, run_edge
from edge.plates import BLANK, READER_CLASSES

pytest.importorskip("tensorflow", reason="fine-tuning needs the trainer's TensorFlow")

SHIPPED = ROOT / "edge" / "models"


def _columns(top: dict[int, str], bottom: dict[int, str]) -> np.ndarray:
    """Reader columns (96 x classes) with the given characters peaking at the given columns, blank elsewhere."""
    probs = np.full((96, len(READER_CLASSES)), 0.001, np.float32)
    probs[:, READER_CLASSES.index(BLANK)] = 0.9
    for col, ch in {**top, **{48 + k: v for k, v in bottom.items()}}.items():
        probs[col, :] = 0.001
        probs[col, READER_CLASSES.index(ch)] = 0.9
    return probs


def test_rows_are_split_where_the_reader_reads_two_rows_of_a_narrow_plate() -> None:
    from trainer.finetune import split_rows

    two = _columns({4: "A", 9: "B", 14: "1", 19: "2"}, {6: "C", 12: "D", 18: "E"})
    assert split_rows(two, "AB12CDE", aspect=1.5) == ("AB12", "CDE")
    # A misread top row still cuts where the label fits the reads best.
    misread = _columns({4: "A", 9: "8", 14: "1", 19: "2"}, {6: "C", 12: "D", 18: "E"})
    assert split_rows(misread, "AB12CDE", aspect=1.5) == ("AB12", "CDE")
    # A wide plate is one row, whatever the reader's second head does; so is one with no bottom read.
    assert split_rows(two, "AB12CDE", aspect=4.5) == ("AB12CDE", "")
    assert split_rows(_columns({4: "A", 9: "B"}, {}), "AB12CDE", aspect=1.5) == ("AB12CDE", "")


def test_a_collected_crop_gives_back_the_plate_box_it_was_cut_around() -> None:
    from edge.events import CROP_MARGIN_X, CROP_MARGIN_Y
    from trainer.finetune import collected_crop_quad

    bw, bh = 100.0, 30.0  # the plate box; the device cut the crop with its margins around it
    w, h = bw * (1 + 2 * CROP_MARGIN_X), bh * (1 + 2 * CROP_MARGIN_Y)
    quad = collected_crop_quad(round(w), round(h))
    assert np.allclose(quad[0], [bw * CROP_MARGIN_X, bh * CROP_MARGIN_Y], atol=0.5)
    assert np.allclose(quad[2] - quad[0], [bw, bh], atol=0.5)


def test_the_held_out_split_goes_by_text() -> None:
    from trainer.finetune import Row, split_by_text

    rng = np.random.default_rng(1)
    texts = ["".join(rng.choice(list("ABC0123456789"), 6)) for _ in range(400)]
    rows = [Row(Path("/x"), f"{i}.jpg", t, None, i + 2) for i, t in enumerate(texts + texts[:100])]  # 100 twice
    train, held = split_by_text(rows, 0.25, seed=0)
    assert len(train) + len(held) == len(rows)
    assert not {r.text for r in train} & {r.text for r in held}  # no plate on both sides
    assert 0.18 < len({r.text for r in held}) / len(set(texts)) < 0.32
    assert split_by_text(rows, 0.25, seed=0) == (train, held)  # the same split on every rerun
    assert {r.text for r in split_by_text(rows, 0.25, seed=1)[1]} != {r.text for r in held}
    assert split_by_text(rows, 0.0, seed=0) == (rows, [])


def test_rows_that_are_no_plate_or_not_reviewed_are_skipped(tmp_path: Path) -> None:
    from trainer.finetune import read_rows

    lines = ["file\ttext\tx1\ty1\tx2\ty2", "a.jpg\tAB123\t1\t2\t30\t12", "b.jpg\t-", "c.jpg\t\t1\t2\t3\t4",
             "d.jpg\tcd 456", "e.jpg\tEF789\t5\t5\t1\t1", "f.jpg\tGH012\t1\t2\t30\t12", "g.jpg\tJK345", "h.jpg"]
    (tmp_path / "labels.tsv").write_text("\n".join(lines) + "\n")
    skipped: Counter[str] = Counter()
    notes: list[str] = []
    rows = read_rows(tmp_path, unreviewed=False, skipped=skipped, notes=notes)
    assert [(r.file, r.text, r.box) for r in rows] == [
        ("a.jpg", "AB123", (1.0, 2.0, 30.0, 12.0)), ("d.jpg", "CD456", None),
        ("f.jpg", "GH012", (1.0, 2.0, 30.0, 12.0)), ("g.jpg", "JK345", None)]
    assert skipped == {"not a plate": 2, "malformed box": 1, "malformed line": 1}
    assert any(n.startswith(f"{tmp_path / 'labels.tsv'}:3: not a plate") for n in notes)

    # A review record: only accepted or corrected rows count; a row marked not a plate (still in labels.tsv, as
    # after a crash between the review's two writes) is skipped.
    review = {"version": 1, "answers": {
        "a.jpg\t1\t2\t30\t12": {"answer": "accepted"}, "d.jpg": {"answer": "corrected"},
        "f.jpg\t1\t2\t30\t12": {"answer": "not_plate"}, "g.jpg": {"answer": "skipped"}}}
    (tmp_path / "review.json").write_text(json.dumps(review))
    skipped.clear()
    assert [r.file for r in read_rows(tmp_path, False, skipped, [])] == ["a.jpg", "d.jpg"]
    assert skipped["not a plate"] == 3 and skipped["not reviewed"] == 2  # e.jpg and g.jpg
    assert [r.file for r in read_rows(tmp_path, True, Counter(), [])] == ["a.jpg", "d.jpg", "g.jpg"]


def test_detector_samples_cover_the_boxes_of_frames_with_no_held_out_plate(tmp_path: Path) -> None:
    from trainer.data import DETECTOR_INPUT, DETECTOR_STRIDE
    from trainer.finetune import Row, detector_frames

    for name in ("a.jpg", "b.jpg"):
        cv2.imwrite(str(tmp_path / name), np.full((480, 640, 3), 90, np.uint8))
    rows = [Row(tmp_path, "a.jpg", "AB123", (100.0, 200.0, 180.0, 220.0), 2),
            Row(tmp_path, "a.jpg", "CD456", (400.0, 300.0, 480.0, 320.0), 3),
            Row(tmp_path, "a.jpg", "EF789", None, 4),
            Row(tmp_path, "b.jpg", "GH012", (10.0, 10.0, 90.0, 30.0), 5)]
    x, y = detector_frames(rows, held_images={tmp_path / "b.jpg"}, progress=False)
    h, w = DETECTOR_INPUT
    assert x.shape == (1, h, w, 3) and y.shape == (1, h // DETECTOR_STRIDE, w // DETECTOR_STRIDE)
    scale = w / 640  # the frame letterboxed as the device does: 640x480 -> 512x384
    cells = np.argwhere(y[0] > 127)
    for x1, y1, x2, y2 in ((100, 200, 180, 220), (400, 300, 480, 320)):  # both plates of a.jpg, b.jpg left out
        inside = [(r, c) for r, c in cells if x1 * scale <= (c + 0.5) * DETECTOR_STRIDE <= x2 * scale
                  and y1 * scale <= (r + 0.5) * DETECTOR_STRIDE <= y2 * scale]
        assert len(inside) >= 0.8 * ((x2 - x1) * scale / DETECTOR_STRIDE) * ((y2 - y1) * scale / DETECTOR_STRIDE)
    assert abs(len(cells) - 2 * (80 * scale / DETECTOR_STRIDE) * (20 * scale / DETECTOR_STRIDE)) <= 20


def _scene_folders(root: Path) -> tuple[Path, Path]:
    """A folder of rendered frames with boxes (plus a row that is no plate and one whose image is gone) and one of
    frames without boxes that the shipped models read right (their plates must be found by reading)."""
    from edge.pipeline import Pipeline
    from trainer.synth import make_scene

    boxed, unboxed = root / "boxed", root / "unboxed"
    boxed.mkdir()
    unboxed.mkdir()
    pipeline = Pipeline.from_dir(SHIPPED, num_threads=1)
    rows, loose = ["file\ttext\tx1\ty1\tx2\ty2"], ["file\ttext"]
    seed = 0
    while len(rows) < 15 or len(loose) < 4:
        seed += 1
        scene = make_scene(np.random.default_rng((77, seed)), width=640, height=480, max_plates=1)
        if not scene.plates:
            continue
        plate = scene.plates[0]
        name = f"scene_{seed:03d}.jpg"
        if len(loose) < 4:
            reads = pipeline(scene.image)
            if reads and reads[0].text == plate.text:
                cv2.imwrite(str(unboxed / name), scene.image)
                loose.append(f"{name}\t{plate.text}")
            continue
        cv2.imwrite(str(boxed / name), scene.image)
        (x1, y1), (x2, y2) = plate.quad.min(axis=0), plate.quad.max(axis=0)
        rows.append(f"{name}\t{plate.text}\t{x1:.0f}\t{y1:.0f}\t{x2:.0f}\t{y2:.0f}")
    rows += ["scene_gone.jpg\tGONE123\t10\t10\t60\t25", f"{rows[1].split(chr(9))[0]}\t-\t1\t1\t9\t5"]
    (boxed / "labels.tsv").write_text("\n".join(rows) + "\n")
    (unboxed / "labels.tsv").write_text("\n".join(loose) + "\n")
    return boxed, unboxed


class Killed(Exception):
    """Stands for a kill between training and export."""


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Two sessions of one fine-tuning run: the first killed before its export, the second resuming it."""
    import trainer.finetune as F
    from test_formats import COUNTRY_ZZ
    from trainer.cli import main

    root = tmp_path_factory.mktemp("finetune")
    boxed, unboxed = _scene_folders(root)
    countries = root / "my-countries"
    countries.mkdir()
    (countries / "zz.yaml").write_text(COUNTRY_ZZ)
    out = root / "set"
    argv = ["finetune", "--data", str(boxed), "--data", str(unboxed), "--out", str(out), "--max-steps", "1",
            "--crops-per-plate", "2", "--synthetic-share", "0.2", "--holdout", "0.3", "--synthetic-eval", "6",
            "--batch", "16", "--workers", "1", "--threads", "2", "--countries", str(countries)]
    ns = SimpleNamespace(out=out, argv=argv, boxed=boxed, unboxed=unboxed, countries=countries)

    def killed(*args: object, **kwargs: object) -> dict:
        raise Killed

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(F, "export_network", killed)
        with pytest.raises(Killed):
            main(argv)
    ns.first = json.loads((out / "work" / "finetune.json").read_text())
    ns.npz_mtime = (out / "work" / "reader.npz").stat().st_mtime_ns
    with pytest.MonkeyPatch.context() as mp:
        import io
        import sys

        err = io.StringIO()
        mp.setattr(sys, "stderr", err)
        ns.code = main(argv)
        ns.stderr = err.getvalue()
    ns.state = json.loads((out / "work" / "finetune.json").read_text())
    return ns


def test_a_killed_run_resumes_its_training_and_keeps_its_data(finetuned: SimpleNamespace) -> None:
    first, state = finetuned.first, finetuned.state
    assert "after" not in first and first["sessions"][0]["ended"] == "stopped"
    assert first["trained"]["reader"]["global_step"] == 1 and not first["trained"]["reader"]["finished"]
    assert finetuned.code == 0, finetuned.stderr
    assert "resuming" in finetuned.stderr and "global step 1" in finetuned.stderr
    assert state["trained"]["reader"]["global_step"] == 2  # one more step from where the first session stopped
    assert (finetuned.out / "work" / "reader.npz").stat().st_mtime_ns == finetuned.npz_mtime  # not made again
    assert state["prep"] == first["prep"] and state["before"] == first["before"]
    assert len(state["sessions"]) == 2 and state["exported"]["reader"]["global_step"] == 2


def test_the_plates_are_split_by_text_and_skipped_rows_are_counted(finetuned: SimpleNamespace) -> None:
    prep = finetuned.state["prep"]
    held_lines = (finetuned.out / "work" / "heldout" / "labels.tsv").read_text().splitlines()[1:]
    held = {line.split("\t")[1] for line in held_lines}
    assert held and set(prep["heldout_texts"]) == held
    assert not held & set(prep["training_texts"])
    assert prep["skipped"].get("not a plate") == 1
    assert prep["skipped"].get("image missing") == 1 and "GONE123" not in held  # on either side of the split
    # The frames without boxes: the shipped models read each right, so each plate is found by its read.
    unboxed = [line.split("\t")[1] for line in (finetuned.unboxed / "labels.tsv").read_text().splitlines()[1:]]
    assert "no read close to the label" not in prep["skipped"]
    assert set(unboxed) <= set(prep["training_texts"]) | held
    reader = prep["reader"]
    assert reader["user_crops"] == 2 * prep["training_plates"]
    user = reader["user_crops"] + reader["negative_crops"]
    assert reader["synthetic_crops"] == round(user * 0.2 / 0.8)
    assert reader["samples"] == reader["validation"] + user + reader["synthetic_crops"]


def test_the_set_loads_as_the_edge_loads_it_and_reads(finetuned: SimpleNamespace, tmp_path: Path) -> None:
    from edge.model import load_model_set, read_metadata

    models = load_model_set(finetuned.out)
    detector, reader = models.detector, models.reader
    assert detector.meta.kind == "detector"
    shipped = read_metadata(SHIPPED / "reader.tflite")
    assert reader.meta.note.startswith("fine-tuned by trainer finetune")
    assert reader.meta.sha256 != shipped.sha256
    assert reader.meta.reader is not None and shipped.reader is not None
    # The formats carried on, with those the synthetic plates were drawn from added (the checkout's countries/
    # and --countries); the format prior is learnt over them all, from every training row (found by the
    # starting models or not), and the reader decodes with it.
    from edge.formats import COUNTRIES_DIR, FormatSet

    drawn = FormatSet.load(COUNTRIES_DIR, finetuned.countries)
    added = FormatSet.from_meta(shipped.reader.formats.model_dump()).merged(drawn)
    assert reader.meta.reader.formats.sha256 == added.to_meta()["sha256"] != shipped.reader.formats.sha256
    prior = reader.meta.reader.formats.prior
    assert shipped.reader.formats.prior is None and prior is not None
    assert set(prior.shares) == {f.name for f in added.formats} and "zz" in prior.shares
    prep = finetuned.state["prep"]
    assert prior.plates == prep["training_rows"] and prior.model_dump(mode="json") == prep["format_prior"]
    # Each format's plates by length: every share a format gives its lengths adds up to 1.
    assert set(prior.lengths) == set(prior.shares)
    assert all(abs(sum(by.values()) - 1) < 1e-4 for by in prior.lengths.values())
    from edge.pipeline import Pipeline

    assert Pipeline.from_dir(finetuned.out, num_threads=1).reader.formats.prior == prior
    card = (finetuned.out / "MODEL_CARD.md").read_text()
    assert f"| format prior | learnt from the {prior.plates} plates trained on: " in card
    assert "characters), " in card and "none at a length its plates here never have" in card
    assert f"drawn from added: `{COUNTRIES_DIR}`, `{finetuned.countries}`" in card
    assert (finetuned.out / "detector.tflite").read_bytes() == (SHIPPED / "detector.tflite").read_bytes()
    image = next(finetuned.boxed.glob("*.jpg"))
    proc = run_edge("read", "--json", "--models", str(finetuned.out), str(image))
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout.splitlines()[0])
    assert answer["image"] == str(image) and "error" not in answer


def test_the_card_has_the_figures_before_and_after(finetuned: SimpleNamespace) -> None:
    state = finetuned.state
    card = (finetuned.out / "MODEL_CARD.md").read_text()
    for when in ("before", "after"):
        figures = state[when]
        assert figures["heldout"]["images"] == state["prep"]["heldout_plates"]
        assert 0.0 <= figures["heldout"]["exact"] <= 1.0 and figures["synthetic_plates"]["images"] == 6
    row = next(line for line in card.splitlines() if line.startswith("| held-out plates |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == str(state["prep"]["heldout_plates"])
    assert math.isclose(float(cells[2]), state["before"]["heldout"]["exact"], abs_tol=5e-4)
    assert math.isclose(float(cells[3]), state["after"]["heldout"]["exact"], abs_tol=5e-4)
    # Two sessions of one step each (--max-steps 1), out of the steps the plan gave the reader.
    assert re.search(r"^\| reader \| 2 / \d+ \|", card, re.M) and "sudo deploy/update.sh --models" in card


def test_a_rerun_with_other_options_is_refused(finetuned: SimpleNamespace, capsys: pytest.CaptureFixture) -> None:
    from trainer.cli import main

    argv = [a if a != "0.3" else "0.5" for a in finetuned.argv]  # another --holdout
    assert main(argv) == 2
    assert "--holdout 0.3, not 0.5" in capsys.readouterr().err
    assert main(["finetune", "--data", str(finetuned.boxed), "--out", str(SHIPPED)]) == 2  # never over the models
    assert "would overwrite the starting model set" in capsys.readouterr().err
    bad = finetuned.countries.parent / "bad-countries"
    bad.mkdir(exist_ok=True)
    (bad / "zz.yaml").write_text((finetuned.countries / "zz.yaml").read_text().replace("weight: 5", "weight: -1"))
    for folder, message in ((bad, "zz.yaml: weight: Input should be greater than or equal to 0"),
                            (bad / "missing", "missing: not a folder of country files")):
        argv = ["finetune", "--data", str(finetuned.boxed), "--out", str(bad / "set"), "--countries", str(folder)]
        assert main(argv) == 2
        assert message in capsys.readouterr().err


def test_what_else_a_frame_reads_is_cut_as_no_text_only_where_its_plates_were_placed(tmp_path: Path) -> None:
    """A sign read in a labelled frame becomes a crop labelled with no text; a read overlapping the plate, a read
    like the label, and every read of a frame whose plate was not found stay out."""
    from edge.detect import Detection
    from edge.pipeline import FrameReads, Pipeline, PlateRead, SearchCounts
    from trainer.finetune import NEGATIVES_PER_FRAME, Row, box_quad, cut_reader_crops, row_label

    def read(text: str, box: tuple[float, float, float, float]) -> PlateRead:
        return PlateRead(text, text, None, None, 0.9, Detection(box_quad(box), box, 0.9))

    frame_reads = [read("AB123CD", (100, 100, 220, 130)),   # the plate itself
                   read("OPEN24", (300, 20, 420, 50)),       # a sign: no plate
                   read("AB123CO", (300, 200, 420, 230)),    # like the label: maybe the plate seen twice
                   *[read(f"SIGN{k}", (20 + 60 * k, 300, 70 + 60 * k, 320)) for k in range(NEGATIVES_PER_FRAME)]]

    class Frames(Pipeline):
        def run(self, image: np.ndarray, frame: int | None = None) -> FrameReads:
            return FrameReads(frame_reads, SearchCounts())

    base = Pipeline.from_dir(SHIPPED)
    pipeline = Frames(base.detector, base.reader)
    image = np.full((400, 480, 3), 128, np.uint8)
    cv2.imwrite(str(tmp_path / "boxed.jpg"), image)
    cv2.imwrite(str(tmp_path / "lost.jpg"), image)
    rows = [Row(tmp_path, "boxed.jpg", "AB123CD", (100, 100, 220, 130), 2),
            Row(tmp_path, "lost.jpg", "ZZ999ZZ", None, 3)]  # no read close to it: the frame is left alone
    skipped: Counter[str] = Counter()
    crops = cut_reader_crops(rows, pipeline, per_plate=2, seed=0, skipped=skipped, notes=[], progress=False,
                             per_negative=3)
    assert skipped == Counter({"no read close to the label": 1})
    assert crops.texts == ["AB123CD"]
    assert crops.negatives == 3 * NEGATIVES_PER_FRAME  # the sign and the first signs of the row, up to the cap
    no_text = row_label("", "")
    assert sum((y == no_text).all() for y in crops.y) == crops.negatives and len(crops.x) == 2 + crops.negatives
    none = cut_reader_crops(rows[:1], pipeline, per_plate=2, seed=0, skipped=Counter(), notes=[], progress=False)
    assert none.negatives == 0 and len(none.x) == 2


def test_a_read_like_the_labelled_plates_formats_is_taken_for_an_unlabelled_plate_not_cut_as_no_text(
        tmp_path: Path) -> None:
    """A frame's labels may leave out the plates of parked cars behind the labelled one: a read within one edit of
    a format holding a good share of the labelled plates is not taught as no text; a sign still is."""
    from edge.detect import Detection
    from edge.formats import COUNTRIES_DIR, FormatSet
    from edge.pipeline import FrameReads, Pipeline, PlateRead, SearchCounts
    from trainer.finetune import Row, box_quad, camera_plate, cut_reader_crops

    def read(text: str, box: tuple[float, float, float, float]) -> PlateRead:
        return PlateRead(text, text, None, None, 0.9, Detection(box_quad(box), box, 0.9))

    frame_reads = [read("IEP1025", (100, 100, 220, 130)),  # the labelled plate
                   read("YKH3333", (300, 20, 420, 50)),    # a parked car's Greek plate
                   read("KMA904", (0, 200, 90, 230)),      # one cut at the frame's edge
                   read("OPEN24", (300, 300, 420, 330))]   # a sign

    class Frames(Pipeline):
        def run(self, image: np.ndarray, frame: int | None = None) -> FrameReads:
            return FrameReads(frame_reads, SearchCounts())

    base = Pipeline.from_dir(SHIPPED)
    cv2.imwrite(str(tmp_path / "street.jpg"), np.full((400, 480, 3), 128, np.uint8))
    rows = [Row(tmp_path, "street.jpg", "IEP1025", (100, 100, 220, 130), 2)]
    formats = FormatSet.load(COUNTRIES_DIR)
    greek = formats.learn_prior(["IEP1025", "ZKK4410", "YHB2011", "NIK5555", "ZG1234AB"])
    assert greek.shares["gr"] > 0.5
    crops = cut_reader_crops(rows, Frames(base.detector, base.reader), per_plate=2, seed=0, skipped=Counter(),
                             notes=[], progress=False, per_negative=3, plate_like=camera_plate(formats, greek))
    assert (crops.negatives, crops.unlabelled_plates) == (3, 2)  # the sign's 3 crops; the two plates left out
    # Without a prior, nothing is taken for a plate: every other read is cut as no text.
    crops = cut_reader_crops(rows, Frames(base.detector, base.reader), per_plate=2, seed=0, skipped=Counter(),
                             notes=[], progress=False, per_negative=3, plate_like=camera_plate(formats, None))
    assert (crops.negatives, crops.unlabelled_plates) == (9, 0)


def test_a_boxed_plate_is_also_cut_around_the_box_the_search_read_it_in(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every second crop of a plate with a labelled box comes from the box the starting search read it in (the
    device's reader reads that one); a read elsewhere in the frame is not taken for it."""
    import trainer.finetune as ft
    from edge.detect import Detection
    from edge.pipeline import FrameReads, Pipeline, PlateRead, SearchCounts

    def read(text: str, box: tuple[float, float, float, float]) -> PlateRead:
        return PlateRead(text, text, None, None, 0.9, Detection(ft.box_quad(box), box, 0.9))

    label, searched, sign = (100.0, 100.0, 220.0, 130.0), (96.0, 98.0, 226.0, 134.0), (300.0, 10.0, 390.0, 40.0)

    class Frames(Pipeline):
        def run(self, image: np.ndarray, frame: int | None = None) -> FrameReads:
            return FrameReads([read("STOP", sign), read("AB12CD", searched)], SearchCounts())

    base = Pipeline.from_dir(SHIPPED)
    cut: list[tuple[float, ...]] = []
    crop = base.reader.crop
    monkeypatch.setattr(base.reader, "crop", lambda image, quad: cut.append(
        tuple(float(v) for v in (*quad.min(axis=0), *quad.max(axis=0)))) or crop(image, quad))
    monkeypatch.setattr(ft, "jitter_quad", lambda rng, quad, amount: quad)
    cv2.imwrite(str(tmp_path / "car.jpg"), np.full((300, 400, 3), 128, np.uint8))
    rows = [ft.Row(tmp_path, "car.jpg", "AB123CD", label, 2)]
    crops = ft.cut_reader_crops(rows, Frames(base.detector, base.reader), per_plate=4, seed=0,
                                skipped=Counter(), notes=[], progress=False, per_negative=0)
    assert len(crops.x) == 4 and crops.texts == ["AB123CD"]
    # The first cut is the unaugmented validation crop (the label's box); then the two boxes in turn.
    assert cut[:5] == [label, label, searched, label, searched]
    assert ft.boxed([read("STOP", sign)], label) is None


def test_the_reader_plan_stops_at_its_epochs_however_much_time_is_left(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    import trainer.finetune as F

    monkeypatch.setattr(F, "measure_step_seconds", lambda *a, **k: 0.5)
    ft = F.Finetune(F.Options(data=[tmp_path], out=tmp_path / "out"))
    ft.state = {"prep": {"reader": {"samples": 6464, "validation": 64},
                         "detector": {"samples": 1616, "validation": 16}}}
    # 100 steps an epoch at 0.5 s: an hour would hold 70 epochs; the reader stops at 10, the detector does not.
    assert ft._plan("reader", 3600)["epochs"] == F.READER_EPOCHS == 10
    assert ft._plan("detector", 3600)["epochs"] == 71
    assert ft._plan("reader", 200)["epochs"] == 3  # less time than 10 epochs take: the time decides
    ft.opts.epochs = 3
    assert ft._plan("reader", 3600)["epochs"] == 3
    with pytest.raises(ValueError, match="--epochs 0"):
        F.Options(data=[tmp_path], out=tmp_path / "o", epochs=0).check()


def test_a_plate_no_chosen_read_matches_is_found_in_the_box_the_search_read_it_in() -> None:
    """Without a labelled box, a plate is placed at the chosen read closest to its label; where none is close, at
    the closest of every box the search read (a whole-frame box that read the plate, beside a zoomed fragment
    that was chosen); where none of those is close either, nowhere."""
    from edge.detect import Detection
    from edge.formats import PlateText
    from edge.pipeline import FrameReads, PlateRead, SearchCounts
    from trainer.finetune import box_quad, locate

    def text(t: str) -> PlateText:
        return PlateText(t, None, None, (0.9,) * len(t), t)

    plate, fragment, sign = (100.0, 100.0, 220.0, 130.0), (160.0, 102.0, 218.0, 128.0), (300.0, 10.0, 390.0, 40.0)
    chosen = PlateRead("JD21", "JD21", "de", "DE", 0.85, Detection(box_quad(fragment), fragment, 0.9))
    boxes = ((box_quad(sign), text("STOP")), (box_quad(plate), text("325J521")), (box_quad(fragment), text("JD21")))
    found = FrameReads([chosen], SearchCounts(), boxes)
    np.testing.assert_array_equal(locate(found, "325J521"), box_quad(plate))
    np.testing.assert_array_equal(locate(found, "JD21"), box_quad(fragment))  # a chosen read that is close first
    assert locate(found, "ZZ999ZZ") is None
    assert locate(FrameReads([], SearchCounts()), "325J521") is None

