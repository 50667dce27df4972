"""Who may call what: the caller's identity from its certificate, one table per service.

With mutual TLS every caller holds a certificate from the deployment's CA
whose SPIFFE URI SAN names its role (cnm.pki). Each service declares a
:class:`Policy`, one line per RPC naming the roles allowed (the table a
reader audits is in the service's ``access.py``); the server interceptor
(cnm.server) checks every unary call against it before the handler runs,
and an RPC missing from the table is refused (default deny).

An ``agent`` identity is bound to its host, in the spirit of Kubernetes'
node restriction: where a rule names the request's host (``own_host``), an
agent may act only when that host is its own. Where the host is known only
after a lookup (a disconnect names a network and a container), the handler
asks :func:`bound_host` and checks it itself.

Health checks pass for any certificate the CA signed. Without TLS there is
no identity and nothing is checked: plaintext listens only on loopback or
a unix socket (cnm.server refuses anything else without ``--insecure``).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache

import grpc
from cryptography import x509

from cnm import errors, pki
from cnm.pki import Identity

ORCHESTRATOR, AGENT, IPAM, ADMIN, VIEWER = "orchestrator", "agent", "ipam", "admin", "viewer"
OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check"})


@dataclass(frozen=True)
class Rule:
    roles: frozenset[str]
    # The host a request acts on, for agent callers; None: an agent acts anywhere it is let.
    own_host: Callable[[object], str] | None = None


def allow(*roles: str, own_host: Callable[[object], str] | None = None) -> Rule:
    unknown = set(roles) - set(pki.ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}")
    return Rule(frozenset(roles), own_host)


@dataclass(frozen=True)
class Policy:
    """The roles allowed on each RPC of ``service`` (its full name)."""

    service: str
    rules: Mapping[str, Rule]

    def check(self, method: str, request: object, caller: Identity | None) -> None:
        """Raises UNAUTHENTICATED or PERMISSION_DENIED unless ``caller`` may call ``method``."""
        if method in OPEN_METHODS:
            return
        if caller is None:
            raise errors.Unauthenticated(
                f"{method}: the client certificate carries no cnm identity "
                f"(spiffe://{pki.TRUST_DOMAIN}/<role>); issue one with `cnm pki issue`",
                reason="NO_IDENTITY", method=method)
        service, _, name = method.lstrip("/").rpartition("/")
        rule = self.rules.get(name) if service == self.service else None
        if rule is None or caller.role not in rule.roles:
            raise errors.PermissionDenied(f"{caller} may not call {method}",
                                          reason="ROLE_NOT_ALLOWED", identity=str(caller),
                                          method=method)
        host_id = rule.own_host(request) if rule.own_host and caller.role == AGENT else None
        if host_id is not None and host_id != caller.host_id:  # an agent: its own host only
            raise errors.PermissionDenied(
                f"{caller} may not call {method} for host {errors.capped(host_id)!r}: an "
                f"agent acts on its own host only", reason="OTHER_HOST", identity=str(caller),
                method=method, host_id=host_id)


# The identity of the call being served, set by the server interceptor.
_caller: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("cnm_caller",
                                                                          default=None)


def set_caller(identity: Identity | None) -> None:
    _caller.set(identity)


def bound_host() -> str | None:
    """The host an agent caller is bound to; None for any other caller (not bound)."""
    identity = _caller.get()
    return identity.host_id if identity is not None and identity.role == AGENT else None


def identity_of(context: grpc.aio.ServicerContext) -> Identity | None:
    """The cnm identity of the peer's certificate; None when it has none."""
    certificates = (context.auth_context() or {}).get("x509_pem_cert")
    return _identity_of_pem(certificates[0]) if certificates else None


@lru_cache(maxsize=256)
def _identity_of_pem(pem: bytes) -> Identity | None:
    try:
        return pki.identity_of(x509.load_pem_x509_certificate(pem))
    except ValueError:
        return None
