"""The key layout and Lua scripts of the Redis channel layer, one script per operation.

Each layer operation is one script run (``EVALSHA``, falling back to
``EVAL`` when the server does not know the script yet), so each costs one
round trip and runs atomically on the server.

Conventions shared by every script (the layer in :mod:`tidings.layers.redis`
relies on them):

- Time is the server's (``TIME``, in milliseconds), so clients with skewed
  clocks agree on expiry.
- A queued *entry* starts with its deadline: 15 ASCII digits of
  milliseconds since the epoch (``ENTRY_HEAD``), followed by the body the
  client passed. Lists are FIFO (``RPUSH`` at the tail, pop at the head), so
  expired entries are dropped from the head.
- Every key a script touches carries the same ``{...}`` hash tag (the
  layer's shard tag), so the script runs on one Redis Cluster slot. Keys
  derived inside a script (node inboxes) are built from a key prefix passed
  in ``ARGV`` that carries the same tag.
- A process-specific channel ``"<prefix>.<node>!<local>"`` belongs to the
  node named by the last dot-separated part before its ``!``; ``node_of``
  below and ``node_of_channel`` in :mod:`tidings.layers.redis` must agree.

Nothing here does I/O; the scripts are plain strings with their SHA1.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "ENTRY_HEAD",
    "GROUP_ADD",
    "GROUP_DISCARD",
    "GROUP_SEND",
    "POP",
    "SEND",
    "Keys",
    "Script",
]

ENTRY_HEAD: Final = 15
"""Bytes of deadline digits at the start of every queued entry."""


class Keys:
    """The key names of one shard: ``<prefix>:{<shard>}:<kind>:<name>``.

    The ``{<shard>}`` hash tag puts all keys of a shard in one Redis Cluster
    slot. Kinds: ``c`` a shared channel's list, ``i`` a node's inbox, ``f``
    a node's full set, ``alive`` a node's marker, ``gm``/``gn``/``gp`` a
    group's members, members per node, and shared-channel members.
    """

    __slots__ = ("base",)

    def __init__(self, prefix: str, shard: int) -> None:
        self.base = f"{prefix}:{{{shard}}}:"

    def channel(self, name: str) -> str:
        return f"{self.base}c:{name}"

    def inbox(self, node: str) -> str:
        return f"{self.base}i:{node}"

    def full(self, node: str) -> str:
        return f"{self.base}f:{node}"

    def marker(self, node: str) -> str:
        return f"{self.base}alive:{node}"

    def group(self, group: str, node: str) -> list[str]:
        """KEYS of the group scripts: members, node counts, shared members, ``node``'s inbox."""
        base = self.base
        return [f"{base}gm:{group}", f"{base}gn:{group}", f"{base}gp:{group}", f"{base}i:{node}"]


@dataclass(frozen=True)
class Script:
    """A Lua script and its SHA1 (what ``EVALSHA`` names it by)."""

    name: str
    text: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.text.encode()).hexdigest())


_COMMON: Final = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function deadline(ms)
  return string.format('%015.0f', ms)
end

-- Drop the expired entries at the head of a list.
local function prune(key, now)
  while true do
    local head = redis.call('LINDEX', key, 0)
    if not head then return end
    if tonumber(string.sub(head, 1, 15)) > now then return end
    redis.call('LPOP', key)
  end
end

local function node_of(channel)
  local bang = string.find(channel, '!', 1, true)
  return string.match(string.sub(channel, 1, bang - 1), '([^.]*)$')
end

-- Remove the memberships older than cutoff, keeping the node counts exact.
local function prune_group(members, nodes, cutoff)
  local stale = redis.call('ZRANGEBYSCORE', members, '-inf', cutoff)
  if #stale == 0 then return end
  for _, channel in ipairs(stale) do
    local node = node_of(channel)
    if redis.call('HINCRBY', nodes, node, -1) <= 0 then
      redis.call('HDEL', nodes, node)
    end
  end
  redis.call('ZREMRANGEBYSCORE', members, '-inf', cutoff)
end

local function push(key, now, expiry, body)
  redis.call('RPUSH', key, deadline(now + expiry) .. body)
  redis.call('PEXPIRE', key, expiry + 1000)
end

-- Hand an entry to a node: published straight to its receive loop when that
-- listens and nothing is queued before it (so nothing queued is overtaken),
-- else queued on its inbox list. publish: '1', or '' for list only.
local function deliver(inbox, now, expiry, body, publish)
  -- pcall: an ACL user without access to pub/sub channels just queues.
  if publish == '1' and redis.call('LLEN', inbox) == 0 then
    local listeners = redis.pcall('PUBLISH', inbox, deadline(now + expiry) .. body)
    if type(listeners) == 'number' and listeners > 0 then return end
  end
  -- Queued only when the node does not listen (PUBLISH reached nobody) or entries
  -- wait already: it pops the list when it subscribes, until a pop comes back short.
  push(inbox, now, expiry, body)
end
"""


def _script(name: str, body: str) -> Script:
    return Script(name, _COMMON + body)


SEND: Final = _script(
    "send",
    """
-- KEYS: queue (channel list or node inbox), full-set of the node (or the queue again)
-- ARGV: expiry ms, capacity, body, member of the full-set to refuse ('' for none),
--       '1' to publish to a listening node ('' for a channel list or a cluster)
-- Returns 1 if queued, 0 if the channel is full.
local now = now_ms()
local expiry = tonumber(ARGV[1])
if ARGV[4] ~= '' and redis.call('SISMEMBER', KEYS[2], ARGV[4]) == 1 then
  return 0
end
prune(KEYS[1], now)
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
deliver(KEYS[1], now, expiry, ARGV[3], ARGV[5])
return 1
""",
)

POP: Final = _script(
    "pop",
    """
-- KEYS: queue
-- ARGV: most entries to return
-- Pops and returns up to ARGV[1] unexpired entries; expired ones are dropped.
local now = now_ms()
local limit = tonumber(ARGV[1])
local out = {}
while #out < limit do
  local entry = redis.call('LPOP', KEYS[1])
  if not entry then break end
  if tonumber(string.sub(entry, 1, 15)) > now then
    out[#out + 1] = entry
  end
end
return out
""",
)

GROUP_ADD: Final = _script(
    "group_add",
    """
-- KEYS: members zset, nodes hash, plain-members zset, inbox of the channel's node
-- ARGV: channel, node ('' for a plain channel), group expiry ms, age ms,
--       '1' to keep an existing membership's time (re-registration),
--       control body for the node's inbox ('' for none), expiry ms, publish flag
local now = now_ms()
local group_expiry = tonumber(ARGV[3])
local score = now - tonumber(ARGV[4])
local channel, node = ARGV[1], ARGV[2]
prune_group(KEYS[1], KEYS[2], now - group_expiry)
local zset = KEYS[3]
if node ~= '' then zset = KEYS[1] end
local added
if ARGV[5] == '1' then
  added = redis.call('ZADD', zset, 'NX', score, channel)
else
  added = redis.call('ZADD', zset, score, channel)
end
if node ~= '' and added == 1 then
  redis.call('HINCRBY', KEYS[2], node, 1)
end
if node == '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - group_expiry)
end
for i = 1, 3 do
  redis.call('PEXPIRE', KEYS[i], group_expiry)
end
if ARGV[6] ~= '' then
  deliver(KEYS[4], now, tonumber(ARGV[7]), ARGV[6], ARGV[8])
end
return added
""",
)

GROUP_DISCARD: Final = _script(
    "group_discard",
    """
-- KEYS: members zset, nodes hash, plain-members zset, inbox of the channel's node
-- ARGV: channel, node ('' for a plain channel), control body ('' for none), expiry ms,
--       publish flag
local channel, node = ARGV[1], ARGV[2]
local removed
if node == '' then
  removed = redis.call('ZREM', KEYS[3], channel)
else
  removed = redis.call('ZREM', KEYS[1], channel)
  if removed == 1 and redis.call('HINCRBY', KEYS[2], node, -1) <= 0 then
    redis.call('HDEL', KEYS[2], node)
  end
end
if ARGV[3] ~= '' then
  deliver(KEYS[4], now_ms(), tonumber(ARGV[4]), ARGV[3], ARGV[5])
end
return removed
""",
)

GROUP_SEND: Final = _script(
    "group_send",
    """
-- KEYS: members zset, nodes hash, plain-members zset
-- ARGV: group expiry ms, expiry ms, inbox capacity, body, node to skip (the
--       sender's own, served in-process), inbox key prefix (tagged like KEYS),
--       publish flag
-- Queues one entry per node with members; returns {entries queued, plain members}.
local now = now_ms()
local group_expiry = tonumber(ARGV[1])
local expiry = tonumber(ARGV[2])
local capacity = tonumber(ARGV[3])
prune_group(KEYS[1], KEYS[2], now - group_expiry)
local queued = 0
local body = ARGV[4]
for _, node in ipairs(redis.call('HKEYS', KEYS[2])) do
  if node ~= ARGV[5] then
    local inbox = ARGV[6] .. node
    prune(inbox, now)
    if redis.call('LLEN', inbox) < capacity then
      deliver(inbox, now, expiry, body, ARGV[7])
      queued = queued + 1
    end
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - group_expiry)
return {queued, redis.call('ZRANGE', KEYS[3], 0, -1)}
""",
)
