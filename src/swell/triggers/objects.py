"""Object-store notifications (a file landed in a bucket, or left it) read into one
``ObjectEvent`` per object, whichever way they arrive.

``parse_notification`` takes the parsed JSON body and accepts:

- S3's event notification, ``{"Records": [{"eventName": ..., "s3": {...}}, ...]}``, as sent to
  SQS and as read back from a queue;
- the same inside an SNS ``Notification`` (``{"Type": "Notification", "Message": "<JSON>"}``);
  SNS raw message delivery sends the S3 body as is;
- EventBridge's events from ``aws.s3`` (``"detail-type": "Object Created"`` ...), whose names are
  mapped to S3's (``"Object Created"`` with reason ``PutObject`` is ``ObjectCreated:Put``), so one
  filter works on both;
- MinIO's webhook target, ``{"EventName": ..., "Key": "bucket/key", "Records": [...]}``
  (S3's records, with ``s3:``-prefixed names, which are stripped).

S3's ``s3:TestEvent`` (sent once when a notification is configured) gives no events: it is
acknowledged and dropped. An SNS ``SubscriptionConfirmation`` raises ``SnsConfirmation`` (a
``NotNotification``) carrying the URL to visit: confirming is left to a person, since fetching a
URL named by an unauthenticated body is how servers get tricked into requests. Nothing here
checks SNS message signatures: protect the endpoint with a ``swell.triggers.verify`` scheme.

Keys arrive URL-encoded (``"red flower.jpg"`` is sent as ``"red+flower.jpg"``) and are decoded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from swell.core.errors import PayloadError

__all__ = ["NotNotification", "ObjectEvent", "SnsConfirmation", "matches", "parse_notification"]

SHAPES = ("S3's {\"Records\": [...]}, an SNS Notification wrapping it, an EventBridge event from "
          "aws.s3, MinIO's webhook body, or s3:TestEvent")


class NotNotification(PayloadError):
    """A body that is none of the notification shapes ``parse_notification`` reads."""


class SnsConfirmation(NotNotification):
    """An SNS ``SubscriptionConfirmation``: no events, and the subscription stays pending until
    someone opens ``subscribe_url`` (or calls ConfirmSubscription with its token)."""

    def __init__(self, topic_arn: str | None, subscribe_url: str | None) -> None:
        super().__init__(f"SNS subscription confirmation for {topic_arn or 'a topic'}: no events; "
                         f"to confirm it, open {subscribe_url or 'its SubscribeURL'}")
        self.topic_arn = topic_arn
        self.subscribe_url = subscribe_url


@dataclass(frozen=True)
class ObjectEvent:
    """One change to one object."""

    event: str
    """S3's event name without its ``s3:`` prefix: ``"ObjectCreated:Put"``,
    ``"ObjectRemoved:Delete"`` ..."""
    bucket: str
    key: str
    """The object key, URL-decoded."""
    size: int | None = None
    etag: str | None = None
    version: str | None = None
    """The version id, in a versioned bucket."""
    sequencer: str | None = None
    """Orders the events of one key (compare as hex of equal length); sent for PUTs and DELETEs."""
    time: str | None = None
    """When it happened, as the sender wrote it (ISO 8601)."""
    region: str | None = None

    @property
    def dedup_id(self) -> str:
        """The same for every delivery of this event (S3 delivers at least once), different for
        another change: from bucket, key, version and sequencer. Without a sequencer (S3 sends
        one for PUTs and DELETEs only) the event name and time stand in for it, so that a
        restore and a tag change of one object are not taken for one event."""
        order = self.sequencer or f"{self.event}@{self.time or ''}"
        raw = "\x00".join((self.bucket, self.key, self.version or "", order))
        return "s3-" + hashlib.sha256(raw.encode()).hexdigest()[:32]

    def to_data(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (an event's data)."""
        return dataclasses.asdict(self)


def matches(ev: ObjectEvent, prefix: str = "", suffix: str = "") -> bool:
    """Whether the key starts with ``prefix`` and ends with ``suffix``, as S3's filter rules."""
    return ev.key.startswith(prefix) and ev.key.endswith(suffix)


def parse_notification(body: Any) -> list[ObjectEvent]:
    """The object events in a parsed notification body (see the module docstring for the shapes);
    ``[]`` for a test event. Raises ``NotNotification`` for anything else."""
    if not isinstance(body, dict):
        raise NotNotification(f"a notification is a JSON object, not {type(body).__name__}; "
                              f"expected {SHAPES}")
    if body.get("Type") == "Notification" and "Message" in body:
        return parse_notification(_sns_message(body["Message"]))
    if body.get("Type") == "SubscriptionConfirmation":
        raise SnsConfirmation(_opt(body.get("TopicArn")), _opt(body.get("SubscribeURL")))
    if body.get("Event") == "s3:TestEvent":
        return []
    if "Records" in body:
        records = body["Records"]
        if not isinstance(records, list):
            raise NotNotification(f"\"Records\" must be a list, not {type(records).__name__}")
        return [_record(r, i) for i, r in enumerate(records)]
    if body.get("source") == "aws.s3" and "detail" in body:
        return [_eventbridge(body)]
    raise NotNotification(f"not an object-store notification (keys {sorted(body)[:8]}); "
                          f"expected {SHAPES}")


def _sns_message(message: Any) -> Any:
    if not isinstance(message, str):
        raise NotNotification("an SNS Notification's \"Message\" must be a JSON string")
    try:
        inner = json.loads(message)
    except ValueError:
        raise NotNotification(f"an SNS Notification's \"Message\" is not JSON: {message[:60]!r}") from None
    if isinstance(inner, dict) and inner.get("Type") == "Notification":
        raise NotNotification("an SNS Notification inside an SNS Notification")
    return inner


def _record(record: Any, i: int) -> ObjectEvent:
    """One record of S3's (or MinIO's) ``Records``."""
    s3 = record.get("s3") if isinstance(record, dict) else None
    if not isinstance(s3, dict):
        raise NotNotification(f"Records[{i}] has no \"s3\" object: not an S3 event record")
    bucket, obj = s3.get("bucket"), s3.get("object")
    if not isinstance(bucket, dict) or not isinstance(obj, dict):
        raise NotNotification(f"Records[{i}].s3 needs \"bucket\" and \"object\" objects")
    where = f"Records[{i}]"
    return ObjectEvent(
        event=_required(record, "eventName", where).removeprefix("s3:"),
        bucket=_required(bucket, "name", f"{where}.s3.bucket"),
        key=unquote_plus(_required(obj, "key", f"{where}.s3.object")),
        size=_size(obj.get("size")),
        etag=_opt(obj.get("eTag")),
        version=_opt(obj.get("versionId")),
        sequencer=_opt(obj.get("sequencer")),
        time=_opt(record.get("eventTime")),
        region=_opt(record.get("awsRegion")),
    )


# S3's names for EventBridge's (https://docs.aws.amazon.com/AmazonS3/latest/userguide/EventBridge.html)
_CREATED = {"PutObject": "Put", "POST Object": "Post", "CopyObject": "Copy",
            "CompleteMultipartUpload": "CompleteMultipartUpload"}
_OTHER = {
    "Object Restore Initiated": "ObjectRestore:Post",
    "Object Restore Completed": "ObjectRestore:Completed",
    "Object Restore Expired": "ObjectRestore:Delete",
    "Object Tags Added": "ObjectTagging:Put",
    "Object Tags Deleted": "ObjectTagging:Delete",
    "Object ACL Updated": "ObjectAcl:Put",
    "Object Storage Class Changed": "LifecycleTransition",
    "Object Access Tier Changed": "IntelligentTiering",
}


def _eventbridge_name(detail_type: str, detail: dict[str, Any]) -> str:
    """S3's event name for an EventBridge detail-type (and reason); one S3 does not name is
    kept as EventBridge wrote it."""
    reason = _opt(detail.get("reason"))
    if detail_type == "Object Created":
        return "ObjectCreated:" + _CREATED.get(reason or "", reason or "*")
    if detail_type == "Object Deleted":
        kind = "DeleteMarkerCreated" if detail.get("deletion-type") == "Delete Marker Created" \
            else "Delete"
        return ("LifecycleExpiration:" if reason == "Lifecycle Expiration" else "ObjectRemoved:") + kind
    return _OTHER.get(detail_type, detail_type)


def _eventbridge(body: dict[str, Any]) -> ObjectEvent:
    detail = body["detail"]
    bucket = detail.get("bucket") if isinstance(detail, dict) else None
    obj = detail.get("object") if isinstance(detail, dict) else None
    if not isinstance(detail, dict) or not isinstance(bucket, dict) or not isinstance(obj, dict):
        raise NotNotification("an EventBridge event from aws.s3 needs detail.bucket and detail.object")
    return ObjectEvent(
        event=_eventbridge_name(_required(body, "detail-type", "the EventBridge event"), detail),
        bucket=_required(bucket, "name", "detail.bucket"),
        key=unquote_plus(_required(obj, "key", "detail.object")),
        size=_size(obj.get("size")),
        etag=_opt(obj.get("etag")),
        version=_opt(obj.get("version-id")),
        sequencer=_opt(obj.get("sequencer")),
        time=_opt(body.get("time")),
        region=_opt(body.get("region")),
    )


def _required(mapping: dict[str, Any], name: str, where: str) -> str:
    value = mapping.get(name)
    if not isinstance(value, str) or not value:
        raise NotNotification(f"{where} has no {name!r} string")
    return value


def _opt(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _size(value: Any) -> int | None:
    """A size is a number; some senders (and AWS's own examples) write it as a string."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None
