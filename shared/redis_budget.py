"""Budgets shared by every process, in Redis: one Lua script per operation, so that reserving
against several limits is atomic across processes and machines.

Per limit key ``<prefix>:budget:<key>`` three Redis keys hold the books: ``:spend`` (a sorted set
of settled costs by time, for rolling windows), ``:res`` (a sorted set of reservations by expiry)
and ``:tot`` (a hash with the running ``spent`` and ``reserved`` totals). Members are
``<reservation id>|<amount>``. Each script first drops costs that left the window and
reservations that lapsed (a crashed caller's), then checks or books.

If Redis cannot be reached (or answers slower than ``redis.operation_timeout``) the user's call
must not fail because thrifty's bookkeeping is down, and one process must not spend without limit
either: each process then keeps its own books in a :class:`~thrifty.budget.MemoryBudgetStore` and
holds the limits on its own. During an outage N processes can spend up to N times a limit, and
what they spend is not added to Redis's books afterwards.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import cast

from .budget import Charge, MemoryBudgetStore, Reservation
from .redis_client import GuardedRedis
from .settings import RedisSettings

_PURGE = """
local function purge(spend, res, tot, now, window)
  if window > 0 then
    local old = redis.call('ZRANGEBYSCORE', spend, '-inf', now - window)
    if #old > 0 then
      local drop = 0
      for _, m in ipairs(old) do drop = drop + tonumber(string.match(m, '|(.*)$')) end
      redis.call('ZREMRANGEBYSCORE', spend, '-inf', now - window)
      redis.call('HINCRBYFLOAT', tot, 'spent', -drop)
    end
  end
  local lapsed = redis.call('ZRANGEBYSCORE', res, '-inf', now)
  if #lapsed > 0 then
    local drop = 0
    for _, m in ipairs(lapsed) do drop = drop + tonumber(string.match(m, '|(.*)$')) end
    redis.call('ZREMRANGEBYSCORE', res, '-inf', now)
    redis.call('HINCRBYFLOAT', tot, 'reserved', -drop)
  end
  local spent = math.max(0, tonumber(redis.call('HGET', tot, 'spent') or '0'))
  local reserved = math.max(0, tonumber(redis.call('HGET', tot, 'reserved') or '0'))
  return spent, reserved
end
"""

# KEYS: 3 per charge (spend, res, tot). ARGV: now, ttl, amount, id, then limit and window per charge.
_RESERVE = _PURGE + """
local now, ttl, amount, id = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local n = #KEYS / 3
for i = 1, n do
  local spent, reserved = purge(KEYS[3*i-2], KEYS[3*i-1], KEYS[3*i], now, tonumber(ARGV[4 + 2*i]))
  if spent + reserved + amount > tonumber(ARGV[3 + 2*i]) + 1e-12 then return i end
end
for i = 1, n do
  redis.call('ZADD', KEYS[3*i-1], now + ttl, id .. '|' .. ARGV[3])
  redis.call('HINCRBYFLOAT', KEYS[3*i], 'reserved', amount)
end
return 0
"""

# ARGV: now, id, reserved amount (as reserved), actual cost, then window per charge.
_SETTLE = """
local now, id, reserved, actual = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
local n = #KEYS / 3
for i = 1, n do
  if redis.call('ZREM', KEYS[3*i-1], id .. '|' .. reserved) == 1 then
    redis.call('HINCRBYFLOAT', KEYS[3*i], 'reserved', -tonumber(reserved))
  end
  if actual ~= nil then
    if tonumber(ARGV[4 + i]) > 0 then redis.call('ZADD', KEYS[3*i-2], now, id .. '|' .. ARGV[4]) end
    redis.call('HINCRBYFLOAT', KEYS[3*i], 'spent', actual)
  end
end
return 1
"""

# ARGV: now, window.
_USAGE = _PURGE + """
local spent, reserved = purge(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1]), tonumber(ARGV[2]))
return {tostring(spent), tostring(reserved)}
"""


_UNREACHABLE = object()


def _amount(value: float) -> str:
    return f"{value:.12g}"


class RedisBudgetStore:
    """:class:`~thrifty.budget.BudgetStore` in Redis."""

    def __init__(self, url: str, settings: RedisSettings) -> None:
        self.redis = GuardedRedis(url, settings, "budget")
        self.prefix = f"{settings.key_prefix}:budget"
        client = self.redis.client
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._usage = client.register_script(_USAGE)
        self.local = MemoryBudgetStore()  # the books while Redis is out
        self._local_ids: set[str] = set()
        self._lock = threading.Lock()

    def _keys(self, charges: Sequence[Charge]) -> list[str]:
        keys = []
        for charge in charges:
            base = f"{self.prefix}:{charge.key}"
            keys += [f"{base}:spend", f"{base}:res", f"{base}:tot"]
        return keys

    def reserve(self, charges: Sequence[Charge], amount: float, reservation_id: str, now: float,
                ttl: float) -> int | None:
        args: list[str | float] = [now, ttl, _amount(amount), reservation_id]
        for charge in charges:
            args += [charge.limit, charge.window or 0]
        blocked = self.redis.run(lambda: self._reserve(keys=self._keys(charges), args=args), _UNREACHABLE)
        if blocked is _UNREACHABLE:
            self.redis.log_once("budget-local", "thrifty: Redis is unreachable for budgets; this process holds "
                                "the limits on its own books until it is back")
            refused = self.local.reserve(charges, amount, reservation_id, now, ttl)
            if refused is None:
                with self._lock:
                    self._local_ids.add(reservation_id)
            return refused
        return int(blocked) - 1 if blocked else None  # type: ignore[call-overload]

    def settle(self, reservation: Reservation, actual: float, now: float) -> None:
        self._finish(reservation, _amount(actual), now)

    def release(self, reservation: Reservation, now: float) -> None:
        self._finish(reservation, None, now)

    def usage(self, charge: Charge, now: float) -> tuple[float, float]:
        keys = self._keys([charge])
        result = self.redis.run(lambda: self._usage(keys=keys, args=[now, charge.window or 0]), _UNREACHABLE)
        if result is _UNREACHABLE:
            return self.local.usage(charge, now)
        spent, reserved = cast("list[bytes]", result)
        return float(spent), float(reserved)

    def _finish(self, reservation: Reservation, actual: str | None, now: float) -> None:
        args: list[str | float] = [now, reservation.id, _amount(reservation.amount),
                                   actual if actual is not None else "none"]
        args += [c.window or 0 for c in reservation.charges]
        with self._lock:
            local = reservation.id in self._local_ids
            self._local_ids.discard(reservation.id)
        if not local:
            keys = self._keys(reservation.charges)
            local = self.redis.run(lambda: self._settle(keys=keys, args=args), _UNREACHABLE) is _UNREACHABLE
        if local:  # reserved here, or Redis lost between reserve and settle: count the cost here
            if actual is None:
                self.local.release(reservation, now)
            else:
                self.local.settle(reservation, float(actual), now)
