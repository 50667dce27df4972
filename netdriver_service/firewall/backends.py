"""The firewall backends by name: the one place that knows every implementation."""

from __future__ import annotations

from cnm import errors
from netdriver_service.firewall import Firewall
from netdriver_service.firewall.noop import NoFirewall

BACKENDS = ("nftables", "none")


def make_firewall(name: str, **options: object) -> Firewall:
    """The backend called ``name``; ``options`` go to its constructor.

    ``nftables`` takes ``prefer`` ("auto", "libnftables" or "nft": how to
    reach libnftables) or a ready ``runner``.
    """
    if name == "nftables":
        # Imported when chosen: it loads libnftables.
        from netdriver_service.firewall.nftables_backend import NftablesFirewall

        return NftablesFirewall(**options)
    if name == "none":
        return NoFirewall(**options)
    raise errors.InvalidArgument(
        f"unknown firewall backend {name!r}; one of {', '.join(BACKENDS)}",
        reason="UNKNOWN_FIREWALL",
    )
