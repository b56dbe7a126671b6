"""GradBench's ht (hand tracking, from ADBench: cpp/gradbench/evals/ht.hpp) in adserve's language, beside a JAX
(float64, `jit`) version.

The hand model: 22 bones (wrist, four per finger, forearm) in a hierarchy (`parents`, int64, -1 for the root),
each with a base transform relative to its parent and the inverse of its base absolute transform (4x4); 544
vertices in homogeneous coordinates, each skinned to a few bones (`weights`, vertices x bones). The 26 pose
parameters theta are a global angle-axis rotation, a global translation and 20 finger angles; each bone turns
by Euler angles (x, z, y order as the reference), the bone transforms compose down the hierarchy, the vertices
are the weighted sum of the bones' transforms applied to them, and the global rotation and translation move
the result. The residual of correspondence i is points[i] minus the model at `correspondences[i]` (int64): a
vertex (**simple**), or the point u0 v0 + u1 v1 + (1 - u0 - u1) v2 of a triangle (`triangles`, int64) with the
barycentric parameters `us` (**complicated**). `objective` is the residual vector (3 per correspondence);
`jacobian` its Jacobian in theta (simple, 3C x 26) or, as GradBench reports it, in each correspondence's own
two `us` (the diagonal blocks, 3C x 2) followed by theta (complicated, 3C x 28).

Data: GradBench's files (evals/ht/data: the model and the `handN_t26_cC.txt` instances) when a directory
holding them is given, else a model made here with the real one's structure (the same bones and parents,
rigid base transforms, sparse normalised weights, triangles over the vertices) at any size.
"""

from __future__ import annotations

import os

import numpy as np

from .common import Eval, Part, _f, _fresh, _inputs, _jax

PARENTS = [-1, 0, 1, 2, 3, 0, 5, 6, 7, 0, 9, 10, 11, 0, 13, 14, 15, 0, 17, 18, 19, 0]  # the real model's
NB = len(PARENTS)

PROGRAM = """def rows(m, n, k):
    # entries given row-major -> (n, k, k) matrices
    return reshape(stack(m, axis=1), (n, k, k))

def euler(rot):
    # (nb, 3) Euler angles, columns x, z, y as the reference reads them -> Rz @ Ry @ Rx, (nb, 3, 3)
    nb = len(rot)
    o = ones(nb)
    z = zeros(nb)
    cx, sx = cos(rot[:, 0]), sin(rot[:, 0])
    cy, sy = cos(rot[:, 2]), sin(rot[:, 2])
    cz, sz = cos(rot[:, 1]), sin(rot[:, 1])
    Rx = rows([o, z, z, z, cx, -sx, z, sx, cx], nb, 3)
    Ry = rows([cy, z, sy, z, o, z, -sy, z, cy], nb, 3)
    Rz = rows([cz, -sz, z, sz, cz, z, z, z, o], nb, 3)
    return (Rz @ Ry) @ Rx

def angle_axis(aa):
    # the global rotation; the identity below a norm of 1e-4 (a squared norm of 1e-8), as the reference. The
    # norm is taken of a value kept away from 0, so that no derivative at 0 goes through sqrt (0 * inf)
    sq = sum(aa * aa)
    small = sq < 1e-8
    n = sqrt(where(small, 1.0, sq))
    x, y, z = aa[0] / n, aa[1] / n, aa[2] / n
    s, c = sin(n), cos(n)
    R = reshape(stack([x * x + (1 - x * x) * c, x * y * (1 - c) - z * s, x * z * (1 - c) + y * s,
                       x * y * (1 - c) + z * s, y * y + (1 - y * y) * c, y * z * (1 - c) - x * s,
                       x * z * (1 - c) - y * s, z * y * (1 - c) + x * s, z * z + (1 - z * z) * c]), (3, 3))
    I = reshape(stack([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]), (3, 3))
    return where(small, I, R)

def pose_rotations(theta, nb):
    # the bones' Euler angles from theta: per finger, bone 1 fixed, bone 2 two angles, bones 3-4 one each
    f = reshape(theta[6:26], (5, 4))
    z = zeros(5)
    finger = stack([stack([z, z, z], axis=1), stack([f[:, 0], f[:, 1], z], axis=1),
                    stack([f[:, 2], z, z], axis=1), stack([f[:, 3], z, z], axis=1)], axis=1)
    return concatenate([zeros((1, 3)), reshape(finger, (20, 3)), zeros((nb - 21, 3))], axis=0)

def vertices(theta, parents, base_relatives, inverse_base_absolutes, base_positions, weights):
    nb = len(parents)
    R = euler(pose_rotations(theta, nb))
    tr = concatenate([concatenate([R, zeros((nb, 3, 1))], axis=2),
                      reshape(stack([zeros(nb), zeros(nb), zeros(nb), ones(nb)], axis=1), (nb, 1, 4))], axis=1)
    relatives = base_relatives @ tr
    absolutes = relatives
    for i in range(nb):
        # a parent comes before its children; the root keeps its relative transform
        p = parents[i]
        absolutes[i] = where(p < 0, relatives[i], absolutes[maximum(p, 0)] @ relatives[i])
    transforms = absolutes @ inverse_base_absolutes
    moved = transforms[:, 0:3, :] @ transpose(base_positions)
    skinned = sum(moved * reshape(transpose(weights), (nb, 1, len(base_positions))), axis=0)
    return angle_axis(theta[0:3]) @ skinned + reshape(theta[3:6], (3, 1))
"""

SIMPLE = PROGRAM + """
def ht(theta, parents, base_relatives, inverse_base_absolutes, base_positions, weights, points, correspondences):
    V = vertices(theta, parents, base_relatives, inverse_base_absolutes, base_positions, weights)
    return reshape(points - transpose(V[:, correspondences]), (-1,))
"""

COMPLICATED = PROGRAM + """
def ht(theta, us, parents, base_relatives, inverse_base_absolutes, base_positions, weights, points,
       correspondences, triangles):
    V = vertices(theta, parents, base_relatives, inverse_base_absolutes, base_positions, weights)
    tri = triangles[correspondences]
    u0 = us[:, 0:1]
    u1 = us[:, 1:2]
    hand = u0 * transpose(V[:, tri[:, 0]]) + u1 * transpose(V[:, tri[:, 1]]) + (1.0 - u0 - u1) * transpose(V[:, tri[:, 2]])
    return reshape(points - hand, (-1,))
"""


# -- data ----------------------------------------------------------------------------------------------------
def _rigid(rng):
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    T = np.eye(4)
    T[:3, :3] = q * np.sign(np.linalg.det(q))
    T[:3, 3] = rng.normal(scale=0.05, size=3)
    return T


def model(n_verts: int = 544, n_tris: int = 1084, seed=31337) -> dict:
    """A hand model with the real one's structure (bones, parents, rigid transforms, inverse base absolutes
    consistent with them, homogeneous positions, 1-4 bones per vertex with weights summing to 1)."""
    rng = np.random.default_rng(seed)
    rel = np.stack([_rigid(rng) for _ in range(NB)])
    absl = np.empty_like(rel)
    for i, p in enumerate(PARENTS):
        absl[i] = rel[i] if p < 0 else absl[p] @ rel[i]
    pos = np.ones((n_verts, 4))
    pos[:, :3] = rng.normal(scale=0.1, size=(n_verts, 3))
    weights = np.zeros((n_verts, NB))
    for v in range(n_verts):
        bones = rng.choice(NB, size=rng.integers(1, 5), replace=False)
        w = rng.uniform(0.1, 1.0, size=len(bones))
        weights[v, bones] = w / w.sum()
    tris = np.stack([rng.choice(n_verts, size=3, replace=False) for _ in range(n_tris)])
    return {"parents": np.array(PARENTS, dtype=np.int64), "base_relatives": rel,
            "inverse_base_absolutes": np.linalg.inv(absl), "base_positions": pos, "weights": weights,
            "triangles": tris.astype(np.int64)}


def instance(m: dict, c: int, complicated: bool, seed=31337) -> dict:
    """c correspondences of random vertices (or triangles, with random barycentric `us`), random points near
    the hand and a random pose."""
    rng = np.random.default_rng(seed + 1)
    n = len(m["triangles"]) if complicated else len(m["base_positions"])
    out = {"theta": rng.uniform(-0.5, 0.5, size=26), "points": rng.normal(scale=0.1, size=(c, 3)),
           "correspondences": rng.integers(0, n, size=c)}
    if complicated:
        out["us"] = rng.uniform(0.0, 0.5, size=(c, 2))
    return out


def read(data_dir: str, variant: str, i: int) -> tuple[dict, dict, str]:
    """GradBench's own files (`<data_dir>/<variant>/model/*.txt` and `handI_*.txt`), as its io.py reads them."""
    d = os.path.join(data_dir, variant)
    md = os.path.join(d, "model")
    bones = [line.split(":") for line in open(os.path.join(md, "bones.txt")) if line.strip()]
    parents = np.array([int(b[1]) for b in bones], dtype=np.int64)
    rel = np.array([[float(x) for x in b[2:18]] for b in bones]).reshape(-1, 4, 4)
    inv = np.array([[float(x) for x in b[18:34]] for b in bones]).reshape(-1, 4, 4)
    lines = [line.split(":") for line in open(os.path.join(md, "vertices.txt")) if line.strip()]
    pos = np.ones((len(lines), 4))
    weights = np.zeros((len(lines), len(bones)))
    for v, a in enumerate(lines):
        pos[v, :3] = [float(x) for x in a[:3]]
        for k in range(int(a[8])):
            weights[v, int(a[9 + 2 * k])] = float(a[10 + 2 * k])
    tris = np.loadtxt(os.path.join(md, "triangles.txt"), dtype=np.int64, delimiter=":")
    fn = next(f for f in sorted(os.listdir(d)) if f.startswith(f"hand{i}_"))
    with open(os.path.join(d, fn)) as fh:
        npts, ntheta = (int(x) for x in fh.readline().split())
        rows = [fh.readline().split() for _ in range(npts)]
        inst = {"correspondences": np.array([int(r[0]) for r in rows], dtype=np.int64),
                "points": np.array([[float(x) for x in r[1:]] for r in rows])}
        if variant.startswith("complicated"):
            inst["us"] = np.array([[float(x) for x in fh.readline().split()] for _ in range(npts)])
        inst["theta"] = np.array([float(fh.readline()) for _ in range(ntheta)])
    m = {"parents": parents, "base_relatives": rel, "inverse_base_absolutes": inv, "base_positions": pos,
         "weights": weights, "triangles": tris}
    return m, inst, fn[:-4]


# -- JAX -----------------------------------------------------------------------------------------------------
def _vertices_jax(theta, base_relatives, inverse_base_absolutes, base_positions, weights, parents):
    import jax.numpy as jnp
    nb = len(parents)
    f = theta[6:26].reshape(5, 4)
    z = jnp.zeros(5)
    finger = jnp.stack([jnp.stack([z, z, z], 1), jnp.stack([f[:, 0], f[:, 1], z], 1),
                        jnp.stack([f[:, 2], z, z], 1), jnp.stack([f[:, 3], z, z], 1)], 1)
    rot = jnp.concatenate([jnp.zeros((1, 3)), finger.reshape(20, 3), jnp.zeros((nb - 21, 3))])
    cx, sx, cy, sy, cz, sz = (jnp.cos(rot[:, 0]), jnp.sin(rot[:, 0]), jnp.cos(rot[:, 2]), jnp.sin(rot[:, 2]),
                              jnp.cos(rot[:, 1]), jnp.sin(rot[:, 1]))
    o, zb = jnp.ones(nb), jnp.zeros(nb)

    def mat(*e):
        return jnp.stack(e, 1).reshape(nb, 3, 3)
    R = (mat(cz, -sz, zb, sz, cz, zb, zb, zb, o) @ mat(cy, zb, sy, zb, o, zb, -sy, zb, cy)) @ \
        mat(o, zb, zb, zb, cx, -sx, zb, sx, cx)
    tr = jnp.zeros((nb, 4, 4)).at[:, :3, :3].set(R).at[:, 3, 3].set(1.0)
    rel = base_relatives @ tr
    absl = []
    for i, p in enumerate(parents):  # static: the hierarchy is part of the traced function
        absl.append(rel[i] if p < 0 else absl[p] @ rel[i])
    transforms = jnp.stack(absl) @ inverse_base_absolutes
    skinned = jnp.sum((transforms[:, :3, :] @ base_positions.T) * weights.T[:, None, :], axis=0)
    aa = theta[:3]
    sq = jnp.sum(aa * aa)
    small = sq < 1e-8
    m = jnp.sqrt(jnp.where(small, 1.0, sq))  # the norm, kept away from 0 where it is not used
    x, y, zz = aa[0] / m, aa[1] / m, aa[2] / m
    s, c = jnp.sin(m), jnp.cos(m)
    Rg = jnp.stack([x * x + (1 - x * x) * c, x * y * (1 - c) - zz * s, x * zz * (1 - c) + y * s,
                    x * y * (1 - c) + zz * s, y * y + (1 - y * y) * c, y * zz * (1 - c) - x * s,
                    x * zz * (1 - c) - y * s, zz * y * (1 - c) + x * s, zz * zz + (1 - zz * zz) * c]).reshape(3, 3)
    Rg = jnp.where(small, jnp.eye(3), Rg)
    return Rg @ skinned + theta[3:6, None]


def _jax_objective(parents, complicated):
    parents = [int(p) for p in parents]

    def simple(theta, rel, inv, pos, weights, points, corr):
        V = _vertices_jax(theta, rel, inv, pos, weights, parents)
        return (points - V[:, corr].T).reshape(-1)

    def compl(theta, us, rel, inv, pos, weights, points, corr, tris):
        V = _vertices_jax(theta, rel, inv, pos, weights, parents)
        tri = tris[corr]
        u0, u1 = us[:, 0:1], us[:, 1:2]
        hand = u0 * V[:, tri[:, 0]].T + u1 * V[:, tri[:, 1]].T + (1.0 - u0 - u1) * V[:, tri[:, 2]].T
        return (points - hand).reshape(-1)
    return compl if complicated else simple


def _us_blocks(J_us):
    """(3C, C, 2) -> the diagonal blocks (3C, 2): row 3i+k's derivative in us[i]."""
    c = J_us.shape[1]
    return J_us[np.arange(3 * c), np.repeat(np.arange(c), 3)]


def ht(m: dict | None = None, inst: dict | None = None, c: int = 100, complicated: bool = False,
       label: str = "") -> Eval:
    """The eval on model `m` and instance `inst` (made here, c correspondences, when not given)."""
    m = model() if m is None else m
    inst = instance(m, c, complicated) if inst is None else inst
    c = len(inst["correspondences"])
    names = ["theta", *(["us"] if complicated else []), "parents", "base_relatives", "inverse_base_absolutes",
             "base_positions", "weights", "points", "correspondences", *(["triangles"] if complicated else [])]
    inputs = _f(**{k: inst[k] if k in inst else m[k] for k in names})
    defn = {"inputs": _inputs(**inputs), "program": COMPLICATED if complicated else SIMPLE}
    wrt = ("us", "theta") if complicated else ("theta",)
    obj = _jax_objective(m["parents"], complicated)
    jargs = [inputs[k] for k in names if k != "parents"]

    def jac(*a):
        jax = _jax()
        if not complicated:
            return jax.jacfwd(obj)(*a)
        J_us, J_theta = jax.jacfwd(obj, argnums=(1, 0))(*a)
        c_ = J_us.shape[1]
        import jax.numpy as jnp
        return jnp.concatenate([J_us[jnp.arange(3 * c_), jnp.repeat(jnp.arange(c_), 3)], J_theta], axis=1)

    def ours_jac(r):
        J = r["jacobian"]
        return np.concatenate([_us_blocks(J["us"]), J["theta"]], axis=1) if complicated else J["theta"]
    variant = "complicated" if complicated else "simple"
    return Eval("ht", label or f"{variant}, bones={len(m['parents'])}, verts={len(m['base_positions'])}, c={c}", [
        Part("objective", defn, ["value"], inputs, lambda r: r["value"], _fresh(obj, *jargs)),
        Part("jacobian", defn, ["jacobian"], inputs, ours_jac, _fresh(jac, *jargs), wrt=wrt),
    ], params={"complicated": complicated})


def gradbench_input(inputs: dict) -> dict:
    """The eval's inputs as GradBench's ht input JSON (its io.py's HandInput, as cpp/gradbench/evals/ht.hpp reads
    it): `theta`, `us` (empty for simple), and `data`: the correspondences, the points and the model. The model
    is not mirrored (GradBench's io.py never mirrors one); its bones' names are only counted."""
    rows = lambda k: np.asarray(inputs[k]).tolist()  # noqa: E731
    model = {"bone_names": [f"bone{i}" for i in range(len(inputs["parents"]))], "parents": rows("parents"),
             "is_mirrored": False, "base_relatives": rows("base_relatives"),
             "inverse_base_absolutes": rows("inverse_base_absolutes"), "base_positions": rows("base_positions"),
             "weights": rows("weights"),
             "triangles": rows("triangles") if "triangles" in inputs else []}
    return {"theta": rows("theta"), "us": rows("us") if "us" in inputs else [],
            "data": {"correspondences": rows("correspondences"), "points": rows("points"), "model": model}}
