"""Fast checks of the synthetic data generator (texts, determinism, geometry, preview)."""
from __future__ import annotations

import numpy as np
import pytest

from edge.plates import ALPHABET
from trainer.synth import catalogue, make_plate_patch, make_scene, preview_grid, random_text, render_plate
from trainer.synth.__main__ import main as cli_main
from trainer.synth.text import row_texts


def test_texts_match_their_format_for_every_format_of_every_country() -> None:
    rng = np.random.default_rng(123)
    cat = catalogue()
    for fmt in cat.names:
        for _ in range(30):
            text, name = random_text(rng, fmt)
            assert name == fmt
            assert cat.entry(fmt).rule.regex.match(text), (fmt, text)
            assert len(text) <= 10 and set(text) <= set(ALPHABET)


def test_the_draw_follows_country_weights_and_format_shares() -> None:
    rng = np.random.default_rng(0)
    cat = catalogue()
    names = [random_text(rng)[1] for _ in range(4000)]
    countries = [cat.entry(n).country.code for n in names]
    total = sum(c.weight for c in cat.countries.values())
    for code in ("US", "BR", "DE"):
        want = cat.countries[code].weight / total
        assert abs(countries.count(code) / len(names) - want) < 0.25 * want + 0.01, code
    assert len(set(countries)) >= 40  # every country takes part


def test_letters_left_out_by_a_format_never_appear() -> None:
    """GB's random letters have no I, Q or Z; Croatian suffixes have no O, Q, W, X, Y; US serials have no O."""
    rng = np.random.default_rng(5)
    for _ in range(300):
        gb = random_text(rng, "gb_current")[0]
        assert not set(gb[4:]) & set("IQZ") and gb[0] not in "IQZ"
        hr = random_text(rng, "hr")[0]
        tail = hr[2:].lstrip("0123456789")
        assert tail and not set(tail) & set("OQWXY")
        assert "O" not in random_text(rng, "us_llldddd")[0]


@pytest.mark.parametrize("fmt", ["hr", "gr", "de", "gb_current", "us_dllldd", "br_mercosur", "in", "ru"])
def test_render_plate(fmt: str) -> None:
    rng = np.random.default_rng(1)
    text, _ = random_text(rng, fmt)
    img, rows = render_plate(rng, text, fmt, two_rows=False)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 4 and rows == 1
    assert img[img.shape[0] // 2, img.shape[1] // 2, 3] == 255 and img[0, 0, 3] < 128
    two, rows2 = render_plate(rng, text, fmt, two_rows=True)
    two_row_kind = catalogue().entry(fmt).spec.two_row_share > 0
    assert rows2 == (2 if two_row_kind else 1)
    if two_row_kind:
        assert two.shape[1] / two.shape[0] < 2.0
        top, bottom = row_texts(text, fmt)
        assert top and bottom and top + bottom == text


def test_motorcycle_plates_are_always_two_rows() -> None:
    rng = np.random.default_rng(2)
    text, _ = random_text(rng, "br_mercosur_moto")
    assert render_plate(rng, text, "br_mercosur_moto", two_rows=False)[1] == 2


def _same(a, b) -> bool:
    return np.array_equal(a.image, b.image) and len(a.plates) == len(b.plates) and all(
        p.text == q.text and p.format == q.format and np.array_equal(p.quad, q.quad)
        for p, q in zip(a.plates, b.plates, strict=True))


def test_determinism() -> None:
    assert _same(make_scene(np.random.default_rng(7)), make_scene(np.random.default_rng(7)))
    assert _same(make_plate_patch(np.random.default_rng(7)), make_plate_patch(np.random.default_rng(7)))
    assert not _same(make_scene(np.random.default_rng(7)), make_scene(np.random.default_rng(8)))


def test_scenes_quads_inside() -> None:
    rng = np.random.default_rng(11)
    counts = []
    for _ in range(25):
        s = make_scene(rng, 320, 240, max_plates=3)
        assert s.image.shape == (240, 320, 3) and s.image.dtype == np.uint8
        counts.append(len(s.plates))
        for p in s.plates:
            assert p.quad.shape == (4, 2) and p.quad.dtype == np.float32
            assert (p.quad >= 0).all() and (p.quad[:, 0] < 320).all() and (p.quad[:, 1] < 240).all()
            assert catalogue().entry(p.format).rule.regex.match(p.text) and p.rows in (1, 2)
            # corners come clockwise TL, TR, BR, BL: positive signed area in image coordinates
            x, y = p.quad[:, 0], p.quad[:, 1]
            assert 0.5 * (x @ np.roll(y, -1) - y @ np.roll(x, -1)) > 0
    assert max(counts) <= 3 and sum(counts) > 0
    assert len(make_scene(rng, max_plates=0).plates) == 0


def test_patch_shape_and_quad() -> None:
    rng = np.random.default_rng(3)
    for size in ((256, 128), (160, 64)):
        s = make_plate_patch(rng, *size)
        assert s.image.shape == (size[1], size[0], 3) and s.image.dtype == np.uint8 and len(s.plates) == 1
        q = s.plates[0].quad
        assert (q >= 0).all() and (q[:, 0] < size[0]).all() and (q[:, 1] < size[1]).all()
        assert 0.3 * size[0] < q[:, 0].max() - q[:, 0].min() < size[0]


def test_patches_know_how_tall_the_camera_saw_the_plate() -> None:
    """Patches are shot at 12-80 px plate heights (taller for US and two-row plates) and enlarged back."""
    rng = np.random.default_rng(5)
    seen = []
    for _ in range(60):
        p = make_plate_patch(rng).plates[0]
        quad_h = float(np.linalg.norm(p.quad[3] - p.quad[0]))
        assert p.seen_height is not None and p.seen_height <= quad_h + 1e-3
        seen.append(p.seen_height)
    assert min(seen) > 11.9 and max(seen) <= 80 * 1.7 * 1.6
    assert min(seen) < 25 < max(seen)  # a spread of sizes, not one


def test_frames_of_hd_cameras_keep_their_detail() -> None:
    """Blur, noise and JPEG happen at the camera's resolution: a frame standing for a larger one stays sharper."""
    import cv2

    from trainer.synth.camera import apply_camera

    text = np.full((120, 160, 3), 200, np.uint8)
    for y in range(10, 110, 12):  # rows of thin dark strokes, like small characters
        cv2.putText(text, "AB12 CDE", (4, y), cv2.FONT_HERSHEY_PLAIN, 0.8, (20, 20, 20), 1)

    def detail(camera_scale: float) -> float:
        out = [apply_camera(np.random.default_rng(i), text, [], warp=False, camera_scale=camera_scale)[0]
               for i in range(30)]
        return float(np.mean([np.abs(cv2.Laplacian(cv2.cvtColor(o, cv2.COLOR_BGR2GRAY), cv2.CV_32F)).mean()
                              for o in out]))

    assert detail(0.3) > 1.2 * detail(1.0)


def test_preview_writes_png(tmp_path) -> None:
    out = tmp_path / "grid.png"
    preview_grid(np.random.default_rng(0), out, "scenes", 2)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cli_main(["preview", "--kind", "plates", "--n", "3", "--out", str(tmp_path / "p.png")])
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_user_background_photos_are_used(tmp_path) -> None:
    import cv2

    from trainer.synth.scene import background, list_backgrounds

    (tmp_path / "sub").mkdir()
    cv2.imwrite(str(tmp_path / "sub" / "street.png"), np.full((60, 90, 3), (10, 200, 30), np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    photos = list_backgrounds(tmp_path)
    assert photos == (str(tmp_path / "sub" / "street.png"),)
    rng = np.random.default_rng(0)
    greens = [np.allclose(background(rng, 48, 64, photos).mean((0, 1)), (10, 200, 30)) for _ in range(40)]
    assert 15 < sum(greens) < 40  # most backgrounds are the photo, some stay procedural
    assert make_scene(rng, 128, 96, photos=photos).image.shape == (96, 128, 3)


def test_background_folder_errors_name_the_folder(tmp_path, capsys) -> None:
    from trainer.cli import main as trainer_main

    code = trainer_main(["synth", "data", "--kind", "detector", "--n", "2", "--backgrounds", str(tmp_path),
                         "--out", str(tmp_path / "d.npz")])
    assert code == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "no background images" in err
    assert not (tmp_path / "d.npz").exists()


def test_plate_surroundings_stay_within_two_plate_widths_of_the_plate() -> None:
    """Recess, frame, trim, handle and creases belong to the car rear around the plate, not across the frame."""
    from trainer.synth.scene import _plate_surround

    cx, cy, pw, ph = 300.0, 150.0, 60.0, 30.0
    near = 0
    for seed in range(40):
        img = np.full((300, 600, 3), 128.0, np.float32)
        _plate_surround(np.random.default_rng(seed), img, np.float32([200, 200, 200]), cx, cy, pw, ph, [])
        ys, xs = np.nonzero(np.abs(img - 128.0).sum(axis=-1) > 1.0)
        if len(xs):
            assert xs.min() >= cx - 2.1 * pw and xs.max() <= cx + 2.1 * pw, seed
            assert ys.min() >= cy - 2.1 * ph and ys.max() <= cy + 2.1 * ph, seed
            near += 1
    assert near >= 30  # most car rears have something around the plate
