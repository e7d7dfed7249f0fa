"""deploy/ray: the Ray Serve config and the KubeRay RayService name the real application, its
deployment and valid SNNL_* settings (checked for structure; no cluster is started)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import Settings

pytest.importorskip("ray.serve")

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {
    "serve.yaml": lambda text: yaml.safe_load(text),
    "rayservice.yaml": lambda text: yaml.safe_load(yaml.safe_load(text)["spec"]["serveConfigV2"]),
}


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_serve_configs_name_the_app_and_valid_settings(config: str) -> None:
    serve_config: dict[str, Any] = CONFIGS[config]((ROOT / "deploy" / "ray" / config).read_text())
    (application,) = serve_config["applications"]
    module, attribute = application["import_path"].split(":")
    imported = importlib.import_module(module)
    assert hasattr(imported, attribute)
    for deployment in application["deployments"]:
        assert getattr(imported, deployment["name"]).name == deployment["name"]
    env = dict(application["runtime_env"]["env_vars"])
    env = {k.removeprefix("SNNL_").lower(): v for k, v in env.items()}
    env["model_repository"] = str(ROOT / "models")  # the pods' path does not exist here
    settings = Settings(**env)
    assert settings.shards >= 1
    (deployment,) = application["deployments"]
    assert deployment["autoscaling_config"]["target_ongoing_requests"] > 0
