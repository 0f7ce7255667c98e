"""The job API: submit a model request, poll it, fetch its result, cancel or delete it.

``POST /v1/jobs/{operation}`` takes what the synchronous route takes (the parameters are the same
dependency, ``Operation``) and runs the same ``prepare`` first: every refusal (401, 406, 413, 415,
422, 503) comes before the 202, and a 202 means the image decoded and holds its queue place. The
work then runs as a task in ``restore.service.jobs.JobStore`` through the same fair queues, with the same
``run_model`` and ``encode_run``, so the result is byte for byte what the synchronous route returns.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from restore.service.api.denoise import denoise_operation
from restore.service.api.deps import MODEL_DEPENDENCIES, api_key_owner, reject_stray_query, require_api_key, runtime_of
from restore.service.api.edges import edges_operation
from restore.service.api.openapi import IMAGE_BODY, JOB_DELETE_RESPONSES, JOB_RESPONSES, JOB_RESULT_RESPONSES, JOB_SUBMIT_RESPONSES
from restore.service.api.operation import JOBS_PREFIX, Operation, encode_run, observe_stages, prepare, run_model
from restore.service.api.weather import ROUTES, weather_operation_for
from restore.service.inference.scheduler import Progress
from restore.service.jobs import JobStore, chunks
from restore.service.limits.clients import client_of

#: Each operation and the dependency that reads its parameters (the synchronous route's own).
OPERATIONS: dict[str, Callable[..., Awaitable[Operation]]] = {
    "denoise": denoise_operation,
    "edges": edges_operation,
    **{route: weather_operation_for(route) for route in ROUTES},
}
#: Submissions are model requests (API key, query check, holds, the in-flight cap); the rest are not.
submit_router = APIRouter(dependencies=MODEL_DEPENDENCIES)
router = APIRouter(dependencies=[Depends(require_api_key), Depends(reject_stray_query)])


def jobs_of(request: Request) -> JobStore:
    store: JobStore = request.app.state.jobs
    return store


async def submit(request: Request, name: str, operation: Operation) -> JSONResponse:
    """Admit as the synchronous route does, then answer 202 and run the rest as a job."""
    store = jobs_of(request)
    runtime = runtime_of(request)
    owner, client = api_key_owner(request), client_of(request)
    with store.place(client):
        prepared = await prepare(request, operation)
        holds: AsyncExitStack = request.state.holds.pop_all()  # now the job's: given back when it ends

        async def work(progress: Progress) -> tuple[bytes, str, dict[str, str]]:
            run = await run_model(prepared, runtime.settings, progress)
            encoded = await encode_run(run, operation)
            observe_stages(runtime.metrics, f"{JOBS_PREFIX}{name}", prepared.timer)
            return encoded.body, encoded.media_type, encoded.headers

        job = store.submit(
            operation=name, owner=owner, client=client, model=prepared.admitted.state.spec.name, tiles=prepared.tile_count(runtime.settings),
            timings=prepared.timer.stages, work=work, holds=holds,
        )
    return JSONResponse(job.public(runtime.settings.jobs_ttl_s), status_code=202, headers={"Location": job.url})


def _submit_route(name: str, dependency: Callable[..., Awaitable[Operation]]) -> Callable[..., Awaitable[JSONResponse]]:
    async def submit_job(request: Request, operation: Operation = Depends(dependency)) -> JSONResponse:
        return await submit(request, name, operation)

    submit_job.__doc__ = (
        f"Submit what POST /{name} takes (same body, parameters, limits and errors) and get 202 at once; "
        "poll the job at Location, then GET its result. `?format=` picks the result's format (Accept is for this JSON)."
    )
    return submit_job


for _name, _dependency in OPERATIONS.items():
    submit_router.add_api_route(
        f"{JOBS_PREFIX}{_name}", _submit_route(_name, _dependency), methods=["POST"], status_code=202,
        summary=f"Submit a {_name} job", response_class=JSONResponse, responses=JOB_SUBMIT_RESPONSES,
        openapi_extra=IMAGE_BODY, operation_id=f"submit_{_name}_job",
    )


@router.get(JOBS_PREFIX + "{job_id}", summary="A job's status, progress and timings", responses=JOB_RESPONSES)
async def get_job(request: Request, job_id: str) -> JSONResponse:
    """Progress is in tiles (the image's tiles on its model); `error` holds the problem once failed."""
    store = jobs_of(request)
    job = store.get(job_id, api_key_owner(request))
    return JSONResponse(job.public(runtime_of(request).settings.jobs_ttl_s))


@router.get(
    JOBS_PREFIX + "{job_id}/result", summary="A finished job's image", response_class=Response, responses=JOB_RESULT_RESPONSES,
)
async def get_result(request: Request, job_id: str) -> Response:
    """The bytes the synchronous route would have returned, streamed from disk."""
    store = jobs_of(request)
    handle, result = await store.open_result(store.get(job_id, api_key_owner(request)))
    headers = {**result.headers, "Content-Length": str(result.size)}
    return StreamingResponse(chunks(handle), media_type=result.media_type, headers=headers)


@router.delete(JOBS_PREFIX + "{job_id}", summary="Cancel a job, or delete a finished one", responses=JOB_DELETE_RESPONSES)
async def delete_job(request: Request, job_id: str) -> Response:
    """Queued or running: cancelled (its tiles leave the queue), 200 with the job. Finished: deleted, 204."""
    store = jobs_of(request)
    job = store.get(job_id, api_key_owner(request))
    if await store.delete(job):
        return Response(status_code=204)
    return JSONResponse(job.public(runtime_of(request).settings.jobs_ttl_s))


__all__ = ["OPERATIONS", "router", "submit_router"]
