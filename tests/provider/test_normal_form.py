"""Diff's normal form, property-based and in-process: any spelling of the same sandbox is no
change, and any change to one input replaces or updates exactly as spec.py says."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pulumi_leap0 import spec
from pulumi_leap0.provider import SandboxProvider, mount_states

labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
domains = st.builds(lambda a, b: f"{a}.{b}.com", labels, labels)
cidrs = st.sampled_from(["10.0.0.0/8", "192.168.0.0/16", "172.16.0.0/12", "100.64.0.0/10"])
mounts = st.lists(
    st.builds(lambda path, key: {"bucket": "models", "mount_path": f"/data/{path}",
                                 "endpoint": "https://s3.example.com",
                                 **({"access_key_id": "AK", "secret_access_key": key}
                                    if key else {})},
              labels, st.one_of(st.none(), labels)),
    max_size=4, unique_by=lambda m: m["mount_path"])
policies = st.one_of(
    st.none(),
    st.builds(lambda m: {"mode": m}, st.sampled_from(["allow-all", "deny-all"])),
    st.builds(lambda d, c, t: {"mode": "custom", "allow_domains": d, "allow_cidrs": c,
                               "transforms": [{"domain": x, "inject_headers": {"X-K": "v"}}
                                              for x in t]},
              st.lists(domains, max_size=4, unique=True), st.lists(cidrs, max_size=3, unique=True),
              st.lists(domains, max_size=3, unique=True)),
)
sandboxes = st.fixed_dictionaries(
    {"template_name": st.just("system/debian:bookworm")},
    optional={
        "vcpu": st.integers(spec.VCPU_MIN, spec.VCPU_MAX),
        "memory": st.integers(spec.MEMORY_MIN_MIB // 2, spec.MEMORY_MAX_MIB // 2).map(
            lambda half: half * 2),
        "timeout": st.integers(spec.TIMEOUT_MIN_S, spec.TIMEOUT_MAX_S),
        "auto_pause": st.booleans(),
        "env_vars": st.dictionaries(st.sampled_from(["A", "B", "STAGE"]), labels, max_size=3),
        "network_policy": policies,
        "mounts": mounts,
    },
)

provider = SandboxProvider()


def stored(props: dict[str, Any]) -> dict[str, Any]:
    """What state would hold after create, built from check's answer."""
    checked = provider.check({}, props)
    assert checked.failures == []
    outputs = dict(checked.inputs)
    outputs["mounts"] = [{**m, "id": f"mnt-{i}"}
                         for i, m in enumerate(mount_states(outputs["mounts"]))]
    return {**outputs, "state": "running", "template_id": props["template_name"]}


def respelled(props: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    """The same sandbox written differently: floats, shuffled lists, upper case, defaults."""
    news = {k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v
            for k, v in props.items()}
    news.setdefault("memory", float(spec.MEMORY_DEFAULT_MIB))
    news.setdefault("auto_pause", spec.AUTO_PAUSE_DEFAULT)
    if props.get("mounts"):
        news["mounts"] = data.draw(st.permutations(props["mounts"]))
    policy = props.get("network_policy")
    if policy is None:
        news["network_policy"] = data.draw(st.sampled_from([None, {"mode": "allow-all"}]))
    elif policy["mode"] == "custom":
        allowed = data.draw(st.permutations(policy["allow_domains"]))
        news["network_policy"] = {
            "mode": "custom",
            "allow_domains": [d.upper() for d in allowed],
            "allow_cidrs": data.draw(st.permutations(policy["allow_cidrs"])),
            "transforms": data.draw(st.permutations(policy["transforms"])),
        }
    return news


@settings(max_examples=150, deadline=None)
@given(sandboxes, st.data())
def test_any_spelling_of_the_same_sandbox_is_no_change(
    props: dict[str, Any], data: st.DataObject
) -> None:
    diff = provider.diff("sbx-1", stored(props), respelled(props, data))
    assert not diff.changes and diff.replaces == []


@settings(max_examples=150, deadline=None)
@given(sandboxes, st.sampled_from(["vcpu", "memory", "timeout", "auto_pause", "env_vars",
                                   "template_name", "mounts"]))
def test_one_changed_input_replaces_or_updates_exactly_as_spec_says(
    props: dict[str, Any], name: str
) -> None:
    olds = stored(props)
    changed = {
        "vcpu": olds["vcpu"] % spec.VCPU_MAX + 1,
        "memory": spec.MEMORY_MIN_MIB if olds["memory"] != spec.MEMORY_MIN_MIB else 4096,
        "timeout": olds["timeout"] % spec.TIMEOUT_MAX_S + 1,
        "auto_pause": not olds["auto_pause"],
        "env_vars": {**olds["env_vars"], "NEW": "1"},
        "template_name": "system/other",
        "mounts": [*props.get("mounts", []), {"bucket": "extra", "mount_path": "/extra",
                                             "endpoint": "https://s3.example.com"}],
    }[name]
    diff = provider.diff("sbx-1", olds, {**props, name: changed})
    assert diff.changes
    assert diff.replaces == ([name] if name in spec.REPLACE_ON_CHANGE else [])
    assert name in spec.REPLACE_ON_CHANGE or name in spec.UPDATABLE_IN_PLACE
