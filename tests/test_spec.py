"""The contract: every valid request passes, every broken rule fails at the right field path."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulumi_leap0 import spec

settings.register_profile("contract", max_examples=150, deadline=None)
settings.load_profile("contract")

# --- Strategies for valid requests ---------------------------------------------------------

labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
domains = st.builds(
    lambda wildcard, parts, tld: ("*." if wildcard else "") + ".".join([*parts, tld]),
    st.booleans(),
    st.lists(labels, min_size=1, max_size=3),
    st.sampled_from(["com", "org", "io", "dev"]),
)
cidrs = st.builds(
    lambda a, b, prefix: f"{a}.{b}.0.0/{prefix}",
    st.integers(1, 223),
    st.integers(0, 255),
    st.integers(8, 16),
)
env_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True)
header_names = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True)
safe_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20)
paths = st.lists(
    st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), min_size=1, max_size=3
).map(lambda parts: "/" + "/".join(parts)).filter(
    lambda p: not p.startswith(("/proc", "/sys", "/dev"))
)


def mount(path: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "type": st.just("object-storage"),
            "bucket": st.from_regex(r"[a-z0-9][a-z0-9-]{1,20}[a-z0-9]", fullmatch=True),
            "mount_path": st.just(path),
            "endpoint": st.sampled_from(["https://s3.example.com", "http://127.0.0.1:9000"]),
        },
        optional={
            "prefix": st.sampled_from(["", "docs/", "a/b/"]),
            "read_only": st.just(True),
        },
    )


mounts = st.lists(paths, max_size=spec.MAX_MOUNTS, unique=True).flatmap(
    lambda ps: st.tuples(*[mount(p) for p in ps]).map(list)
)
transforms = st.lists(
    st.fixed_dictionaries(
        {"domain": domains},
        optional={
            "inject_headers": st.dictionaries(header_names, safe_text, max_size=3),
            "strip_headers": st.lists(header_names, max_size=3),
        },
    ),
    max_size=spec.MAX_TRANSFORMS,
    unique_by=lambda t: t["domain"].lower(),
)
policies = st.one_of(
    st.none(),
    st.fixed_dictionaries({"mode": st.sampled_from(["allow-all", "deny-all"])}),
    st.fixed_dictionaries(
        {"mode": st.just("custom")},
        optional={
            "allow_domains": st.lists(domains, max_size=spec.MAX_ALLOW_DOMAINS),
            "allow_cidrs": st.lists(cidrs, max_size=spec.MAX_ALLOW_CIDRS),
            "transforms": transforms,
        },
    ),
)
valid_requests = st.fixed_dictionaries(
    {"template_name": st.sampled_from(["system/debian:bookworm", "my-template"])},
    optional={
        "env_vars": st.dictionaries(env_names, safe_text, max_size=5),
        "mounts": mounts,
        "vcpu": st.integers(spec.VCPU_MIN, spec.VCPU_MAX),
        "memory": st.integers(spec.MEMORY_MIN_MIB // 2, spec.MEMORY_MAX_MIB // 2).map(
            lambda half: half * 2
        ),
        "timeout": st.integers(spec.TIMEOUT_MIN_S, spec.TIMEOUT_MAX_S),
        "auto_pause": st.booleans(),
        "network_policy": policies,
    },
)


def errors_of(data: Any) -> dict[str, str]:
    with pytest.raises(spec.SpecError) as caught:
        spec.validate_create(data)
    return {e.field: e.error for e in caught.value.errors}


# --- Properties ----------------------------------------------------------------------------


@given(valid_requests)
def test_every_valid_request_is_accepted(data: dict[str, Any]) -> None:
    request = spec.validate_create(data)
    assert request.template_name == data["template_name"]
    assert request.vcpu == data.get("vcpu", spec.VCPU_DEFAULT)


@given(valid_requests)
def test_normalization_is_idempotent_and_survives_the_wire(data: dict[str, Any]) -> None:
    request = spec.validate_create(data)
    assert spec.validate_create(request.wire()) == request


@given(valid_requests, st.randoms())
def test_order_and_case_do_not_change_the_sandbox(data: dict[str, Any], rnd: Any) -> None:
    shuffled = dict(data)
    if data.get("mounts"):
        shuffled["mounts"] = rnd.sample(data["mounts"], len(data["mounts"]))
    policy = data.get("network_policy")
    if policy and policy["mode"] == "custom":
        policy = dict(policy)
        policy["allow_domains"] = [d.upper() for d in policy.get("allow_domains", [])][::-1]
        policy["allow_cidrs"] = list(reversed(policy.get("allow_cidrs", [])))
        policy["transforms"] = list(reversed(policy.get("transforms", [])))
        shuffled["network_policy"] = policy
    assert spec.validate_create(shuffled) == spec.validate_create(data)


@given(valid_requests, st.integers().filter(lambda v: not spec.VCPU_MIN <= v <= spec.VCPU_MAX))
def test_vcpu_out_of_range_is_rejected(data: dict[str, Any], vcpu: int) -> None:
    assert errors_of({**data, "vcpu": vcpu}) == {"vcpu": "must be a whole number from 1 to 8"}


@given(
    valid_requests,
    st.integers().filter(
        lambda v: v % 2 or not spec.MEMORY_MIN_MIB <= v <= spec.MEMORY_MAX_MIB
    ),
)
def test_memory_odd_or_out_of_range_is_rejected(data: dict[str, Any], memory: int) -> None:
    assert errors_of({**data, "memory": memory}) == {
        "memory": "must be an even number of MiB from 512 to 8192"
    }


@given(
    valid_requests,
    st.integers().filter(lambda v: not spec.TIMEOUT_MIN_S <= v <= spec.TIMEOUT_MAX_S),
)
def test_timeout_out_of_range_is_rejected(data: dict[str, Any], timeout: int) -> None:
    assert set(errors_of({**data, "timeout": timeout})) == {"timeout"}


@given(valid_requests, st.integers(0, 7), st.sampled_from(["relative", "/", "/proc/x", "/a/../b"]))
def test_a_bad_mount_path_is_reported_at_its_index(
    data: dict[str, Any], index: int, bad_path: str
) -> None:
    good = [{"type": "object-storage", "bucket": "bkt", "endpoint": "http://s3.local",
             "mount_path": f"/m{i}"} for i in range(index + 1)]
    good[index]["mount_path"] = bad_path
    assert set(errors_of({**data, "mounts": good})) == {f"mounts[{index}].mount_path"}


@given(
    st.integers(0, 5),
    st.sampled_from(["no_dot", "-bad.com", "bad-.com", "a..b.com", "b_d.com", "*.*.x.com", ""]),
)
def test_a_bad_domain_is_reported_at_its_index(index: int, bad: str) -> None:
    allow = [f"ok{i}.example.com" for i in range(index + 1)]
    allow[index] = bad
    policy = {"mode": "custom", "allow_domains": allow}
    assert set(errors_of({"template_name": "t", "network_policy": policy})) == {
        f"network_policy.allow_domains[{index}]"
    }


# --- Boundaries: one row per edge of each rule ---------------------------------------------


def _mounts(n: int) -> list[dict[str, str]]:
    return [
        {"type": "object-storage", "bucket": "bkt", "endpoint": "http://s3.local",
         "mount_path": f"/m{i}"}
        for i in range(n)
    ]


def _policy(**lists: Any) -> dict[str, Any]:
    return {"mode": "custom", **lists}


BOUNDARIES: list[tuple[str, dict[str, Any], str | None]] = [
    ("vcpu 0", {"vcpu": 0}, "vcpu"),
    ("vcpu 1", {"vcpu": 1}, None),
    ("vcpu 8", {"vcpu": 8}, None),
    ("vcpu 9", {"vcpu": 9}, "vcpu"),
    ("vcpu 2.0 from the engine", {"vcpu": 2.0}, None),
    ("vcpu 1.5", {"vcpu": 1.5}, "vcpu"),
    ("memory 510", {"memory": 510}, "memory"),
    ("memory 511", {"memory": 511}, "memory"),
    ("memory 512", {"memory": 512}, None),
    ("memory 513", {"memory": 513}, "memory"),
    ("memory 8192", {"memory": 8192}, None),
    ("memory 8193", {"memory": 8193}, "memory"),
    ("memory 8194", {"memory": 8194}, "memory"),
    ("timeout 0", {"timeout": 0}, "timeout"),
    ("timeout 1", {"timeout": 1}, None),
    ("timeout 28800", {"timeout": 28800}, None),
    ("timeout 28801", {"timeout": 28801}, "timeout"),
    ("8 mounts", {"mounts": _mounts(8)}, None),
    ("9 mounts", {"mounts": _mounts(9)}, "mounts"),
    ("50 domains", {"network_policy": _policy(
        allow_domains=[f"d{i}.example.com" for i in range(50)])}, None),
    ("51 domains", {"network_policy": _policy(
        allow_domains=[f"d{i}.example.com" for i in range(51)])}, "network_policy.allow_domains"),
    ("10 cidrs", {"network_policy": _policy(
        allow_cidrs=[f"10.{i}.0.0/16" for i in range(10)])}, None),
    ("11 cidrs", {"network_policy": _policy(
        allow_cidrs=[f"10.{i}.0.0/16" for i in range(11)])}, "network_policy.allow_cidrs"),
    ("20 transforms", {"network_policy": _policy(
        transforms=[{"domain": f"t{i}.example.com"} for i in range(20)])}, None),
    ("21 transforms", {"network_policy": _policy(
        transforms=[{"domain": f"t{i}.example.com"} for i in range(21)])},
     "network_policy.transforms"),
    ("no template", {"template_name": None}, "template_name"),
    ("empty template", {"template_name": ""}, "template_name"),
    ("env name", {"env_vars": {"9LIVES": "x"}}, "env_vars.9LIVES"),
    ("env value type", {"env_vars": {"A": 1}}, "env_vars.A"),
    ("ipv6 cidr", {"network_policy": _policy(allow_cidrs=["::/0"])},
     "network_policy.allow_cidrs[0]"),
    ("cidr garbage", {"network_policy": _policy(allow_cidrs=["10.0.0.0/33"])},
     "network_policy.allow_cidrs[0]"),
    ("wildcard domain", {"network_policy": _policy(allow_domains=["*.example.com"])}, None),
    ("bare wildcard", {"network_policy": _policy(allow_domains=["*"])},
     "network_policy.allow_domains[0]"),
    ("bad transform domain", {"network_policy": _policy(transforms=[{"domain": "x y"}])},
     "network_policy.transforms[0].domain"),
    ("duplicate transform", {"network_policy": _policy(
        transforms=[{"domain": "a.com"}, {"domain": "A.com"}])}, "network_policy.transforms"),
    ("header with newline", {"network_policy": _policy(
        transforms=[{"domain": "a.com", "inject_headers": {"X-Key": "a\r\nb"}}])},
     "network_policy.transforms[0].inject_headers.X-Key"),
    ("unknown mode", {"network_policy": {"mode": "open"}}, "network_policy.mode"),
    ("lists outside custom",
     {"network_policy": {"mode": "deny-all", "allow_cidrs": ["10.0.0.0/8"]}}, "network_policy"),
    ("transforms with deny-all", {"network_policy": {"mode": "deny-all",
     "transforms": [{"domain": "a.com"}]}}, "network_policy"),
    ("prefix without slash", {"mounts": [{**_mounts(1)[0], "prefix": "docs"}]}, "mounts[0].prefix"),
    ("prefix absolute", {"mounts": [{**_mounts(1)[0], "prefix": "/docs/"}]}, "mounts[0].prefix"),
    ("prefix dotdot", {"mounts": [{**_mounts(1)[0], "prefix": "a/../"}]}, "mounts[0].prefix"),
    ("prefix ok", {"mounts": [{**_mounts(1)[0], "prefix": "a/b/"}]}, None),
    ("mount root", {"mounts": [{**_mounts(1)[0], "mount_path": "/"}]}, "mounts[0].mount_path"),
    ("mount duplicate", {"mounts": [_mounts(1)[0], {**_mounts(1)[0], "mount_path": "/m0/"}]},
     "mounts"),
    ("endpoint not a url", {"mounts": [{**_mounts(1)[0], "endpoint": "s3.local"}]},
     "mounts[0].endpoint"),
    ("writable mount", {"mounts": [{**_mounts(1)[0], "read_only": False}]},
     "mounts[0].read_only"),
    ("half credentials", {"mounts": [{**_mounts(1)[0], "access_key_id": "AK"}]}, "mounts[0]"),
    ("wrong mount type", {"mounts": [{**_mounts(1)[0], "type": "nfs"}]}, "mounts[0].type"),
    ("vcpu as text", {"vcpu": "many"}, "vcpu"),
    ("auto_pause as text", {"auto_pause": "maybe"}, "auto_pause"),
]


@pytest.mark.parametrize(
    ("change", "expected_field"),
    [(row[1], row[2]) for row in BOUNDARIES],
    ids=[row[0] for row in BOUNDARIES],
)
def test_boundary(change: dict[str, Any], expected_field: str | None) -> None:
    data = {"template_name": "system/debian:bookworm", **change}
    if expected_field is None:
        spec.validate_create(data)
    else:
        assert list(errors_of(data)) == [expected_field]


def test_every_broken_rule_is_reported_once_with_a_sentence() -> None:
    errors = errors_of({"vcpu": 0, "memory": 3, "timeout": -1, "mounts": _mounts(9)})
    assert set(errors) == {"template_name", "vcpu", "memory", "timeout", "mounts"}
    assert errors["template_name"] == "is required"
    assert errors["mounts"] == "must have at most 8 items"


def test_error_messages_never_repeat_a_secret() -> None:
    secret = "s3cr3t-value-\r\n"
    data = {
        "template_name": "t",
        "env_vars": {"OK": "fine", "BAD\0": secret},
        "mounts": [{**_mounts(1)[0], "access_key_id": secret, "read_only": False}],
        "network_policy": _policy(transforms=[{"domain": "a.com",
                                               "inject_headers": {"X-Key": secret}}]),
    }
    with pytest.raises(spec.SpecError) as caught:
        spec.validate_create(data)
    assert "s3cr3t" not in str(caught.value)
    assert "s3cr3t" not in caught.value.body().model_dump_json()


# --- Normalization -------------------------------------------------------------------------


def test_defaults_spelled_out_equal_defaults_left_out() -> None:
    explicit = spec.validate_create(
        {"template_name": "t", "vcpu": 1, "memory": 1024, "timeout": 300, "auto_pause": False,
         "env_vars": {}, "mounts": []}
    )
    assert explicit == spec.validate_create({"template_name": "t"})


def test_domains_are_lower_cased_stripped_and_deduplicated() -> None:
    policy = spec.validate(
        spec.NetworkPolicy,
        {"mode": "custom", "allow_domains": [" A.com ", "a.COM.", "*.Example.org"]},
    )
    assert policy.allow_domains == ["*.example.org", "a.com"]


def test_cidrs_are_canonical() -> None:
    policy = spec.validate(spec.NetworkPolicy, {"mode": "custom", "allow_cidrs": ["10.1.2.3/8"]})
    assert policy.allow_cidrs == ["10.0.0.0/8"]


def test_transform_domains_are_implicitly_allowed() -> None:
    policy = spec.validate(
        spec.NetworkPolicy,
        {"mode": "custom", "allow_domains": ["pypi.org"], "transforms": [{"domain": "API.x.com"}]},
    )
    assert policy.allowed_domains() == ["api.x.com", "pypi.org"]


def test_mount_update_applies_and_clears() -> None:
    base = spec.validate(spec.MountRequest, {**_mounts(1)[0], "prefix": "a/",
                                             "access_key_id": "k", "secret_access_key": "s"})
    update = spec.validate(spec.MountUpdateRequest,
                           {"prefix": "", "access_key_id": "", "secret_access_key": ""})
    after = update.apply_to(base)
    assert (after.prefix, after.access_key_id, after.secret_access_key) == ("", None, None)
    with pytest.raises(spec.SpecError) as caught:
        spec.validate(spec.MountUpdateRequest, {"access_key_id": ""}).apply_to(base)
    assert [e.field for e in caught.value.errors] == ["body"]


def test_field_path() -> None:
    assert spec.field_path(("mounts", 1, "prefix")) == "mounts[1].prefix"
    assert spec.field_path(("network_policy", "allow_domains", 0)) == (
        "network_policy.allow_domains[0]"
    )


# --- Domain matching (what the egress filter and the DNS resolver both decide with) --------

_labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


@given(_labels, st.lists(_labels, min_size=1, max_size=3), _labels)
def test_wildcard_matches_strict_subdomains_only(sub: str, base: list[str], other: str) -> None:
    domain = ".".join([*base, "test"])
    pattern = f"*.{domain}"
    assert spec.domain_matches(f"{sub}.{domain}", pattern)
    assert spec.domain_matches(f"{other}.{sub}.{domain}", pattern)
    assert spec.domain_matches(f"{sub}.{domain}.".upper(), pattern)  # as DNS may spell it
    assert not spec.domain_matches(domain, pattern)
    assert not spec.domain_matches(f"{sub}{domain}", pattern)  # no dot: another domain
    assert not spec.domain_matches(f"{sub}.{domain}.evil", pattern)


@given(_labels, _labels)
def test_exact_domain_matches_itself_only(name: str, sub: str) -> None:
    domain = f"{name}.test"
    assert spec.domain_matches(domain, domain)
    assert not spec.domain_matches(f"{sub}.{domain}", domain)


def test_policy_allows_and_picks_the_most_specific_transform() -> None:
    policy = spec.NetworkPolicy(mode="custom", allow_domains=["pypi.org"], transforms=[
        {"domain": "*.example.com"}, {"domain": "api.example.com"}])
    assert policy.allows("pypi.org") and policy.allows("x.example.com")
    assert not policy.allows("files.pypi.org") and not policy.allows("example.com")
    assert policy.transform_for("api.example.com").domain == "api.example.com"  # type: ignore[union-attr]
    assert policy.transform_for("x.example.com").domain == "*.example.com"  # type: ignore[union-attr]
    assert policy.transform_for("pypi.org") is None
    assert spec.NetworkPolicy(mode="allow-all").allows("anything.test")
    assert not spec.NetworkPolicy(mode="deny-all").allows("anything.test")
