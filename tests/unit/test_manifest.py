"""The manifest's typed record: a round trip through JSON, and one clear line for a manifest it cannot read."""

from __future__ import annotations

import json

import pytest

from orchestrator.policy import variants_from_manifest
from tritune.errors import RepositoryError
from tritune.manifest import MANIFEST, SCHEMA_VERSION, Manifest, VariantRecord, version_numbers


def record(name: str, top1: float, b32: float) -> VariantRecord:
    return VariantRecord(
        model_name=f"cnn_{name}",
        variant=name,
        precision="fp32",
        architecture="SeedCNN",
        arch_kwargs={},
        derived_from=None,
        parameters=1000,
        flops=2000,
        file_bytes=4000,
        sha256="ab" * 32,
        top1=top1,
        top1_delta_vs_fp32_points=0.0,
        error_vs_fp32={"max_abs_err": 0.0},
        export_check_vs_torch={"max_abs_err": 1e-6},
        latency_ms={"batch_1": 0.2, "batch_32": b32},
        target="cpu",
        backend="python + onnxruntime",
        built_with={"torch": "2.13.0"},
        dataset_fingerprint="f00d",
    )


def manifest() -> Manifest:
    return Manifest(
        dataset={"name": "digits", "fingerprint": "f00d"},
        public_model="cnn",
        public_variant="fp32",
        public_versions={"fp32": 1, "int8": 5},
        input={"name": "input"},
        output={"name": "logits"},
        accuracy_target_points=1.0,
        options={"data_dir": "data"},
        variants={"fp32": record("fp32", 0.97, 10.0), "int8": record("int8", 0.96, 5.0)},
    )


def test_round_trip_through_the_repository(tmp_path):
    m = manifest()
    m.write(tmp_path / MANIFEST)
    raw = json.loads((tmp_path / MANIFEST).read_text())
    assert raw["schema_version"] == SCHEMA_VERSION and "accuracy_target_met" not in raw["variants"]["fp32"]
    assert Manifest.read(tmp_path) == m
    assert m.variants["int8"].latency_ms_b32 == 5.0


def test_the_policy_reads_accuracy_and_cost_from_it():
    infos = variants_from_manifest(manifest(), {"int8"})
    assert list(infos) == ["int8"] and infos["int8"].top1 == 0.96 and infos["int8"].latency_ms_b32 == 5.0


def test_a_newer_field_is_ignored_by_an_older_reader(tmp_path):
    raw = manifest().to_dict()
    raw["variants"]["fp32"]["energy_mj"] = 3.0
    raw["future_field"] = {}
    (tmp_path / MANIFEST).write_text(json.dumps(raw))
    assert Manifest.read(tmp_path) == manifest()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(schema_version=99), "schema version 99"),
        (lambda d: d.pop("variants"), "lacks a field"),
        (lambda d: d["variants"]["fp32"].pop("top1"), "lacks a field"),
    ],
)
def test_an_unreadable_manifest_says_rebuild_in_one_line(tmp_path, change, message):
    raw = manifest().to_dict()
    change(raw)
    (tmp_path / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(RepositoryError, match=message) as err:
        Manifest.read(tmp_path)
    assert "tritune build" in str(err.value) and "\n" not in str(err.value)


def test_versions_are_numbered_by_accuracy_so_the_most_accurate_loaded_serves():
    # Triton sends unversioned requests to the highest loaded version: the most accurate is the highest, and a
    # cheaper standby below it never takes the traffic. Equal accuracy: the cheaper first.
    records = {
        r.variant: r for r in (record("fp32", 0.97, 20.0), record("pruned", 0.97, 5.0), record("tiny", 0.9, 1.0))
    }
    records["int8"] = record("int8", 0.975, 8.0)
    assert version_numbers(records) == {"tiny": 1, "pruned": 2, "fp32": 3, "int8": 4}
