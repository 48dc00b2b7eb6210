"""Issue 13's GPU path, checked without a GPU: the install option pins the same TensorFlow as the CPU one,
the image has its GPU variant, the compose override targets the TensorFlow worker, and mixed precision
is chosen only when a GPU is present."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]


def pinned(path: Path, name: str) -> str:
    for line in path.read_text().splitlines():
        match = re.match(rf"^{re.escape(name)}(\[[^\]]*\])?==([^\s#]+)", line.strip(), flags=re.IGNORECASE)
        if match:
            return match.group(2)
    raise AssertionError(f"{name} is not pinned in {path.name}")


def test_gpu_requirements_pin_the_same_tensorflow_as_the_cpu_build():
    cpu = pinned(REPO_ROOT / "requirements.txt", "tensorflow_cpu")
    assert pinned(REPO_ROOT / "requirements-gpu.txt", "tensorflow") == cpu
    assert "tensorflow[and-cuda]==" in (REPO_ROOT / "requirements-gpu.txt").read_text()


def test_the_dockerfile_has_a_gpu_variant_that_swaps_tensorflow():
    text = (REPO_ROOT / "Dockerfile").read_text()
    assert "ARG TENSORFLOW_VARIANT=cpu" in text
    assert "pip uninstall -y tensorflow-cpu" in text and "requirements-gpu.txt" in text


def test_the_compose_override_builds_the_gpu_image_for_the_tensorflow_worker_only():
    override = yaml.safe_load((REPO_ROOT / "docker-compose.gpu.yml").read_text())
    base = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    assert set(override["services"]) == {"airflow-worker-tensorflow"} <= set(base["services"])
    worker = override["services"]["airflow-worker-tensorflow"]
    assert worker["build"]["args"]["TENSORFLOW_VARIANT"] == "gpu"
    assert worker["image"] != base["x-airflow-common"]["image"]  # the CPU image is not replaced
    device = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


@pytest.mark.parametrize(
    "setting, gpus, expected", [("auto", [], False), ("auto", ["GPU:0"], True), ("off", ["GPU:0"], False)]
)
def test_mixed_precision_only_with_a_gpu(monkeypatch, setting, gpus, expected):
    import tensorflow as tf

    from models.train import use_mixed_precision
    from pipeline.settings import get_settings

    training = get_settings().training
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: list(gpus) if kind == "GPU" else [])
    assert use_mixed_precision(dataclasses.replace(training, mixed_precision=setting)) is expected
    with pytest.raises(ValueError, match="mixed_precision"):
        use_mixed_precision(dataclasses.replace(training, mixed_precision="fp8"))


def test_the_softmax_stays_float32_under_a_mixed_policy():
    import keras

    from models.network import build_attribute_network

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_attribute_network(2, image_size=32, dense_units=4)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert model.get_layer("head_dense").compute_dtype == "float16"
    assert model.get_layer("predictions").compute_dtype == "float32" and model.output.dtype == "float32"
