"""Object-store notifications: each sender's documented example read into ObjectEvents."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from swell.core.errors import PayloadError
from swell.triggers.objects import (
    NotNotification,
    ObjectEvent,
    SnsConfirmation,
    matches,
    parse_notification,
)

# The S3 put example that AWS Lambda's console and docs use
# (https://docs.aws.amazon.com/lambda/latest/dg/with-s3.html; fields as in
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-content-structure.html).
S3_PUT: dict[str, Any] = {
    "Records": [{
        "eventVersion": "2.0",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": "1970-01-01T00:00:00.000Z",
        "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "EXAMPLE"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {
            "x-amz-request-id": "EXAMPLE123456789",
            "x-amz-id-2": "EXAMPLE123/5678abcdefghijklambdaisawesome/mnopqrstuvwxyzABCDEFGH",
        },
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "testConfigRule",
            "bucket": {
                "name": "sourcebucket",
                "ownerIdentity": {"principalId": "EXAMPLE"},
                "arn": "arn:aws:s3:::sourcebucket",
            },
            "object": {
                "key": "HappyFace.jpg",
                "size": 1024,
                "eTag": "0123456789abcdef0123456789abcdef",
                "sequencer": "0A1B2C3D4E5F678901",
            },
        },
    }],
}

HAPPY_FACE = ObjectEvent(event="ObjectCreated:Put", bucket="sourcebucket", key="HappyFace.jpg", size=1024,
                         etag="0123456789abcdef0123456789abcdef", version=None,
                         sequencer="0A1B2C3D4E5F678901", time="1970-01-01T00:00:00.000Z",
                         region="us-east-1")

# EventBridge's "Object Created" example
# (https://docs.aws.amazon.com/AmazonS3/latest/userguide/ev-events.html)
EB_CREATED: dict[str, Any] = {
    "version": "0",
    "id": "17793124-05d4-b198-2fde-7ededc63b103",
    "detail-type": "Object Created",
    "source": "aws.s3",
    "account": "111122223333",
    "time": "2021-11-12T00:00:00Z",
    "region": "ca-central-1",
    "resources": ["arn:aws:s3:::amzn-s3-demo-bucket1"],
    "detail": {
        "version": "0",
        "bucket": {"name": "amzn-s3-demo-bucket1"},
        "object": {
            "key": "example-key",
            "size": 5,
            "etag": "b1946ac92492d2347c6235b4d2611184",
            "version-id": "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e",
            "sequencer": "617f08299329d189",
        },
        "request-id": "N4N7GDK58NMKJ12R",
        "requester": "123456789012",
        "source-ip-address": "1.2.3.4",
        "reason": "PutObject",
    },
}

# MinIO's webhook target body, as in its bucket notification guide
# (https://min.io/docs/minio/linux/administration/monitoring/publish-events-to-webhook.html)
MINIO: dict[str, Any] = {
    "EventName": "s3:ObjectCreated:Put",
    "Key": "images/myphoto.jpg",
    "Records": [{
        "eventVersion": "2.0",
        "eventSource": "minio:s3",
        "awsRegion": "",
        "eventTime": "2019-09-10T17:41:54Z",
        "eventName": "s3:ObjectCreated:Put",
        "userIdentity": {"principalId": "minio"},
        "requestParameters": {"accessKey": "minio", "region": "", "sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-request-id": "15C3249451E12784",
                             "x-minio-origin-endpoint": "http://192.168.86.115:9000"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "Config",
            "bucket": {"name": "images", "ownerIdentity": {"principalId": "minio"},
                       "arn": "arn:aws:s3:::images"},
            "object": {
                "key": "myphoto.jpg",
                "size": 6474,
                "eTag": "430f89010c77aa34fc8760696da62d08-1",
                "contentType": "image/jpeg",
                "userMetadata": {"content-type": "image/jpeg"},
                "versionId": "1",
                "sequencer": "15C32494527B46C5",
            },
        },
        "source": {"host": "127.0.0.1", "port": "", "userAgent": "MinIO (linux; amd64)"},
    }],
}

# S3's test event (https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-content-structure.html)
TEST_EVENT = {
    "Service": "Amazon S3",
    "Event": "s3:TestEvent",
    "Time": "2014-10-13T15:57:02.089Z",
    "Bucket": "amzn-s3-demo-bucket",
    "RequestId": "5582815E1AEA5ADF",
    "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE",
}


def sns(message: dict[str, Any], kind: str = "Notification") -> dict[str, Any]:
    """An SNS HTTP delivery (https://docs.aws.amazon.com/sns/latest/dg/http-notification-json.html)."""
    return {
        "Type": kind,
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": "arn:aws:sns:us-west-2:123456789012:MyTopic",
        "Subject": "Amazon S3 Notification",
        "Message": json.dumps(message),
        "Timestamp": "2012-05-02T00:54:06.655Z",
        "SignatureVersion": "1",
        "Signature": "EXAMPLE",
        "SigningCertURL": "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem",
    }


def with_object(base: dict[str, Any], **fields: Any) -> dict[str, Any]:
    body = copy.deepcopy(base)
    body["Records"][0]["s3"]["object"].update(fields)
    return body


# --- each shape


def test_s3_records() -> None:
    assert parse_notification(S3_PUT) == [HAPPY_FACE]


def test_sns_wrapped_and_sqs_bodies() -> None:
    assert parse_notification(sns(S3_PUT)) == [HAPPY_FACE]
    # SQS hands over the body S3 (or SNS) sent, and raw SNS delivery is S3's body itself
    assert parse_notification(json.loads(json.dumps(S3_PUT))) == [HAPPY_FACE]


def test_sns_subscription_confirmation_is_refused_with_the_url() -> None:
    body = sns({}, "SubscriptionConfirmation")
    body["Message"] = "You have chosen to subscribe to the topic ..."
    body["SubscribeURL"] = "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&Token=x"
    with pytest.raises(SnsConfirmation) as info:
        parse_notification(body)
    assert info.value.subscribe_url == body["SubscribeURL"]
    assert info.value.topic_arn == body["TopicArn"]
    assert "ConfirmSubscription" in str(info.value)
    assert isinstance(info.value, NotNotification)


def test_eventbridge_object_created() -> None:
    assert parse_notification(EB_CREATED) == [ObjectEvent(
        event="ObjectCreated:Put", bucket="amzn-s3-demo-bucket1", key="example-key", size=5,
        etag="b1946ac92492d2347c6235b4d2611184", version="IYV3p45BT0ac8hjHg1houSdS1a.Mro8e",
        sequencer="617f08299329d189", time="2021-11-12T00:00:00Z", region="ca-central-1")]


@pytest.mark.parametrize(("detail_type", "extra", "event"), [
    ("Object Created", {"reason": "CopyObject"}, "ObjectCreated:Copy"),
    ("Object Created", {"reason": "CompleteMultipartUpload"}, "ObjectCreated:CompleteMultipartUpload"),
    ("Object Created", {"reason": "POST Object"}, "ObjectCreated:Post"),
    ("Object Deleted", {"reason": "DeleteObject", "deletion-type": "Permanently Deleted"},
     "ObjectRemoved:Delete"),
    ("Object Deleted", {"reason": "DeleteObject", "deletion-type": "Delete Marker Created"},
     "ObjectRemoved:DeleteMarkerCreated"),
    ("Object Deleted", {"reason": "Lifecycle Expiration", "deletion-type": "Permanently Deleted"},
     "LifecycleExpiration:Delete"),
    ("Object Restore Completed", {}, "ObjectRestore:Completed"),
    ("Object Something New", {}, "Object Something New"),
])
def test_eventbridge_names_map_to_s3s(detail_type: str, extra: dict[str, Any], event: str) -> None:
    body = copy.deepcopy(EB_CREATED)
    body["detail-type"] = detail_type
    del body["detail"]["reason"]
    body["detail"].update(extra)
    assert [e.event for e in parse_notification(body)] == [event]


def test_minio_webhook() -> None:
    assert parse_notification(MINIO) == [ObjectEvent(
        event="ObjectCreated:Put", bucket="images", key="myphoto.jpg", size=6474,
        etag="430f89010c77aa34fc8760696da62d08-1", version="1", sequencer="15C32494527B46C5",
        time="2019-09-10T17:41:54Z", region=None)]


def test_several_records() -> None:
    body = copy.deepcopy(S3_PUT)
    second = copy.deepcopy(body["Records"][0])
    second["eventName"] = "ObjectRemoved:Delete"
    second["s3"]["object"] = {"key": "SadFace.jpg", "sequencer": "0A1B2C3D4E5F678902"}
    body["Records"].append(second)
    events = parse_notification(body)
    assert [(e.event, e.key, e.size) for e in events] == [
        ("ObjectCreated:Put", "HappyFace.jpg", 1024), ("ObjectRemoved:Delete", "SadFace.jpg", None)]


def test_test_event_is_dropped() -> None:
    assert parse_notification(TEST_EVENT) == []
    assert parse_notification(sns(TEST_EVENT)) == []


# --- fields


def test_keys_are_url_decoded() -> None:
    body = with_object(S3_PUT, key="my+file%281%29.csv")
    assert parse_notification(body)[0].key == "my file(1).csv"
    assert parse_notification(with_object(S3_PUT, key="a%2Bb/c%3D1"))[0].key == "a+b/c=1"
    eb = copy.deepcopy(EB_CREATED)
    eb["detail"]["object"]["key"] = "my+file%281%29.csv"
    assert parse_notification(eb)[0].key == "my file(1).csv"


def test_size_as_a_string_and_absent_fields() -> None:
    assert parse_notification(with_object(S3_PUT, size="2048"))[0].size == 2048
    assert parse_notification(with_object(S3_PUT, size=True))[0].size is None
    assert parse_notification(with_object(S3_PUT, versionId=None))[0].version is None


def test_to_data() -> None:
    assert HAPPY_FACE.to_data() == {
        "event": "ObjectCreated:Put", "bucket": "sourcebucket", "key": "HappyFace.jpg", "size": 1024,
        "etag": "0123456789abcdef0123456789abcdef", "version": None, "sequencer": "0A1B2C3D4E5F678901",
        "time": "1970-01-01T00:00:00.000Z", "region": "us-east-1"}
    assert json.loads(json.dumps(HAPPY_FACE.to_data())) == HAPPY_FACE.to_data()


def test_matches_prefix_and_suffix() -> None:
    ev = parse_notification(with_object(S3_PUT, key="uploads%2F2024%2Freport+1.csv"))[0]
    assert ev.key == "uploads/2024/report 1.csv"
    assert matches(ev)
    assert matches(ev, prefix="uploads/")
    assert matches(ev, suffix=".csv")
    assert matches(ev, prefix="uploads/2024/", suffix="1.csv")
    assert not matches(ev, prefix="downloads/")
    assert not matches(ev, suffix=".json")
    assert not matches(ev, prefix="uploads/", suffix=".json")


def test_dedup_id_is_stable_and_tells_changes_apart() -> None:
    again = parse_notification(sns(S3_PUT))[0]
    assert again.dedup_id == HAPPY_FACE.dedup_id
    assert HAPPY_FACE.dedup_id.startswith("s3-")
    assert len(HAPPY_FACE.dedup_id) == 3 + 32
    ids = {HAPPY_FACE.dedup_id,
           parse_notification(with_object(S3_PUT, versionId="v2"))[0].dedup_id,
           parse_notification(with_object(S3_PUT, sequencer="0A1B2C3D4E5F678902"))[0].dedup_id,
           parse_notification(with_object(S3_PUT, key="SadFace.jpg"))[0].dedup_id}
    assert len(ids) == 4
    # without a sequencer, the event name and time tell a restore from a tag change
    restore = ObjectEvent("ObjectRestore:Completed", "b", "k", time="2024-01-01T00:00:00Z")
    tags = ObjectEvent("ObjectTagging:Put", "b", "k", time="2024-01-01T00:00:00Z")
    assert restore.dedup_id != tags.dedup_id


# --- malformed bodies


@pytest.mark.parametrize(("body", "says"), [
    ([1, 2], "JSON object, not list"),
    ("Records", "JSON object, not str"),
    ({"hello": "world"}, "not an object-store notification"),
    ({"Records": {"s3": {}}}, "must be a list"),
    ({"Records": [{"eventName": "ObjectCreated:Put"}]}, "Records[0] has no \"s3\""),
    ({"Records": [{"eventName": "x", "s3": {"bucket": {"name": "b"}}}]}, "\"bucket\" and \"object\""),
    (with_object(S3_PUT, key=""), "Records[0].s3.object has no 'key'"),
    ({"Type": "Notification", "Message": "not json"}, "is not JSON"),
    ({"Type": "Notification", "Message": {"Records": []}}, "must be a JSON string"),
    ({"source": "aws.s3", "detail-type": "Object Created", "detail": {"bucket": {"name": "b"}}},
     "detail.bucket and detail.object"),
])
def test_malformed_bodies_say_what_is_accepted(body: Any, says: str) -> None:
    with pytest.raises(NotNotification) as info:
        parse_notification(body)
    assert says in str(info.value)
    assert isinstance(info.value, PayloadError)


def test_unknown_shape_lists_the_accepted_ones() -> None:
    with pytest.raises(NotNotification) as info:
        parse_notification({"eventType": "blob.created"})
    for shape in ("{\"Records\": [...]}", "SNS Notification", "EventBridge", "MinIO", "s3:TestEvent"):
        assert shape in str(info.value)
