"""Model repository control in Triton's shape, plus one reload of everything.

    POST /v2/repository/index                 every model: name, version, state, reason
    POST /v2/repository/models/{model}/load   (re)load one model; 503 with the reason if it fails
    POST /v2/repository/models/{model}/unload stop serving it (in-flight requests finish)
    POST /v1/admin/reload                     re-read the API keys file, follow the repository

Each needs an API key, and API keys must be configured: without them these answer 403, so an
open service can never be emptied by anyone who reaches it. SIGHUP does what ``/v1/admin/reload``
does (``service.app``). With worker processes, ``/v1/admin/reload`` reaches every worker; the
one-model load and unload act on the worker that answers (use reload there).
"""

from __future__ import annotations

from fastapi import Depends

from service.api.routing import GuardedRouter, State
from service.api.schemas import ModelStatus, RepositoryIndex
from service.http.errors import Forbidden, Unavailable


async def require_admin(state: State) -> None:
    """403 unless API keys are configured (the key itself is checked by ``require_api_key``)."""
    if not state.api_keys:
        raise Forbidden(
            "repository control needs API keys: set SNNL_API_KEYS or SNNL_API_KEYS_FILE"
        )


_guards = [Depends(require_admin)]
repository = GuardedRouter(prefix="/v2/repository", tags=["repository"], dependencies=_guards)
admin = GuardedRouter(prefix="/v1/admin", tags=["repository"], dependencies=_guards)


@repository.post("/index", name="repository_index", response_model=list[ModelStatus])
async def repository_index(state: State) -> list[ModelStatus]:
    """Every model of the repository with its state: READY, LOADING or UNAVAILABLE (why)."""
    return state.index()


@repository.post("/models/{model}/load", name="load_model", response_model=ModelStatus)
async def load_model(model: str, state: State) -> ModelStatus:
    """Load ``model`` (again) from the repository and swap it in once warmed up; in-flight
    requests finish on the previous version. 503 with the reason when it cannot be loaded (the
    previous version, if any, keeps serving)."""
    status = await state.load(model)
    if status.reason:
        raise Unavailable(f"model {model!r}: not loaded: {status.reason}", retry_after=30)
    return status


@repository.post("/models/{model}/unload", name="unload_model", response_model=ModelStatus)
async def unload_model(model: str, state: State) -> ModelStatus:
    """Stop serving ``model`` until it is loaded again (requests to it: 503)."""
    return await state.unload(model)


@admin.post("/reload", name="reload", response_model=RepositoryIndex)
async def reload(state: State) -> RepositoryIndex:
    """Re-read the API keys file and follow the repository: load new and changed models,
    unload removed ones. The index afterwards (of the worker that answered: with worker
    processes, the others reload in the background)."""
    index = await state.reload()
    state.reload_peers()
    return RepositoryIndex(models=index)
