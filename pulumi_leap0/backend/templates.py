"""User templates: upload (pull and unpack an image), rename, delete.

An upload takes minutes, so it holds neither the organization's share of workers nor a
lock another organization waits on: its name and its place under the limit are claimed
in the store first (a row without a digest, which nobody can use yet), the pull runs in a
worker thread of the uploads' own limiter (``UPLOAD_THREADS`` for the whole backend,
``spec.MAX_UPLOADS_PER_ORG`` per organization, more answer 429 at once), bounded in time
and size by the runner (``spec.TEMPLATE_UPLOAD_TIMEOUT_S``, ``spec.MAX_TEMPLATE_IMAGE_MIB``),
and only then is the row completed. A failed upload drops its row; the runner has removed
its scratch. Two templates of one image share its unpacked root; the last one deleted
removes it. ``_images`` orders that removal against an upload finishing on the same image.
"""

from __future__ import annotations

import collections
import threading

import anyio
from anyio import to_thread

from pulumi_leap0 import spec
from pulumi_leap0.backend import runtime
from pulumi_leap0.backend.errors import ApiError, conflict, not_found
from pulumi_leap0.backend.store import Store, TemplateConflict, TemplateRecord

#: Pulls at once, for every organization together; one more waits for a thread.
UPLOAD_THREADS = 4


class Templates:
    def __init__(self, store: Store, runner: runtime.Runner) -> None:
        self.store, self.runner = store, runner
        self._limiter = anyio.CapacityLimiter(UPLOAD_THREADS)
        self._uploads: collections.Counter[str] = collections.Counter()
        self._images = threading.Lock()

    def get(self, org_id: str, template_id: str) -> TemplateRecord:
        record = self.store.get_template(template_id, org_id)
        if record is None:
            raise not_found("template")
        return record

    async def upload(self, org_id: str, body: spec.TemplateUploadRequest) -> TemplateRecord:
        if self._uploads[org_id] >= spec.MAX_UPLOADS_PER_ORG:
            raise ApiError(429, f"an organization uploads at most {spec.MAX_UPLOADS_PER_ORG} "
                           "template(s) at once; try again when it is done",
                           headers={"Retry-After": "5"})
        try:
            template_id = self.store.reserve_template(org_id, body.name, body.uri)
        except TemplateConflict as exc:
            raise conflict(str(exc)) from None
        self._uploads[org_id] += 1
        try:
            image = await to_thread.run_sync(runtime.pull_image, self.runner, body,
                                             limiter=self._limiter)
            with self._images:
                if not runtime.has_image(self.runner, image.digest):  # a delete won the race
                    raise ApiError(409, "the image was removed meanwhile: upload it again")
                return self.store.complete_template(template_id, image.digest,
                                                    runtime.image_config(image))
        except BaseException:
            self.store.drop_template(template_id)
            raise
        finally:
            self._uploads[org_id] -= 1
            if not self._uploads[org_id]:
                del self._uploads[org_id]

    def rename(self, template: TemplateRecord, name: str) -> None:
        try:
            self.store.rename_template(template.id, name)
        except TemplateConflict as exc:
            raise conflict(str(exc)) from None

    async def delete(self, template: TemplateRecord) -> None:
        def delete_and_free() -> None:
            with self._images:
                try:
                    shared = self.store.delete_template(template.id)
                except TemplateConflict as exc:
                    raise conflict(str(exc)) from None
                if not shared and template.digest is not None:
                    runtime.remove_image(self.runner, template.digest)

        await to_thread.run_sync(delete_and_free)
