//! The Lua scripts: every conditional write is one script, so the check and the write are one
//! atomic step on the server (Redis runs a script without interleaving other commands).
//!
//! Each script works on one field of one hash (`KEYS[1]` is the stream's lease hash,
//! `ARGV[1]` the shard) and answers with an array whose first element is a status:
//! `OK` (with the row's new value where the caller needs it), `LOST`, `NOTFOUND`, or
//! `CORRUPT` with a reason. Tokens travel and are compared as decimal strings, so no Lua number
//! (a double) ever rounds one; the caller computes `token + 1` in Rust.

use std::sync::LazyLock;

use redis::Script;

/// Decodes the lease at `ARGV[1]` of `KEYS[1]` and re-encodes a changed one. A value that is
/// not a lease as the Rust side writes it is reported, never guessed at.
const PRELUDE: &str = r#"
local function load_lease(key, shard)
  local raw = redis.call('HGET', key, shard)
  if not raw then return nil, nil end
  local ok, lease = pcall(cjson.decode, raw)
  if not ok or type(lease) ~= 'table' then return nil, 'the value is not a JSON object' end
  if type(lease.token) ~= 'string' or not (lease.token == '0' or string.match(lease.token, '^[1-9]%d*$')) then
    return nil, '"token" is not a canonical decimal string'
  end
  -- Equal-length digit strings compare as numbers: the same rule as the Rust side's u64.
  if #lease.token > 20 or (#lease.token == 20 and lease.token > '18446744073709551615') then
    return nil, '"token" is larger than an unsigned 64-bit integer'
  end
  if lease.owner == cjson.null then lease.owner = nil end
  if lease.owner ~= nil and (type(lease.owner) ~= 'string' or lease.owner == '') then
    return nil, '"owner" is not a client id'
  end
  if lease.finished == cjson.null then lease.finished = nil end
  if lease.finished ~= nil and type(lease.finished) ~= 'boolean' then
    return nil, '"finished" is not a boolean'
  end
  if lease.checkpoint == cjson.null then lease.checkpoint = nil end
  local cp = lease.checkpoint
  if cp ~= nil and not (type(cp) == 'string' and (cp == 'TRIM_HORIZON' or cp == 'LATEST'
      or cp == 'SHARD_END' or string.match(cp, '^AT_TIMESTAMP:%d+$')
      or string.match(cp, '^AFTER:%d+/%d+$'))) then
    return nil, '"checkpoint" is not a checkpoint'
  end
  if lease.successor == cjson.null then lease.successor = nil end
  if lease.successor ~= nil and (type(lease.successor) ~= 'string' or lease.successor == '') then
    return nil, '"successor" is not a client id'
  end
  if lease.parents == cjson.null then lease.parents = nil end
  if lease.parents ~= nil then
    if type(lease.parents) ~= 'table' then return nil, '"parents" is not a list' end
    for _, p in pairs(lease.parents) do
      if type(p) ~= 'string' then return nil, '"parents" holds a non-string' end
    end
  end
  return lease, nil
end

local function store_lease(key, shard, lease)
  -- cjson encodes an empty table as {}: leave an empty list out instead.
  if type(lease.parents) == 'table' and next(lease.parents) == nil then lease.parents = nil end
  if lease.finished == false then lease.finished = nil end
  local raw = cjson.encode(lease)
  redis.call('HSET', key, shard, raw)
  return raw
end
"#;

/// `create_if_absent`: ARGV = shard, the new row. Answers the row stored now (bulk string).
pub(crate) static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
return redis.call('HGET', KEYS[1], ARGV[1])
"#,
    )
});

/// `take`: ARGV = shard, owner, expected token, expected token + 1.
pub(crate) static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{PRELUDE}
local lease, bad = load_lease(KEYS[1], ARGV[1])
if bad then return {{'CORRUPT', bad}} end
if not lease then return {{'NOTFOUND'}} end
if lease.finished or lease.token ~= ARGV[3] then return {{'LOST'}} end
lease.owner = ARGV[2]
lease.token = ARGV[4]
lease.successor = nil
return {{'OK', store_lease(KEYS[1], ARGV[1], lease)}}
"#
    ))
});

/// `checkpoint` / `release` / `finish`: ARGV = shard, owner, token, operation, checkpoint
/// (empty for none), successor (`release` only; empty for none). Succeeds only while owner and token match and, except for a repeated
/// `finish`, the lease is not finished.
pub(crate) static FENCED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{PRELUDE}
local lease, bad = load_lease(KEYS[1], ARGV[1])
if bad then return {{'CORRUPT', bad}} end
if not lease then return {{'NOTFOUND'}} end
if lease.owner ~= ARGV[2] or lease.token ~= ARGV[3] then return {{'LOST'}} end
local op = ARGV[4]
if op == 'finish' then
  if lease.finished then return {{'OK'}} end
  lease.finished = true
  lease.checkpoint = 'SHARD_END'
elseif lease.finished then
  return {{'LOST'}}
elseif op == 'checkpoint' then
  lease.checkpoint = ARGV[5]
elseif op == 'release' then
  lease.owner = nil
  if ARGV[5] ~= '' then lease.checkpoint = ARGV[5] end
  if ARGV[6] ~= '' then lease.successor = ARGV[6] else lease.successor = nil end
else
  return redis.error_reply('kinsumer: unknown fenced operation ' .. op)
end
store_lease(KEYS[1], ARGV[1], lease)
return {{'OK'}}
"#
    ))
});

/// `delete_finished`: ARGV = shard.
pub(crate) static DELETE_FINISHED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{PRELUDE}
local lease, bad = load_lease(KEYS[1], ARGV[1])
if bad then return {{'CORRUPT', bad}} end
if not lease then return {{'OK'}} end
if not lease.finished then return {{'LOST'}} end
redis.call('HDEL', KEYS[1], ARGV[1])
return {{'OK'}}
"#
    ))
});

/// `reset_checkpoint`: ARGV = shard, expected token, checkpoint. Only an unowned lease.
pub(crate) static RESET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{PRELUDE}
local lease, bad = load_lease(KEYS[1], ARGV[1])
if bad then return {{'CORRUPT', bad}} end
if not lease then return {{'NOTFOUND'}} end
if lease.owner ~= nil or lease.token ~= ARGV[2] then return {{'LOST'}} end
lease.checkpoint = ARGV[3]
store_lease(KEYS[1], ARGV[1], lease)
return {{'OK'}}
"#
    ))
});

/// `replace_corrupt`: ARGV = shard, the row as the caller read it (raw bytes), the new row.
/// Writes only while the stored value is byte for byte the one read, which the caller found
/// does not decode: the same bytes decode the same way, so a row repaired or re-created
/// meanwhile is never overwritten. `CHANGED` when it differs (the caller reads it again).
pub(crate) static REPLACE_CORRUPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return {'NOTFOUND'} end
if raw ~= ARGV[2] then return {'CHANGED'} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return {'OK'}
"#,
    )
});

/// Marks client `ARGV[1]` judged dead at heartbeat value `ARGV[2]` (`KEYS[2]`, a hash beside
/// the clients hash `KEYS[1]`), only while its row still holds that value: 1 if marked, else
/// 0. Values compare as their canonical decimal text, as the Rust side writes them.
pub(crate) static MARK_DEAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  return 1
end
return 0
"#,
    )
});

/// Moves the change counter `KEYS[1]` on by one and returns it as text. A value that is not
/// a canonical decimal of at most 14 digits (exact in a Lua double, and 10¹⁴ announces are
/// millennia away), or a key of another type, is written afresh as 1.
pub(crate) static ANNOUNCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local n = 0
if redis.call('TYPE', KEYS[1]).ok == 'string' then
  local v = redis.call('GET', KEYS[1])
  if string.match(v, '^[1-9]%d*$') and #v <= 14 then n = tonumber(v) end
else
  redis.call('DEL', KEYS[1])
end
n = n + 1
if n >= 1e14 then n = 1 end
local text = string.format('%d', n)
redis.call('SET', KEYS[1], text)
return text
"#,
    )
});
