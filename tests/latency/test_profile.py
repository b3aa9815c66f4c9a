"""Device profiles: round trip, another device refused, corrupt or edited files rejected with one line."""

from __future__ import annotations

import json

import pytest

from kasrl.latency.model import KINDS, LatencyModel
from kasrl.latency.profile import (
    ProfileError,
    ProfileMismatch,
    default_profile_path,
    load_profile,
    profile_checksum,
    save_profile,
)

FP = {"device": "cpu", "cpu": "Test CPU A", "gpu": None, "torch": "2.13.0", "threads": 1, "dtype": "float32", "batch": 8}
CALIBRATION = {"placements": ["32x14x14"], "seed": 0, "seconds": 1.5, "samples": {"kernels": 3}, "residuals": {"whole": {"n": 3}},
               "allocator_pinned": True, "settings": {"session_s": 0.25}}


def _model(fp=FP) -> LatencyModel:
    coefs = {k: (2e-6 + i * 1e-7, 1.5e-11, 3e-11 + i * 1e-12) for i, k in enumerate(KINDS)}
    return LatencyModel(coefs, fp["batch"], fp["dtype"], fp, -16, {"unfold": 1.3, "conv.k9": 1.1})


def test_round_trip(tmp_path):
    """A saved profile loads back equal, written through a temporary file."""
    model = _model()
    path = save_profile(model, CALIBRATION, tmp_path / "p.json")
    loaded = load_profile(path, expect=FP)
    assert loaded == model
    assert loaded.integer_coefficients("unfold") == model.integer_coefficients("unfold")
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file, none left behind


def test_default_path_is_keyed_by_the_fingerprint(tmp_path, monkeypatch):
    """The default profile path depends on the fingerprint and honours KASRL_LATENCY_DIR."""
    monkeypatch.setenv("KASRL_LATENCY_DIR", str(tmp_path))
    a, b = default_profile_path(FP), default_profile_path({**FP, "batch": 1})
    assert a.parent == tmp_path and a != b
    assert save_profile(_model(), CALIBRATION) == a


def test_another_fingerprint_is_refused_naming_both(tmp_path):
    """A profile of another device is refused in one line naming both fingerprints."""
    path = save_profile(_model(), CALIBRATION, tmp_path / "p.json")
    with pytest.raises(ProfileMismatch) as e:
        load_profile(path, expect={**FP, "cpu": "Test CPU B", "batch": 1})
    msg = str(e.value)
    assert len(msg.splitlines()) == 1
    assert "Test CPU A" in msg and "Test CPU B" in msg and str(path) in msg


def _edit(doc: dict, fix_checksum: bool, fn) -> dict:
    doc = json.loads(json.dumps(doc))
    fn(doc)
    if fix_checksum:
        doc["checksum"] = profile_checksum(doc)
    return doc


EDITS = {
    "checksum mismatch": (False, lambda d: d["model"]["coefficients"]["unfold"].__setitem__(0, 1e-3)),
    "negative": (True, lambda d: d["model"]["coefficients"]["unfold"].__setitem__(1, -1e-12)),
    "is not a finite number": (True, lambda d: d["model"]["coefficients"]["unfold"].__setitem__(1, "1e-12")),
    "lacks the key `scales`": (True, lambda d: d["model"].pop("scales")),
    "unknown key `extra`": (True, lambda d: d.__setitem__("extra", 1)),
    "lacks the key `conv.k9`": (True, lambda d: d["model"]["coefficients"].pop("conv.k9")),
    "`fingerprint.batch` must be an integer": (True, lambda d: d["fingerprint"].__setitem__("batch", "8")),
    "schema version": (True, lambda d: d.__setitem__("version", 2)),
    "must list 3 numbers": (True, lambda d: d["model"]["coefficients"]["unfold"].append(0.0)),
    "`model.scales.unfold` is negative": (True, lambda d: d["model"]["scales"].__setitem__("unfold", -1.0)),
}


@pytest.mark.parametrize("problem", sorted(EDITS))
def test_hand_edited_profiles_are_rejected(tmp_path, problem):
    """Each kind of hand edit is rejected in one line naming the file and the problem."""
    path = save_profile(_model(), CALIBRATION, tmp_path / "p.json")
    fix, fn = EDITS[problem]
    path.write_text(json.dumps(_edit(json.loads(path.read_text()), fix, fn)))
    with pytest.raises(ProfileError) as e:
        load_profile(path)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and str(path) in msg
    assert problem in msg


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", '{"schema": "kasrl.latency-profile", "version": 1, "x": NaN}', "\udcff"])
def test_corrupt_or_truncated_files_are_rejected(tmp_path, text):
    """Empty, cut, non-object, NaN and non-UTF-8 files are rejected in one line."""
    path = tmp_path / "p.json"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ProfileError) as e:
        load_profile(path)
    assert len(str(e.value).splitlines()) == 1 and str(path) in str(e.value)


def test_truncated_profile_is_rejected(tmp_path):
    """Half a profile is not valid JSON."""
    path = save_profile(_model(), CALIBRATION, tmp_path / "p.json")
    path.write_text(path.read_text()[: len(path.read_text()) // 2])
    with pytest.raises(ProfileError, match="not valid JSON"):
        load_profile(path)


def test_missing_file(tmp_path):
    """A missing profile is a ProfileError, not an OSError."""
    with pytest.raises(ProfileError, match="cannot read it"):
        load_profile(tmp_path / "none.json")
