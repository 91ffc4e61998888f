"""kombu's Redis transport, guarded: a message that is not a Celery task of ours never crashes a worker, and a
Redis restart never ends one.

Two faults of kombu 5.7's Redis transport, and what this module does about them:

- A message whose envelope is not JSON, lacks `properties`, or whose body is not base64 raises inside
  the transport's BRPOP handler, where nothing catches it: the worker stops with "Unrecoverable
  error", or reconnects to the broker in a loop. `GuardedChannel` checks each popped message before
  kombu decodes it; one that is not a task message is logged once and moved to the namespace's
  dead-letter list with its reason and raw bytes.
- When Redis restarts under a busy worker, Celery closes the channel whose connection already died.
  Closing restores the channel's unacked messages, which builds a client from the dead connection's
  parameters (`self.connection.client` is None by then): AttributeError("'NoneType' object has no
  attribute 'hostname'") in `restore_unacked_once`, and the worker exits. A task that was running
  through the outage then acks on that closed channel: AttributeError("'NoneType' object has no
  attribute 'client'") in `_connparams`, and the worker exits again. `GuardedQoS` lets both fail
  quietly: the messages stay in kombu's unacked hash (restored later by the visibility sweep), and a
  redelivery of a recorded job is a no-op.

Celery picks this transport through `broker_transport` (see celery_app.py); the broker URL stays redis://.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time

import orjson
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("cascade.broker")

DEADLETTER_OPTION = "cascade_deadletter_key"    # broker_transport_options key naming the dead-letter list
TASK_OPTION = "cascade_task_names"              # the task names this app accepts
RAW_KEPT = 4096                                 # bytes of a poison message kept in its dead-letter entry


def poison_reason(item: bytes, task_names: frozenset[str]) -> str | None:
    """Why a popped message is not a task message this app can run, or None when it is one."""
    try:
        payload = loads(bytes_to_str(item))
    except (ValueError, UnicodeDecodeError) as e:
        return f"the envelope is not JSON ({e})"
    if not isinstance(payload, dict):
        return f"the envelope is a JSON {type(payload).__name__}, not an object"
    properties = payload.get("properties")
    if not isinstance(properties, dict) or "delivery_tag" not in properties:
        return "the envelope has no properties.delivery_tag"
    headers = payload.get("headers")
    if not isinstance(headers, dict) or headers.get("task") not in task_names:
        task = headers.get("task") if isinstance(headers, dict) else None
        return f"not a task of this app (task {task!r})"
    body = payload.get("body")
    if not isinstance(body, str):
        return "the envelope has no body"
    if properties.get("body_encoding") == "base64":
        try:
            body = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return "the body is not base64"
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        return f"the body is not JSON ({e})"
    if not (isinstance(decoded, list) and len(decoded) == 3 and isinstance(decoded[0], list)):
        return "the body is not [args, kwargs, embed]"
    return None


class GuardedQoS(kombu_redis.QoS):
    """Acks and restores on a channel whose connection died (a Redis restart) do not end the worker: the
    messages stay in kombu's unacked hash, and their redelivery is a no-op for a job already recorded."""

    def _closed(self) -> bool:
        return self.channel.connection is None

    def ack(self, delivery_tag):
        """Ack as kombu does; when the channel closed under it or Redis is unreachable, forget the message
        instead of crashing (it stays unacked, and its redelivery is a no-op for a recorded job)."""
        if not self._closed():
            try:
                return super().ack(delivery_tag)
            except (RedisConnectionError, RedisTimeoutError) as error:
                log.warning("could not ack a finished message (%s); it stays unacked and its redelivery will be "
                            "a no-op", error)
        else:
            log.warning("a message finished after its channel closed (Redis restarted); it stays unacked and "
                        "its redelivery will be a no-op")
        return virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag, requeue=False):
        """Reject as kombu does; on a closed channel or an unreachable Redis, leave the message to the visibility
        sweep and its job to the reconciler."""
        if not self._closed():
            try:
                return super().reject(delivery_tag, requeue=requeue)
            except (RedisConnectionError, RedisTimeoutError) as error:
                log.warning("could not give a message back (%s); the reconciler republishes its job", error)
        else:
            log.warning("a message was given back after its channel closed (Redis restarted); the reconciler "
                        "republishes its job")
        return virtual.QoS.ack(self, delivery_tag)

    def restore_unacked_once(self, stderr=None):
        """Restore at close as kombu does, without letting a dead connection end the worker."""
        try:
            return super().restore_unacked_once(stderr)
        except (AttributeError, RedisError, OSError) as error:
            log.warning("could not restore %d unacked message(s) at channel close (%s: %s); they come back "
                        "through the visibility sweep, and the reconciler republishes their jobs",
                        len(self._delivered), type(error).__name__, error)


class GuardedChannel(kombu_redis.Channel):
    """A Redis channel that checks each popped message before kombu decodes it."""

    QoS = GuardedQoS

    def _brpop_read(self, **options):
        """kombu's BRPOP reply handler, with poison messages dead-lettered instead of raised."""
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise kombu_redis.Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            reason = poison_reason(item, self._task_names())
            if reason is not None:
                self._dead_letter(dest, item, reason)
                raise kombu_redis.Empty()
            self.connection._deliver(loads(bytes_to_str(item)), dest)
            return True
        finally:
            self._in_poll = None
            flush = getattr(self, "_flush_brpop_reauth", None)     # kombu 5.7: pending re-auth on the idle socket
            if flush is not None:
                flush()

    def _task_names(self) -> frozenset[str]:
        names = self.connection.client.transport_options.get(TASK_OPTION, ())
        return frozenset(names)

    def _dead_letter(self, queue: str, item: bytes, reason: str) -> None:
        key = self.connection.client.transport_options.get(DEADLETTER_OPTION)
        log.warning("poison message on %s: %s; moved to the dead-letter list %s", queue, reason, key)
        if not key:
            return
        entry = {"at": round(time.time(), 3), "kind": "message", "queue": queue, "reason": reason,
                 "raw": item[:RAW_KEPT].decode("utf-8", "replace")}
        try:
            with self.conn_or_acquire() as client:
                client.lpush(key, orjson.dumps(entry))
        except RedisError as error:
            log.error("poison message on %s could not be dead-lettered (%s): %r", queue, error, item[:RAW_KEPT])


class GuardedTransport(kombu_redis.Transport):
    """kombu's Redis transport with GuardedChannel."""

    Channel = GuardedChannel
