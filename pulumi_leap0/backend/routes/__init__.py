"""The API's routes, one module per tag of Leap0's OpenAPI document.

Each module holds one ``router = Router(tags=[...])`` (``backend.routing.Router``: every
path served with and without its trailing slash) and its routes in the document's order;
``health`` alone, not an operation of the API, keeps a plain ``APIRouter``.
A route takes ``Caller`` or ``InSandbox`` (``backend.dependencies``) for who is asking and
about which sandbox, reads its body with ``parse_body`` and does its work through the
lifecycle. A new tag is a new module here and one more entry in ``app.ROUTERS``.
"""
