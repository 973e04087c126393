"""Procedural geometry scenes rendered by ray casting, with EXACT ground truth, and writers of the real formats.

A scene is a textured room (floor, ceiling, walls) with boxes and spheres inside; textures are the photographs
scikit-image ships (``skimage.data``, no download). ``render`` casts one ray per pixel centre through an
OpenCV pinhole camera (x right, y down, z forward) and returns the image, depth (z), the pointmap and the
surface normals in the camera frame, all exact. Pairs of cameras with known relative pose give
correspondences and pointmaps in each other's frame.

The writers lay tiny datasets out in the on-disk formats ``datamodules.geometry`` reads: the NYUv2 labelled
``.mat`` (HDF5 / MATLAB v7.3) + ``splits.mat``, ScanNet scene folders, DSINE normal folders, and image-pair
lists with poses (ScanNet-1500 text format). Every folder they write carries the ``SYNTHETIC.md`` marker; they
refuse folders holding anything they did not write and never overwrite a file.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._owned import claim, fresh

# ------------------------------------------------------------------------------------------- textures
_TEXTURES = ("astronaut", "brick", "chelsea", "coffee", "grass", "gravel", "rocket", "camera", "moon")


@functools.lru_cache(maxsize=None)
def texture(name: str, size: int = 128) -> np.ndarray:
    """A ``(size, size, 3)`` float texture in [0, 1] from ``skimage.data`` (bundled photographs)."""
    import skimage.data
    from skimage.transform import resize

    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    img = img[..., :3].astype(np.float32) / 255.0
    s = min(img.shape[:2])
    img = img[:s, :s]
    return resize(img, (size, size), anti_aliasing=True).astype(np.float32)


# ---------------------------------------------------------------------------------------------- scene
@dataclass
class Plane:
    point: np.ndarray
    normal: np.ndarray
    tex: str
    scale: float = 0.5


@dataclass
class Box:
    lo: np.ndarray
    hi: np.ndarray
    tex: str
    scale: float = 1.0


@dataclass
class Sphere:
    center: np.ndarray
    radius: float
    tex: str


@dataclass
class Scene:
    planes: list[Plane] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    spheres: list[Sphere] = field(default_factory=list)
    light: np.ndarray = field(default_factory=lambda: np.array([0.3, -0.8, -0.5]))


def random_scene(rng: np.random.Generator, textures: tuple[str, ...] | list[str] | None = None) -> Scene:
    """A room (x in [-3, 3], y in [-2, 1] (y down: floor at +1), z up to 6-8) with 1-3 boxes and 0-2 spheres,
    textured with ``textures`` (``skimage.data`` names; default: all of ``_TEXTURES``; the draws from ``rng`` are the
    same for any list, so a split by texture changes only the pixels)."""
    tex = list(textures or _TEXTURES)
    pick = lambda: tex[int(rng.integers(len(tex)))]  # noqa: E731
    back = float(rng.uniform(6.0, 8.0))
    planes = [
        Plane(np.array([0.0, 1.0, 0.0]), np.array([0.0, -1.0, 0.0]), pick()),  # floor
        Plane(np.array([0.0, -2.0, 0.0]), np.array([0.0, 1.0, 0.0]), pick()),  # ceiling
        Plane(np.array([0.0, 0.0, back]), np.array([0.0, 0.0, -1.0]), pick()),  # back wall
        Plane(np.array([-3.0, 0.0, 0.0]), np.array([1.0, 0.0, 0.0]), pick()),  # left wall
        Plane(np.array([3.0, 0.0, 0.0]), np.array([-1.0, 0.0, 0.0]), pick()),  # right wall
        Plane(np.array([0.0, 0.0, -3.0]), np.array([0.0, 0.0, 1.0]), pick()),  # wall behind the cameras
    ]
    boxes = []
    for _ in range(int(rng.integers(1, 4))):
        size = rng.uniform(0.4, 1.2, 3)
        cx, cz = rng.uniform(-2.0, 2.0), rng.uniform(2.5, back - 1.0)
        lo = np.array([cx - size[0] / 2, 1.0 - size[1], cz - size[2] / 2])
        boxes.append(Box(lo, lo + size, pick()))
    spheres = [Sphere(np.array([rng.uniform(-2, 2), rng.uniform(-1.0, 0.3), rng.uniform(3.0, back - 1.5)]),
                      float(rng.uniform(0.3, 0.7)), pick()) for _ in range(int(rng.integers(0, 3)))]
    light = rng.normal(size=3) * 0.3 + np.array([0.3, -0.8, -0.5])
    return Scene(planes, boxes, spheres, light / np.linalg.norm(light))


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, -1.0, 0.0])) -> np.ndarray:
    """OpenCV camera-to-world ``(4, 4)`` at ``eye`` looking at ``target`` (y down)."""
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(-up, z)  # right-handed x right, y down, z forward
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([x, y, z], 1)
    c2w[:3, 3] = eye
    return c2w


def intrinsics(h: int, w: int, fov_deg: float = 60.0) -> np.ndarray:
    """Pinhole ``K`` with the given horizontal field of view, principal point at the image centre."""
    f = 0.5 * w / np.tan(np.radians(fov_deg) / 2)
    return np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])


def random_cameras(rng: np.random.Generator, n: int = 2, baseline: tuple[float, float] = (0.2, 0.6)) -> list:
    """``n`` camera-to-world poses near the origin looking into the room, with overlapping views."""
    target = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.3, 0.3), 5.0])
    eye0 = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.4, 0.2), rng.uniform(-0.5, 0.5)])
    poses = [look_at(eye0, target)]
    for _ in range(n - 1):
        d = rng.normal(size=3)
        d = d / np.linalg.norm(d) * rng.uniform(*baseline)
        tgt = target + rng.normal(size=3) * np.array([0.6, 0.3, 0.5])
        poses.append(look_at(eye0 + d, tgt))
    return poses


# --------------------------------------------------------------------------------------------- render
def _shade(scene: Scene, names: list[str], tid: np.ndarray, uv: np.ndarray, n_world: np.ndarray) -> np.ndarray:
    col = np.zeros(uv.shape[:-1] + (3,), np.float32)
    for i, name in enumerate(names):
        m = tid == i
        if not m.any():
            continue
        t = texture(name)
        s = t.shape[0]
        ij = np.floor(np.mod(uv[m], 1.0) * s).astype(int).clip(0, s - 1)
        col[m] = t[ij[:, 1], ij[:, 0]]
    lam = np.clip(-(n_world @ scene.light), 0.0, 1.0)[..., None]
    return np.clip(col * (0.45 + 0.55 * lam), 0.0, 1.0)


def render(scene: Scene, K: np.ndarray, c2w: np.ndarray, h: int, w: int) -> dict[str, np.ndarray]:
    """Ray-cast ``scene`` from a pinhole camera.

    Returns:
        ``image`` (h, w, 3) float32 in [0, 1]; ``depth`` (h, w) z in the camera frame (0 = no hit);
        ``pts3d`` (h, w, 3) camera-frame points; ``normal`` (h, w, 3) unit camera-frame normals facing the
        camera; ``valid`` (h, w) bool; ``pts3d_world`` (h, w, 3).
    """
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    rays_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)  # z = 1
    R, o = c2w[:3, :3], c2w[:3, 3]
    d = rays_cam @ R.T  # world directions; the ray parameter t equals the camera-frame depth
    best = np.full((h, w), np.inf)
    nrm = np.zeros((h, w, 3))
    uv = np.zeros((h, w, 2))
    tid = np.full((h, w), -1)
    names: list[str] = []

    def take(t: np.ndarray, n: np.ndarray, uv_: np.ndarray, name: str) -> None:
        m = (t > 1e-6) & (t < best)
        if not m.any():
            return
        if name not in names:
            names.append(name)
        best[m] = t[m]
        nrm[m] = n[m] if n.ndim == 3 else n
        uv[m] = uv_[m]
        tid[m] = names.index(name)

    with np.errstate(divide="ignore", invalid="ignore"):
        for p in scene.planes:
            den = d @ p.normal
            t = np.where(np.abs(den) > 1e-9, ((p.point - o) @ p.normal) / den, np.inf)
            x = o + t[..., None] * d
            a = np.cross(p.normal, [0.0, 0.0, 1.0] if abs(p.normal[2]) < 0.9 else [1.0, 0.0, 0.0])
            a = a / np.linalg.norm(a)
            b = np.cross(p.normal, a)
            take(t, p.normal, np.stack([x @ a, x @ b], -1) * p.scale, p.tex)
        for bx in scene.boxes:
            t1, t2 = (bx.lo - o) / d, (bx.hi - o) / d
            tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
            tn, tf = tmin.max(-1), tmax.min(-1)
            hit = (tn <= tf) & (tn > 1e-6)
            t = np.where(hit, tn, np.inf)
            axis = tmin.argmax(-1)
            n = np.zeros((h, w, 3))
            np.put_along_axis(n, axis[..., None], -np.sign(np.take_along_axis(d, axis[..., None], -1)), -1)
            x = o + np.where(np.isfinite(t), t, 0)[..., None] * d
            rel = (x - bx.lo) / (bx.hi - bx.lo)
            uvb = np.where(axis[..., None] == 0, rel[..., [2, 1]], np.where(axis[..., None] == 1, rel[..., [0, 2]],
                                                                          rel[..., [0, 1]]))
            take(t, n, uvb * bx.scale, bx.tex)
        for sp in scene.spheres:
            oc = o - sp.center
            bq = d @ oc
            aq = (d * d).sum(-1)
            disc = bq**2 - aq * (oc @ oc - sp.radius**2)
            t = np.where(disc >= 0, (-bq - np.sqrt(np.maximum(disc, 0))) / aq, np.inf)
            x = o + np.where(np.isfinite(t), t, 0)[..., None] * d
            n = (x - sp.center) / sp.radius
            uvs = np.stack([np.arctan2(n[..., 0], n[..., 2]) / (2 * np.pi) + 0.5, np.arccos(np.clip(n[..., 1], -1, 1))
                            / np.pi], -1)
            take(t, n, uvs * 2.0, sp.tex)
    valid = np.isfinite(best)
    depth = np.where(valid, best, 0.0)
    pts = rays_cam * depth[..., None]
    n_cam = nrm @ R  # world -> camera: R^T n
    facing = (n_cam * rays_cam).sum(-1) > 0
    n_cam[facing] *= -1
    n_cam = n_cam / np.linalg.norm(n_cam, axis=-1, keepdims=True).clip(1e-12)
    n_world = n_cam @ R.T
    image = _shade(scene, names, tid, uv, n_world)
    image[~valid] = 0
    return {"image": image.astype(np.float32), "depth": depth.astype(np.float32), "pts3d": pts.astype(np.float32),
            "normal": np.where(valid[..., None], n_cam, 0).astype(np.float32), "valid": valid,
            "pts3d_world": (pts @ R.T + o).astype(np.float32)}


def render_views(seed: int, n_views: int = 2, h: int = 64, w: int = 64, fov_deg: float = 60.0,
                 textures: tuple[str, ...] | list[str] | None = None) -> list[dict]:
    """A random scene (textured with ``textures``, default all) seen from ``n_views`` cameras; each view also carries
    ``K`` and ``c2w``."""
    rng = np.random.default_rng(seed)
    scene = random_scene(rng, textures)
    K = intrinsics(h, w, fov_deg)
    views = []
    for c2w in random_cameras(rng, n_views):
        v = render(scene, K, c2w, h, w)
        v.update(K=K.astype(np.float32), c2w=c2w.astype(np.float32))
        views.append(v)
    return views


def pair_sample(v1: dict, v2: dict) -> dict[str, np.ndarray]:
    """The pair dict the geometry datamodules produce (numpy; images CHW in [-1, 1])."""
    rel = np.linalg.inv(v1["c2w"]) @ v2["c2w"]  # camera-2 -> camera-1
    return {
        "img1": (v1["image"].transpose(2, 0, 1) * 2 - 1).astype(np.float32),
        "img2": (v2["image"].transpose(2, 0, 1) * 2 - 1).astype(np.float32),
        "depth1": v1["depth"], "depth2": v2["depth"], "valid1": v1["valid"], "valid2": v2["valid"],
        "pts1": v1["pts3d"], "pts2": v2["pts3d"], "normal1": v1["normal"], "normal2": v2["normal"],
        "K1": v1["K"], "K2": v2["K"], "pose2to1": rel.astype(np.float32),
    }


# -------------------------------------------------------------------------------------------- writers
def nyu_raw_holes(i: int, h: int, w: int) -> np.ndarray:
    """The missing-reading pattern :func:`write_nyuv2_labeled` gives frame ``i`` (True = hole): a block in the
    middle (a dark / specular patch) and the right quarter of rows ``i % 3`` mod 3 (Kinect shadow stripes)."""
    holes = np.zeros((h, w), bool)
    holes[h // 3:h // 2, w // 3:w // 2] = True
    holes[(i % 3)::3, 3 * w // 4:] = True
    return holes


def nyu_mask_holes(h: int, w: int) -> np.ndarray:
    """The invalid region of the optional ``masks.mat`` that :func:`write_nyuv2_labeled` writes: the left 8th."""
    holes = np.zeros((h, w), bool)
    holes[:, : max(1, w // 8) + 1] = True
    return holes


def write_nyuv2_labeled(root: str | os.PathLike, n: int = 6, h: int = 48, w: int = 64, n_test: int = 4,
                        seed: int = 0, raw_holes: bool = True, masks: bool = False) -> Path:
    """Write ``nyu_depth_v2_labeled.mat`` (HDF5 = MATLAB v7.3, NYUv2 variable names and axis order) and
    ``splits.mat`` (MATLAB v5, 1-based ``testNdxs``/``trainNdxs`` columns) with ``n`` rendered frames.

    ``depths`` is complete (the official file's in-painted depth); ``rawDepths`` equals it with zeros at
    :func:`nyu_raw_holes` (``raw_holes=False``: no holes). ``masks=True`` also writes ``masks.mat`` (v7.3,
    ``masks`` [N,W,H] uint8, 0 at :func:`nyu_mask_holes`), the evaluation packs' official validity mask."""
    import h5py
    import scipy.io

    w_ = "write_nyuv2_labeled"
    root = claim(root, w_)
    imgs, depths, raws = [], [], []
    for i in range(n):
        v = render_views(seed + i, 1, h, w)[0]
        imgs.append((v["image"] * 255).round().astype(np.uint8))
        depths.append(v["depth"])
        raws.append(np.where(nyu_raw_holes(i, h, w), 0, v["depth"]) if raw_holes else v["depth"])
    with h5py.File(fresh(root / "nyu_depth_v2_labeled.mat", w_), "w") as f:
        # MATLAB stores column-major: a 480x640x3xN array reads in h5py as (N, 3, 640, 480)
        f.create_dataset("images", data=np.stack(imgs).transpose(0, 3, 2, 1))
        f.create_dataset("depths", data=np.stack(depths).transpose(0, 2, 1).astype(np.float32))
        f.create_dataset("rawDepths", data=np.stack(raws).transpose(0, 2, 1).astype(np.float32))
    if masks:
        m = np.broadcast_to(~nyu_mask_holes(h, w), (n, h, w)).astype(np.uint8)
        with h5py.File(fresh(root / "masks.mat", w_), "w") as f:
            f.create_dataset("masks", data=m.transpose(0, 2, 1))
    idx = np.arange(1, n + 1)
    scipy.io.savemat(fresh(root / "splits.mat", w_), {"testNdxs": idx[:n_test, None].astype(np.float64),
                                           "trainNdxs": idx[n_test:, None].astype(np.float64)})
    return root


def write_scannet_scene(root: str | os.PathLike, scene: str = "scene0000_00", n_frames: int = 4, h: int = 48,
                        w: int = 64, seed: int = 0) -> Path:
    """One ScanNet-style scene folder: ``color/<i>.jpg``, ``depth/<i>.png`` (uint16 mm), ``pose/<i>.txt``
    (camera-to-world 4x4), ``intrinsic/intrinsic_{color,depth}.txt`` (4x4). Color is written as PNG-quality
    JPEG at the depth resolution."""
    from PIL import Image

    w_ = "write_scannet_scene"
    claim(root, w_)
    d = claim(Path(root) / scene, w_)
    views = render_views(seed, n_frames, h, w)
    for i, v in enumerate(views):
        Image.fromarray((v["image"] * 255).round().astype(np.uint8)).save(fresh(d / "color" / f"{i}.jpg", w_),
                                                                          quality=98)
        Image.fromarray(np.round(v["depth"] * 1000).astype(np.uint16)).save(fresh(d / "depth" / f"{i}.png", w_))
        np.savetxt(fresh(d / "pose" / f"{i}.txt", w_), v["c2w"])
    K4 = np.eye(4)
    K4[:3, :3] = views[0]["K"]
    np.savetxt(fresh(d / "intrinsic" / "intrinsic_color.txt", w_), K4)
    np.savetxt(fresh(d / "intrinsic" / "intrinsic_depth.txt", w_), K4)
    return d


def write_dsine(root: str | os.PathLike, dataset: str = "nyuv2", n: int = 3, h: int = 48, w: int = 64,
                seed: int = 0) -> Path:
    """DSINE-benchmark folder: ``<dataset>/<name>_img.png``, ``<name>_normal.png`` (uint8, (n + 1) / 2 * 255,
    zero where invalid), ``<name>_intrins.npy``."""
    from PIL import Image

    w_ = "write_dsine"
    claim(root, w_)
    d = claim(Path(root) / dataset, w_)
    for i in range(n):
        v = render_views(seed + i, 1, h, w)[0]
        name = f"{i:06d}"
        Image.fromarray((v["image"] * 255).round().astype(np.uint8)).save(fresh(d / f"{name}_img.png", w_))
        nm = np.where(v["valid"][..., None], np.round((v["normal"] + 1) / 2 * 255), 0).astype(np.uint8)
        Image.fromarray(nm).save(fresh(d / f"{name}_normal.png", w_))
        np.save(fresh(d / f"{name}_intrins.npy", w_), v["K"])
    return d


def write_pair_list(root: str | os.PathLike, n_pairs: int = 3, h: int = 48, w: int = 64, seed: int = 0) -> Path:
    """Images + ``pairs.txt`` in the ScanNet-1500 text format: ``img0 img1 rot0 rot1 K0(9) K1(9) T_0to1(16)``
    (T_0to1 maps camera-0 coordinates to camera-1 coordinates)."""
    from PIL import Image

    w_ = "write_pair_list"
    root = claim(root, w_)
    lines = []
    for i in range(n_pairs):
        v0, v1 = render_views(seed + i, 2, h, w)
        names = []
        for j, v in enumerate((v0, v1)):
            names.append(f"images/{i:03d}_{j}.png")
            Image.fromarray((v["image"] * 255).round().astype(np.uint8)).save(fresh(root / names[-1], w_))
        T = np.linalg.inv(v1["c2w"]) @ v0["c2w"]
        vals = [*names, "0", "0", *(f"{x:.9g}" for x in v0["K"].ravel()), *(f"{x:.9g}" for x in v1["K"].ravel()),
                *(f"{x:.12g}" for x in T.ravel())]
        lines.append(" ".join(vals))
    fresh(root / "pairs.txt", w_).write_text("\n".join(lines) + "\n")
    return root
