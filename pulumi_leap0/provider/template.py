"""``leap0.Template``'s provider: inputs, check, diff, create, read, update, delete, laid out
as ``sandbox.py`` is.

* A new ``uri`` replaces the template (deleted first: names are unique and an organization
  holds at most 25); a new ``name`` renames it in place (``PATCH``).
* ``credentials`` serve the upload only: the API neither stores nor returns them, so new
  credentials alone change nothing (no diff); a later replacement uploads with the
  credentials the program has then. Outputs keep only their fingerprint.
* The API has no call that reads a template: refresh keeps the outputs as the last
  ``up`` left them, so it sees neither a rename nor a delete made outside Pulumi.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pulumi import dynamic

from pulumi_leap0 import spec
from pulumi_leap0.client import Leap0Error
from pulumi_leap0.provider import normal_form
from pulumi_leap0.provider.base import (
    Backoff,
    Leap0Provider,
    ProviderError,
    check_result,
    create_error,
    diff_result,
)

# --- Inputs in normal form -------------------------------------------------------------------

#: What the upload reports; never inputs, never a reason to update.
COMPUTED_OUTPUTS = ("digest", "image_config", "is_system", "created_at",
                    "credentials_sha256")
_COMPARED = ("name", "uri")
#: How long delete waits for sandboxes that still use the template to go (``delete``).
IN_USE_WAIT_S = 30.0
_API_INPUTS = tuple(spec.TemplateUploadRequest.model_fields)
# Both required fields may be unknown in a preview: stand-ins that pass every rule.
_STAND_INS = {"name": "unknown", "uri": "unknown"}


def _given(props: Mapping[str, Any]) -> dict[str, Any]:
    return {name: props[name] for name in _API_INPUTS if props.get(name) is not None}


def _inputs_of(request: spec.TemplateUploadRequest) -> dict[str, Any]:
    return request.wire()


def normal_inputs(props: Mapping[str, Any]) -> tuple[dict[str, Any], list[dynamic.CheckFailure]]:
    return normal_form.normalize(_given(props), spec.validate_template, _inputs_of,
                                 _STAND_INS)


def _request(props: Mapping[str, Any]) -> spec.TemplateUploadRequest:
    try:
        return spec.validate_template(_given(props))
    except spec.SpecError as exc:
        raise ProviderError(f"invalid template inputs: {exc}") from None


class TemplateProvider(Leap0Provider):
    """Leap0 templates (container images). Pickled into state by this name: keep it."""

    __module__ = "pulumi_leap0.provider"

    # --- check and diff --------------------------------------------------------------------

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> dynamic.CheckResult:
        return check_result(news, normal_inputs(news))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        changed = normal_form.changed(news, olds, _COMPARED)
        return diff_result(news, olds, changed, spec.TEMPLATE_REPLACE_ON_CHANGE)

    # --- create ----------------------------------------------------------------------------

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        request = _request(props)
        with self.client() as client:
            try:
                template = client.upload_template(request)
            except Leap0Error as exc:
                raise _create_error(exc) from None
        # A failed upload leaves nothing behind on the service, so there is nothing to undo.
        return dynamic.CreateResult(template.id,
                                    _outputs(request, template.model_dump(mode="json")))

    # --- read ------------------------------------------------------------------------------

    def read(self, id_: str, props: dict[str, Any]) -> dynamic.ReadResult:
        # No call reads a template: what the last up recorded is all there is to report.
        outputs = {k: v for k, v in props.items() if k != "__provider"}
        inputs = {k: outputs[k] for k in _COMPARED if k in outputs}
        return dynamic.ReadResult(id_, outputs, inputs)

    # --- update ----------------------------------------------------------------------------

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        request = _request(news)
        if request.name != olds.get("name"):
            with self.client() as client:
                try:
                    client.rename_template(id_, request.name)
                except Leap0Error as exc:
                    raise ProviderError(f"Leap0 could not rename template {id_}: "
                                        f"{_reason(exc)}") from None
        return dynamic.UpdateResult(_outputs(request, olds))

    # --- delete ----------------------------------------------------------------------------

    def delete(self, id_: str, _props: dict[str, Any]) -> None:
        # A sandbox may use the template without depending on it in the program (one restored
        # from a snapshot of a sandbox of it), so the engine can delete both at once: while
        # sandboxes are still going, "in use" is waited out, as Terraform providers retry a
        # resource still in use, and only then is it the error that names them.
        backoff = Backoff(IN_USE_WAIT_S)
        with self.client() as client:
            while True:
                try:
                    client.delete_template(id_)
                    return
                except Leap0Error as exc:
                    if exc.not_found:
                        return  # already gone: what delete wants
                    if not exc.conflict:
                        raise ProviderError(
                            f"Leap0 could not delete template {id_}: {exc}") from None
                    if not backoff.pause():
                        # The message names the sandboxes that still use it.
                        raise ProviderError(f"Leap0 refused to delete template {id_}: "
                                            f"{exc.message}") from None


# --- Helpers for the calls above, in the same order ------------------------------------------


def _create_error(exc: Leap0Error) -> ProviderError:
    return create_error(
        exc, "template",
        refused=(f"Template names are unique in an organization, which holds at most "
                 f"{spec.MAX_TEMPLATES_PER_ORG} templates: rename or delete one."),
        listing="the Leap0 console (the API lists no templates)",
    )


def _reason(exc: Leap0Error) -> str:
    if exc.errors:
        return "; ".join(f"{e.field}: {e.error}" for e in exc.errors)
    return exc.message


def _outputs(request: spec.TemplateUploadRequest, reported: Mapping[str, Any]) -> dict[str, Any]:
    """The inputs (credentials only as a fingerprint) and what the upload reported."""
    outputs: dict[str, Any] = {"name": request.name, "uri": request.uri}
    for name in COMPUTED_OUTPUTS:
        if reported.get(name) is not None:
            outputs[name] = reported[name]
    credentials = request.credentials
    outputs["credentials_sha256"] = normal_form.fingerprint(
        "template-credentials", *(credentials.model_dump_json(),) if credentials else ())
    return outputs
