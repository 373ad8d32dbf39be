"""The egress filter of ``custom`` network policies: one small host-side process per sandbox.

Why a process of our own: the policy is about names (``api.example.com``,
``*.example.com``), and only a proxy that reads the name a program asks for (the TLS SNI or
the HTTP Host) and then dials that name itself can hold a program to it, whatever address
the program connects to. No maintained transparent proxy fits one sandbox's namespace and
dials out from another; mitmproxy comes closest but costs ~80 MiB and a second per sandbox.

How traffic gets here (``runner/network.py`` sets it up): nftables rules in the sandbox's
network namespace, which no sandbox process can change,

* send every DNS query (UDP or TCP port 53, to any address) to ``DNS_PORT`` on the
  sandbox's loopback, where ``nameserver.DnsResponder`` answers allowed names only;
* let traffic to ``allow_cidrs`` through the veth, untouched;
* send every other TCP connection to ``PROXY_PORT`` on the sandbox's loopback, where
  ``proxy`` reads the first bytes, takes the name, and either refuses, tunnels the bytes
  opaquely to that name, or (for transform domains) terminates TLS with the sandbox's own
  CA (``authority``) and rewrites each request's headers (``http``);
* drop everything else.

The process binds both sockets inside the sandbox's namespace and then lives in the host's,
so what it dials leaves from the host. It then drops to ``nobody``: it parses what the
sandbox sends. The CA key exists only in its memory; the header values only in its memory
and in the runner's store.

Module map: ``sniff`` names in the first bytes, ``resolve`` host-side name resolution and
the addresses never dialled, ``nameserver`` the sandbox's resolver, ``authority`` the
per-sandbox CA, ``http`` the header-rewriting HTTP/1.1 relay, ``proxy`` the decisions and
the tunnel, ``__main__`` start-up (``python -m pulumi_leap0.runner.egress``, config as JSON
on stdin).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

#: Where the filter listens, on the sandbox's own loopback (not reachable from elsewhere).
PROXY_PORT = 15001
DNS_PORT = 53
#: What the filter prints on stdout once it listens: the runner starts the sandbox then.
READY = "ready"


@dataclass(frozen=True)
class EgressConfig:
    """What the runner hands the filter on stdin (it holds header values: never on disk)."""

    netns_path: str
    policy: dict[str, Any]  # spec.NetworkPolicy, wire form with header values
    resolver: str | None = None  # "ip:port" of the DNS server for allowed names; None: host's
    upstream_ca_file: str | None = None  # a CA to trust upstream besides the system's
    forbidden_cidrs: list[str] = field(default_factory=list)  # never dialled (sandbox nets)
    ca_bundle_path: str | None = None  # where to write the sandbox's trust bundle
    system_ca_file: str | None = None  # the host's bundle, copied into the sandbox's
    log_path: str | None = None  # where the filter logs (host side); None: its stderr

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> EgressConfig:
        return cls(**json.loads(text))
