"""The Lua scripts that make every multi-key change atomic.

Per-pool scripts take the pool's five keys, all hash-tagged with the pool
id so that they live in one Redis Cluster slot:

    KEYS[1] meta      HASH  pool parameters, numbers the scripts need, next-fit cursor
                            (a sparse pool, mode=sparse: range_last, skip, and the
                            cursor as eight decimal groups; no bitmap)
    KEYS[2] addresses SET   allocated addresses: the record of truth
    KEYS[3] owners    HASH  owner -> address (the gateway too; reserved addresses have none)
    KEYS[4] holders   HASH  address -> owner (gateway, reserved and endpoint addresses)
    KEYS[5] bitmap    STRING bit i set = address range start + i is not free
    KEYS[6] order     ZSET  "<address as fixed-width hex> <address>" for each holders
                            field, all scores 0: address order is lexical order, so a
                            listing reads one page in O(log n + page)

The overlap index scripts take the one index key (its own hash tag).
Addresses cross the Lua boundary as text, written exactly as Python's
``ipaddress`` writes them (IPv6 per RFC 5952), so that SET members, HASH
fields and what callers send always compare equal.
"""

_HELPERS = """
local function ipv4_text(n)
  return string.format('%d.%d.%d.%d', math.floor(n / 16777216) % 256,
    math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
end

local function ipv4_number(text)
  local a, b, c, d = string.match(text, '^(%d+)%.(%d+)%.(%d+)%.(%d+)$')
  return ((tonumber(a) * 256 + tonumber(b)) * 256 + tonumber(c)) * 256 + tonumber(d)
end

-- RFC 5952 text of eight 16-bit groups, as Python's ipaddress writes it: the
-- longest run (the first on a tie) of two or more zero groups becomes '::'.
local function ipv6_text(groups)
  local best_start, best_len, run_start, run_len = 0, 0, 0, 0
  for i = 1, 8 do
    if groups[i] == 0 then
      if run_len == 0 then run_start = i end
      run_len = run_len + 1
      if run_len > best_len then best_start, best_len = run_start, run_len end
    else
      run_len = 0
    end
  end
  local parts = {}
  for i = 1, 8 do parts[i] = string.format('%x', groups[i]) end
  if best_len < 2 then return table.concat(parts, ':') end
  return table.concat(parts, ':', 1, best_start - 1) .. '::'
    .. table.concat(parts, ':', best_start + best_len, 8)
end

-- The eight groups of IPv6 text in hex groups with at most one '::'.
local function ipv6_groups(text)
  local function split(part)
    local groups = {}
    for group in string.gmatch(part, '%x+') do groups[#groups + 1] = tonumber(group, 16) end
    return groups
  end
  local head, tail = string.match(text, '^(.-)::(.*)$')
  if not head then return split(text) end
  local groups, right = split(head), split(tail)
  for _ = 1, 8 - #groups - #right do groups[#groups + 1] = 0 end
  for _, group in ipairs(right) do groups[#groups + 1] = group end
  return groups
end

-- A pool's dynamic range from its meta fields. IPv4 start: a decimal number.
-- IPv6 start: its eight groups in decimal, colon-separated; the range is a
-- CIDR of at most 2^24 addresses, so an offset only changes groups 7 and 8.
local function range_of(family, start, size)
  local range = {family = family, size = tonumber(size)}
  if family == '4' then
    range.start = tonumber(start)
  else
    range.groups = {}
    for group in string.gmatch(start, '%d+') do range.groups[#range.groups + 1] = tonumber(group) end
  end
  return range
end

local function address_text(range, bit)
  if range.family == '4' then return ipv4_text(range.start + bit) end
  local groups = {unpack(range.groups)}
  groups[7] = groups[7] + math.floor(bit / 65536)
  groups[8] = groups[8] + bit % 65536
  return ipv6_text(groups)
end

-- The bitmap offset of an address of the pool's family, or nil outside the range.
local function bit_of(range, address)
  local offset
  if range.family == '4' then
    offset = ipv4_number(address) - range.start
  else
    local groups = ipv6_groups(address)
    for i = 1, 6 do
      if groups[i] ~= range.groups[i] then return nil end
    end
    offset = (groups[7] - range.groups[7]) * 65536 + groups[8] - range.groups[8]
  end
  if offset >= 0 and offset < range.size then return offset end
  return nil
end

-- Next-fit: the first clear bit at or after the cursor, wrapping around; -1 when full.
-- A bit that is clear while its address is held (which only a hand-edited
-- store could produce) is set and skipped, so no address is handed out twice.
local function next_free(bitmap, holders, cursor, range)
  local size = range.size
  while true do
    local bit = redis.call('BITPOS', bitmap, 0, cursor, size - 1, 'BIT')
    if bit < 0 and cursor > 0 then
      bit = redis.call('BITPOS', bitmap, 0, 0, cursor - 1, 'BIT')
    end
    if bit < 0 then return -1, nil end
    local address = address_text(range, bit)
    if redis.call('HEXISTS', holders, address) == 0 then return bit, address end
    redis.call('SETBIT', bitmap, bit, 1)
    cursor = (bit + 1) % size
  end
end

-- Sparse pools (no bitmap; ipam_service/pools.py): addresses as eight decimal
-- groups, a next-fit cursor walking the range one address at a time.
local function parse_groups(text)
  local groups = {}
  for group in string.gmatch(text, '%d+') do groups[#groups + 1] = tonumber(group) end
  return groups
end

local function following(groups, first, last)
  local after = {unpack(groups)}
  for i = 8, 1, -1 do
    if groups[i] ~= last[i] then break end
    if i == 1 then return {unpack(first)} end  -- the last address: round to the first
  end
  for i = 8, 1, -1 do
    after[i] = after[i] + 1
    if after[i] < 65536 then return after end
    after[i] = 0
  end
  return after
end

-- Probes at most this many addresses (each held by a static allocation) per call.
local SPARSE_PROBES = 4096

-- The first address at or after the cursor that no holder has (and is not the one
-- to skip), and the cursor after it; nil (and the cursor where it stopped) when
-- SPARSE_PROBES addresses in a row are held.
local function sparse_next(holders, cursor, first, last, skip)
  local groups = cursor
  for _ = 1, SPARSE_PROBES do
    local address = ipv6_text(groups)
    groups = following(groups, first, last)
    if address ~= skip and redis.call('HEXISTS', holders, address) == 0 then
      return address, groups
    end
  end
  return nil, groups
end

-- The order index member of an address: fixed-width hex, a space, the text.
local function order_member(address)
  if not string.find(address, ':', 1, true) then
    return string.format('%08x', ipv4_number(address)) .. ' ' .. address
  end
  local hex = {}
  for i, group in ipairs(ipv6_groups(address)) do hex[i] = string.format('%04x', group) end
  return table.concat(hex) .. ' ' .. address
end

local function hold(address, owner)
  redis.call('SADD', KEYS[2], address)
  redis.call('HSET', KEYS[4], address, owner)
  redis.call('ZADD', KEYS[6], 0, order_member(address))
end

local function take(address, owner, bit)
  if bit then redis.call('SETBIT', KEYS[5], bit, 1) end
  hold(address, owner)
  redis.call('HSET', KEYS[3], owner, address)
end
"""

# ARGV: fingerprint, n (meta field count * 2), meta fields..., range size,
#       bit count, bits..., then (address, owner) pairs taken at creation.
CREATE_POOL = (
    _HELPERS
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'fingerprint') == ARGV[1] then return 'exists' end
  return 'different'
end
redis.call('UNLINK', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
local i = 2
local n = tonumber(ARGV[i])
redis.call('HSET', KEYS[1], unpack(ARGV, i + 1, i + n))
i = i + n + 1
local size = tonumber(ARGV[i])
-- Size the bitmap in full: BITPOS with an end offset stops at the string's end.
-- (A sparse pool has none: size 0.)
if size > 0 then redis.call('SETBIT', KEYS[5], size - 1, 0) end
i = i + 1
local bits = tonumber(ARGV[i])
for j = i + 1, i + bits do redis.call('SETBIT', KEYS[5], tonumber(ARGV[j]), 1) end
i = i + bits + 1
while i < #ARGV do
  local address, owner = ARGV[i], ARGV[i + 1]
  hold(address, owner)
  if owner == 'cnm:gateway' then redis.call('HSET', KEYS[3], owner, address) end
  i = i + 2
end
return 'created'
"""
)

# ARGV: owner, preferred address or '', fingerprint the preferred address was checked against.
ALLOCATE = (
    _HELPERS
    + """
local f = redis.call('HMGET', KEYS[1], 'family', 'range_start', 'range_size', 'cursor',
                     'prefix_length', 'gateway', 'fingerprint', 'mode', 'range_last', 'skip')
if not f[1] then return {'not_found'} end
local sparse = f[8] == 'sparse'
local owner, preferred, prefix = ARGV[1], ARGV[2], ARGV[4] == '1'
if prefix and preferred ~= '' then owner = owner .. preferred end
local held = redis.call('HGET', KEYS[3], owner)
if held and not (prefix and preferred == '') then
  if preferred ~= '' and preferred ~= held then return {'owner_holds', held} end
  return {'ok', held, 0, f[5], f[6]}
end
local range = range_of(f[1], f[2], f[3])
local address, bit
if preferred ~= '' then
  if f[7] ~= ARGV[3] then return {'changed'} end
  local holder = redis.call('HGET', KEYS[4], preferred)
  if holder then return {'taken', holder} end
  address = preferred
  if not sparse then bit = bit_of(range, preferred) end
elseif sparse then
  local cursor
  address, cursor = sparse_next(KEYS[4], parse_groups(f[4]), range.groups,
                                parse_groups(f[9]), f[10])
  redis.call('HSET', KEYS[1], 'cursor', table.concat(cursor, ':'))
  if not address then return {'exhausted'} end
  if prefix then owner = owner .. address end
else
  bit, address = next_free(KEYS[5], KEYS[4], tonumber(f[4]), range)
  if bit < 0 then return {'exhausted'} end
  redis.call('HSET', KEYS[1], 'cursor', (bit + 1) % range.size)
  if prefix then owner = owner .. address end
end
take(address, owner, bit)
return {'ok', address, 1, f[5], f[6]}
"""
)

# ARGV: owners (distinct). All or nothing: the free count is checked first.
BATCH_ALLOCATE = (
    _HELPERS
    + """
local f = redis.call('HMGET', KEYS[1], 'family', 'range_start', 'range_size', 'cursor',
                     'prefix_length', 'gateway', 'mode', 'range_last', 'skip')
if not f[1] then return {'not_found'} end
local held = redis.call('HMGET', KEYS[3], unpack(ARGV))
local need = 0
for i = 1, #ARGV do
  if not held[i] then need = need + 1 end
end
if f[7] == 'sparse' then
  -- Every address is found before any is taken: all or nothing.
  local first, last = parse_groups(f[2]), parse_groups(f[8])
  local cursor, found = parse_groups(f[4]), {}
  for i = 1, #ARGV do
    if not held[i] then
      local address
      address, cursor = sparse_next(KEYS[4], cursor, first, last, f[9])
      if not address then return {'exhausted', 0, need} end
      found[i] = address
    end
  end
  local reply = {'ok', f[5], f[6]}
  for i = 1, #ARGV do
    if found[i] then take(found[i], ARGV[i], nil) end
    reply[#reply + 1] = held[i] or found[i]
  end
  redis.call('HSET', KEYS[1], 'cursor', table.concat(cursor, ':'))
  return reply
end
local range, cursor = range_of(f[1], f[2], f[3]), tonumber(f[4])
local size = range.size
local free = size - redis.call('BITCOUNT', KEYS[5], 0, size - 1, 'BIT')
if need > free then return {'exhausted', free, need} end
local reply = {'ok', f[5], f[6]}
for i = 1, #ARGV do
  local address = held[i]
  if not address then
    local bit
    bit, address = next_free(KEYS[5], KEYS[4], cursor, range)
    if bit < 0 then return redis.error_reply('bitmap and free count disagree') end
    take(address, ARGV[i], bit)
    cursor = (bit + 1) % size
  end
  reply[#reply + 1] = address
end
redis.call('HSET', KEYS[1], 'cursor', cursor)
return reply
"""
)

# ARGV: 'address' or 'owner', the address or owner.
RELEASE = (
    _HELPERS
    + """
local f = redis.call('HMGET', KEYS[1], 'family', 'range_start', 'range_size', 'mode')
if not f[1] then return {'not_found'} end
local address, owner
if ARGV[1] == 'owner' then
  owner = ARGV[2]
  address = redis.call('HGET', KEYS[3], owner)
  if not address then return {'none'} end
else
  address = ARGV[2]
  owner = redis.call('HGET', KEYS[4], address)
  if not owner then return {'none'} end
  if owner == 'cnm:gateway' or owner == 'cnm:reserved' then return {'protected', owner} end
end
redis.call('SREM', KEYS[2], address)
redis.call('HDEL', KEYS[3], owner)
redis.call('HDEL', KEYS[4], address)
redis.call('ZREM', KEYS[6], order_member(address))
if f[4] ~= 'sparse' then
  local bit = bit_of(range_of(f[1], f[2], f[3]), address)
  if bit then redis.call('SETBIT', KEYS[5], bit, 0) end
end
return {'released', address}
"""
)

# ARGV: address, from owner, to owner. The address stays allocated throughout.
TRANSFER = """
local f = redis.call('HMGET', KEYS[1], 'family', 'prefix_length', 'gateway')
if not f[1] then return {'not_found'} end
local address, from, to = ARGV[1], ARGV[2], ARGV[3]
local holder = redis.call('HGET', KEYS[4], address)
if holder == to then return {'ok', f[2], f[3]} end
if holder ~= from then return {'not_held', holder or ''} end
local other = redis.call('HGET', KEYS[3], to)
if other then return {'owner_holds', other} end
redis.call('HDEL', KEYS[3], from)
redis.call('HSET', KEYS[3], to, address)
redis.call('HSET', KEYS[4], address, to)
return {'ok', f[2], f[3]}
"""

# ARGV: '1' to delete even while endpoint addresses are allocated.
DELETE_POOL = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'absent', 0} end
local held = redis.call('HLEN', KEYS[3]) - redis.call('HEXISTS', KEYS[3], 'cnm:gateway')
if held > 0 and ARGV[1] ~= '1' then return {'in_use', held} end
redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
return {'deleted', held}
"""

# KEYS: meta, addresses, bitmap. Reply: meta as a flat list, allocated count, free count
# (-1 for a sparse pool: the caller counts it, as the range's size is no Lua number).
GET_POOL = """
local meta = redis.call('HGETALL', KEYS[1])
if #meta == 0 then return false end
if redis.call('HGET', KEYS[1], 'mode') == 'sparse' then
  return {meta, redis.call('SCARD', KEYS[2]), -1}
end
local size = tonumber(redis.call('HGET', KEYS[1], 'range_size'))
local taken = redis.call('BITCOUNT', KEYS[3], 0, size - 1, 'BIT')
return {meta, redis.call('SCARD', KEYS[2]), size - taken}
"""

# KEYS: meta, addresses, owners, holders, bitmap, order (the pool's keys).
# ARGV: the hex of the last address of the previous page ('' for the first), page size.
# Reply: nil for no pool, else {more (0/1), hex, address, owner, hex, address, owner...}.
LIST_ALLOCATIONS = (
    _HELPERS
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
-- A pool made before the order index existed gets it on its first listing.
if redis.call('ZCARD', KEYS[6]) ~= redis.call('HLEN', KEYS[4]) then
  redis.call('UNLINK', KEYS[6])
  local held = redis.call('HKEYS', KEYS[4])
  for i = 1, #held, 1000 do
    local members = {}
    for j = i, math.min(i + 999, #held) do
      members[#members + 1] = 0
      members[#members + 1] = order_member(held[j])
    end
    redis.call('ZADD', KEYS[6], unpack(members))
  end
end
local size = tonumber(ARGV[2])
local low = '-'
-- '~' sorts after the space of every member whose hex equals the last one.
if ARGV[1] ~= '' then low = '(' .. ARGV[1] .. '~' end
local members = redis.call('ZRANGE', KEYS[6], low, '+', 'BYLEX', 'LIMIT', 0, size + 1)
local reply = {#members > size and 1 or 0}
for i = 1, math.min(#members, size) do
  local space = string.find(members[i], ' ', 1, true)
  local address = string.sub(members[i], space + 1)
  reply[#reply + 1] = string.sub(members[i], 1, space - 1)
  reply[#reply + 1] = address
  reply[#reply + 1] = redis.call('HGET', KEYS[4], address) or ''
end
return reply
"""
)

_HEX = """
-- a <= b for equal-width hex strings, compared 8 digits at a time as numbers
local function hex_le(a, b)
  for i = 1, #a, 8 do
    local x = tonumber(string.sub(a, i, i + 7), 16)
    local y = tonumber(string.sub(b, i, i + 7), 16)
    if x ~= y then return x < y end
  end
  return true
end
"""

# KEYS: index. ARGV: pool id, family, first hex, last hex, fingerprint.
# Reply: {'reserved'}, {'exists'} (same entry), {'different', entry},
# or {'overlap', pool id, entry}.
INDEX_RESERVE = (
    _HEX
    + """
local id, family, first, last = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local entry = table.concat({family, first, last, ARGV[5]}, ' ')
local existing = redis.call('HGET', KEYS[1], id)
if existing then
  if existing == entry then return {'exists'} end
  return {'different', existing}
end
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local other_family, other_first, other_last = string.match(all[i + 1], '^(%S+) (%S+) (%S+)')
  if other_family == family and hex_le(first, other_last) and hex_le(other_first, last) then
    return {'overlap', all[i], all[i + 1]}
  end
end
redis.call('HSET', KEYS[1], id, entry)
if KEYS[2] then redis.call('HSET', KEYS[2], id, redis.call('TIME')[1]) end
return {'reserved'}
"""
)

# KEYS: index[, index times]. ARGV: pool id, entry ('' = whatever it is).
# Removes the entry (and when it was made) if it matches.
INDEX_RELEASE = """
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if not existing then
  if KEYS[2] then redis.call('HDEL', KEYS[2], ARGV[1]) end
  return 0
end
if ARGV[2] ~= '' and existing ~= ARGV[2] then return 0 end
if KEYS[2] then redis.call('HDEL', KEYS[2], ARGV[1]) end
return redis.call('HDEL', KEYS[1], ARGV[1])
"""

# KEYS: index, index times. ARGV: pool id, entry, minimum age in seconds.
# For an entry whose pool keys the caller found missing (a create or delete
# cut short): removes it once older than the minimum age, which no create in
# flight lasts. An entry with no time (made before times were kept) gets one.
INDEX_COLLECT = """
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if not existing or existing ~= ARGV[2] then return 0 end
local now = tonumber(redis.call('TIME')[1])
local since = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '')
if not since then
  redis.call('HSET', KEYS[2], ARGV[1], now)
  return 0
end
if now - since < tonumber(ARGV[3]) then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""
