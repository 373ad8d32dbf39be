"""The leap0 guardrails as a policy pack: `pulumi preview --policy-pack examples/policy-pack`."""

from pulumi_policy import PolicyPack

from pulumi_leap0.policy import sandbox_policies

PolicyPack(name="leap0-sandbox-guardrails", policies=sandbox_policies())
