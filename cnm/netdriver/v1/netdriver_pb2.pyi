from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Driver(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DRIVER_UNSPECIFIED: _ClassVar[Driver]
    DRIVER_BRIDGE: _ClassVar[Driver]
    DRIVER_OVERLAY: _ClassVar[Driver]

class Firewall(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FIREWALL_UNSPECIFIED: _ClassVar[Firewall]
    FIREWALL_NFTABLES: _ClassVar[Firewall]
    FIREWALL_NONE: _ClassVar[Firewall]

class Protocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTOCOL_UNSPECIFIED: _ClassVar[Protocol]
    PROTOCOL_TCP: _ClassVar[Protocol]
    PROTOCOL_UDP: _ClassVar[Protocol]
    PROTOCOL_SCTP: _ClassVar[Protocol]
DRIVER_UNSPECIFIED: Driver
DRIVER_BRIDGE: Driver
DRIVER_OVERLAY: Driver
FIREWALL_UNSPECIFIED: Firewall
FIREWALL_NFTABLES: Firewall
FIREWALL_NONE: Firewall
PROTOCOL_UNSPECIFIED: Protocol
PROTOCOL_TCP: Protocol
PROTOCOL_UDP: Protocol
PROTOCOL_SCTP: Protocol

class Network(_message.Message):
    __slots__ = ("network_id", "name", "driver", "subnet", "gateway", "bridge_name", "mtu", "internal", "enable_icc", "allowed_networks", "vni", "options", "ipv6_subnet", "ipv6_gateway", "ipv6_masquerade")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    BRIDGE_NAME_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    INTERNAL_FIELD_NUMBER: _ClassVar[int]
    ENABLE_ICC_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_NETWORKS_FIELD_NUMBER: _ClassVar[int]
    VNI_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    IPV6_SUBNET_FIELD_NUMBER: _ClassVar[int]
    IPV6_GATEWAY_FIELD_NUMBER: _ClassVar[int]
    IPV6_MASQUERADE_FIELD_NUMBER: _ClassVar[int]
    network_id: str
    name: str
    driver: Driver
    subnet: str
    gateway: str
    bridge_name: str
    mtu: int
    internal: bool
    enable_icc: bool
    allowed_networks: _containers.RepeatedScalarFieldContainer[str]
    vni: int
    options: _containers.ScalarMap[str, str]
    ipv6_subnet: str
    ipv6_gateway: str
    ipv6_masquerade: bool
    def __init__(self, network_id: _Optional[str] = ..., name: _Optional[str] = ..., driver: _Optional[_Union[Driver, str]] = ..., subnet: _Optional[str] = ..., gateway: _Optional[str] = ..., bridge_name: _Optional[str] = ..., mtu: _Optional[int] = ..., internal: _Optional[bool] = ..., enable_icc: _Optional[bool] = ..., allowed_networks: _Optional[_Iterable[str]] = ..., vni: _Optional[int] = ..., options: _Optional[_Mapping[str, str]] = ..., ipv6_subnet: _Optional[str] = ..., ipv6_gateway: _Optional[str] = ..., ipv6_masquerade: _Optional[bool] = ...) -> None: ...

class VxlanDevice(_message.Message):
    __slots__ = ("name", "vni", "local_address", "learning", "proxy", "up", "attached", "flood_peer_count", "remote_mac_count", "neighbour_count")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VNI_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_FIELD_NUMBER: _ClassVar[int]
    PROXY_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    ATTACHED_FIELD_NUMBER: _ClassVar[int]
    FLOOD_PEER_COUNT_FIELD_NUMBER: _ClassVar[int]
    REMOTE_MAC_COUNT_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOUR_COUNT_FIELD_NUMBER: _ClassVar[int]
    name: str
    vni: int
    local_address: str
    learning: bool
    proxy: bool
    up: bool
    attached: bool
    flood_peer_count: int
    remote_mac_count: int
    neighbour_count: int
    def __init__(self, name: _Optional[str] = ..., vni: _Optional[int] = ..., local_address: _Optional[str] = ..., learning: _Optional[bool] = ..., proxy: _Optional[bool] = ..., up: _Optional[bool] = ..., attached: _Optional[bool] = ..., flood_peer_count: _Optional[int] = ..., remote_mac_count: _Optional[int] = ..., neighbour_count: _Optional[int] = ...) -> None: ...

class PortMapping(_message.Message):
    __slots__ = ("protocol", "host_ip", "host_port", "container_port")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    HOST_IP_FIELD_NUMBER: _ClassVar[int]
    HOST_PORT_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_PORT_FIELD_NUMBER: _ClassVar[int]
    protocol: Protocol
    host_ip: str
    host_port: int
    container_port: int
    def __init__(self, protocol: _Optional[_Union[Protocol, str]] = ..., host_ip: _Optional[str] = ..., host_port: _Optional[int] = ..., container_port: _Optional[int] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("endpoint_id", "network_id", "container_id", "sandbox", "address", "mac_address", "host_interface", "container_interface", "port_mappings", "default_route", "peer_on_host", "dns_names", "ipv6_address")
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MAC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HOST_INTERFACE_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_INTERFACE_FIELD_NUMBER: _ClassVar[int]
    PORT_MAPPINGS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_ROUTE_FIELD_NUMBER: _ClassVar[int]
    PEER_ON_HOST_FIELD_NUMBER: _ClassVar[int]
    DNS_NAMES_FIELD_NUMBER: _ClassVar[int]
    IPV6_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: str
    network_id: str
    container_id: str
    sandbox: str
    address: str
    mac_address: str
    host_interface: str
    container_interface: str
    port_mappings: _containers.RepeatedCompositeFieldContainer[PortMapping]
    default_route: bool
    peer_on_host: bool
    dns_names: _containers.RepeatedScalarFieldContainer[str]
    ipv6_address: str
    def __init__(self, endpoint_id: _Optional[str] = ..., network_id: _Optional[str] = ..., container_id: _Optional[str] = ..., sandbox: _Optional[str] = ..., address: _Optional[str] = ..., mac_address: _Optional[str] = ..., host_interface: _Optional[str] = ..., container_interface: _Optional[str] = ..., port_mappings: _Optional[_Iterable[_Union[PortMapping, _Mapping]]] = ..., default_route: _Optional[bool] = ..., peer_on_host: _Optional[bool] = ..., dns_names: _Optional[_Iterable[str]] = ..., ipv6_address: _Optional[str] = ...) -> None: ...

class RemoteEndpoint(_message.Message):
    __slots__ = ("address", "mac_address", "underlay_ip", "dns_names", "ipv6_address")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MAC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    UNDERLAY_IP_FIELD_NUMBER: _ClassVar[int]
    DNS_NAMES_FIELD_NUMBER: _ClassVar[int]
    IPV6_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    address: str
    mac_address: str
    underlay_ip: str
    dns_names: _containers.RepeatedScalarFieldContainer[str]
    ipv6_address: str
    def __init__(self, address: _Optional[str] = ..., mac_address: _Optional[str] = ..., underlay_ip: _Optional[str] = ..., dns_names: _Optional[_Iterable[str]] = ..., ipv6_address: _Optional[str] = ...) -> None: ...

class Peer(_message.Message):
    __slots__ = ("host_id", "underlay_ip")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    UNDERLAY_IP_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    underlay_ip: str
    def __init__(self, host_id: _Optional[str] = ..., underlay_ip: _Optional[str] = ...) -> None: ...

class GetHostInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetHostInfoResponse(_message.Message):
    __slots__ = ("host_id", "underlay_ip", "drivers", "firewall", "version")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    UNDERLAY_IP_FIELD_NUMBER: _ClassVar[int]
    DRIVERS_FIELD_NUMBER: _ClassVar[int]
    FIREWALL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    underlay_ip: str
    drivers: _containers.RepeatedScalarFieldContainer[Driver]
    firewall: Firewall
    version: str
    def __init__(self, host_id: _Optional[str] = ..., underlay_ip: _Optional[str] = ..., drivers: _Optional[_Iterable[_Union[Driver, str]]] = ..., firewall: _Optional[_Union[Firewall, str]] = ..., version: _Optional[str] = ...) -> None: ...

class CreateNetworkRequest(_message.Message):
    __slots__ = ("network",)
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    network: Network
    def __init__(self, network: _Optional[_Union[Network, _Mapping]] = ...) -> None: ...

class CreateNetworkResponse(_message.Message):
    __slots__ = ("network",)
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    network: Network
    def __init__(self, network: _Optional[_Union[Network, _Mapping]] = ...) -> None: ...

class DeleteNetworkRequest(_message.Message):
    __slots__ = ("network_id",)
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    network_id: str
    def __init__(self, network_id: _Optional[str] = ...) -> None: ...

class DeleteNetworkResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateEndpointRequest(_message.Message):
    __slots__ = ("endpoint", "network")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    endpoint: Endpoint
    network: Network
    def __init__(self, endpoint: _Optional[_Union[Endpoint, _Mapping]] = ..., network: _Optional[_Union[Network, _Mapping]] = ...) -> None: ...

class CreateEndpointResponse(_message.Message):
    __slots__ = ("endpoint",)
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    endpoint: Endpoint
    def __init__(self, endpoint: _Optional[_Union[Endpoint, _Mapping]] = ...) -> None: ...

class DeleteEndpointRequest(_message.Message):
    __slots__ = ("endpoint_id",)
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: str
    def __init__(self, endpoint_id: _Optional[str] = ...) -> None: ...

class DeleteEndpointResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetNetworkPeersRequest(_message.Message):
    __slots__ = ("network_id", "peers", "remote_endpoints", "generation")
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    REMOTE_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    network_id: str
    peers: _containers.RepeatedCompositeFieldContainer[Peer]
    remote_endpoints: _containers.RepeatedCompositeFieldContainer[RemoteEndpoint]
    generation: int
    def __init__(self, network_id: _Optional[str] = ..., peers: _Optional[_Iterable[_Union[Peer, _Mapping]]] = ..., remote_endpoints: _Optional[_Iterable[_Union[RemoteEndpoint, _Mapping]]] = ..., generation: _Optional[int] = ...) -> None: ...

class SetNetworkPeersResponse(_message.Message):
    __slots__ = ("changes", "applied")
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedScalarFieldContainer[str]
    applied: bool
    def __init__(self, changes: _Optional[_Iterable[str]] = ..., applied: _Optional[bool] = ...) -> None: ...

class Sandbox(_message.Message):
    __slots__ = ("name", "path", "inode")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    INODE_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    inode: int
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., inode: _Optional[int] = ...) -> None: ...

class CreateSandboxRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class CreateSandboxResponse(_message.Message):
    __slots__ = ("sandbox",)
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    sandbox: Sandbox
    def __init__(self, sandbox: _Optional[_Union[Sandbox, _Mapping]] = ...) -> None: ...

class DeleteSandboxRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteSandboxResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetSandboxRequest(_message.Message):
    __slots__ = ("sandbox",)
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    sandbox: str
    def __init__(self, sandbox: _Optional[str] = ...) -> None: ...

class GetSandboxResponse(_message.Message):
    __slots__ = ("sandbox",)
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    sandbox: Sandbox
    def __init__(self, sandbox: _Optional[_Union[Sandbox, _Mapping]] = ...) -> None: ...

class ListSandboxesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSandboxesResponse(_message.Message):
    __slots__ = ("sandboxes", "next_page_token")
    SANDBOXES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    sandboxes: _containers.RepeatedCompositeFieldContainer[Sandbox]
    next_page_token: str
    def __init__(self, sandboxes: _Optional[_Iterable[_Union[Sandbox, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetStateRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStateResponse(_message.Message):
    __slots__ = ("networks", "endpoints", "sandboxes", "firewall_elements", "vxlan_devices", "detached_endpoints")
    class VxlanDevicesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: VxlanDevice
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[VxlanDevice, _Mapping]] = ...) -> None: ...
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    SANDBOXES_FIELD_NUMBER: _ClassVar[int]
    FIREWALL_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    VXLAN_DEVICES_FIELD_NUMBER: _ClassVar[int]
    DETACHED_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    networks: _containers.RepeatedCompositeFieldContainer[Network]
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    sandboxes: _containers.RepeatedCompositeFieldContainer[Sandbox]
    firewall_elements: int
    vxlan_devices: _containers.MessageMap[str, VxlanDevice]
    detached_endpoints: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, networks: _Optional[_Iterable[_Union[Network, _Mapping]]] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., sandboxes: _Optional[_Iterable[_Union[Sandbox, _Mapping]]] = ..., firewall_elements: _Optional[int] = ..., vxlan_devices: _Optional[_Mapping[str, VxlanDevice]] = ..., detached_endpoints: _Optional[_Iterable[str]] = ...) -> None: ...

class ResyncRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResyncResponse(_message.Message):
    __slots__ = ("repaired",)
    REPAIRED_FIELD_NUMBER: _ClassVar[int]
    repaired: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, repaired: _Optional[_Iterable[str]] = ...) -> None: ...
