"""Test helpers that run real servers on the loopback interface.

They live in an importable package (not in conftest) because the benchmark script
uses the same moto server and DynamoDB proxy as the tests do.
"""
