"""Camera effects: geometry (with quads carried along), blur, light, colour, noise, JPEG, resolution."""
from __future__ import annotations

import cv2
import numpy as np


def warp_points(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 3x3 homography to (N,2) points."""
    return cv2.perspectiveTransform(pts.reshape(-1, 1, 2).astype(np.float64), h).reshape(-1, 2).astype(np.float32)


def random_homography(rng: np.random.Generator, w: int, h: int, max_rot: float = 15.0,
                      jitter: float = 0.06) -> np.ndarray:
    """Roll about the centre plus corner-jitter perspective, zoomed in so no border shows."""
    ang = float(np.clip(rng.normal(0, max_rot / 2.5), -max_rot, max_rot))
    rot = np.vstack([cv2.getRotationMatrix2D((w / 2, h / 2), ang, 1.0), [0, 0, 1]])
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    dst = src + rng.uniform(-jitter, jitter, (4, 2)).astype(np.float32) * np.array([w, h], np.float32)
    hom = rot @ cv2.getPerspectiveTransform(src, dst)
    for _ in range(12):  # grow until every output corner maps back inside the source image
        back = warp_points(np.linalg.inv(hom), src)
        if (back >= -0.5).all() and (back[:, 0] <= w + 0.5).all() and (back[:, 1] <= h + 0.5).all():
            break
        zoom = np.array([[1.06, 0, -0.03 * w], [0, 1.06, -0.03 * h], [0, 0, 1]])
        hom = zoom @ hom
    return hom


def geometric(rng: np.random.Generator, img: np.ndarray, quads: list[np.ndarray], max_rot: float = 15.0,
              jitter: float = 0.06) -> tuple[np.ndarray, list[np.ndarray]]:
    """Warp the whole image; quads follow. Falls back to no warp if a plate would leave the frame."""
    h, w = img.shape[:2]
    for _ in range(3):
        hom = random_homography(rng, w, h, max_rot, jitter)
        moved = [warp_points(hom, q) for q in quads]
        if all(inside(q, w, h) for q in moved):
            return cv2.warpPerspective(img, hom, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE), moved
        max_rot, jitter = max_rot / 2, jitter / 2
    return img, quads


def inside(q: np.ndarray, w: int, h: int, margin: float = 1.0) -> bool:
    return bool((q[:, 0] >= margin).all() and (q[:, 0] <= w - 1 - margin).all()
                and (q[:, 1] >= margin).all() and (q[:, 1] <= h - 1 - margin).all())


def blur(rng: np.random.Generator, img: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Motion, defocus or plain gaussian blur (or none); ``scale`` is pixels per reference pixel."""
    r = rng.random()
    if r < 0.2:  # motion
        k = max(3, int(rng.uniform(3, 9) * scale) | 1)
        kern: np.ndarray = np.zeros((k, k), np.float32)
        kern[k // 2] = 1.0
        rot = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), rng.uniform(0, 180), 1.0)
        kern = cv2.warpAffine(kern, rot, (k, k))
        return cv2.filter2D(img, -1, kern / max(kern.sum(), 1e-6))
    if r < 0.35:  # defocus disc
        rad = max(1, round(rng.uniform(1, 2.5) * scale))
        kern = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rad + 1, 2 * rad + 1)).astype(np.float32)
        return cv2.filter2D(img, -1, kern / kern.sum())
    if r < 0.7:
        return cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.3) * scale)
    return img


def photometric(rng: np.random.Generator, img: np.ndarray, noise: float = 1.0) -> np.ndarray:
    """Light level, gamma, contrast, colour cast, IR monochrome, sensor noise times ``noise`` (uint8 in, uint8 out)."""
    f: np.ndarray = img.astype(np.float32)
    if rng.random() < 0.1:  # IR camera: monochrome, plates bright
        f[:] = (f @ np.array([0.2, 0.5, 0.3], np.float32))[..., None]
    elif rng.random() < 0.5:
        f *= (1 + rng.normal(0, 0.08, 3)).astype(np.float32)
    if rng.random() < 0.25:  # dusk / low light
        f *= rng.uniform(0.25, 0.6)
    else:
        f = f * rng.uniform(0.75, 1.25) + rng.uniform(-25, 25)
    f = np.clip(f, 0, 255)
    if rng.random() < 0.2:  # haze, veiling glare, a dirty lens: everything washes towards a light grey
        a = rng.uniform(0.15, 0.55)
        f = f * (1 - a) + a * rng.uniform(140, 230)
    gamma = rng.uniform(0.7, 1.4)
    if abs(gamma - 1) > 0.05:
        f = 255 * (f / 255) ** gamma
    sigma = (rng.uniform(0, 9) if rng.random() < 0.7 else 0.0) * noise
    if sigma > 0.5:
        f += rng.standard_normal(f.shape[:2], dtype=np.float32)[..., None] * sigma
        f += rng.standard_normal(f.shape, dtype=np.float32) * (sigma * 0.4)
    return np.clip(f, 0, 255).astype(np.uint8)


def jpeg(rng: np.random.Generator, img: np.ndarray, lo: int = 20, hi: int = 95) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(lo, hi + 1))])
    out = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else None
    return img if out is None else out


def apply_camera(rng: np.random.Generator, img: np.ndarray, quads: list[np.ndarray], warp: bool = True,
                 res_factor: float = 1.0, camera_scale: float = 1.0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Full camera chain. With ``res_factor`` < 1 the sensor effects happen at the reduced resolution.

    ``camera_scale`` < 1: this image stands for a camera frame 1/camera_scale
    times as wide, shrunk (a 1080p frame letterboxed for the detector). Blur,
    noise and JPEG blocks happened at the camera's resolution and shrank with
    the frame, so they are scaled down with it: a far plate in a sharp HD
    frame stays crisp, a few pixels tall.
    """
    if warp and rng.random() < 0.7:
        img, quads = geometric(rng, img, quads)
    h, w = img.shape[:2]
    if res_factor < 0.95:
        img = cv2.resize(img, (max(2, round(w * res_factor)), max(2, round(h * res_factor))),
                         interpolation=cv2.INTER_AREA)
    img = blur(rng, img, scale=min(1.0, max(res_factor, 0.5)) * camera_scale)
    img = photometric(rng, img, noise=camera_scale)
    img = jpeg(rng, img, lo=round(20 + 60 * (1.0 - camera_scale)))
    if img.shape[:2] != (h, w):
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    return img, quads
