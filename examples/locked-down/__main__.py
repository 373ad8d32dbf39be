"""A sandbox held to what it needs.

* Egress: only PyPI, and the model API through a transform that injects the API key on the
  way out, so the key never enters the sandbox.
* A read-only bucket of model weights at /models; its credentials stay on the runner.

Set the secrets first:
    pulumi config set --secret modelApiKey ...
    pulumi config set --secret bucketAccessKeyId ...
    pulumi config set --secret bucketSecretAccessKey ...
"""

import pulumi

import pulumi_leap0 as leap0

config = pulumi.Config()

box = leap0.Sandbox(
    "locked-down",
    template_name="system/debian:bookworm",
    vcpu=2,
    memory=2048,
    timeout=3600,
    auto_pause=True,
    env_vars={"STAGE": "ci"},
    network_policy=leap0.NetworkPolicyArgs(
        mode="custom",
        allow_domains=["pypi.org", "files.pythonhosted.org"],
        transforms=[
            leap0.TransformArgs(
                domain="api.models.example.com",
                inject_headers={
                    "Authorization": config.require_secret("modelApiKey").apply(
                        lambda key: f"Bearer {key}"
                    )
                },
                strip_headers=["Cookie"],
            )
        ],
    ),
    mounts=[
        leap0.MountArgs(
            bucket="models",
            mount_path="/models",
            endpoint=config.get("bucketEndpoint") or "https://s3.example.com",
            prefix="release/",
            access_key_id=config.require_secret("bucketAccessKeyId"),
            secret_access_key=config.require_secret("bucketSecretAccessKey"),
        )
    ],
)

pulumi.export("sandbox_id", box.id)
pulumi.export("state", box.state)
