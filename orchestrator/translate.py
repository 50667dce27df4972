"""The orchestrator's records as the agents' messages."""

from __future__ import annotations

from cnm import validation as cnm_validation
from cnm.netdriver.v1 import netdriver_pb2 as nd
from cnm.orchestrator.v1 import orchestrator_pb2 as pb


def agent_network(network: pb.Network) -> nd.Network:
    options = cnm_validation.check_network_options(network.options)
    made = nd.Network(
        network_id=network.network_id, name=network.name,
        driver=nd.Driver.Value(pb.Driver.Name(network.driver or pb.DRIVER_BRIDGE)),
        subnet=network.subnet, gateway=network.gateway, internal=network.internal,
        bridge_name=options.bridge_name, mtu=options.mtu or 0, options=dict(network.options),
        vni=network.vni, ipv6_subnet=network.ipv6_subnet, ipv6_gateway=network.ipv6_gateway,
    )
    if options.enable_icc is not None:
        made.enable_icc = options.enable_icc
    return made


def agent_endpoint(endpoint: pb.Endpoint, default_route: bool) -> nd.Endpoint:
    return nd.Endpoint(
        endpoint_id=endpoint.endpoint_id, network_id=endpoint.network_id,
        container_id=endpoint.container_id, sandbox=endpoint.sandbox, address=endpoint.address,
        mac_address=endpoint.mac_address, container_interface=endpoint.container_interface,
        port_mappings=[
            nd.PortMapping(protocol=mapping.protocol, host_ip=mapping.host_ip,
                           host_port=mapping.host_port, container_port=mapping.container_port)
            for mapping in endpoint.port_mappings
        ],
        default_route=default_route, peer_on_host=endpoint.peer_on_host,
        dns_names=list(endpoint.dns_names), ipv6_address=endpoint.ipv6_address,
    )
