import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class IpFamily(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IP_FAMILY_UNSPECIFIED: _ClassVar[IpFamily]
    IP_FAMILY_IPV4: _ClassVar[IpFamily]
    IP_FAMILY_IPV6: _ClassVar[IpFamily]
IP_FAMILY_UNSPECIFIED: IpFamily
IP_FAMILY_IPV4: IpFamily
IP_FAMILY_IPV6: IpFamily

class Pool(_message.Message):
    __slots__ = ("pool_id", "subnet", "gateway", "ip_range", "reserved_addresses", "labels", "family", "create_time", "usage")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    IP_RANGE_FIELD_NUMBER: _ClassVar[int]
    RESERVED_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    pool_id: str
    subnet: str
    gateway: str
    ip_range: str
    reserved_addresses: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    family: IpFamily
    create_time: _timestamp_pb2.Timestamp
    usage: PoolUsage
    def __init__(self, pool_id: _Optional[str] = ..., subnet: _Optional[str] = ..., gateway: _Optional[str] = ..., ip_range: _Optional[str] = ..., reserved_addresses: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., family: _Optional[_Union[IpFamily, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., usage: _Optional[_Union[PoolUsage, _Mapping]] = ...) -> None: ...

class PoolUsage(_message.Message):
    __slots__ = ("size", "allocated", "free")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ALLOCATED_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    size: int
    allocated: int
    free: int
    def __init__(self, size: _Optional[int] = ..., allocated: _Optional[int] = ..., free: _Optional[int] = ...) -> None: ...

class Allocation(_message.Message):
    __slots__ = ("address", "owner")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    address: str
    owner: str
    def __init__(self, address: _Optional[str] = ..., owner: _Optional[str] = ...) -> None: ...

class CreatePoolRequest(_message.Message):
    __slots__ = ("pool",)
    POOL_FIELD_NUMBER: _ClassVar[int]
    pool: Pool
    def __init__(self, pool: _Optional[_Union[Pool, _Mapping]] = ...) -> None: ...

class CreatePoolResponse(_message.Message):
    __slots__ = ("pool",)
    POOL_FIELD_NUMBER: _ClassVar[int]
    pool: Pool
    def __init__(self, pool: _Optional[_Union[Pool, _Mapping]] = ...) -> None: ...

class GetPoolRequest(_message.Message):
    __slots__ = ("pool_id",)
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    pool_id: str
    def __init__(self, pool_id: _Optional[str] = ...) -> None: ...

class GetPoolResponse(_message.Message):
    __slots__ = ("pool",)
    POOL_FIELD_NUMBER: _ClassVar[int]
    pool: Pool
    def __init__(self, pool: _Optional[_Union[Pool, _Mapping]] = ...) -> None: ...

class ListPoolsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPoolsResponse(_message.Message):
    __slots__ = ("pools", "next_page_token")
    POOLS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    pools: _containers.RepeatedCompositeFieldContainer[Pool]
    next_page_token: str
    def __init__(self, pools: _Optional[_Iterable[_Union[Pool, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeletePoolRequest(_message.Message):
    __slots__ = ("pool_id", "force")
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    pool_id: str
    force: bool
    def __init__(self, pool_id: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class DeletePoolResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AllocateAddressRequest(_message.Message):
    __slots__ = ("pool_id", "owner", "preferred_address", "owner_is_prefix")
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    OWNER_IS_PREFIX_FIELD_NUMBER: _ClassVar[int]
    pool_id: str
    owner: str
    preferred_address: str
    owner_is_prefix: bool
    def __init__(self, pool_id: _Optional[str] = ..., owner: _Optional[str] = ..., preferred_address: _Optional[str] = ..., owner_is_prefix: _Optional[bool] = ...) -> None: ...

class AllocateAddressResponse(_message.Message):
    __slots__ = ("address", "prefix_length", "gateway", "newly_allocated")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    NEWLY_ALLOCATED_FIELD_NUMBER: _ClassVar[int]
    address: str
    prefix_length: int
    gateway: str
    newly_allocated: bool
    def __init__(self, address: _Optional[str] = ..., prefix_length: _Optional[int] = ..., gateway: _Optional[str] = ..., newly_allocated: _Optional[bool] = ...) -> None: ...

class BatchAllocateAddressesRequest(_message.Message):
    __slots__ = ("pool_id", "owners")
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    OWNERS_FIELD_NUMBER: _ClassVar[int]
    pool_id: str
    owners: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, pool_id: _Optional[str] = ..., owners: _Optional[_Iterable[str]] = ...) -> None: ...

class BatchAllocateAddressesResponse(_message.Message):
    __slots__ = ("allocations",)
    ALLOCATIONS_FIELD_NUMBER: _ClassVar[int]
    allocations: _containers.RepeatedCompositeFieldContainer[Allocation]
    def __init__(self, allocations: _Optional[_Iterable[_Union[Allocation, _Mapping]]] = ...) -> None: ...

class ReleaseAddressRequest(_message.Message):
    __slots__ = ("pool_id", "address", "owner")
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    pool_id: str
    address: str
    owner: str
    def __init__(self, pool_id: _Optional[str] = ..., address: _Optional[str] = ..., owner: _Optional[str] = ...) -> None: ...

class ReleaseAddressResponse(_message.Message):
    __slots__ = ("address",)
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    address: str
    def __init__(self, address: _Optional[str] = ...) -> None: ...

class TransferAddressRequest(_message.Message):
    __slots__ = ("pool_id", "address", "from_owner", "to_owner")
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    FROM_OWNER_FIELD_NUMBER: _ClassVar[int]
    TO_OWNER_FIELD_NUMBER: _ClassVar[int]
    pool_id: str
    address: str
    from_owner: str
    to_owner: str
    def __init__(self, pool_id: _Optional[str] = ..., address: _Optional[str] = ..., from_owner: _Optional[str] = ..., to_owner: _Optional[str] = ...) -> None: ...

class TransferAddressResponse(_message.Message):
    __slots__ = ("prefix_length", "gateway")
    PREFIX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    prefix_length: int
    gateway: str
    def __init__(self, prefix_length: _Optional[int] = ..., gateway: _Optional[str] = ...) -> None: ...

class ListAllocationsRequest(_message.Message):
    __slots__ = ("pool_id", "page_size", "page_token")
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    pool_id: str
    page_size: int
    page_token: str
    def __init__(self, pool_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAllocationsResponse(_message.Message):
    __slots__ = ("allocations", "next_page_token")
    ALLOCATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    allocations: _containers.RepeatedCompositeFieldContainer[Allocation]
    next_page_token: str
    def __init__(self, allocations: _Optional[_Iterable[_Union[Allocation, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
