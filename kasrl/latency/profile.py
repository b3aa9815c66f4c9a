"""Device profiles: a calibrated :class:`~kasrl.latency.model.LatencyModel` as versioned JSON.

A profile holds one device's coefficients and how they were obtained::

    {"schema": "kasrl.latency-profile", "version": 1,
     "fingerprint": {"device": "cpu", "cpu": "AMD EPYC", "gpu": null, "torch": "2.13.0",
                     "threads": 1, "dtype": "float32", "batch": 8},
     "model": {"unit_exp": -14, "coefficients": {"conv": [2.1e-06, 1.6e-11, 3.4e-11], ...},
               "scales": {"conv": 1.1, ...}},
     "calibration": {"placements": ["32x14x14", "64x7x7"], "seed": 0, "seconds": 151.2,
                     "samples": {...}, "residuals": {...}, "allocator_pinned": true},
     "checksum": "<sha256 of the canonical JSON of everything else>"}

Coefficients are seconds per call, per FLOP and per byte of an op alone, and
scales how much slower each kind runs inside a kernel (see
:mod:`kasrl.latency.model`). Loading never executes anything from the file: it
is parsed as JSON and every key, type and value is checked; a bad file raises
:class:`ProfileError` with one line naming the file and the problem, and a
profile made on another device (a different fingerprint) raises
:class:`ProfileMismatch` naming both fingerprints. Profiles are written
atomically (a temporary file, then :func:`os.replace`).

The default location is ``~/.cache/kasrl/latency/<hash of the fingerprint>.json``
(the directory can be set with ``KASRL_LATENCY_DIR``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kasrl.errors import KasrlError
from kasrl.latency.model import ELEMENT_SIZES, FEATURES, KERNEL, KINDS, LatencyModel

__all__ = [
    "SCHEMA",
    "VERSION",
    "ProfileError",
    "ProfileMismatch",
    "fingerprint",
    "fingerprint_key",
    "default_profile_path",
    "profile_document",
    "profile_checksum",
    "save_profile",
    "load_profile",
    "write_atomic",
]

SCHEMA = "kasrl.latency-profile"
VERSION = 1
_MAX_BYTES = 1 << 20  # a profile is a few kB; refuse to parse anything huge


class ProfileError(KasrlError):
    """Raised when a latency profile is missing, corrupt, hand-edited or of an unknown version."""


class ProfileMismatch(ProfileError):
    """Raised when a latency profile was calibrated on another device, batch, dtype or torch."""


_FINGERPRINT_TYPES = {"device": str, "cpu": str, "gpu": (str, type(None)), "torch": str, "threads": int, "dtype": str, "batch": int}


def fingerprint(device: str = "cpu", threads: int = 1, batch: int = 8, dtype: str = "float32") -> dict:
    """What a profile is only valid for: the CPU model or GPU name, torch version, threads, dtype, batch and device."""
    from kasrl.eval.latency import device_fingerprint

    fp = device_fingerprint(device)
    return {
        "device": device,
        "cpu": str(fp["cpu"]),
        "gpu": None if fp.get("gpu") is None else str(fp["gpu"]),
        "torch": str(fp["torch"]),
        "threads": int(threads),
        "dtype": dtype,
        "batch": int(batch),
    }


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def profile_checksum(doc: Mapping[str, Any]) -> str:
    """The sha256 of the canonical JSON (sorted keys, no spaces, ASCII) of a profile document without its ``checksum``."""
    return hashlib.sha256(_canonical({k: v for k, v in doc.items() if k != "checksum"})).hexdigest()


def fingerprint_key(fp: Mapping[str, Any]) -> str:
    """A short hash naming a fingerprint (the default profile's file name)."""
    return hashlib.sha256(_canonical(dict(fp))).hexdigest()[:16]


def default_profile_path(fp: Mapping[str, Any], placements: Sequence[Any] = ()) -> Path:
    """``$KASRL_LATENCY_DIR/<key>.json``, by default under ``~/.cache/kasrl/latency``.

    With ``placements`` (where a task times its kernels), ``<key>-<placements key>.json``:
    a model predicts best where it was calibrated, so each set of placements gets its own profile.
    """
    root = os.environ.get("KASRL_LATENCY_DIR") or str(Path.home() / ".cache" / "kasrl" / "latency")
    name = fingerprint_key(fp)
    if placements:
        name += "-" + hashlib.sha256(",".join(sorted(str(p) for p in placements)).encode()).hexdigest()[:8]
    return Path(root).expanduser() / f"{name}.json"


def _describe(fp: Mapping[str, Any]) -> str:
    gpu = f", gpu {fp.get('gpu')}" if fp.get("gpu") else ""
    return (f"{{device {fp.get('device')}, cpu {fp.get('cpu')!r}{gpu}, torch {fp.get('torch')}, threads {fp.get('threads')}, "
            f"dtype {fp.get('dtype')}, batch {fp.get('batch')}}}")


def profile_document(model: LatencyModel, calibration: Mapping[str, Any]) -> dict:
    """The JSON document of a profile (with its checksum)."""
    doc = {
        "schema": SCHEMA,
        "version": VERSION,
        "fingerprint": dict(model.fingerprint),
        "model": {
            "unit_exp": model.unit_exp,
            "coefficients": {k: list(v) for k, v in model.coefficients.items()},
            "scales": dict(model.scales),
        },
        "calibration": dict(calibration),
    }
    doc["checksum"] = profile_checksum(doc)
    return doc


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and :func:`os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_profile(model: LatencyModel, calibration: Mapping[str, Any], path: str | os.PathLike | None = None) -> Path:
    """Write a profile (atomically); ``path`` defaults to :func:`default_profile_path` of the model's fingerprint.

    Raises:
        ProfileError: when the model's fingerprint or the calibration record is not valid profile content.
    """
    doc = profile_document(model, calibration)
    path = Path(path) if path is not None else default_profile_path(model.fingerprint)
    _check(doc, str(path))  # never write what load_profile would refuse
    return write_atomic(path, json.dumps(doc, indent=1, sort_keys=True, allow_nan=False) + "\n")


# --------------------------------------------------------------------------- checking
def _type_name(t: Any) -> str:
    if isinstance(t, tuple):
        return " or ".join(_type_name(x) for x in t)
    return {str: "a string", int: "an integer", float: "a number", bool: "true/false", dict: "an object",
            list: "a list", type(None): "null"}.get(t, str(t))


def _is(value: Any, t: Any) -> bool:
    types = t if isinstance(t, tuple) else (t,)
    for x in types:
        if x is int and type(value) is int:
            return True
        if x is float and type(value) in (int, float) and math.isfinite(value):
            return True
        if x not in (int, float) and type(value) is x:
            return True
    return False


def _keys(obj: Any, where: str, expected: Mapping[str, Any], fail) -> None:
    if not isinstance(obj, dict):
        fail(f"`{where}` must be an object")
    missing = [k for k in expected if k not in obj]
    if missing:
        fail(f"`{where}` lacks the key `{missing[0]}`")
    extra = sorted(k for k in obj if k not in expected)
    if extra:
        fail(f"`{where}` has an unknown key `{extra[0]}`")
    for k, t in expected.items():
        if t is not None and not _is(obj[k], t):
            fail(f"`{where}.{k}` must be {_type_name(t)}, got {json.dumps(obj[k])[:40]}")


def _plain(obj: Any, where: str, fail, depth: int = 0) -> None:
    """JSON made of objects, lists, strings, booleans, null and finite numbers only (residuals and sample counts)."""
    if depth > 6:
        fail(f"`{where}` is nested too deeply")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _plain(v, f"{where}.{k}", fail, depth + 1)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _plain(v, f"{where}[{i}]", fail, depth + 1)
    elif isinstance(obj, float) and not math.isfinite(obj):
        fail(f"`{where}` is not a finite number")


_CALIBRATION_KEYS = {
    "placements": list,
    "seed": int,
    "seconds": float,
    "samples": dict,
    "residuals": dict,
    "allocator_pinned": bool,
    "settings": dict,
}


def _check(doc: Any, source: str) -> LatencyModel:
    def fail(problem: str) -> None:
        raise ProfileError(f"latency profile {source}: {problem}")

    if not isinstance(doc, dict):
        fail("is not a JSON object")
    if doc.get("schema") != SCHEMA:
        fail(f"`schema` must be {SCHEMA!r}, got {json.dumps(doc.get('schema'))[:40]}")
    if type(doc.get("version")) is not int or doc["version"] != VERSION:
        fail(f"schema version {json.dumps(doc.get('version'))[:20]} is not supported (this kasrl reads version {VERSION}); recalibrate")
    _keys(doc, "profile", {"schema": str, "version": int, "fingerprint": dict, "model": dict, "calibration": dict, "checksum": str}, fail)
    if profile_checksum(doc) != doc["checksum"]:
        fail("checksum mismatch: the file was edited or corrupted after it was written; recalibrate")
    fp = doc["fingerprint"]
    _keys(fp, "fingerprint", _FINGERPRINT_TYPES, fail)
    if fp["dtype"] not in ELEMENT_SIZES:
        fail(f"`fingerprint.dtype` must be one of {sorted(ELEMENT_SIZES)}, got {fp['dtype']!r}")
    if fp["batch"] < 1 or fp["threads"] < 1:
        fail("`fingerprint.batch` and `fingerprint.threads` must be positive")
    model = doc["model"]
    _keys(model, "model", {"unit_exp": int, "coefficients": dict, "scales": dict}, fail)
    if not -30 <= model["unit_exp"] <= 0:
        fail(f"`model.unit_exp` must be in [-30, 0], got {model['unit_exp']}")
    coefs = model["coefficients"]
    _keys(coefs, "model.coefficients", {k: list for k in KINDS}, fail)
    for kind, values in coefs.items():
        if len(values) != len(FEATURES):
            fail(f"`model.coefficients.{kind}` must list {len(FEATURES)} numbers ({', '.join(FEATURES)})")
        for name, v in zip(FEATURES, values, strict=True):
            if not _is(v, float):
                fail(f"`model.coefficients.{kind}` per {name}: {json.dumps(v)[:40]} is not a finite number")
            if v < 0:
                fail(f"`model.coefficients.{kind}` per {name} is negative ({v})")
    _keys(model["scales"], "model.scales", {k: float for k in KINDS if k != KERNEL}, fail)
    for kind, v in model["scales"].items():
        if v < 0:
            fail(f"`model.scales.{kind}` is negative ({v})")
    cal = doc["calibration"]
    _keys(cal, "calibration", _CALIBRATION_KEYS, fail)
    if not all(isinstance(p, str) for p in cal["placements"]):
        fail("`calibration.placements` must list CxHxW strings")
    for key in ("samples", "residuals", "settings"):
        _plain(cal[key], f"calibration.{key}", fail)
    try:
        return LatencyModel(coefs, fp["batch"], fp["dtype"], fp, model["unit_exp"], model["scales"])
    except ValueError as e:  # pragma: no cover - every check above comes first
        fail(str(e))
        raise


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a finite number")


def load_profile(path: str | os.PathLike, expect: Mapping[str, Any] | None = None) -> LatencyModel:
    """Load and check a profile; with ``expect``, refuse one made for another fingerprint.

    Raises:
        ProfileError: one line naming the file and what is wrong (missing file, bad
            JSON, schema version, missing or extra keys, wrong types, non-finite or
            negative coefficients, checksum mismatch).
        ProfileMismatch: when ``expect`` is given and differs from the profile's
            fingerprint (both are named).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_BYTES + 1)
    except OSError as e:
        raise ProfileError(f"latency profile {path}: cannot read it ({e.strerror or e})") from None
    if len(raw) > _MAX_BYTES:
        raise ProfileError(f"latency profile {path}: larger than {_MAX_BYTES} bytes; not a profile")
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ProfileError(f"latency profile {path}: not valid JSON ({first})") from None
    model = _check(doc, str(path))
    if expect is not None:
        want = {k: expect.get(k) for k in _FINGERPRINT_TYPES}
        if want != dict(model.fingerprint):
            raise ProfileMismatch(
                f"latency profile {path} was calibrated for {_describe(model.fingerprint)}, not for this setup {_describe(want)}; "
                "run `python -m kasrl calibrate`"
            )
    return model
