"""The serving path's floor on this machine: Ray Serve's own layers with no model work.

    python -m bench.ab bench/serve_config.device_batching.yaml floor:http floor:handle --device --texts 16

(bench.ab writes each floor's serve config from serve_config.yaml's controller, proxy and HTTP options.)

`http_only`: HAProxy -> one FastAPI Ingress replica whose route validates the body (the service's own
AnalyzeRequest) and answers a constant prediction per text, in the service's response model: what Ray
Serve's HTTP layer costs a request before anything reaches a model.

`with_handle`: the same route, but each request's texts go through a DeploymentHandle (a call per request,
Serve's default shape) to two replicas that answer a constant prediction per text: the architecture the
product requires (Ingress -> handle -> model replicas) with nothing in it but Ray Serve.

Neither tokenizes or batches; what the service does on top of these floors is its own cost.
"""

# No `from __future__ import annotations`: FastAPI must see the routes' body types as classes, not strings.
from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.api.schemas import AnalyzeRequest, PredictionBody

ANSWER = {"label": "POSITIVE", "score": 0.5}


@serve.deployment(name="ConstantModel", num_replicas=2, max_ongoing_requests=256, ray_actor_options={"num_cpus": 1})
class ConstantModel:
    async def classify(self, texts: list[str]) -> list[tuple[str, float]]:
        return [("POSITIVE", 0.5)] * len(texts)


http_api = FastAPI()


@serve.deployment(name="Ingress", num_replicas=1, max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
@serve.ingress(http_api)
class HttpOnly:
    @http_api.post("/analyze", response_model=list[PredictionBody])
    async def analyze(self, body: AnalyzeRequest) -> list[dict]:
        return [ANSWER] * len(body.texts())


handle_api = FastAPI()


@serve.deployment(name="Ingress", num_replicas=1, max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
@serve.ingress(handle_api)
class WithHandle:
    def __init__(self, model: DeploymentHandle) -> None:
        self.model = model

    @handle_api.post("/analyze", response_model=list[PredictionBody])
    async def analyze(self, body: AnalyzeRequest) -> list[dict]:
        answers = await self.model.classify.remote(body.texts())
        return [{"label": label, "score": score} for label, score in answers]


http_only = HttpOnly.bind()
with_handle = WithHandle.bind(ConstantModel.bind())
