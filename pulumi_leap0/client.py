"""A small typed client for the Leap0 API, over httpx.

Retry rules, and why:

* 429 on any call: the server refused before doing anything, so trying again is safe.
  ``Retry-After`` is honoured when the server sends it.
* 5xx and connection errors only on GET and DELETE: those are idempotent. A POST that
  failed that way may have created a sandbox, and a blind retry could create a second one
  (and spend the organization's quota), so it is never retried.
"""

from __future__ import annotations

import functools
import os
import random
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel

from pulumi_leap0 import spec

if TYPE_CHECKING:
    # httpx (~80 ms to import) is loaded by the first client made, not by importing this
    # module: a Pulumi program imports it through the resources and never sends a request.
    import httpx

DEFAULT_BASE_URL = "https://api.leap0.dev"
API_KEY_ENV = "LEAP0_API_KEY"
BASE_URL_ENV = "LEAP0_BASE_URL"

AuthHeader = Literal["authorization", "leap0-authorization"]
ModelT = TypeVar("ModelT", bound=BaseModel)

_IDEMPOTENT = frozenset({"GET", "HEAD", "DELETE"})


class Leap0Error(Exception):
    """An error answer from the API, or no answer at all (``status`` 0)."""

    def __init__(
        self, status: int, message: str, errors: list[spec.FieldError] | None = None
    ) -> None:
        self.status = status
        self.message = message
        self.errors = errors or []
        detail = "; ".join(f"{e.field}: {e.error}" for e in self.errors)
        super().__init__(f"{status} {message}" + (f" ({detail})" if detail else ""))

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


class MissingCredentialsError(Leap0Error):
    def __init__(self) -> None:
        super().__init__(
            401,
            f"no Leap0 API key: set the {API_KEY_ENV} environment variable "
            "or the stack config leap0:apiKey (pulumi config set --secret leap0:apiKey ...)",
        )


class RetryPolicy:
    """Jittered exponential backoff ("full jitter"), capped, with a bounded number of tries."""

    def __init__(
        self,
        max_retries: int = 5,
        base_delay: float = 0.1,
        max_delay: float = 8.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.max_retries = max_retries
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.sleep = sleep

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_delay * 4)
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # Loading the CA store costs ~25 ms; the provider builds a client per engine call.
    import httpx

    return httpx.create_ssl_context()


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _error_from(response: httpx.Response) -> Leap0Error:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        message = str(body.get("message") or response.reason_phrase)
        errors = [
            spec.FieldError(field=str(e.get("field", "")), error=str(e.get("error", "")))
            for e in body.get("errors") or []
            if isinstance(e, dict)
        ]
        return Leap0Error(response.status_code, message, errors)
    return Leap0Error(response.status_code, response.reason_phrase or "error")


class Leap0Client:
    """One Leap0 organization, reached through one API key."""

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        auth_header: AuthHeader = "authorization",
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        key = api_key or os.environ.get(API_KEY_ENV)
        if not key:
            raise MissingCredentialsError()
        url = (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
        headers = (
            {"Authorization": f"Bearer {key}"}
            if auth_header == "authorization"
            else {"leap0-authorization": key}
        )
        self.base_url = url
        self.retry = retry or RetryPolicy()
        import httpx

        self._http = httpx.Client(
            base_url=url,
            headers=headers,
            timeout=timeout,
            transport=transport,
            verify=_tls_context(),
        )

    def __enter__(self) -> Leap0Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- Sandboxes ---------------------------------------------------------------------------

    def create_sandbox(self, request: spec.SandboxCreateRequest) -> spec.Sandbox:
        return self._call("POST", "/v1/sandbox/", spec.Sandbox, json=request.wire())

    def get_sandbox(self, sandbox_id: str) -> spec.Sandbox:
        return self._call("GET", f"/v1/sandbox/{sandbox_id}/", spec.Sandbox)

    def list_sandboxes(
        self,
        *,
        state: spec.SandboxState | None = None,
        sort: Literal["created_at", "state"] = "created_at",
        order_by: Literal["asc", "desc"] = "desc",
        page: int = 1,
        page_size: int = spec.LIST_PAGE_SIZE_DEFAULT,
    ) -> spec.SandboxList:
        params: dict[str, str | int] = {
            "sort": sort,
            "order-by": order_by,
            "page": page,
            "page-size": page_size,
        }
        if state is not None:
            params["state"] = state.value
        return self._call("GET", "/v1/sandboxes", spec.SandboxList, params=params)

    def delete_sandbox(self, sandbox_id: str) -> None:
        self._call_no_content("DELETE", f"/v1/sandbox/{sandbox_id}/")

    def pause_sandbox(self, sandbox_id: str) -> spec.Sandbox:
        return self._call("POST", f"/v1/sandbox/{sandbox_id}/pause", spec.Sandbox)

    def stop_sandbox(self, sandbox_id: str) -> spec.Sandbox:
        return self._call("POST", f"/v1/sandbox/{sandbox_id}/stop", spec.Sandbox)

    def start_sandbox(self, sandbox_id: str) -> spec.Sandbox:
        return self._call("POST", f"/v1/sandbox/{sandbox_id}/start", spec.Sandbox)

    # --- Snapshots ---------------------------------------------------------------------------

    def create_snapshot(self, sandbox_id: str,
                        request: spec.SnapshotCreateRequest) -> spec.Snapshot:
        return self._call("POST", f"/v1/sandbox/{sandbox_id}/snapshot/create", spec.Snapshot,
                          json=request.wire(),
                          # The sandbox's whole disk is captured before the answer comes.
                          timeout=spec.SNAPSHOT_TIMEOUT_S + 30.0)

    def list_snapshots(
        self,
        *,
        query: str = "",
        sort: Literal["created_at", "template_id"] = "created_at",
        order_by: Literal["asc", "desc"] = "desc",
        page: int = 1,
        page_size: int = spec.LIST_PAGE_SIZE_DEFAULT,
    ) -> spec.SnapshotList:
        params: dict[str, str | int] = {"query": query, "sort": sort, "order-by": order_by,
                                        "page": page, "page-size": page_size}
        return self._call("GET", "/v1/snapshots", spec.SnapshotList, params=params)

    def iter_snapshots(self, query: str = "") -> Iterator[spec.Snapshot]:
        """Every snapshot whose name contains ``query``, page after page of the list call
        (the API has no call that reads one snapshot)."""
        page = 1
        while True:
            listing = self.list_snapshots(query=query, page=page,
                                          page_size=spec.LIST_PAGE_SIZE_MAX)
            yield from listing.items
            if page * spec.LIST_PAGE_SIZE_MAX >= listing.total_items or not listing.items:
                return
            page += 1

    def find_snapshot(self, name: str) -> spec.Snapshot | None:
        """The snapshot of exactly this name; None when there is none."""
        return next((s for s in self.iter_snapshots(query=name) if s.name == name), None)

    def delete_snapshot(self, snapshot_id: str) -> None:
        self._call_no_content("DELETE", f"/v1/snapshot/{snapshot_id}")

    def restore_snapshot(self, request: spec.SnapshotRestoreRequest) -> spec.Sandbox:
        return self._call("POST", "/v1/snapshot/restore", spec.Sandbox, json=request.wire(),
                          timeout=spec.SNAPSHOT_TIMEOUT_S + 30.0)

    # --- Mounts ------------------------------------------------------------------------------

    def add_mount(self, sandbox_id: str, mount: spec.MountRequest) -> spec.Mount:
        return self._call(
            "POST", f"/v1/sandbox/{sandbox_id}/mounts", spec.Mount, json=mount.wire()
        )

    def update_mount(
        self, sandbox_id: str, mount_id: str, update: spec.MountUpdateRequest
    ) -> spec.Mount:
        return self._call(
            "PATCH",
            f"/v1/sandbox/{sandbox_id}/mounts/{mount_id}",
            spec.Mount,
            json=update.wire(),
        )

    def delete_mount(self, sandbox_id: str, mount_id: str) -> None:
        self._call_no_content("DELETE", f"/v1/sandbox/{sandbox_id}/mounts/{mount_id}")

    # --- Processes ---------------------------------------------------------------------------

    def execute(self, sandbox_id: str, request: spec.ExecuteRequest) -> spec.ExecuteResponse:
        return self._call(
            "POST",
            f"/v1/sandbox/{sandbox_id}/process/execute",
            spec.ExecuteResponse,
            json=request.wire(),
            # The command may run for its whole timeout before the answer comes.
            timeout=request.timeout + 10.0,
        )

    # --- Templates ---------------------------------------------------------------------------

    def upload_template(self, request: spec.TemplateUploadRequest) -> spec.Template:
        # The backend pulls and unpacks the image before it answers: minutes, at most its
        # own bound, and never retried (a second upload would be a second template).
        return self._call("POST", "/v1/template", spec.Template, json=request.wire(),
                          timeout=spec.TEMPLATE_UPLOAD_TIMEOUT_S + 30.0)

    def rename_template(self, template_id: str, name: str) -> None:
        self._call_no_content("PATCH", f"/v1/template/{template_id}",
                              json=spec.TemplateRenameRequest(name=name).wire())

    def delete_template(self, template_id: str) -> None:
        self._call_no_content("DELETE", f"/v1/template/{template_id}")

    # --- Transport ---------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        model: type[ModelT],
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, str | int] | None = None,
        timeout: float | None = None,
    ) -> ModelT:
        response = self._checked(method, path, json=json, params=params, timeout=timeout)
        return model.model_validate(response.json())

    def _call_no_content(self, method: str, path: str, *,
                         json: Mapping[str, Any] | None = None) -> None:
        self._checked(method, path, json=json)

    def _checked(
        self,
        method: str,
        path: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, str | int] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        response = self._send(method, path, json=json, params=params, timeout=timeout)
        if response.status_code >= 400:
            raise _error_from(response)
        return response

    def _send(
        self,
        method: str,
        path: str,
        *,
        json: Mapping[str, Any] | None,
        params: Mapping[str, str | int] | None,
        timeout: float | None,
    ) -> httpx.Response:
        import httpx

        idempotent = method in _IDEMPOTENT
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                response = self._http.request(
                    method,
                    path,
                    json=json,
                    params=params,
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TransportError as exc:
                if not idempotent or attempt >= self.retry.max_retries:
                    raise Leap0Error(
                        0, f"{method} {path}: no answer from {self.base_url} ({exc})"
                    ) from exc
            else:
                retryable = response.status_code == 429 or (
                    idempotent and response.status_code >= 500
                )
                if not retryable or attempt >= self.retry.max_retries:
                    return response
                retry_after = _retry_after(response)
                response.close()
            self.retry.sleep(self.retry.delay(attempt, retry_after))
            attempt += 1
