"""The Leap0 API contract, once: limits, models, validation and normalization.

Everything that knows a rule of the API derives it from here: the provider's ``check``,
the backend's request validation, the policy pack's defaults and ``schema.json``. A model
that validates is also normalized (defaults filled in, domains lower-cased, lists in a
canonical order), so two requests that mean the same sandbox compare equal.

Errors use the API's own shape: a field path such as ``mounts[1].prefix`` and one sentence.
Messages never repeat the rejected value, because some fields hold credentials.
"""

from __future__ import annotations

import enum
import ipaddress
import posixpath
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

# --- Limits and defaults -------------------------------------------------------------------

VCPU_MIN, VCPU_MAX, VCPU_DEFAULT = 1, 8, 1
MEMORY_MIN_MIB, MEMORY_MAX_MIB, MEMORY_DEFAULT_MIB = 512, 8192, 1024
TIMEOUT_MIN_S, TIMEOUT_MAX_S, TIMEOUT_DEFAULT_S = 1, 28800, 300
AUTO_PAUSE_DEFAULT = False
MAX_MOUNTS = 8
MAX_ALLOW_DOMAINS = 50
MAX_ALLOW_CIDRS = 10
MAX_TRANSFORMS = 20
MAX_SANDBOXES_PER_ORG = 3
EXECUTE_TIMEOUT_DEFAULT_S = 30
# What an exec can hand to Linux. A command and each environment variable (NAME=value) are
# single strings of an execve, which Linux caps at 128 KiB each (MAX_ARG_STRLEN); all of a
# call's variables, the sandbox's and its own, go into one execve beside the command, which
# holds 2 MiB in all (ARG_MAX with the default 8 MiB stack); bubblewrap takes at most 9000
# arguments, two per variable. The limits stay well inside those, so the runner may wrap
# a command and still never fail on what the API accepted.
MAX_COMMAND_BYTES = 64 * 1024
MAX_ENV_NAME_BYTES = 1024
MAX_ENV_VALUE_BYTES = 64 * 1024
#: For ``env_vars`` and for a call's ``envs``, each.
MAX_ENV_VARS = 1000
MAX_ENV_BYTES = 512 * 1024
#: One organization's share of the backend's workers: calls into its sandboxes (execute,
#: the file calls) and changes to them (create, pause, stop, start, delete, mounts) that
#: run at once. A call over its share waits for one to end (boundedly), then answers 429.
MAX_CALLS_PER_ORG = 8
MAX_CHANGES_PER_ORG = 4
LIST_PAGE_SIZE_DEFAULT, LIST_PAGE_SIZE_MAX = 20, 100

MOUNT_TYPE: Literal["object-storage"] = "object-storage"
SANDBOX_ID_PREFIX = "sbx-"
MOUNT_ID_PREFIX = "mnt-"
SNAPSHOT_ID_PREFIX = "snap-"

#: No API call changes these on an existing sandbox: a change to any of them replaces it.
REPLACE_ON_CHANGE: tuple[str, ...] = (
    "template_name",
    "env_vars",
    "vcpu",
    "memory",
    "timeout",
    "auto_pause",
    "network_policy",
)
#: Changed in place through the mounts endpoints.
UPDATABLE_IN_PLACE: tuple[str, ...] = ("mounts",)

#: Paths of values that are credentials, in dotted form with ``[]`` for list items and
#: ``{}`` for map values. Resources mark them secret; responses never carry them.
SECRET_PATHS: tuple[str, ...] = (
    "env_vars.{}",
    "mounts[].access_key_id",
    "mounts[].secret_access_key",
    "network_policy.transforms[].inject_headers.{}",
)
#: A template's: its registry credentials, whole (the type too: it says which cloud).
TEMPLATE_SECRET_PATHS: tuple[str, ...] = ("credentials",)
#: A new image replaces a template; a rename is a PATCH; credentials serve only the upload.
TEMPLATE_REPLACE_ON_CHANGE: tuple[str, ...] = ("uri",)


class SandboxState(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    UNPAUSING = "unpausing"
    SNAPSHOTTING = "snapshotting"
    STOPPING = "stopping"
    STOPPED = "stopped"
    DELETING = "deleting"
    DELETED = "deleted"


#: States in which the sandbox is moving and calls that change it answer 409.
TRANSITIONING_STATES = frozenset(
    {
        SandboxState.STARTING,
        SandboxState.UNPAUSING,
        SandboxState.SNAPSHOTTING,
        SandboxState.STOPPING,
        SandboxState.DELETING,
    }
)
#: States in which the sandbox exists for its owner (and counts toward the quota).
GONE_STATES = frozenset({SandboxState.DELETING, SandboxState.DELETED})

NetworkMode = Literal["allow-all", "deny-all", "custom"]

# --- File calls ----------------------------------------------------------------------------

#: Paths as Linux bounds them, in bytes: one name (NAME_MAX) and a whole path (PATH_MAX).
MAX_NAME_BYTES, MAX_PATH_BYTES = 255, 4096
#: ``filesystem/ls``: patterns in ``exclude``, characters per pattern, and entries in one
#: answer. A walk (a recursive ``ls`` or ``delete``) descends at most ``MAX_TREE_DEPTH``.
MAX_LS_EXCLUDE, MAX_LS_EXCLUDE_CHARS = 100, 256
MAX_LS_ENTRIES = 50_000
MAX_TREE_DEPTH = 256
#: Bytes one ``read-file`` answers (read a larger file in parts, with offset and limit),
#: and bytes one ``write-file`` body may hold.
MAX_READ_FILE_BYTES = 256 * 1024 * 1024
MAX_WRITE_FILE_BYTES = 32 * 1024 * 1024
#: How long a file call may take, in seconds: one about names (stat, ls, mkdir, delete,
#: exists), and one that moves contents (read-file, write-file).
FILE_CALL_TIMEOUT_S = 30
FILE_TRANSFER_TIMEOUT_S = 300
#: Files in one batch call (``write-files`` parts, ``read-files`` paths, ``edit-files``
#: files), and bytes one ``read-files`` answers in all (a ``write-files`` body has the
#: ``write-file`` limit, ``MAX_WRITE_FILE_BYTES``, for all its parts together).
MAX_BATCH_FILES = 100
MAX_READ_FILES_BYTES = 64 * 1024 * 1024
#: ``glob``, ``grep`` and ``tree`` walk at most ``MAX_WALK_ENTRIES`` entries (looked at,
#: listed or not) and answer at most ``MAX_GLOB_RESULTS`` paths, ``MAX_GREP_MATCHES``
#: matches or ``MAX_LS_ENTRIES`` tree entries. ``grep`` takes a regular expression of at most
#: ``MAX_GREP_PATTERN_CHARS`` characters, skips files larger than ``MAX_GREP_FILE_BYTES``
#: and cuts a matching line's content at ``MAX_GREP_LINE_CHARS``. Python's ``re``
#: backtracks, so a pattern can take exponential time on one line: the search's deadline,
#: ``FILE_SEARCH_TIMEOUT_S``, ends it (the helper's worker is killed there).
MAX_WALK_ENTRIES = 200_000
MAX_GLOB_RESULTS = 10_000
MAX_GREP_MATCHES = 1_000
MAX_GREP_PATTERN_CHARS = 1024
MAX_GREP_FILE_BYTES = 16 * 1024 * 1024
MAX_GREP_LINE_CHARS = 1000
FILE_SEARCH_TIMEOUT_S = 10
#: ``edit-file``: edits in one call, and the largest file an edit (or ``edit-files``) reads.
MAX_EDITS = 100
MAX_EDIT_FILE_BYTES = 8 * 1024 * 1024

# --- Git calls -----------------------------------------------------------------------------

#: How long one git call may take, in seconds: on the repository alone, and one that talks to
#: a remote (clone, push, pull). The runner kills every process of the call at its deadline.
GIT_CALL_TIMEOUT_S = 30
GIT_REMOTE_TIMEOUT_S = 300
#: Bytes of git's output (stdout, then stderr) one answer carries; the rest is cut.
MAX_GIT_OUTPUT_BYTES = 1024 * 1024
#: Bytes of one ref, branch, remote or revision; of a repository URL; of a commit message;
#: of a username or password (used for that one call only).
MAX_GIT_REF_BYTES = 1024
MAX_GIT_URL_BYTES = 4096
MAX_GIT_MESSAGE_BYTES = 64 * 1024
MAX_GIT_CREDENTIAL_BYTES = 4096
#: Files one ``git/add`` stages (all their paths together at most MAX_COMMAND_BYTES, as one
#: command's), commits one ``git/log`` shows, context lines of a diff.
MAX_GIT_ADD_FILES = 1000
MAX_GIT_LOG_COUNT = 1000
MAX_GIT_CONTEXT_LINES = 10_000
# --- Terminals (PTY) and preview URLs -------------------------------------------------------

#: PTY sessions one sandbox may hold at once (each a shell and its relay, in the sandbox's
#: cgroup), a session id's form, and a terminal's size in columns and rows.
MAX_PTY_SESSIONS = 8
PTY_SESSION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
PTY_COLS_DEFAULT, PTY_ROWS_DEFAULT = 80, 24
MAX_PTY_COLS, MAX_PTY_ROWS = 1000, 1000
#: Bytes of one WebSocket message of terminal input (larger ones close the connection).
MAX_PTY_INPUT_BYTES = 64 * 1024
#: How long a shell may take to start, in seconds, before its create answers 504.
PTY_START_TIMEOUT_S = 10
#: Presigned preview URLs: a lifetime's default and bound, in seconds, and how many one
#: sandbox may hold at once (expired ones do not count).
PRESIGNED_URL_TTL_DEFAULT_S = 3600
MAX_PRESIGNED_URL_TTL_S = 7 * 24 * 3600
MAX_PRESIGNED_URLS = 32
PRESIGNED_URL_ID_PREFIX = "psu-"
#: A preview request (through ``{id}-{port}.<domain>`` or a presigned host): seconds to
#: connect to the sandbox's port and to wait for each part of its answer.
PREVIEW_CONNECT_TIMEOUT_S = 5
PREVIEW_READ_TIMEOUT_S = 60

# --- Field rules ---------------------------------------------------------------------------

# RFC 1123 host labels; an optional leading "*." makes a wildcard for every subdomain.
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DOMAIN_RE = re.compile(rf"^(\*\.)?({_LABEL}\.)*{_LABEL}$")
#: Shell names: the runner hands variables to the sandbox as ``export NAME=...`` lines.
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# RFC 9110 token characters: what a header name may be made of.
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# The sandbox's own kernel file systems cannot be covered by a mount.
_RESERVED_MOUNT_ROOTS = ("/proc", "/sys", "/dev")


def _fail(kind: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(kind, message)


def normalize_domain(value: str) -> str:
    domain = value.strip().lower().rstrip(".")
    if len(domain) > 253 or not _DOMAIN_RE.match(domain) or "." not in domain.lstrip("*."):
        raise _fail(
            "domain",
            "must be a valid domain name such as example.com, optionally with a leading '*.'",
        )
    return domain


def normalize_cidr(value: str) -> str:
    try:
        network = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise _fail("cidr", "must be an IPv4 CIDR such as 10.0.0.0/8") from None
    if network.version != 4:
        raise _fail("cidr", "must be an IPv4 CIDR such as 10.0.0.0/8")
    return str(network)


def _header_name(value: str) -> str:
    if not _HEADER_NAME_RE.match(value):
        raise _fail("header_name", "must be a valid HTTP header name")
    return value.lower()


def _header_value(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise _fail("header_value", "must not contain line breaks")
    if "\0" in value:
        raise _fail("header_value", "must not contain NUL characters")
    return value


def _size(value: str) -> int:
    # Lone surrogates (which JSON can spell) are counted, not refused, here.
    return len(value.encode("utf-8", "surrogatepass"))


def _env_name(name: str) -> str:
    if not ENV_NAME_RE.match(name):
        raise _fail("env_name", "must be letters, digits and '_', and not start with a digit")
    if _size(name) > MAX_ENV_NAME_BYTES:
        raise _fail("env_name", f"must be at most {MAX_ENV_NAME_BYTES} bytes")
    return name


def _env_value(value: str) -> str:
    if "\0" in value:
        raise _fail("env_value", "must not contain NUL characters")
    if _size(value) > MAX_ENV_VALUE_BYTES:
        raise _fail("env_value", f"must be at most {MAX_ENV_VALUE_BYTES // 1024} KiB")
    return value


def _environment(env: dict[str, str]) -> dict[str, str]:
    if sum(_size(name) + _size(value) + 2 for name, value in env.items()) > MAX_ENV_BYTES:
        raise _fail("env_size", f"must hold at most {MAX_ENV_BYTES // 1024} KiB of "
                    "names and values")
    return dict(sorted(env.items()))


def _no_nul(value: str) -> str:
    if "\0" in value:
        raise _fail("nul", "must not contain NUL characters")
    return value


def _command(value: str) -> str:
    if _size(value) > MAX_COMMAND_BYTES:
        raise _fail("command", f"must be at most {MAX_COMMAND_BYTES // 1024} KiB")
    return _no_nul(value)


def _cwd(value: str) -> str:
    # MAX_PATH_BYTES counts the terminating NUL, as Linux's PATH_MAX does.
    if _size(value) >= MAX_PATH_BYTES:
        raise _fail("cwd", f"must be shorter than {MAX_PATH_BYTES} bytes")
    return _no_nul(value)


Domain = Annotated[str, AfterValidator(normalize_domain)]
Cidr = Annotated[str, AfterValidator(normalize_cidr)]
HeaderName = Annotated[str, AfterValidator(_header_name)]
HeaderValue = Annotated[str, AfterValidator(_header_value)]
EnvName = Annotated[str, AfterValidator(_env_name)]
EnvValue = Annotated[str, AfterValidator(_env_value)]
#: A map of environment variables: at most MAX_ENV_VARS of them, MAX_ENV_BYTES in all,
#: in name order.
Environment = Annotated[
    dict[EnvName, EnvValue], Field(max_length=MAX_ENV_VARS), AfterValidator(_environment)
]
NoNul = Annotated[str, AfterValidator(_no_nul)]


class _Model(BaseModel):
    # Unknown fields are ignored, as the API does; the models are values, not builders.
    model_config = ConfigDict(frozen=True, extra="ignore", defer_build=True)

    def wire(self) -> dict[str, Any]:
        """The JSON body for the API: unset optional fields left out."""
        return self.model_dump(mode="json", exclude_none=True)


# --- Files ---------------------------------------------------------------------------------


# One file as the sandbox sees it (the API's ``FileInfo``): what the runner's file calls
# answer and the backend's ``ls`` and ``stat`` return as they are. ``mode`` is octal, e.g.
# 755. No docstring: it would become the OpenAPI document's description.
class FileInfo(_Model):
    name: str
    path: str
    is_dir: bool
    size: int
    mode: str
    mtime: int
    owner: str
    group: str
    is_symlink: bool
    link_target: str | None = None


# --- Network policy ------------------------------------------------------------------------


class TransformRule(_Model):
    """A per-domain request transform rule for credential brokering or header manipulation."""

    domain: Domain = Field(description="Domain pattern to match (e.g. `api.openai.com`).")
    inject_headers: dict[HeaderName, HeaderValue] = Field(
        default_factory=dict,
        description="Headers to inject into matching requests. The values are credentials: "
        "they never enter the sandbox.",
        json_schema_extra={"secret": True},
    )
    strip_headers: list[HeaderName] = Field(
        default_factory=list, description="Header names to strip from matching requests."
    )

    @field_validator("inject_headers")
    @classmethod
    def _sort_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        return dict(sorted(headers.items()))

    @field_validator("strip_headers")
    @classmethod
    def _sort_names(cls, names: list[str]) -> list[str]:
        return sorted(set(names))


class NetworkPolicy(_Model):
    """Network egress policy for a sandbox. When omitted, defaults to allow-all."""

    mode: NetworkMode = Field(
        description="Policy mode. `allow-all` permits all egress, `deny-all` blocks all "
        "egress, `custom` allows only the listed domains and CIDRs."
    )
    allow_domains: Annotated[list[Domain], Field(max_length=MAX_ALLOW_DOMAINS)] = Field(
        default_factory=list,
        description="Domain names to allow outbound access to (custom mode only); "
        "`*.example.com` allows every subdomain.",
    )
    allow_cidrs: Annotated[list[Cidr], Field(max_length=MAX_ALLOW_CIDRS)] = Field(
        default_factory=list,
        description="IPv4 CIDR ranges to allow outbound access to (custom mode only).",
    )
    transforms: Annotated[list[TransformRule], Field(max_length=MAX_TRANSFORMS)] = Field(
        default_factory=list,
        description="Per-domain request transforms, such as credential brokering. Domains "
        "with transforms are implicitly allowed.",
    )

    @field_validator("allow_domains", "allow_cidrs")
    @classmethod
    def _canonical_order(cls, values: list[str]) -> list[str]:
        return sorted(set(values))

    @field_validator("transforms")
    @classmethod
    def _transforms(cls, transforms: list[TransformRule]) -> list[TransformRule]:
        domains = [t.domain for t in transforms]
        if len(set(domains)) != len(domains):
            raise _fail("unique", "each transform domain may appear only once")
        return sorted(transforms, key=lambda t: t.domain)

    @model_validator(mode="after")
    def _lists_fit_mode(self) -> NetworkPolicy:
        if self.mode != "custom":
            for name in ("allow_domains", "allow_cidrs"):
                if getattr(self, name):
                    raise _fail("mode", f"{name} is allowed only when mode is custom")
        if self.mode == "deny-all" and self.transforms:
            raise _fail("mode", "transforms are not allowed when mode is deny-all")
        return self

    def allowed_domains(self) -> list[str]:
        """Every domain the sandbox may reach: the listed ones and the transform domains."""
        return sorted(set(self.allow_domains) | {t.domain for t in self.transforms})

    def allows(self, host: str) -> bool:
        """Whether a sandbox under this policy may reach ``host`` by name."""
        if self.mode != "custom":
            return self.mode == "allow-all"
        return any(domain_matches(host, pattern) for pattern in self.allowed_domains())

    def transform_for(self, host: str) -> TransformRule | None:
        """The transform that applies to ``host``: an exact domain wins over a wildcard."""
        matching = [t for t in self.transforms if domain_matches(host, t.domain)]
        return max(matching, key=lambda t: (not t.domain.startswith("*."), len(t.domain)),
                   default=None)


def domain_matches(host: str, pattern: str) -> bool:
    """``example.com`` matches itself only; ``*.example.com`` matches every name under it
    (``a.example.com``, ``a.b.example.com``) but not ``example.com`` itself."""
    host = host.strip().lower().rstrip(".")
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


# --- Mounts --------------------------------------------------------------------------------


def _mount_path(value: str) -> str:
    _no_nul(value)
    if not value.startswith("/"):
        raise _fail("mount_path", "must be an absolute path")
    if ".." in value.split("/"):
        raise _fail("mount_path", "must not contain '..'")
    path = posixpath.normpath(value)
    if path == "/":
        raise _fail("mount_path", "must not be '/'")
    if any(path == root or path.startswith(root + "/") for root in _RESERVED_MOUNT_ROOTS):
        raise _fail("mount_path", "must not be under /proc, /sys or /dev")
    return path


def _endpoint(value: str) -> str:
    _no_nul(value)
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _fail("endpoint", "must be an http or https URL")
    # A key in the URL would travel wherever the URL does (logs, errors, state).
    if "@" in parts.netloc:
        raise _fail("endpoint", "must not contain user-info: give credentials as "
                    "access_key_id and secret_access_key")
    try:
        parts.port  # noqa: B018 (it validates on access)
    except ValueError:
        raise _fail("endpoint", "must have a port from 0 to 65535") from None
    return value.strip().rstrip("/")


def _prefix(value: str) -> str:
    _no_nul(value)
    if value == "":
        return value
    if value.startswith("/"):
        raise _fail("prefix", "must be relative (no leading '/')")
    if not value.endswith("/"):
        raise _fail("prefix", "must end with '/'")
    if ".." in value.split("/"):
        raise _fail("prefix", "must not contain '..'")
    return value


def _bucket(value: str) -> str:
    if not _BUCKET_RE.match(value):
        raise _fail(
            "bucket", "must be 3 to 63 lower-case letters, digits, dots or hyphens"
        )
    return value


def _read_only(value: bool) -> bool:
    if not value:
        raise _fail("read_only", "must be true: object-storage mounts are read-only")
    return value


Bucket = Annotated[str, AfterValidator(_bucket)]
MountPath = Annotated[str, AfterValidator(_mount_path)]
Endpoint = Annotated[str, AfterValidator(_endpoint)]
Prefix = Annotated[str, AfterValidator(_prefix)]
ReadOnly = Annotated[bool, AfterValidator(_read_only)]


_MOUNT_DOCS = {
    "bucket": "Bucket name in the S3-compatible object storage provider.",
    "mount_path": "Absolute sandbox path where the bucket contents will appear.",
    "endpoint": "Full S3-compatible endpoint URL, without user-info (credentials go in "
                "access_key_id and secret_access_key).",
    "prefix": "Key prefix within the bucket, relative and ending with '/'.",
    "read_only": "Whether the mount is read-only. Object storage mounts are read-only.",
    "access_key_id": "Access key id for the S3 bucket. Omit for public buckets.",
    "secret_access_key": "Secret access key for the S3 bucket. Omit for public buckets.",
}


class MountRequest(_Model):
    """A read-only S3-compatible bucket attached at a directory inside the sandbox."""

    type: Literal["object-storage"] = Field(description="Mount implementation type.")
    bucket: Bucket = Field(description=_MOUNT_DOCS["bucket"])
    mount_path: MountPath = Field(description=_MOUNT_DOCS["mount_path"])
    endpoint: Endpoint = Field(description=_MOUNT_DOCS["endpoint"])
    prefix: Prefix = Field(default="", description=_MOUNT_DOCS["prefix"])
    read_only: ReadOnly = Field(default=True, description=_MOUNT_DOCS["read_only"])
    access_key_id: NoNul | None = Field(
        default=None, description=_MOUNT_DOCS["access_key_id"], json_schema_extra={"secret": True}
    )
    secret_access_key: NoNul | None = Field(
        default=None,
        description=_MOUNT_DOCS["secret_access_key"],
        json_schema_extra={"secret": True},
    )

    @model_validator(mode="after")
    def _credentials_in_pairs(self) -> MountRequest:
        if bool(self.access_key_id) != bool(self.secret_access_key):
            raise _fail(
                "credentials",
                "access_key_id and secret_access_key must be given together or not at all",
            )
        return self


class MountUpdateRequest(_Model):
    """A change to an existing mount; omitted fields keep their value, "" clears a field."""

    bucket: Bucket | None = Field(default=None, description=_MOUNT_DOCS["bucket"])
    mount_path: MountPath | None = Field(default=None, description=_MOUNT_DOCS["mount_path"])
    endpoint: Endpoint | None = Field(default=None, description=_MOUNT_DOCS["endpoint"])
    prefix: Prefix | None = Field(default=None, description=_MOUNT_DOCS["prefix"])
    read_only: ReadOnly | None = Field(default=None, description=_MOUNT_DOCS["read_only"])
    access_key_id: NoNul | None = Field(default=None, json_schema_extra={"secret": True})
    secret_access_key: NoNul | None = Field(default=None, json_schema_extra={"secret": True})

    def apply_to(self, mount: MountRequest) -> MountRequest:
        """The mount as it is after this update (validated again as a whole)."""
        changes = self.model_dump(exclude_none=True)
        for secret in ("access_key_id", "secret_access_key"):
            if changes.get(secret) == "":
                changes[secret] = None
        return validate(MountRequest, {**mount.model_dump(), **changes})


class Mount(_Model):
    """Non-secret object storage mount metadata returned by the API."""

    id: str = Field(description="Unique mount identifier generated by the platform.")
    type: Literal["object-storage"] = "object-storage"
    bucket: str
    mount_path: str
    prefix: str = ""
    read_only: bool = True


# --- Sandboxes -----------------------------------------------------------------------------


class SandboxCreateRequest(_Model):
    """The body of ``POST /v1/sandbox/``."""

    template_name: str = Field(
        min_length=1, max_length=255, description="Name of the template to create the sandbox from."
    )
    env_vars: Environment = Field(
        default_factory=dict,
        description="Environment variables set for every process in the sandbox.",
        json_schema_extra={"secret": True},
    )
    mounts: Annotated[list[MountRequest], Field(max_length=MAX_MOUNTS)] = Field(
        default_factory=list,
        description="Read-only object storage mounts, exposed inside the sandbox through a "
        "lazy FUSE mount; credentials stay on the runner.",
    )
    vcpu: int = Field(
        default=VCPU_DEFAULT, ge=VCPU_MIN, le=VCPU_MAX, description="Number of virtual CPUs."
    )
    memory: int = Field(
        default=MEMORY_DEFAULT_MIB,
        ge=MEMORY_MIN_MIB,
        le=MEMORY_MAX_MIB,
        multiple_of=2,
        description="Memory in MiB. Must be an even number.",
    )
    timeout: int = Field(
        default=TIMEOUT_DEFAULT_S,
        ge=TIMEOUT_MIN_S,
        le=TIMEOUT_MAX_S,
        description="Sandbox timeout in seconds.",
    )
    auto_pause: bool = Field(
        default=AUTO_PAUSE_DEFAULT,
        description="Pause the sandbox instead of deleting it when it reaches its timeout.",
    )
    network_policy: NetworkPolicy | None = Field(
        default=None, description="Network egress policy; none means allow-all."
    )

    @field_validator("template_name")
    @classmethod
    def _template(cls, name: str) -> str:
        if name != name.strip():
            raise _fail("template_name", "must not start or end with white space")
        return name

    @field_validator("mounts")
    @classmethod
    def _mounts(cls, mounts: list[MountRequest]) -> list[MountRequest]:
        check_unique_mount_paths([m.mount_path for m in mounts])
        return sorted(mounts, key=lambda m: m.mount_path)

    def effective_network_policy(self) -> NetworkPolicy:
        return self.network_policy or NetworkPolicy(mode="allow-all")


def check_unique_mount_paths(paths: Sequence[str]) -> None:
    if len(set(paths)) != len(paths):
        raise _fail("unique", "each mount_path may be used by only one mount")


class Sandbox(_Model):
    """A sandbox as the API returns it (create and status responses)."""

    id: str = Field(description="Unique sandbox identifier.")
    template_id: str = Field(description="Template the sandbox was created from.")
    vcpu: int = Field(description="Number of virtual CPUs assigned to the sandbox.")
    memory: int = Field(description="Memory assigned to the sandbox, in MiB.")
    disk: int = Field(description="Writable disk size assigned to the sandbox, in MiB.")
    timeout: int = Field(description="Sandbox timeout in seconds.")
    state: SandboxState = Field(description="Current state of the sandbox.")
    auto_pause: bool = Field(description="Whether the sandbox pauses on timeout.")
    created_at: str = Field(description="ISO 8601 timestamp of when the sandbox was created.")
    mounts: list[Mount] = Field(default_factory=list, description="Attached mounts.")
    # Only the create response documents it; a status response may leave it out.
    network_policy: NetworkPolicy | None = Field(default=None)


class SandboxListItem(_Model):
    id: str
    template_id: str
    pod_id: str = ""
    state: SandboxState
    created_at: str
    launch_time: str | None = None
    state_change_time: str | None = None
    timeout_at: int | None = None


class SandboxList(_Model):
    items: list[SandboxListItem]
    total_items: int


class ExecuteRequest(_Model):
    command: Annotated[str, Field(min_length=1), AfterValidator(_command)]
    cwd: Annotated[str, AfterValidator(_cwd)] | None = None
    envs: Environment = Field(default_factory=dict)
    timeout: int = Field(default=EXECUTE_TIMEOUT_DEFAULT_S, ge=1, le=TIMEOUT_MAX_S)


class ExecuteResponse(_Model):
    exit_code: int
    stdout: str
    stderr: str


# --- Templates -----------------------------------------------------------------------------

MAX_TEMPLATES_PER_ORG = 25
MAX_TEMPLATE_NAME_CHARS = 64
MAX_TEMPLATE_URI_CHARS = 500
SYSTEM_TEMPLATE_PREFIX = "system/"
TEMPLATE_ID_PREFIX = "tpl-"
#: An upload's pull and unpack together end by then (a 400 saying so), and each of the
#: downloaded image and its unpacked root file system is at most this large.
TEMPLATE_UPLOAD_TIMEOUT_S = 600
MAX_TEMPLATE_IMAGE_MIB = 2048
#: Uploads of one organization at once; more answer 429 (each holds a pull for minutes).
MAX_UPLOADS_PER_ORG = 1
#: The registry of an image reference without one, as Docker and skopeo read it.
DEFAULT_REGISTRY = "docker.io"
#: What each credential type requires, as the document's ``oneOf`` says.
CREDENTIAL_FIELDS: dict[str, tuple[str, ...]] = {
    "basic": ("username", "password"),
    "aws": ("aws_access_key_id", "aws_secret_access_key"),
    "gcp": ("gcp_service_account_json",),
    "azure": ("azure_client_id", "azure_client_secret", "azure_tenant_id"),
}

# An image reference as distribution/reference's grammar has it (what `docker pull` and
# skopeo's docker:// take): [registry[:port]/]path[:tag][@digest], lower-case path.
_REGISTRY_PART = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)"
_REGISTRY_RE = re.compile(rf"^{_REGISTRY_PART}(?:\.{_REGISTRY_PART})*(?::[0-9]{{1,5}})?$")
_PATH_PART_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}$")


def split_image_reference(uri: str) -> tuple[str, str]:
    """``(registry, rest)``: the first part is a registry when it has a dot or a port or is
    ``localhost`` (Docker's rule), else the image is on ``DEFAULT_REGISTRY``."""
    first, _, rest = uri.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first.lower(), rest
    return DEFAULT_REGISTRY, uri


def image_registry(uri: str) -> str:
    """The registry (``host`` or ``host:port``, lower-case) an image reference pulls from."""
    return split_image_reference(uri)[0]


def _image_uri(value: str) -> str:
    rule = ("must be a container image reference such as docker.io/library/python:3.12 "
            "([registry[:port]/]path[:tag][@digest], lower-case path, no scheme)")
    if not value or value != value.strip() or "://" in value:
        raise _fail("uri", rule)
    registry, rest = split_image_reference(value)
    rest, at, digest = rest.partition("@")
    path, tag = rest, ""
    if ":" in rest.rsplit("/", 1)[-1]:
        path, tag = rest.rsplit(":", 1)
    if (not _REGISTRY_RE.match(registry) or not path
            or not all(_PATH_PART_RE.match(p) for p in path.split("/"))
            or (":" in rest and not _TAG_RE.match(tag))
            or (at and not _DIGEST_RE.match(digest))):
        raise _fail("uri", rule)
    return value


def _template_name(value: str) -> str:
    if not value:
        raise _fail("name", "must not be empty")
    if len(value) > MAX_TEMPLATE_NAME_CHARS:
        raise _fail("name", f"must be at most {MAX_TEMPLATE_NAME_CHARS} characters")
    if any(c.isspace() for c in value):
        raise _fail("name", "must not contain white space")
    if value.startswith(SYSTEM_TEMPLATE_PREFIX):
        raise _fail("name", f"must not start with {SYSTEM_TEMPLATE_PREFIX!r}: those are the "
                    "system templates")
    return _no_nul(value)


TemplateName = Annotated[str, AfterValidator(_template_name)]
ImageUri = Annotated[str, Field(max_length=MAX_TEMPLATE_URI_CHARS), AfterValidator(_image_uri)]


class RegistryCredentials(_Model):
    """Credentials for pulling from a private container registry."""

    type: Literal["basic", "aws", "gcp", "azure"] = Field(description="Authentication type.")
    username: NoNul | None = Field(default=None, description="Username (basic).")
    password: NoNul | None = Field(default=None, description="Password or token (basic).")
    aws_access_key_id: NoNul | None = None
    aws_secret_access_key: NoNul | None = None
    aws_region: NoNul | None = None
    gcp_service_account_json: NoNul | None = None
    azure_client_id: NoNul | None = None
    azure_client_secret: NoNul | None = None
    azure_tenant_id: NoNul | None = None

    @model_validator(mode="after")
    def _fields_of_type(self) -> RegistryCredentials:
        missing = [f for f in CREDENTIAL_FIELDS[self.type] if not getattr(self, f)]
        if missing:
            raise _fail("credentials", f"type {self.type} requires " + ", ".join(missing))
        return self


class TemplateUploadRequest(_Model):
    """The body of ``POST /v1/template``."""

    name: TemplateName = Field(description="Template name: at most 64 characters, no white "
                               "space, not starting with 'system/'; unique per organization.")
    uri: ImageUri = Field(description="Container image reference to pull and convert.")
    credentials: RegistryCredentials | None = Field(
        default=None, description="Credentials for a private registry; used for the upload "
        "only, never stored or returned.", json_schema_extra={"secret": True})


class TemplateRenameRequest(_Model):
    name: TemplateName = Field(description="New template name.")


class ImageConfig(_Model):
    """The image's own configuration, as its config blob says it."""

    entrypoint: list[str] | None = Field(default=None, description="The image's entrypoint.")
    cmd: list[str] | None = Field(default=None, description="The image's command.")
    working_dir: str = Field(default="", description="Where the sandbox's processes start.")
    user: str = Field(default="", description="The OS user the sandbox's processes run as.")
    env: dict[str, str] | None = Field(default=None, description="The image's environment.")


class Template(_Model):
    """A template as the upload answers it."""

    id: str = Field(description="Unique template identifier (`tpl-...`).")
    name: str = Field(description="Template name.")
    digest: str = Field(description="Digest of the image's manifest the template was made "
                        "from.")
    image_config: ImageConfig = Field(description="The image's configuration.")
    is_system: bool = Field(default=False, description="Whether this is a system template.")
    created_at: str = Field(description="When the template was uploaded.")
# --- Snapshots -----------------------------------------------------------------------------

#: A snapshot's name: what restore and the provider find it by, unique in its organization.
MAX_SNAPSHOT_NAME_CHARS = 64
#: Each snapshot holds up to a sandbox's whole disk on the server's own disk: a bound per
#: organization keeps one tenant from filling it (409 past it, as for a taken name).
MAX_SNAPSHOTS_PER_ORG = 10
#: Capturing a sandbox's files, or seeding a new sandbox with them, ends by then (a
#: sandbox stays frozen while it is captured, so the bound is also how long it may be).
SNAPSHOT_TIMEOUT_S = 120
#: What a snapshot fixes in the sandbox restored from it (restore takes no such fields: the
#: environment is the snapshot's too), so a sandbox made from a snapshot must not set them
#: (the provider's ``check`` names each one set).
SNAPSHOT_FIXES: tuple[str, ...] = ("template_name", "vcpu", "memory", "env_vars")
_SNAPSHOT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _snapshot_name(value: str) -> str:
    if not _SNAPSHOT_NAME_RE.match(value):
        raise _fail("snapshot_name", "must start with a letter or digit and hold only "
                    "letters, digits, '.', '_' and '-'")
    return value


SnapshotName = Annotated[
    str, Field(min_length=1, max_length=MAX_SNAPSHOT_NAME_CHARS), AfterValidator(_snapshot_name)
]


class SnapshotCreateRequest(_Model):
    """The body of ``POST /v1/sandbox/{id}/snapshot/create``."""

    name: SnapshotName | None = Field(
        default=None, description="Snapshot name, unique in the organization: letters, "
        "digits, '.', '_' and '-', starting with a letter or digit; Leap0 generates one when "
        "omitted.")
    kill_sandbox_after: bool = Field(
        default=False, description="Delete the source sandbox once the snapshot is stored.")


class Snapshot(_Model):
    """A snapshot as the API returns it (create and list)."""

    id: str = Field(description="Unique snapshot identifier.")
    name: str = Field(description="Snapshot name.")
    template_id: str = Field(description="Template the snapshot was created from.")
    vcpu: int = Field(description="Number of virtual CPUs stored with the snapshot.")
    memory: int = Field(description="Memory stored with the snapshot, in MiB.")
    disk: int = Field(description="Writable disk size stored with the snapshot, in MiB.")
    network_policy: NetworkPolicy | None = Field(default=None)
    created_at: str = Field(description="ISO 8601 timestamp of when the snapshot was created.")


class SnapshotList(_Model):
    items: list[Snapshot]
    total_items: int


class SnapshotRestoreRequest(_Model):
    """The body of ``POST /v1/snapshot/restore``: template, vcpu, memory, disk, environment
    and files come from the snapshot; a network policy given here replaces its one."""

    snapshot_name: SnapshotName
    timeout: int = Field(default=TIMEOUT_DEFAULT_S, ge=TIMEOUT_MIN_S, le=TIMEOUT_MAX_S)
    auto_pause: bool = AUTO_PAUSE_DEFAULT
    network_policy: NetworkPolicy | None = None


# --- Errors --------------------------------------------------------------------------------


class FieldError(_Model):
    field: str
    error: str


class ErrorBody(_Model):
    message: str


class ValidationErrorBody(_Model):
    message: str
    errors: list[FieldError]


class SpecError(ValueError):
    """A request that breaks a rule of the contract; one :class:`FieldError` per broken rule."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.field}: {e.error}" for e in errors))

    def body(self) -> ValidationErrorBody:
        return ValidationErrorBody(message="Invalid request", errors=self.errors)


def field_path(loc: Sequence[int | str]) -> str:
    """``("mounts", 1, "prefix")`` -> ``"mounts[1].prefix"``."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path


# Numeric fields state their whole rule at once: 511 MiB breaks two rules, and a user
# fixing one should not then be told of the other.
_RANGE_RULES = {
    "vcpu": f"must be a whole number from {VCPU_MIN} to {VCPU_MAX}",
    "memory": f"must be an even number of MiB from {MEMORY_MIN_MIB} to {MEMORY_MAX_MIB}",
    "timeout": f"must be a whole number of seconds from {TIMEOUT_MIN_S} to {TIMEOUT_MAX_S}",
}
_RANGE_ERRORS = {"greater_than_equal", "less_than_equal", "multiple_of", "int_from_float"}


def _sentence(error: Mapping[str, Any]) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in _RANGE_ERRORS and tuple(error["loc"]) in {(name,) for name in _RANGE_RULES}:
        return _RANGE_RULES[str(error["loc"][0])]
    templates = {
        "missing": "is required",
        "greater_than_equal": "must be at least {ge}",
        "less_than_equal": "must be at most {le}",
        "multiple_of": "must be a multiple of {multiple_of}",
        "too_long": "must have at most {max_length} items",
        "too_short": "must have at least {min_length} items",
        "string_too_short": "must not be empty",
        "string_too_long": "must be at most {max_length} characters",
        "int_type": "must be an integer",
        "int_parsing": "must be an integer",
        "int_from_float": "must be a whole number",
        "bool_type": "must be true or false",
        "bool_parsing": "must be true or false",
        "string_type": "must be a string",
        "dict_type": "must be an object",
        "list_type": "must be a list",
        "model_type": "must be an object",
        "model_attributes_type": "must be an object",
        "literal_error": "must be one of {expected}",
    }
    if kind in templates:
        return templates[kind].format(**ctx)
    # Our own rules (PydanticCustomError) already speak in the API's words.
    return str(error["msg"])


def _field_errors(exc: ValidationError) -> list[FieldError]:
    errors = []
    for error in exc.errors(include_input=False, include_url=False):
        # A bad map key is located as ("env_vars", "KEY", "[key]"): name the map and the key.
        loc = [part for part in error["loc"] if part != "[key]"]
        errors.append(FieldError(field=field_path(loc) or "body", error=_sentence(error)))
    return errors


ModelT = TypeVar("ModelT", bound=BaseModel)


def validate(model: type[ModelT], data: Any) -> ModelT:
    """Validate and normalize ``data`` as ``model``, raising :class:`SpecError`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_field_errors(exc)) from None


def validate_create(data: Any) -> SandboxCreateRequest:
    return validate(SandboxCreateRequest, data)


def validate_template(data: Any) -> TemplateUploadRequest:
    return validate(TemplateUploadRequest, data)
