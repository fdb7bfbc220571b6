//! Every Lua script the cache sends to Redis, with its contract (KEYS,
//! ARGV, reply), in one place: the version guard and tag bump of L2, the
//! bus's append-and-publish, and write-behind's enqueue, settle and group
//! creation. Scripts go out with `EVAL` (no `SCRIPT LOAD` per node or after
//! a restart). On a cluster a script may only touch keys of one hash slot:
//! all do but [`ENQUEUE`], which is why write-behind needs a single node.
//!
//! Stored values carry their version as the first byte's marker (see
//! [`codec`](crate::codec)); [`version_of_lua`] reads it on the server.

/// Lua `version_of(stored, field)`: the version of a stored value (see
/// [`codec`](crate::codec)): the digits after a `0x03` (versioned), `0x04` (tombstone) or
/// `0x05` (deleted) marker, `-1` for a negative entry, the JSON field
/// `field` of JSON text, `nil` when absent or unreadable.
macro_rules! version_of_lua {
    () => {
        r"
local function version_of(cur, field)
  if not cur then return nil end
  local first = string.byte(cur, 1)
  if first == nil then return -1 end
  if first >= 3 and first <= 5 then return tonumber(string.match(cur, '^.(%d+)')) end
  if first > 8 then
    local ok, doc = pcall(cjson.decode, cur)
    if ok and type(doc) == 'table' then return tonumber(doc[field]) end
  end
  return nil
end
"
    };
}

/// The version guard: never replace a newer version with an older one.
/// Stores ARGV[2] under KEYS[1] for ARGV[3] ms unless what is stored has a
/// higher version than ARGV[1]. The stored version is read from the value
/// itself by [`version_of_lua`]: the digits after a `0x03` (versioned),
/// `0x04` (tombstone) or `0x05` (deleted) marker, `-1` for a negative entry
/// (the empty string), else the JSON field named ARGV[4]. A value whose
/// version cannot be read is replaced. Returns 1 when stored, 0 when refused, 2 when the very same
/// bytes are already there (left as they are, TTL included: rewriting them
/// would only send every instance a client-tracking invalidation for a
/// value that did not change).
pub(crate) const GUARDED_SET: &str = concat!(
    version_of_lua!(),
    r"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[2] then return 2 end
local old = version_of(cur, ARGV[4])
if old and old > tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"
);

/// New tag generation: `max(stored + 1, Redis time in ms)`. Time-based so
/// that a generation never comes back after its key was deleted (by a
/// cache clear, say): entries keyed by an old generation must stay
/// unreachable.
pub(crate) const BUMP_TAG: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local new = math.max(cur + 1, now)
redis.call('SET', KEYS[1], string.format('%.0f', new))
return new
";

/// Appends ARGV[2] (a message body) to the log KEYS[1] unless ARGV[5] is
/// `0` (a heartbeat), then publishes it on channel ARGV[1] with ARGV[6]
/// (`PUBLISH`, or on a cluster `SPUBLISH`: the channel then shares the
/// log's slot) and its envelope: its entry id, the entry before it and the log's epoch (the
/// last entry's, or ARGV[3] when the log is empty). The log is trimmed to
/// about ARGV[4] entries. Returns the entry id (the head for a heartbeat).
pub(crate) const PUBLISH: &str = r#"
local head = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local prev, epoch = '0-0', ''
if head[1] then
  prev = head[1][1]
  local fields = head[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'e' then epoch = fields[i + 1] end
  end
end
local id = prev
if ARGV[5] == '1' then
  if epoch == '' then epoch = ARGV[3] end
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'e', epoch, 'p', prev, 'm', ARGV[2])
end
local envelope = '{"id":"' .. id .. '","prev":"' .. prev .. '","epoch":"' .. epoch .. '",'
redis.call(ARGV[6], ARGV[1], envelope .. string.sub(ARGV[2], 2))
return id
"#;

/// Checks the version, stores the value, records it as pending and
/// appends the change. KEYS: the value key, the stream, the pending hash.
/// ARGV: version, stored value, TTL (ms), JSON version field, key, op,
/// payload. Returns the entry id, or false when Redis holds this version or
/// a newer one (in the value key or the pending hash).
pub(crate) const ENQUEUE: &str = concat!(
    version_of_lua!(),
    r"
local new = tonumber(ARGV[1])
local old = version_of(redis.call('GET', KEYS[1]), ARGV[4])
local queued = version_of(redis.call('HGET', KEYS[3], ARGV[5]), ARGV[4])
if (old and old >= new) or (queued and queued >= new) then return false end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('HSET', KEYS[3], ARGV[5], ARGV[2])
return redis.call('XADD', KEYS[2], '*', 'k', ARGV[5], 'v', ARGV[1], 'op', ARGV[6], 'd', ARGV[7])
"
);

/// A cluster's enqueue, on one queue partition (see
/// `write_behind::partition`): the value key lives in another slot, so the
/// caller reads its version first ([`VERSION_OF`]) and stores the value
/// after this succeeds. KEYS: the partition's stream and pending hash.
/// ARGV: version, stored value, JSON version field, key, op, payload, the
/// value key's version (empty when absent). Returns the entry id, or false
/// when Redis holds this version or a newer one.
pub(crate) const ENQUEUE_PARTITION: &str = concat!(
    version_of_lua!(),
    r"
local new = tonumber(ARGV[1])
local old = tonumber(ARGV[7])
local queued = version_of(redis.call('HGET', KEYS[2], ARGV[4]), ARGV[3])
if (old and old >= new) or (queued and queued >= new) then return false end
redis.call('HSET', KEYS[2], ARGV[4], ARGV[2])
return redis.call('XADD', KEYS[1], '*', 'k', ARGV[4], 'v', ARGV[1], 'op', ARGV[5], 'd', ARGV[6])
"
);

/// The version of what KEYS[1] holds ([`version_of_lua`], JSON field
/// ARGV[1]); nil when absent or unreadable.
pub(crate) const VERSION_OF: &str = concat!(
    version_of_lua!(),
    r"
return version_of(redis.call('GET', KEYS[1]), ARGV[1])
"
);

/// Deletes KEYS[1] if it holds a version older than ARGV[1] (JSON field
/// ARGV[2]); absent, newer, equal or unreadable values stay. Returns 1 when
/// deleted.
pub(crate) const DROP_OLDER: &str = concat!(
    version_of_lua!(),
    r"
local cur = version_of(redis.call('GET', KEYS[1]), ARGV[2])
if cur and cur < tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"
);

/// Deletes KEYS[1] if it holds ARGV[1] (a lease given back by its holder,
/// not one that expired and was taken by another). Returns 1 when deleted.
pub(crate) const DELETE_IF_EQUAL: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Forgets pending values the store now has. KEYS: the pending hash. ARGV:
/// the JSON version field, then key, version pairs; a field is removed only
/// if it holds that version or an older one (a newer write is still queued).
pub(crate) const SETTLE: &str = concat!(
    version_of_lua!(),
    r"
for i = 2, #ARGV, 2 do
  local queued = version_of(redis.call('HGET', KEYS[1], ARGV[i]), ARGV[1])
  if queued == nil or queued <= tonumber(ARGV[i + 1]) then
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return 1
"
);

/// Creates the consumer group (and the stream) unless it exists; a
/// `BUSYGROUP` refusal stays inside the script instead of counting as a
/// failed Redis call. KEYS: the stream. ARGV: the group.
pub(crate) const ENSURE_GROUP: &str = r"
redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
return 1
";
