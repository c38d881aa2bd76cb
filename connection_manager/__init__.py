"""Connection Manager: query, correct and sweep WebSocket connection rows in DynamoDB.

Kept empty of imports on purpose: the Lambda entry point imports only what each event needs.
"""

__version__ = "0.1.0"
