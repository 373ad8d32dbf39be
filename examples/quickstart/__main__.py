"""One sandbox with no network: the smallest useful Leap0 stack."""

import pulumi

import pulumi_leap0 as leap0

box = leap0.Sandbox(
    "quickstart",
    template_name="system/debian:bookworm",
    vcpu=1,
    memory=1024,
    timeout=600,
    env_vars={"GREETING": "hello from a leap0 sandbox"},
    network_policy=leap0.NetworkPolicyArgs(mode="deny-all"),
)

pulumi.export("sandbox_id", box.id)
pulumi.export("state", box.state)
