"""A small poller of a DynamoDB stream, as Lambda's event source mapping is one.

It reads every shard with ``DescribeStream``, ``GetShardIterator`` and ``GetRecords`` and
hands the records over in the shape Lambda gives a function (``eventSource``,
``eventSourceARN``, ``dynamodb`` with ``ApproximateCreationDateTime`` in epoch seconds), so
tests feed them to ``lambda_handler`` exactly as a deployed function receives them.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

import boto3


class StreamReader:
    """Every record of the table's stream since the last read, in Lambda's shape."""

    def __init__(self, url: str, table: str) -> None:
        self.client = boto3.client("dynamodbstreams", endpoint_url=url, region_name="us-east-1")
        dynamodb = boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1")
        self.arn = dynamodb.describe_table(TableName=table)["Table"]["LatestStreamArn"]
        self.seen: dict[str, str] = {}  # shard -> last sequence number read

    def read(self, replay: bool = False) -> list[dict[str, Any]]:
        """The records after the last read, or with ``replay`` every record from the start."""
        records: list[dict[str, Any]] = []
        for shard in self.client.describe_stream(StreamArn=self.arn)["StreamDescription"]["Shards"]:
            shard_id = shard["ShardId"]
            for record in self._shard(shard_id, None if replay else self.seen.get(shard_id)):
                records.append(self._lambda_shape(record))
                if not replay:
                    self.seen[shard_id] = record["dynamodb"]["SequenceNumber"]
        return records

    def _shard(self, shard_id: str, after: str | None) -> list[dict[str, Any]]:
        ask: dict[str, Any] = {"StreamArn": self.arn, "ShardId": shard_id}
        ask.update({"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": after} if after
                   else {"ShardIteratorType": "TRIM_HORIZON"})
        iterator = self.client.get_shard_iterator(**ask)["ShardIterator"]
        records: list[dict[str, Any]] = []
        while iterator:
            page = self.client.get_records(ShardIterator=iterator, Limit=1000)
            records.extend(page["Records"])
            iterator = page.get("NextShardIterator") if page["Records"] else None
        return records

    def _lambda_shape(self, record: dict[str, Any]) -> dict[str, Any]:
        data = dict(record["dynamodb"])
        when = data.get("ApproximateCreationDateTime")
        if isinstance(when, datetime):
            data["ApproximateCreationDateTime"] = when.timestamp()
        return {**{key: value for key, value in record.items() if key != "dynamodb"}, "dynamodb": data,
                "eventSource": "aws:dynamodb", "eventSourceARN": self.arn}
