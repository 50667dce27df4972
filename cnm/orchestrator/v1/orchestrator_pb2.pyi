import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
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

class Protocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTOCOL_UNSPECIFIED: _ClassVar[Protocol]
    PROTOCOL_TCP: _ClassVar[Protocol]
    PROTOCOL_UDP: _ClassVar[Protocol]
    PROTOCOL_SCTP: _ClassVar[Protocol]

class HostState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HOST_STATE_UNSPECIFIED: _ClassVar[HostState]
    HOST_STATE_HEALTHY: _ClassVar[HostState]
    HOST_STATE_UNHEALTHY: _ClassVar[HostState]

class EndpointState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENDPOINT_STATE_UNSPECIFIED: _ClassVar[EndpointState]
    ENDPOINT_STATE_ACTIVE: _ClassVar[EndpointState]
    ENDPOINT_STATE_GONE: _ClassVar[EndpointState]
    ENDPOINT_STATE_STALE: _ClassVar[EndpointState]
DRIVER_UNSPECIFIED: Driver
DRIVER_BRIDGE: Driver
DRIVER_OVERLAY: Driver
PROTOCOL_UNSPECIFIED: Protocol
PROTOCOL_TCP: Protocol
PROTOCOL_UDP: Protocol
PROTOCOL_SCTP: Protocol
HOST_STATE_UNSPECIFIED: HostState
HOST_STATE_HEALTHY: HostState
HOST_STATE_UNHEALTHY: HostState
ENDPOINT_STATE_UNSPECIFIED: EndpointState
ENDPOINT_STATE_ACTIVE: EndpointState
ENDPOINT_STATE_GONE: EndpointState
ENDPOINT_STATE_STALE: EndpointState

class Network(_message.Message):
    __slots__ = ("network_id", "name", "driver", "subnet", "gateway", "ip_range", "internal", "options", "labels", "vni", "create_time", "hosts", "aux_addresses", "enable_ipv6", "ipv6_subnet", "ipv6_gateway", "ipv6_ip_range", "enable_ipv4")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class AuxAddressesEntry(_message.Message):
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
    IP_RANGE_FIELD_NUMBER: _ClassVar[int]
    INTERNAL_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    VNI_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    AUX_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    ENABLE_IPV6_FIELD_NUMBER: _ClassVar[int]
    IPV6_SUBNET_FIELD_NUMBER: _ClassVar[int]
    IPV6_GATEWAY_FIELD_NUMBER: _ClassVar[int]
    IPV6_IP_RANGE_FIELD_NUMBER: _ClassVar[int]
    ENABLE_IPV4_FIELD_NUMBER: _ClassVar[int]
    network_id: str
    name: str
    driver: Driver
    subnet: str
    gateway: str
    ip_range: str
    internal: bool
    options: _containers.ScalarMap[str, str]
    labels: _containers.ScalarMap[str, str]
    vni: int
    create_time: _timestamp_pb2.Timestamp
    hosts: _containers.RepeatedCompositeFieldContainer[NetworkHostState]
    aux_addresses: _containers.ScalarMap[str, str]
    enable_ipv6: bool
    ipv6_subnet: str
    ipv6_gateway: str
    ipv6_ip_range: str
    enable_ipv4: bool
    def __init__(self, network_id: _Optional[str] = ..., name: _Optional[str] = ..., driver: _Optional[_Union[Driver, str]] = ..., subnet: _Optional[str] = ..., gateway: _Optional[str] = ..., ip_range: _Optional[str] = ..., internal: _Optional[bool] = ..., options: _Optional[_Mapping[str, str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., vni: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., hosts: _Optional[_Iterable[_Union[NetworkHostState, _Mapping]]] = ..., aux_addresses: _Optional[_Mapping[str, str]] = ..., enable_ipv6: _Optional[bool] = ..., ipv6_subnet: _Optional[str] = ..., ipv6_gateway: _Optional[str] = ..., ipv6_ip_range: _Optional[str] = ..., enable_ipv4: _Optional[bool] = ...) -> None: ...

class NetworkHostState(_message.Message):
    __slots__ = ("host_id", "ready", "message")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    ready: bool
    message: str
    def __init__(self, host_id: _Optional[str] = ..., ready: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("endpoint_id", "network_id", "network_name", "container_id", "host_id", "sandbox", "address", "prefix_length", "mac_address", "host_interface", "container_interface", "port_mappings", "create_time", "state", "gone_time", "labels", "address_reserved", "peer_on_host", "dns_names", "ipv6_address", "ipv6_prefix_length")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_NAME_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HOST_INTERFACE_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_INTERFACE_FIELD_NUMBER: _ClassVar[int]
    PORT_MAPPINGS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    GONE_TIME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_RESERVED_FIELD_NUMBER: _ClassVar[int]
    PEER_ON_HOST_FIELD_NUMBER: _ClassVar[int]
    DNS_NAMES_FIELD_NUMBER: _ClassVar[int]
    IPV6_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    IPV6_PREFIX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: str
    network_id: str
    network_name: str
    container_id: str
    host_id: str
    sandbox: str
    address: str
    prefix_length: int
    mac_address: str
    host_interface: str
    container_interface: str
    port_mappings: _containers.RepeatedCompositeFieldContainer[PortMapping]
    create_time: _timestamp_pb2.Timestamp
    state: EndpointState
    gone_time: _timestamp_pb2.Timestamp
    labels: _containers.ScalarMap[str, str]
    address_reserved: bool
    peer_on_host: bool
    dns_names: _containers.RepeatedScalarFieldContainer[str]
    ipv6_address: str
    ipv6_prefix_length: int
    def __init__(self, endpoint_id: _Optional[str] = ..., network_id: _Optional[str] = ..., network_name: _Optional[str] = ..., container_id: _Optional[str] = ..., host_id: _Optional[str] = ..., sandbox: _Optional[str] = ..., address: _Optional[str] = ..., prefix_length: _Optional[int] = ..., mac_address: _Optional[str] = ..., host_interface: _Optional[str] = ..., container_interface: _Optional[str] = ..., port_mappings: _Optional[_Iterable[_Union[PortMapping, _Mapping]]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[_Union[EndpointState, str]] = ..., gone_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., address_reserved: _Optional[bool] = ..., peer_on_host: _Optional[bool] = ..., dns_names: _Optional[_Iterable[str]] = ..., ipv6_address: _Optional[str] = ..., ipv6_prefix_length: _Optional[int] = ...) -> None: ...

class Host(_message.Message):
    __slots__ = ("host_id", "address", "underlay_ip", "state", "last_heartbeat_time", "endpoint_count", "static", "routes")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    UNDERLAY_IP_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_TIME_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_COUNT_FIELD_NUMBER: _ClassVar[int]
    STATIC_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    address: str
    underlay_ip: str
    state: HostState
    last_heartbeat_time: _timestamp_pb2.Timestamp
    endpoint_count: int
    static: bool
    routes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, host_id: _Optional[str] = ..., address: _Optional[str] = ..., underlay_ip: _Optional[str] = ..., state: _Optional[_Union[HostState, str]] = ..., last_heartbeat_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., endpoint_count: _Optional[int] = ..., static: _Optional[bool] = ..., routes: _Optional[_Iterable[str]] = ...) -> None: ...

class Sandbox(_message.Message):
    __slots__ = ("name", "host_id", "path", "endpoints", "inode")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    INODE_FIELD_NUMBER: _ClassVar[int]
    name: str
    host_id: str
    path: str
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    inode: int
    def __init__(self, name: _Optional[str] = ..., host_id: _Optional[str] = ..., path: _Optional[str] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., inode: _Optional[int] = ...) -> None: ...

class ReserveAddressRequest(_message.Message):
    __slots__ = ("network", "host_id", "address", "ipv6")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    IPV6_FIELD_NUMBER: _ClassVar[int]
    network: str
    host_id: str
    address: str
    ipv6: bool
    def __init__(self, network: _Optional[str] = ..., host_id: _Optional[str] = ..., address: _Optional[str] = ..., ipv6: _Optional[bool] = ...) -> None: ...

class ReserveAddressResponse(_message.Message):
    __slots__ = ("address", "prefix_length", "gateway")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    address: str
    prefix_length: int
    gateway: str
    def __init__(self, address: _Optional[str] = ..., prefix_length: _Optional[int] = ..., gateway: _Optional[str] = ...) -> None: ...

class ReleaseAddressRequest(_message.Message):
    __slots__ = ("network", "host_id", "address")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    network: str
    host_id: str
    address: str
    def __init__(self, network: _Optional[str] = ..., host_id: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class ReleaseAddressResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateNetworkRequest(_message.Message):
    __slots__ = ("network", "validate_only")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    network: Network
    validate_only: bool
    def __init__(self, network: _Optional[_Union[Network, _Mapping]] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class CreateNetworkResponse(_message.Message):
    __slots__ = ("network",)
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    network: Network
    def __init__(self, network: _Optional[_Union[Network, _Mapping]] = ...) -> None: ...

class GetNetworkRequest(_message.Message):
    __slots__ = ("network",)
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    network: str
    def __init__(self, network: _Optional[str] = ...) -> None: ...

class GetNetworkResponse(_message.Message):
    __slots__ = ("network", "endpoints", "quarantined_endpoints")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    QUARANTINED_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    network: Network
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    quarantined_endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    def __init__(self, network: _Optional[_Union[Network, _Mapping]] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., quarantined_endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ...) -> None: ...

class ListNetworksRequest(_message.Message):
    __slots__ = ("driver", "label_filters", "page_size", "page_token")
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    LABEL_FILTERS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    driver: Driver
    label_filters: _containers.RepeatedScalarFieldContainer[str]
    page_size: int
    page_token: str
    def __init__(self, driver: _Optional[_Union[Driver, str]] = ..., label_filters: _Optional[_Iterable[str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListNetworksResponse(_message.Message):
    __slots__ = ("networks", "next_page_token")
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    networks: _containers.RepeatedCompositeFieldContainer[Network]
    next_page_token: str
    def __init__(self, networks: _Optional[_Iterable[_Union[Network, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteNetworkRequest(_message.Message):
    __slots__ = ("network", "force", "allow_missing")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    ALLOW_MISSING_FIELD_NUMBER: _ClassVar[int]
    network: str
    force: bool
    allow_missing: bool
    def __init__(self, network: _Optional[str] = ..., force: _Optional[bool] = ..., allow_missing: _Optional[bool] = ...) -> None: ...

class DeleteNetworkResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PruneNetworksRequest(_message.Message):
    __slots__ = ("label_filters", "excluded_label_filters", "created_before")
    LABEL_FILTERS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_LABEL_FILTERS_FIELD_NUMBER: _ClassVar[int]
    CREATED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    label_filters: _containers.RepeatedScalarFieldContainer[str]
    excluded_label_filters: _containers.RepeatedScalarFieldContainer[str]
    created_before: _timestamp_pb2.Timestamp
    def __init__(self, label_filters: _Optional[_Iterable[str]] = ..., excluded_label_filters: _Optional[_Iterable[str]] = ..., created_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PruneNetworksResponse(_message.Message):
    __slots__ = ("deleted_networks", "skipped_networks")
    DELETED_NETWORKS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_NETWORKS_FIELD_NUMBER: _ClassVar[int]
    deleted_networks: _containers.RepeatedScalarFieldContainer[str]
    skipped_networks: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, deleted_networks: _Optional[_Iterable[str]] = ..., skipped_networks: _Optional[_Iterable[str]] = ...) -> None: ...

class ConnectContainerRequest(_message.Message):
    __slots__ = ("network", "container_id", "host_id", "sandbox", "address", "port_mappings", "interface_name", "mac_address", "labels", "address_reserved", "peer_on_host", "dns_names", "ipv6_address")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_MAPPINGS_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_NAME_FIELD_NUMBER: _ClassVar[int]
    MAC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_RESERVED_FIELD_NUMBER: _ClassVar[int]
    PEER_ON_HOST_FIELD_NUMBER: _ClassVar[int]
    DNS_NAMES_FIELD_NUMBER: _ClassVar[int]
    IPV6_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    network: str
    container_id: str
    host_id: str
    sandbox: str
    address: str
    port_mappings: _containers.RepeatedCompositeFieldContainer[PortMapping]
    interface_name: str
    mac_address: str
    labels: _containers.ScalarMap[str, str]
    address_reserved: bool
    peer_on_host: bool
    dns_names: _containers.RepeatedScalarFieldContainer[str]
    ipv6_address: str
    def __init__(self, network: _Optional[str] = ..., container_id: _Optional[str] = ..., host_id: _Optional[str] = ..., sandbox: _Optional[str] = ..., address: _Optional[str] = ..., port_mappings: _Optional[_Iterable[_Union[PortMapping, _Mapping]]] = ..., interface_name: _Optional[str] = ..., mac_address: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., address_reserved: _Optional[bool] = ..., peer_on_host: _Optional[bool] = ..., dns_names: _Optional[_Iterable[str]] = ..., ipv6_address: _Optional[str] = ...) -> None: ...

class ConnectContainerResponse(_message.Message):
    __slots__ = ("endpoint",)
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    endpoint: Endpoint
    def __init__(self, endpoint: _Optional[_Union[Endpoint, _Mapping]] = ...) -> None: ...

class DisconnectContainerRequest(_message.Message):
    __slots__ = ("network", "container_id", "force", "allow_missing", "release_address")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    ALLOW_MISSING_FIELD_NUMBER: _ClassVar[int]
    RELEASE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    network: str
    container_id: str
    force: bool
    allow_missing: bool
    release_address: bool
    def __init__(self, network: _Optional[str] = ..., container_id: _Optional[str] = ..., force: _Optional[bool] = ..., allow_missing: _Optional[bool] = ..., release_address: _Optional[bool] = ...) -> None: ...

class DisconnectContainerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetEndpointRequest(_message.Message):
    __slots__ = ("endpoint_id",)
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: str
    def __init__(self, endpoint_id: _Optional[str] = ...) -> None: ...

class GetEndpointResponse(_message.Message):
    __slots__ = ("endpoint",)
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    endpoint: Endpoint
    def __init__(self, endpoint: _Optional[_Union[Endpoint, _Mapping]] = ...) -> None: ...

class ListEndpointsRequest(_message.Message):
    __slots__ = ("network", "container_id", "host_id", "page_size", "page_token")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    network: str
    container_id: str
    host_id: str
    page_size: int
    page_token: str
    def __init__(self, network: _Optional[str] = ..., container_id: _Optional[str] = ..., host_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListEndpointsResponse(_message.Message):
    __slots__ = ("endpoints", "next_page_token")
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    next_page_token: str
    def __init__(self, endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CreateSandboxRequest(_message.Message):
    __slots__ = ("name", "host_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    host_id: str
    def __init__(self, name: _Optional[str] = ..., host_id: _Optional[str] = ...) -> None: ...

class CreateSandboxResponse(_message.Message):
    __slots__ = ("sandbox",)
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    sandbox: Sandbox
    def __init__(self, sandbox: _Optional[_Union[Sandbox, _Mapping]] = ...) -> None: ...

class DeleteSandboxRequest(_message.Message):
    __slots__ = ("name", "host_id", "allow_missing")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    ALLOW_MISSING_FIELD_NUMBER: _ClassVar[int]
    name: str
    host_id: str
    allow_missing: bool
    def __init__(self, name: _Optional[str] = ..., host_id: _Optional[str] = ..., allow_missing: _Optional[bool] = ...) -> None: ...

class DeleteSandboxResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSandboxesRequest(_message.Message):
    __slots__ = ("host_id", "page_size", "page_token")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    page_size: int
    page_token: str
    def __init__(self, host_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSandboxesResponse(_message.Message):
    __slots__ = ("sandboxes", "next_page_token", "unreachable")
    SANDBOXES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    UNREACHABLE_FIELD_NUMBER: _ClassVar[int]
    sandboxes: _containers.RepeatedCompositeFieldContainer[Sandbox]
    next_page_token: str
    unreachable: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sandboxes: _Optional[_Iterable[_Union[Sandbox, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., unreachable: _Optional[_Iterable[str]] = ...) -> None: ...

class RegisterHostRequest(_message.Message):
    __slots__ = ("host",)
    HOST_FIELD_NUMBER: _ClassVar[int]
    host: Host
    def __init__(self, host: _Optional[_Union[Host, _Mapping]] = ...) -> None: ...

class RegisterHostResponse(_message.Message):
    __slots__ = ("host", "heartbeat_interval")
    HOST_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    host: Host
    heartbeat_interval: _duration_pb2.Duration
    def __init__(self, host: _Optional[_Union[Host, _Mapping]] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class HeartbeatHostRequest(_message.Message):
    __slots__ = ("host_id", "lost_endpoint_ids")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    LOST_ENDPOINT_IDS_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    lost_endpoint_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, host_id: _Optional[str] = ..., lost_endpoint_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class HeartbeatHostResponse(_message.Message):
    __slots__ = ("reregister", "unknown_endpoint_ids")
    REREGISTER_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_ENDPOINT_IDS_FIELD_NUMBER: _ClassVar[int]
    reregister: bool
    unknown_endpoint_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, reregister: _Optional[bool] = ..., unknown_endpoint_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ListHostsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListHostsResponse(_message.Message):
    __slots__ = ("hosts", "next_page_token")
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    hosts: _containers.RepeatedCompositeFieldContainer[Host]
    next_page_token: str
    def __init__(self, hosts: _Optional[_Iterable[_Union[Host, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteHostRequest(_message.Message):
    __slots__ = ("host_id", "allow_missing", "force")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    ALLOW_MISSING_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    allow_missing: bool
    force: bool
    def __init__(self, host_id: _Optional[str] = ..., allow_missing: _Optional[bool] = ..., force: _Optional[bool] = ...) -> None: ...

class DeleteHostResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
