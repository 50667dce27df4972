"""The ``cnm`` command-line client: a client of the orchestrator's gRPC API.

It imports only ``cnm`` (shared code and generated stubs), never a server
package, so it can be installed and run on any machine that reaches an
orchestrator.
"""
