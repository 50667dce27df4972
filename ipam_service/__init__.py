"""cnm's IPAM service: address pools and allocations, kept in Redis only.

Run it with ``python -m ipam_service``; see :mod:`ipam_service.store` for the
Redis layout and the accepted Redis URLs.
"""
