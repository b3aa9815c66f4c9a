"""Kernel documents round-trip exactly, and hostile documents fail with one clear line."""

from __future__ import annotations

import json
import random
import re

import pytest

from kasrl.errors import KernelDocumentError, SchemaVersionError
from kasrl.ir.canonical import kernel_hash
from kasrl.ir.serialize import dumps, from_document, load_kernel, loads, save_kernel, to_document
from kasrl.space import SearchSpace
from tests.helpers import rollout


@pytest.fixture(scope="module")
def kernels():
    space = SearchSpace()
    rng = random.Random(7)
    return [rollout(space, rng, 5, 20) for _ in range(12)]


def test_round_trip_is_exact(kernels, tmp_path):
    for k, g in enumerate(kernels):
        path = save_kernel(g, tmp_path / f"{k}.json")
        g2 = load_kernel(path)
        assert kernel_hash(g2) == kernel_hash(g)
        assert g2.sizes == g.sizes
        assert dumps(g2) == dumps(g)


def _doc(kernels):
    return to_document(kernels[0])


def _expect(doc, pattern, exc=KernelDocumentError):
    with pytest.raises(exc, match=pattern):
        from_document(doc)


def test_code_in_a_string_field_is_rejected_not_run(kernels, tmp_path):
    marker = tmp_path / "pwned"
    doc = _doc(kernels)
    payload = f"__import__('pathlib').Path(r'{marker}').write_text('x')"
    node = next(n for n in doc["nodes"] if n.get("attrs"))
    key = next(iter(node["attrs"]))
    node["attrs"][key] = payload
    _expect(doc, re.escape(f"attribute `{key}`"))
    doc = _doc(kernels)
    doc["sizes"] = {k: payload for k in doc.get("sizes", {"x0": None})}
    with pytest.raises(KernelDocumentError):
        from_document(doc)
    doc = _doc(kernels)
    doc["nodes"][1]["shape"] = payload
    _expect(doc, "declared shape")
    assert not marker.exists()


def test_unknown_primitive(kernels):
    doc = _doc(kernels)
    doc["nodes"][1]["op"] = "teleport"
    _expect(doc, "node 1: unknown primitive 'teleport'")


def test_wrong_version_and_schema(kernels):
    doc = _doc(kernels)
    doc["version"] = 99
    _expect(doc, r"`version` 99 is not supported", SchemaVersionError)
    doc = _doc(kernels)
    doc["schema"] = "something.else"
    _expect(doc, r"`schema` must be 'kasrl.kernel'", SchemaVersionError)


def test_truncated_file(kernels, tmp_path):
    text = dumps(kernels[0])
    path = tmp_path / "cut.json"
    path.write_text(text[: len(text) // 2])
    with pytest.raises(KernelDocumentError, match="not valid JSON .* truncated file"):
        load_kernel(path)


def test_shapes_that_do_not_line_up(kernels):
    doc = _doc(kernels)
    doc["nodes"][1]["shape"] = "[1, C, 7, 7, H, W]"
    _expect(doc, r"node 1 \(.*\): declared shape")
    doc = _doc(kernels)
    last = doc["nodes"][-1]
    last["inputs"] = [len(doc["nodes"]) + 3] * len(last["inputs"])
    _expect(doc, "must refer to earlier nodes")


def test_bad_types_and_edited_hash(kernels):
    doc = _doc(kernels)
    doc["nodes"][1]["inputs"] = "0"
    _expect(doc, "`inputs` must be a list of node ids")
    doc = _doc(kernels)
    doc["nodes"] = "all of them"
    _expect(doc, "`nodes` must be a list")
    doc = _doc(kernels)
    doc["hash"] = "0" * 64
    _expect(doc, "does not match the kernel")
    _expect([1, 2, 3], "top level must be a JSON object")
    doc = _doc(kernels)
    doc["extra"] = 1
    _expect(doc, "unknown key `extra`")


def test_sizes_must_be_strict(kernels):
    g = next(k for k in kernels if k.free_symbols)
    doc = to_document(g)
    doc.pop("hash")
    name = next(iter(doc["sizes"]))
    for bad in ("C/3", "7", "C**2", "", 5):
        doc["sizes"][name] = bad
        with pytest.raises(KernelDocumentError, match=f"size {name}"):
            from_document(doc)


def test_loads_reports_the_source_name(kernels):
    with pytest.raises(KernelDocumentError, match="^mykernel.json: not valid JSON"):
        loads("{", "mykernel.json")
    assert json.loads(dumps(kernels[0]))["version"] == 1
