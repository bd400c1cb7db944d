"""tools/crossval.py: the halves by plate text, the folds' commands and the report (no training here)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tools.crossval import half_of, main, markdown, split_set, summarize

ROWS = [
    ("a.jpg", "AB123", "10\t10\t50\t20"),
    ("b.jpg", "ab 123", "5\t5\t40\t15"),  # the same plate as a.jpg, written another way
    ("c.jpg", "ZG1234XY", ""),
    ("d.jpg", "7777", ""),
    ("sub/e.jpg", "QQ999", ""),
    ("f.jpg", "KK111", ""),
    ("f.jpg", "MM222", ""),  # a second plate in f.jpg
    ("g.jpg", "-", ""),  # no text: left out
]


@pytest.fixture
def labelled(tmp_path: Path) -> Path:
    folder = tmp_path / "set"
    (folder / "sub").mkdir(parents=True)
    lines = ["file\ttext\tx1\ty1\tx2\ty2"]
    for name, text, box in ROWS:
        (folder / name).write_bytes(name.encode())  # stands for the image: only links are made to it
        lines.append("\t".join([name, text, *box.split("\t")]) if box else f"{name}\t{text}")
    (folder / "labels.tsv").write_text("\n".join(lines) + "\n")
    return folder


def test_a_text_goes_to_half_a_when_its_sha1_starts_with_0_to_7() -> None:
    for text in ("AB123", "ZG1234XY", "7777", "QQ999", "KK111", "MM222"):
        first = hashlib.sha1(text.encode()).hexdigest()[0]
        assert half_of(text) == ("A" if first in "01234567" else "B"), text
    assert half_of("ab-123") == half_of("AB123")  # normalized as run_eval.py compares texts
    halves = {half_of(f"P{i:05d}") for i in range(200)}
    assert halves == {"A", "B"}


def test_the_halves_are_labelled_folders_split_by_text(labelled: Path, tmp_path: Path) -> None:
    out = tmp_path / "halves"
    info = split_set(labelled, out)
    texts = {}
    for h in ("A", "B"):
        lines = (out / h / "labels.tsv").read_text().splitlines()
        assert lines[0] == "file\ttext\tx1\ty1\tx2\ty2"
        rows = [line.split("\t") for line in lines[1:]]
        texts[h] = {r[1].upper().replace(" ", "") for r in rows}
        assert all(half_of(r[1]) == h for r in rows)
        for r in rows:  # each row's image is there, a link to the set's own file
            link = out / h / r[0]
            assert link.is_symlink() and link.resolve() == (labelled / r[0]).resolve()
            assert link.read_bytes() == r[0].encode()
        assert set(line for line in lines[1:]) <= set((labelled / "labels.tsv").read_text().splitlines())
    assert not texts["A"] & texts["B"]
    assert texts["A"] | texts["B"] == {"AB123", "ZG1234XY", "7777", "QQ999", "KK111", "MM222"}
    assert info["rows"]["A"] + info["rows"]["B"] == 7 and info["rows_without_text"] == 1
    assert info["images_in_both"] == int(half_of("KK111") != half_of("MM222"))
    # Split again (a rerun): the same halves, the links left as they are.
    assert split_set(labelled, out) == info


def test_a_malformed_row_is_an_error_naming_the_line(tmp_path: Path) -> None:
    (tmp_path / "labels.tsv").write_text("file\ttext\nonlyafile\n")
    with pytest.raises(ValueError, match=r"labels.tsv:2: expected file"):
        split_set(tmp_path, tmp_path / "halves")


def test_the_report_gives_each_fold_and_their_mean() -> None:
    split = {"set": "s", "rows": {"A": 10, "B": 12}}
    shipped = {"A": {"images": 10, "exact": 0.5, "lenient": 0.6, "det_recall": None},
               "B": {"images": 12, "exact": 0.7, "lenient": 0.7, "det_recall": 0.9}}
    folds = {"A": {"finetuned": {"images": 12, "exact": 0.9, "lenient": 0.95, "det_recall": 0.92}, "wall_s": 1500},
             "B": {"finetuned": {"images": 10, "exact": 0.8, "lenient": 0.8, "det_recall": None}, "wall_s": 1400}}
    report = summarize(split, shipped, folds)
    a_to_b, b_to_a = report["folds"]
    assert (a_to_b["fold"], a_to_b["finetuned_exact"], a_to_b["shipped_exact"]) == ("A->B", 0.9, 0.7)
    assert (b_to_a["fold"], b_to_a["finetuned_exact"], b_to_a["shipped_exact"]) == ("B->A", 0.8, 0.5)
    assert report["mean"]["finetuned_exact"] == pytest.approx(0.85)
    assert report["mean"]["shipped_exact"] == pytest.approx(0.6)
    assert report["mean"]["gain_exact"] == pytest.approx(0.25) and report["mean"]["folds"] == 2
    table = markdown(report)
    assert "| A->B | B | 12 | 0.900 | 0.700 | 0.200 |" in table and "| mean of 2 | | | 0.850 | 0.600 | 0.250 |" in table
    # One fold run so far: its row, and the mean of that one.
    one = summarize(split, shipped, {"A": folds["A"]})
    assert len(one["folds"]) == 1 and one["mean"]["folds"] == 1


def test_one_fold_fine_tunes_on_its_half_and_is_scored_on_the_other(labelled: Path, tmp_path: Path) -> None:
    """The commands of fold A, as run (the trainer and the scorer stand in; their outputs are written here)."""
    calls: list[list[str]] = []
    run_eval = tmp_path / "run_eval.py"
    run_eval.write_text("")

    def runner(argv: list[str]) -> int:
        calls.append(argv)
        if argv[1:4] == ["-m", "trainer", "finetune"]:
            models = Path(argv[argv.index("--out") + 1])
            (models / "work").mkdir(parents=True)
            (models / "reader.tflite").write_bytes(b"")
            (models / "work" / "finetune.json").write_text(json.dumps(
                {"trained": {"reader": {"global_step": 900, "steps_planned": 900, "finished": True}},
                 "sessions": [{"wall_s": 1490.0}]}))
        else:
            half = Path(argv[argv.index("--set") + 1])
            fine = "fold_A" in argv[argv.index("--cmd") + 1]
            Path(argv[argv.index("--out") + 1]).write_text(json.dumps(
                {half.name: {"images": 3, "exact": 1.0 if fine else 0.5, "lenient": 1.0, "det_recall": None}}))
        return 0

    out = tmp_path / "cv"
    code = main(["--set", str(labelled), "--out", str(out), "--fold", "A", "--minutes", "3", "--python", "py",
                 "--run-eval", str(run_eval), "--finetune-arg=--detector"], runner=runner)
    assert code == 0
    finetune = calls[0]
    assert finetune[:4] == ["py", "-m", "trainer", "finetune"]
    assert finetune[finetune.index("--data") + 1] == str(out / "halves" / "A")
    assert finetune[finetune.index("--out") + 1] == str(out / "fold_A" / "models")
    assert finetune[finetune.index("--minutes") + 1] == "3" and finetune[finetune.index("--holdout") + 1] == "0"
    assert finetune[-1] == "--detector"
    scored = [(Path(c[c.index("--set") + 1]).name, c[c.index("--cmd") + 1]) for c in calls[1:]]
    assert scored[0] == ("B", f"py -m edge read --json --models {out / 'fold_A' / 'models'}")
    assert sorted(h for h, _ in scored[1:]) == ["A", "B"]  # the starting models on both halves
    assert all(cmd.endswith("edge/models") for _, cmd in scored[1:])
    report = json.loads((out / "crossval.json").read_text())
    assert [r["fold"] for r in report["folds"]] == ["A->B"]
    assert report["folds"][0]["finetuned_exact"] == 1.0 and report["folds"][0]["shipped_exact"] == 0.5
    assert (out / "crossval.md").read_text() == markdown(report)
