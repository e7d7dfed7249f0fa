"""The service as a Ray Serve application: N replicas of the same FastAPI app, autoscaled on the
number of ongoing requests, all scoring through ONE shared set of shard actors.

    serve run service.ray_serve:app                 # on the Ray cluster this shell points at
    serve deploy deploy/ray/serve.yaml              # the same, as a config (KubeRay: RayService)

Each replica is the ordinary app (``create_app(Settings())``; settings from the ``SNNL_*``
environment variables, e.g. in the config's ``runtime_env``) in a Ray actor. With ``SNNL_SHARDS``
> 0 a replica joins the cluster it runs on and uses the named, detached shard actors of the model
(snnl.sharding.cluster: created by the first replica, found by name by the others), so the
reference is held once whatever the number of replicas; each replica keeps its own batcher, ONNX
session and calibration. A replica answers 503 (``Retry-After``) until its models are loaded.
"""

from __future__ import annotations

from fastapi import FastAPI
from ray import serve

from service.app import create_app
from service.settings import Settings

# Each replica batches the requests it holds: let it hold many (Ray Serve's default is 5), and
# add replicas when they hold more than TARGET_ONGOING on average.
MAX_ONGOING = 256
TARGET_ONGOING = 64


def build_app() -> FastAPI:
    """The replica's app, built on the replica (settings from its environment)."""
    return create_app(Settings())


@serve.deployment(
    max_ongoing_requests=MAX_ONGOING,
    autoscaling_config={
        "min_replicas": 1,
        "max_replicas": 8,
        "target_ongoing_requests": TARGET_ONGOING,
    },
    ray_actor_options={"num_cpus": 1},
)
@serve.ingress(build_app)
class SnnlService:
    """One replica of the service (the routes are the app's)."""


app = SnnlService.bind()  # type: ignore[attr-defined]  # a Deployment after the decorators
